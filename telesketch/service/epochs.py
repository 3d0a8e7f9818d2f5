"""Epochs: tumbling windows by packet timestamp, retention, snapshots, checkpoint and write-ahead log.

Epoch ``e`` holds the packets with ``e * epoch_ns <= ts_ns < (e + 1) * epoch_ns``. One epoch is
open; packets of a later epoch close it and open theirs; packets of an earlier epoch than the open
one are *late*: counted, reported in the ack, not applied. A batch that spans epochs is applied
epoch by epoch in ascending order (each part keeps arrival order).

Durability (data directory). The rule is *log first, then apply, then acknowledge*:

* ``wal.log``: the write-ahead log. A 20-byte file header (``TSKWAL2\n``, the checkpoint LSN the
  log starts after, CRC32C) and then one record per accepted batch: ``u32 length, u32 CRC32C of
  (lsn + payload), u64 lsn`` and the serialised ``PacketBatch``. A batch is logged *before* it
  touches any sketch: a failed write (disk full) is cut back off the log, applies nothing and is
  refused with :class:`LogWriteError` (the sender retries; its retry applies once). How often the
  log is forced to disk is the durability mode (:data:`DURABILITY_MODES`).
* ``epoch-<id>.tsk``: a closed epoch; ``open.tsk``: the checkpoint of the open epoch (sketch
  states, counters, each sender's last sequence, the last LSN it covers) and the *manifest*: the
  closed epochs that must exist, with their packet counts. Every snapshot carries a CRC32C of its
  header and of each sketch blob, so a missing, truncated or flipped file is refused by name.
* A checkpoint (after a rotation, on ``Admin.Snapshot``, at shutdown) writes the closed epochs not
  yet on disk, then ``open.tsk`` (each atomically: temporary file, fsync, rename, directory fsync),
  and only then starts a fresh log. A failed checkpoint keeps the log, which still holds every
  batch since the last good one. Closed epochs evicted before they were ever written cost nothing.
* ``settings.json``: the settings that shape the directory (epoch length, sketches and their
  parameters, shards). A start with different settings is refused, naming the setting; only
  adding a sketch is allowed (it starts empty in the restored epochs).

Start-up = settings check, closed epochs named by the manifest, checkpoint, replay of the log
records after the checkpoint's LSN. A torn last record (a write cut short by a crash: never
acknowledged) is cut with one warning naming offset and bytes. Any other damage (a record that
fails its checksum with intact records after it, a missing or damaged snapshot, a deleted
checkpoint) refuses to start with :class:`DataDirError`, one line naming the file and offset;
``recover=True`` (``telesketch serve --recover``) keeps what precedes the damage, copies the
damaged log aside and logs exactly what was dropped.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from telesketch.packets import PacketBatch
from telesketch.errors import IngestRejected, Precondition
from telesketch.wire import Ack, batch_to_message, message_to_batch
from telesketch.service.sketchset import SketchSet

log = logging.getLogger("telesketch.service")

MAGIC_V1 = b"TSKE"   # format 1 snapshots: no checksums (still read)
MAGIC = b"TSK2"      # format 2: header CRC32C, a CRC32C per sketch blob
FORMAT = 2
_LEN = struct.Struct("<I")
_SNAP_HEAD = struct.Struct("<4sII")          # magic, header length, header crc32c
WAL_MAGIC = b"TSKWAL2\n"
_WAL_HEAD = struct.Struct("<8sQI")           # magic, base lsn, crc32c of (magic + base lsn)
_REC = struct.Struct("<IIQ")                 # payload length, crc32c(lsn + payload), lsn
SETTINGS_FILE = "settings.json"

#: Durability modes of the write-ahead log. Every mode logs a batch before acknowledging it, so
#: a killed server (``kill -9``) loses nothing in any mode; they differ on power loss / OS crash:
#: ``none`` never fsyncs (the OS writes back, typically within 30 s), ``interval`` fsyncs at most
#: ``fsync_interval_seconds`` after a write, ``every-batch`` fsyncs before each acknowledgement (one
#: fsync for a group of queued batches, :meth:`EpochManager.apply_many`: group commit).
DURABILITY_MODES = ("none", "interval", "every-batch")

#: errno values of a full disk or quota (named "disk full" in the refusal).
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class SnapshotError(ValueError):
    """A snapshot file is not one this server wrote intact (bad magic, format, checksum, truncated)."""


class DataDirError(ValueError):
    """The data directory is damaged or was made with other settings; the server refuses to start.
    The message is one line naming the file (and offset) and what to do."""


class DataDirInUseError(OSError):
    """Another running server holds the data directory (two writers would corrupt its log)."""


class LogWriteError(OSError):
    """Writing a batch to the log failed: nothing was applied, the sender should retry.
    ``space`` is true for a full disk or quota. The service answers UNAVAILABLE either way."""

    def __init__(self, message: str, space: bool):
        super().__init__(message)
        self.space = space


class BatchRejected(IngestRejected):
    """A batch refused as a whole before anything is logged or applied (see
    :class:`telesketch.errors.IngestRejected`: ``refusal``, ``reason``)."""


def _lock_data_dir(data_dir: Path):
    """An exclusive ``flock`` on ``data_dir/LOCK`` (holding our pid), released when the returned
    file is closed or the process dies; :class:`DataDirInUseError` if another process holds it."""
    import fcntl

    lock = open(data_dir / "LOCK", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataDirInUseError(f"data directory {data_dir} is in use by another telesketch server (pid {holder}); "
                                f"stop it or give this one another --data-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


@dataclass
class Epoch:
    """One epoch: its sketch states by sketch name and its counters."""

    id: int
    states: dict[str, Any]
    packets: int = 0
    batches: int = 0
    closed: bool = False


#: What applying one batch did (becomes the gRPC ``Ack``): the one record in telesketch.wire.
ApplyResult = Ack


@dataclass
class Counters:
    packets: int = 0
    batches: int = 0
    late_packets: int = 0
    duplicate_batches: int = 0


@dataclass
class _Undo:
    """What one batch's bookkeeping changed (:meth:`EpochManager.apply_many`), to take back if the
    joined sketch update holding its packets fails: the sender's sequence and last-seen time before
    it (``None``: the sender was not in the table), its counts and the epoch that counted it."""

    sender_id: str
    sequence: int | None
    seen: float | None
    applied: int
    late: int
    epoch: Epoch | None
    #: the batch's own sequence (a failed batch's sender must resend from its oldest one)
    batch_sequence: int = 0


@dataclass
class _Group:
    """The sketch updates :meth:`EpochManager.apply_many` defers: ``parts`` (packets of the open
    epoch, in arrival order) and ``owners`` (the index of the batch each part came from)."""

    parts: list = field(default_factory=list)
    owners: list = field(default_factory=list)
    #: batches whose bookkeeping is done and whose packets wait in ``parts``, by index
    undo: dict = field(default_factory=dict)
    #: batches answered with the exception of a failed joined update, by index
    errors: dict = field(default_factory=dict)
    #: ``(index, sender, sequence)`` of batches answered as duplicates (a failed update may make them new)
    duplicates: list = field(default_factory=list)
    #: group commit (durability every-batch): ``(index, sender, sequence)`` of the batches whose log
    #: records are written but not yet fsynced, the log's size and LSN before the first of them
    unsynced: list = field(default_factory=list)
    sync_size: int | None = None
    sync_lsn: int = 0
    #: the batch being applied now
    current: int | None = None

    def drop(self, indices: set) -> None:
        """Take the parts of the batches ``indices`` out of ``parts`` (and ``owners``): their packets
        are not applied (they failed before their bookkeeping, or their log records did not sync)."""
        kept = [(part, owner) for part, owner in zip(self.parts, self.owners) if owner not in indices]
        self.parts, self.owners = [p for p, _ in kept], [o for _, o in kept]


#: :meth:`EpochManager.apply_many` concatenates consecutive parts while their sum stays at most this
#: many packets, and hands larger ones to the sketches one by one (in one round trip through the
#: update threads). Measured (BENCHMARKS.md, "Joining queued batches"): concatenating costs 7-66 ns
#: a packet (a fresh copy of every column, page faults included) and the LLM-Sketch scorer is
#: slower on 64 Ki-packet batches than on 8 Ki ones (its per-batch arrays leave the cache), while a
#: sketch call's fixed cost is tens of microseconds: joining pays below a few thousand packets.
JOIN_BELOW_PACKETS = 4096


def _join_small(parts: list[PacketBatch]) -> list[PacketBatch]:
    """``parts`` with each run of consecutive parts whose packets add up to at most
    :data:`JOIN_BELOW_PACKETS` concatenated into one (the sketch set is ``batch_invariant``)."""
    out: list[PacketBatch] = []
    run: list[PacketBatch] = []
    size = 0
    for part in parts:
        if run and size + len(part) > JOIN_BELOW_PACKETS:
            out.append(run[0] if len(run) == 1 else PacketBatch.concat(run))
            run, size = [], 0
        run.append(part)
        size += len(part)
    if run:
        out.append(run[0] if len(run) == 1 else PacketBatch.concat(run))
    return out


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep the partial file's space
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _encode(header: dict, blobs: dict[str, bytes]) -> list[bytes]:
    header = dict(header, format=FORMAT,
                  sketches=[[name, len(b), crc32c.crc32c(b)] for name, b in blobs.items()])
    raw = json.dumps(header, sort_keys=True).encode()
    return [_SNAP_HEAD.pack(MAGIC, len(raw), crc32c.crc32c(raw)), raw, *blobs.values()]


def read_snapshot(path: Path) -> tuple[dict, dict[str, bytes]]:
    """``(header, {sketch name: state bytes})`` of a snapshot file, every checksum verified;
    :class:`SnapshotError` (naming the file and what is wrong) if it is not intact."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{path} is missing") from None
    if data[:4] == MAGIC_V1 and len(data) >= 8:
        return _read_snapshot_v1(path, data)
    if data[:4] != MAGIC or len(data) < _SNAP_HEAD.size:
        raise SnapshotError(f"{path} is not a telesketch epoch snapshot ({len(data)} bytes)")
    _, hlen, hcrc = _SNAP_HEAD.unpack_from(data)
    start = _SNAP_HEAD.size
    raw = data[start : start + hlen]
    if len(raw) < hlen:
        raise SnapshotError(f"{path}: truncated in the header ({len(data)} bytes)")
    if crc32c.crc32c(raw) != hcrc:
        raise SnapshotError(f"{path}: header checksum mismatch (offset {start})")
    header = json.loads(raw)
    if header.get("format") != FORMAT:
        raise SnapshotError(f"{path}: snapshot format {header.get('format')!r}, expected {FORMAT}")
    blobs, offset = {}, start + hlen
    for name, size, crc in header["sketches"]:
        if offset + size > len(data):
            raise SnapshotError(f"{path}: truncated in sketch {name!r} (offset {offset}, {len(data)} bytes)")
        blob = data[offset : offset + size]
        if crc32c.crc32c(blob) != crc:
            raise SnapshotError(f"{path}: checksum mismatch in sketch {name!r} (offset {offset})")
        blobs[name] = blob
        offset += size
    if offset != len(data):
        raise SnapshotError(f"{path}: {len(data) - offset} unexpected bytes after the last sketch (offset {offset})")
    return header, blobs


def _read_snapshot_v1(path: Path, data: bytes) -> tuple[dict, dict[str, bytes]]:
    (hlen,) = _LEN.unpack_from(data, 4)
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as exc:
        raise SnapshotError(f"{path}: corrupt header ({exc})") from None
    if header.get("format") != 1:
        raise SnapshotError(f"{path}: snapshot format {header.get('format')!r}, expected 1")
    blobs, offset = {}, 8 + hlen
    for name, size in header["sketches"]:
        if offset + size > len(data):
            raise SnapshotError(f"{path}: truncated in sketch {name!r}")
        blobs[name] = data[offset : offset + size]
        offset += size
    return header, blobs


def _epoch_file(epoch: int) -> str:
    return f"epoch-{epoch:020d}.tsk"


def _wal_header(base_lsn: int) -> bytes:
    head = WAL_MAGIC + struct.pack("<Q", base_lsn)
    return head + _LEN.pack(crc32c.crc32c(head))


def _record_head(lsn: int, payload) -> bytes:
    """The 16-byte frame (:data:`_REC`) that precedes ``payload`` in the log: length, CRC32C of
    (lsn + payload), lsn."""
    lsn_bytes = struct.pack("<Q", lsn)
    return struct.pack("<II", len(payload), crc32c.crc32c(payload, crc32c.crc32c(lsn_bytes))) + lsn_bytes


def _record(lsn: int, payload: bytes) -> bytes:
    """One whole framed record (frame + payload), as :meth:`EpochManager._log` writes it."""
    return _record_head(lsn, payload) + payload


def _write_all(fd: int, head: bytes, payload) -> int:
    """Write ``head`` then ``payload`` at the descriptor's position with one ``writev`` (no copy of
    the payload into a joined record: the log's bytes are the same as writing ``head + payload``),
    finishing a short write with ``write``; returns the bytes written. An ``OSError`` part-way
    leaves a partial record, which the caller cuts off."""
    total = len(head) + len(payload)
    written = os.writev(fd, (head, payload))
    if written < total:
        rest = memoryview(head + bytes(payload))  # rare (a signal, a file-size limit): copy once
        while written < total:
            written += os.write(fd, rest[written:])
    return written


def _record_at(data, offset: int, limit: int):
    """``(lsn, payload)`` of an intact record at ``offset``, else None (bad length or checksum)."""
    if offset + _REC.size > len(data):
        return None
    size, crc, lsn = _REC.unpack_from(data, offset)
    end = offset + _REC.size + size
    if size > limit or end > len(data):
        return None
    payload = data[offset + _REC.size : end]
    if crc32c.crc32c(payload, crc32c.crc32c(data[offset + 8 : offset + 16])) != crc:
        return None
    return lsn, payload


def _intact_after(data, start: int, limit: int, after_lsn: int) -> list[tuple[int, int, bytes]]:
    """Intact records anywhere after ``start`` (``[(offset, lsn, payload)]``), so damage in a
    length field cannot hide the good records behind it. Candidates are the offsets whose LSN
    field holds a plausible value (``after_lsn`` < lsn <= ``after_lsn`` + records that could
    fit), found with numpy in 8 passes (one per alignment); each is checked by its checksum."""
    found = []
    if len(data) - start < _REC.size:
        return found
    lo, hi = after_lsn, after_lsn + len(data) // _REC.size + 1
    candidates = []
    for align in range(8):
        first = start + 8 + align  # the LSN field sits 8 bytes into a record
        count = (len(data) - first) // 8
        if count <= 0:
            continue
        values = np.frombuffer(data, dtype="<u8", count=count, offset=first)
        hits = np.flatnonzero((values > lo) & (values <= hi))
        candidates.append(first - 8 + hits * 8)
    if not candidates:
        return found
    pos_list = np.unique(np.concatenate(candidates)).tolist()
    next_free = start
    for pos in pos_list:
        if pos < next_free:
            continue
        while True:
            rec = _record_at(data, pos, limit)
            if rec is None:
                break
            found.append((pos, rec[0], bytes(rec[1])))
            pos += _REC.size + len(rec[1])
            next_free = pos
    return found


def data_dir_settings(epoch_ns: int, sketches: dict, shards: int) -> dict:
    """The settings that shape a data directory (recorded in ``settings.json``)."""
    return {"epoch_ns": int(epoch_ns), "sketches": json.loads(json.dumps(sketches, sort_keys=True)),
            "shards": int(shards)}


def _settings_difference(recorded: dict, now: dict) -> str | None:
    """The first setting that differs, as words, or None."""
    if recorded.get("epoch_ns") != now["epoch_ns"]:
        return (f"epoch_seconds was {recorded.get('epoch_ns', 0) / 1e9:g} when it was created "
                f"(now {now['epoch_ns'] / 1e9:g})")
    if recorded.get("shards") != now["shards"]:
        return f"shards was {recorded.get('shards')} when it was created (now {now['shards']})"
    old, new = recorded.get("sketches", {}), now["sketches"]
    removed = sorted(set(old) - set(new))
    if removed:  # its retained epochs would be dropped at the next checkpoint
        return (f"sketch {removed[0]!r} was configured when it was created and is missing now "
                f"(sketches then: {sorted(old)}, now: {sorted(new)})")
    for name in sorted(old):
        for key in sorted(set(old[name]) | set(new[name])):
            if old[name].get(key) != new[name].get(key):
                return (f"sketch {name!r} setting {key!r} was {old[name].get(key)!r} when it was created "
                        f"(now {new[name].get(key)!r})")
    return None


class EpochManager:
    """Owns the epochs, the sender sequence table and the data directory; every method takes the lock.

    ``apply`` runs on the single sketch worker thread; queries take the same lock only to pick
    their epochs and copy the open epoch's state they read (:mod:`telesketch.service.queries`).
    ``durability`` is one of :data:`DURABILITY_MODES` (``wal_fsync=True`` is the older spelling of
    ``every-batch``); ``settings`` (see :func:`data_dir_settings`) is recorded in, and checked
    against, the data directory; ``max_sequence_jump`` (0: no limit) refuses a sender's sequence
    that jumps further past its last applied one; ``recover`` starts from a damaged directory,
    keeping what is intact and logging every loss (:attr:`recovered` lists them);
    ``sender_ttl_seconds`` (0: never) drops a sender from the sequence table at a checkpoint once it
    has sent nothing for that long (a retry older than that would be applied again).
    """

    def __init__(self, sketchset: SketchSet, epoch_ns: int, keep_epochs: int, data_dir: str | Path | None,
                 wal: bool = True, wal_fsync: bool = False, *, durability: str | None = None,
                 fsync_interval_seconds: float = 1.0, settings: dict | None = None, max_sequence_jump: int = 0,
                 recover: bool = False, max_record_bytes: int = 1 << 30, sender_ttl_seconds: float = 0.0):
        self.sketchset = sketchset
        self.epoch_ns = int(epoch_ns)
        self.keep_epochs = int(keep_epochs)
        self.data_dir = Path(data_dir) if data_dir else None
        self.wal_enabled = bool(wal) and self.data_dir is not None
        self.durability = durability or ("every-batch" if wal_fsync else "interval")
        if self.durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}; got {self.durability!r}")
        self.fsync_interval_seconds = float(fsync_interval_seconds)
        self.max_sequence_jump = int(max_sequence_jump)
        self.recover = bool(recover)
        self.max_record_bytes = int(max_record_bytes)
        self.lock = threading.RLock()
        self.open: Epoch | None = None
        self.closed: OrderedDict[int, Epoch] = OrderedDict()
        self.senders: dict[str, int] = {}
        self.sender_seen: dict[str, float] = {}  #: wall-clock time of each sender's last batch
        self.sender_ttl_seconds = float(sender_ttl_seconds)
        self.counters = Counters()
        self.lsn = 0                       #: log sequence number of the last batch applied
        #: bumped whenever the open epoch's state changes (a batch applied, an epoch opened or
        #: loaded): a query may reuse its copy of the open epoch while this is unchanged
        self.generation = 0
        self.recovered: list[str] = []     #: what a ``recover`` start dropped, one line each
        self.log_write_failures = 0
        self.checkpoint_failures = 0
        self._unlogged: dict[str, int] = {}  # sender -> the sequence whose log write failed (resend it first)
        self._unsaved: set[int] = set()    # closed epochs not yet written
        self._doomed: set[int] = set()     # evicted epochs whose files go after the next checkpoint
        self._wal_fd: int | None = None
        self._wal_size = 0
        self._wal_dirty = False            # a failed write may have left bytes past _wal_size
        self._unsynced = False
        self._io = threading.Lock()        # the log's file descriptor (worker vs. interval fsync)
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._replaying = False
        self._replayed = 0
        self._group: _Group | None = None  #: sketch updates deferred by apply_many, while it runs
        self._rewrite_log = False
        self._lock = None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_data_dir(self.data_dir)
            try:
                if settings is not None:
                    self._check_settings(settings)
                self._load()
                if self.wal_enabled:
                    if self._replayed or self._rewrite_log or not (self.data_dir / "wal.log").exists():
                        if self.open is not None:
                            self.checkpoint()  # folds the replayed batches into open.tsk, starts a fresh log
                        else:
                            self._new_log(self.lsn)
                    else:
                        self._open_log()
                    if self.durability == "interval":
                        self._syncer = threading.Thread(target=self._sync_loop, name="telesketch-wal-fsync",
                                                        daemon=True)
                        self._syncer.start()
            except BaseException:
                self._release()
                raise

    def _release(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=10)
            self._syncer = None
        with self._io:
            if self._wal_fd is not None:
                try:
                    if self._unsynced and self.durability != "none":
                        os.fsync(self._wal_fd)
                except OSError as exc:
                    log.error("fsync of the write-ahead log at shutdown failed: %s", exc.strerror)
                os.close(self._wal_fd)
                self._wal_fd = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ ingest
    def apply(self, batch: PacketBatch, sender_id: str = "", sequence: int = 0, raw: bytes | None = None) -> ApplyResult:
        """Apply a validated batch: dedup by sender sequence, log it, then split it by epoch and
        update the sketches, checkpointing after a rotation. Raises :class:`BatchRejected` (a
        sequence jump) or :class:`LogWriteError` (the log write failed) with nothing changed."""
        with self.lock:
            return self._apply_locked(batch, sender_id, sequence, raw)

    def apply_many(self, items: list[tuple[PacketBatch, str, int, bytes | None]]) -> list[ApplyResult | Exception]:
        """Apply ``(batch, sender_id, sequence, raw)`` items in order, as :meth:`apply` would one
        after another, with the sketch updates of consecutive batches of the open epoch joined into
        one (``PacketBatch.concat``, in arrival order): one sketch update per group instead of per
        batch, which is what batches of a few thousand packets spend most of their time on.

        Returns, per item, its :class:`ApplyResult` or the exception :meth:`apply` would have raised
        for it (:class:`BatchRejected`, :class:`LogWriteError`, ...): each batch is deduplicated,
        checked, logged and counted on its own, exactly as :meth:`apply` does, so one batch's
        refusal never touches another's result. The joined update runs before anything that reads
        the open epoch's states (closing it, a checkpoint) and at the end; the lock is held
        throughout, so no query sees a group half applied. If a joined update raises, every batch
        with packets in it is answered with that exception and its bookkeeping is taken back (the
        sender's sequence, so a resend is applied; the counters), as :meth:`apply` leaves a batch
        whose update raised; the later batches of those senders are refused until each resends its
        oldest failed batch (as after a failed log write), so none overtakes it. Only for a sketch
        set whose ``batch_invariant`` is true (the state is then exactly the one-by-one state);
        otherwise the items are applied one by one.

        Group commit (durability ``every-batch``): each batch's record is written before anything
        of it is applied, as always, and one fsync covers the records written since the last one,
        before their packets reach a sketch and before any answer (:meth:`_sync_group`)."""
        with self.lock:
            if len(items) < 2 or not self.sketchset.batch_invariant:
                return [self._apply_caught(*item) for item in items]
            group = self._group = _Group()
            results: list[ApplyResult | Exception] = []
            try:
                for index, item in enumerate(items):
                    group.current = index
                    results.append(self._apply_caught(*item))
                group.current = None
                try:
                    self._flush()
                except Exception:  # noqa: BLE001 - recorded per batch in group.errors
                    pass
            finally:
                self._group = None
            for index, error in group.errors.items():
                results[index] = error
            return results

    def _apply_caught(self, batch: PacketBatch, sender_id: str, sequence: int, raw: bytes | None):
        """:meth:`_apply_locked`'s result, or the exception it raised (for :meth:`apply_many`)."""
        try:
            return self._apply_locked(batch, sender_id, sequence, raw)
        except Exception as exc:  # noqa: BLE001 - each batch's own answer, as apply would raise it
            group = self._group
            if group is not None and group.current not in group.undo and group.current in group.owners:
                # it failed before its bookkeeping: its packets are not applied (apply stops there too)
                group.drop({group.current})
            return exc

    def _apply_locked(self, batch: PacketBatch, sender_id: str, sequence: int, raw: bytes | None) -> ApplyResult:
        """:meth:`apply`'s work; the caller holds the lock (sketch updates deferred while
        :meth:`apply_many` runs a group)."""
        n = len(batch)
        last = self.senders.get(sender_id, 0) if sender_id else 0
        if sender_id and sequence <= last:
            self.counters.duplicate_batches += 1
            if self._group is not None:
                self._group.duplicates.append((self._group.current, sender_id, sequence))
            return ApplyResult(sender_id, sequence, True, n, 0, 0, self._open_id())
        if (sender_id and self.max_sequence_jump and not self._replaying
                and sequence - last > self.max_sequence_jump):
            raise BatchRejected(
                Precondition, "sequence_jump",
                f"sender {sender_id!r}: sequence {sequence} is {sequence - last} past the last applied one "
                f"({last}); at most {self.max_sequence_jump} ahead is accepted (max_sequence_jump). "
                f"Continue from Resume's last_sequence + 1")
        if not self._replaying:
            pending = self._unlogged.get(sender_id) if sender_id else None
            if pending is not None and sequence > pending:
                # applying it would move the sender past the batch that failed, and that batch's
                # retry would then be taken for a duplicate: lost. The sender resends it first.
                raise self._not_past(sender_id, pending)
            if self._wal_fd is not None:
                try:
                    self._log(raw if raw is not None
                              else batch_to_message(batch, sender_id=sender_id, sequence=sequence).SerializeToString())
                except LogWriteError:
                    if sender_id:
                        self._unlogged[sender_id] = min(sequence, pending or sequence)
                    raise
                group = self._group
                if group is not None and group.sync_size is not None:
                    group.unsynced.append((group.current, sender_id, sequence))
            else:
                self.lsn += 1
            if pending is not None and sequence == pending:
                del self._unlogged[sender_id]
        rotated = False
        late = 0
        try:
            if n:
                eids = batch.ts_ns // np.uint64(self.epoch_ns)
                lo, hi = int(eids.min()), int(eids.max())
                if self.open is None:
                    self._start(lo)
                if lo == hi:
                    if lo < self.open.id:
                        late = n
                    else:
                        rotated |= self._rotate_to(lo)
                        self._update(batch)
                else:
                    late, rotated = self._apply_spanning(batch, eids)
        except Exception:
            if sender_id and not self._replaying:
                # not applied (a sketch update failed): a later batch of the sender must not overtake it,
                # or its resend would be taken for a duplicate, never applied (as after a failed log write)
                self._unlogged[sender_id] = min(sequence, self._unlogged.get(sender_id, sequence))
            raise
        group = self._group
        if group is not None and sender_id and self._unlogged.get(sender_id, sequence) < sequence:
            # a joined update flushed by this batch's rotation failed and took back an earlier batch
            # of its sender: applied now, it would make that batch's resend a duplicate (lost)
            raise self._not_past(sender_id, self._unlogged[sender_id])
        if group is not None:
            # its packets wait for the joined update, its log record for the group's fsync, or (empty,
            # late) it is taken back with an earlier batch of its sender whose update fails
            group.undo[group.current] = _Undo(sender_id, self.senders.get(sender_id) if sender_id else None,
                                              self.sender_seen.get(sender_id) if sender_id else None,
                                              n - late, late, self.open, sequence)
        if self.open is not None:
            self.open.batches += 1
        if sender_id:
            self.senders[sender_id] = sequence
            self.sender_seen[sender_id] = time.time()
        self.counters.batches += 1
        self.counters.packets += n - late
        self.counters.late_packets += late
        if rotated and not self._replaying:
            try:
                self.checkpoint()
            except (OSError, SnapshotError) as exc:  # the log still holds every batch: nothing is lost
                self.checkpoint_failures += 1
                log.error("checkpoint after closing an epoch failed (%s); the write-ahead log keeps the "
                          "batches and the next checkpoint retries", exc)
        return ApplyResult(sender_id, sequence, False, n, n - late, late, self._open_id())

    @staticmethod
    def _not_past(sender_id: str, pending: int) -> LogWriteError:
        """The refusal of a batch of ``sender_id`` past its batch ``pending``, which was not applied
        (its log write, the group's fsync or the group's sketch update failed): applying it would make
        the resend of ``pending`` a duplicate, lost. The sender resends from ``pending`` first."""
        return LogWriteError(f"sender {sender_id!r}: batch {pending} failed to reach the write-ahead log or the "
                             f"sketches and was not applied; resend from sequence {pending}", space=False)

    def _apply_spanning(self, batch: PacketBatch, eids: np.ndarray) -> tuple[int, bool]:
        """A batch over several epochs: the late part counted, the rest applied epoch by epoch in
        ascending order (arrival order kept within each), one grouping pass, no per-epoch mask."""
        keep = eids >= np.uint64(self.open.id)
        late = len(batch) - int(np.count_nonzero(keep))
        if late:
            batch, eids = batch[keep], eids[keep]
        if len(eids) > 1 and not bool(np.all(eids[1:] >= eids[:-1])):
            order = np.argsort(eids, kind="stable")
            batch, eids = batch[order], eids[order]
        bounds = [0, *(np.flatnonzero(eids[1:] != eids[:-1]) + 1).tolist(), len(eids)]
        rotated = False
        for start, end in zip(bounds[:-1], bounds[1:]):
            if start == end:
                continue
            rotated |= self._rotate_to(int(eids[start]))
            self._update(batch[start:end])
        return late, rotated

    def _open_id(self) -> int:
        return self.open.id if self.open is not None else 0

    def _update(self, batch: PacketBatch) -> None:
        """Update the open epoch's sketches with ``batch`` (now, or, while :meth:`apply_many` runs
        a group, at its next :meth:`_flush`)."""
        group = self._group
        if group is not None:
            group.parts.append(batch)
            group.owners.append(group.current)
            return
        self.generation += 1  # before the update: a copy taken while it fails part-way is not reused
        self.sketchset.update(self.open.states, batch)
        self.open.packets += len(batch)

    def _flush(self) -> None:
        """Apply the group's deferred parts to the open epoch as one joined update.

        On failure every batch with packets in it is answered with the exception
        (``group.errors``) and its bookkeeping is taken back (:meth:`_take_back`); the exception
        is raised again when the batch being applied now has packets in it (that batch then fails
        as :meth:`apply` fails), so whatever called this (closing the epoch, a checkpoint) stops."""
        group = self._group
        if group is None:
            return
        self._sync_group(group)
        if not group.parts:
            return
        parts, owners = group.parts, group.owners
        group.parts, group.owners = [], []
        self.generation += 1  # before the update: a copy taken while it fails part-way is not reused
        try:
            if self.sketchset.active:  # (no sketch: nothing to update)
                self.sketchset.update_batches(self.open.states, _join_small(parts))
        except Exception as exc:
            log.error("a joined update of %d batches failed (%s: %s); each of them is answered with it",
                      len(set(owners)), type(exc).__name__, exc)
            self._take_back(group, list(dict.fromkeys(owners)), exc)
            if group.current in owners:
                raise
            return
        self.open.packets += sum(len(part) for part in parts)
        for owner in owners:
            group.undo.pop(owner, None)

    def _sync_group(self, group: _Group) -> None:
        """Group commit (durability every-batch): one fsync for the log records the group wrote
        since the last one, before any of their packets reach a sketch and before any answer.

        If it fails, those records are cut off again (the log ends where it was synced), the LSN
        goes back, and each of their batches is answered with :class:`LogWriteError` with its
        bookkeeping taken back and its packets dropped from the group, exactly as a batch whose
        own fsync failed is; each sender must then resend from its first failed batch. Raised again
        when the batch being applied now is among them and has no bookkeeping yet."""
        if group.sync_size is None:
            return
        logged, size, lsn = group.unsynced, group.sync_size, group.sync_lsn
        group.unsynced, group.sync_size = [], None
        with self._io:
            try:
                os.fsync(self._wal_fd)
                self._unsynced = False
                error = None
            except OSError as exc:
                try:
                    os.ftruncate(self._wal_fd, size)
                    self._wal_dirty = False
                except OSError:
                    self._wal_dirty = True  # cut again before the next write
                self._wal_size = size
                self.log_write_failures += 1
                space = exc.errno in _SPACE_ERRNOS
                error = LogWriteError(f"writing the batch to the write-ahead log failed ({'disk full: ' if space else ''}"
                                      f"{exc.strerror or exc}); nothing was applied: retry", space=space)
        if error is None:
            return
        self.lsn = lsn
        failed = [index for index, _, _ in logged]
        log.error("%s (%d batches of a group)", error, len(failed))
        group.drop(set(failed))
        for _, sender_id, sequence in logged:
            if sender_id:
                self._unlogged[sender_id] = min(sequence, self._unlogged.get(sender_id, sequence))
        current_unregistered = group.current in failed and group.current not in group.undo
        self._take_back(group, failed, error)
        if current_unregistered:
            raise error

    def _take_back(self, group: _Group, failed: list[int], exc: Exception) -> None:
        """Undo the bookkeeping of the ``failed`` batches (newest first, so each sender gets back
        the sequence it had before its oldest failed batch) and answer them with ``exc``; a batch
        answered as a duplicate of a sequence that is no longer applied is answered with it too."""
        oldest: dict[str, int] = {}  # sender -> its first failed batch
        for index in failed:
            undo = group.undo.get(index)
            if undo is not None and undo.sender_id:
                oldest.setdefault(undo.sender_id, index)
        # a later batch of such a sender with nothing for the sketches (empty, late) goes too: left
        # acknowledged, the sender's sequence would go back below it and its retry apply again
        later = [index for index, undo in group.undo.items()
                 if undo.sender_id in oldest and index > oldest[undo.sender_id] and index not in failed]
        failed = sorted({*failed, *later})
        senders = set()
        for index in reversed(failed):
            undo = group.undo.pop(index, None)
            group.errors[index] = exc
            if undo is None:  # failed before its bookkeeping (the batch being applied now)
                continue
            if undo.sender_id:
                senders.add(undo.sender_id)
                # later batches of the sender must not overtake it (as after a failed log write)
                self._unlogged[undo.sender_id] = min(undo.batch_sequence,
                                                     self._unlogged.get(undo.sender_id, undo.batch_sequence))
                if undo.sequence is None:
                    self.senders.pop(undo.sender_id, None)
                    self.sender_seen.pop(undo.sender_id, None)
                else:
                    self.senders[undo.sender_id] = undo.sequence
                    self.sender_seen[undo.sender_id] = undo.seen
            self.counters.batches -= 1
            self.counters.packets -= undo.applied
            self.counters.late_packets -= undo.late
            if undo.epoch is not None:
                undo.epoch.batches -= 1
        for index, sender_id, sequence in group.duplicates:
            if sender_id in senders and sequence > self.senders.get(sender_id, 0) and index not in group.errors:
                group.errors[index] = exc
                self.counters.duplicate_batches -= 1

    def _start(self, epoch: int) -> None:
        self.generation += 1
        self.open = Epoch(epoch, self.sketchset.new_states(epoch))

    def _rotate_to(self, epoch: int) -> bool:
        if epoch <= self.open.id:
            return False
        self._close_open(next_epoch=epoch)
        return True

    def _close_open(self, next_epoch: int) -> None:
        """Close the open epoch in memory; its file is written by the next checkpoint (so a batch
        over many epochs writes only the ones still retained at its end)."""
        self._flush()  # the deferred packets belong to the epoch that closes
        old = self.open
        self.generation += 1
        closed = Epoch(old.id, self.sketchset.close(old.states, old.id), old.packets, old.batches, closed=True)
        self.open = Epoch(next_epoch, self.sketchset.new_states(next_epoch, old.states))
        self.closed[closed.id] = closed
        self.closed.move_to_end(closed.id)
        self._unsaved.add(closed.id)
        while len(self.closed) > self.keep_epochs:
            dropped, _ = self.closed.popitem(last=False)
            if dropped in self._unsaved:
                self._unsaved.discard(dropped)
            else:
                self._doomed.add(dropped)

    def rotate(self, now_ns: int | None = None) -> tuple[bool, int, int]:
        """Close the open epoch now and open the next: ``(closed?, closed id, open id)``.

        Refused (``closed`` false) when the open epoch holds no packets (repeated calls cannot
        evict the retained epochs) or has not ended by the server's clock (``now_ns``): rotating
        then would move the open epoch ahead of live traffic and make it late."""
        with self.lock:
            if self.open is None:
                return False, 0, 0
            old = self.open.id
            now_ns = time.time_ns() if now_ns is None else now_ns
            if self.open.packets == 0:
                log.info("RotateEpoch: open epoch %d holds no packets; not rotated", old)
                return False, 0, old
            if (old + 1) * self.epoch_ns > now_ns:
                log.info("RotateEpoch: open epoch %d has not ended by the server clock; not rotated", old)
                return False, 0, old
            self._close_open(old + 1)
            self.checkpoint()
            return True, old, self.open.id

    # ------------------------------------------------------------------ the log
    def _log(self, payload: bytes) -> None:
        """Append one framed record and make it as durable as the mode says; on any failure the
        partial record is cut off again (a torn record must never sit mid-log) and
        :class:`LogWriteError` is raised."""
        lsn = self.lsn + 1
        head = _record_head(lsn, payload)
        with self._io:
            fd = self._wal_fd
            try:
                if self._wal_dirty:
                    os.ftruncate(fd, self._wal_size)
                    self._wal_dirty = False
                self._wal_dirty = True
                written = _write_all(fd, head, payload)
                group = self._group
                if self.durability == "every-batch":
                    if group is None:
                        os.fsync(fd)
                    elif group.sync_size is None:  # group commit: one fsync before the group's update
                        group.sync_size, group.sync_lsn = self._wal_size, self.lsn
                self._wal_dirty = False
            except OSError as exc:
                try:
                    os.ftruncate(fd, self._wal_size)
                    self._wal_dirty = False
                except OSError:
                    pass  # cut again before the next write
                self.log_write_failures += 1
                space = exc.errno in _SPACE_ERRNOS
                raise LogWriteError(f"writing the batch to the write-ahead log failed ({'disk full: ' if space else ''}"
                                    f"{exc.strerror or exc}); nothing was applied: retry", space=space) from None
            self._wal_size += written
            self._unsynced = self.durability != "every-batch" or self._group is not None
        self.lsn = lsn

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_seconds):
            with self._io:
                if self._wal_fd is None or not self._unsynced:
                    continue
                try:
                    os.fsync(self._wal_fd)
                    self._unsynced = False
                except OSError as exc:
                    log.error("fsync of the write-ahead log failed (%s); retrying in %g s",
                              exc.strerror, self.fsync_interval_seconds)

    def _open_log(self) -> None:
        path = self.data_dir / "wal.log"
        with self._io:
            self._wal_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._wal_size = os.fstat(self._wal_fd).st_size
            self._wal_dirty = self._unsynced = False

    def _new_log(self, base_lsn: int) -> None:
        """Replace the log by an empty one starting after ``base_lsn`` (atomic: temporary file,
        fsync, rename, directory fsync); only called once a checkpoint covering ``base_lsn`` is durable."""
        path = self.data_dir / "wal.log"
        try:
            _atomic_write(path, [_wal_header(base_lsn)])
        except OSError:
            # the directory fsync after the rename may fail with the fresh log already in place: the
            # descriptor must then follow it, or every later batch goes to the replaced, unlinked file
            if not self._holds_replaced_log(path):
                raise
            self._reopen_log(path)
            raise
        self._reopen_log(path)

    def _holds_replaced_log(self, path: Path) -> bool:
        """Whether the log's descriptor is open on a file that is no longer ``path``."""
        with self._io:
            if self._wal_fd is None:
                return False
            try:
                now = os.stat(path)
            except OSError:
                return False
            held = os.fstat(self._wal_fd)
            return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def _reopen_log(self, path: Path) -> None:
        """Point the log's descriptor at the fresh log ``path`` (just its header)."""
        with self._io:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
            self._wal_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._wal_size = _WAL_HEAD.size
            self._wal_dirty = self._unsynced = False

    # ------------------------------------------------------------------ durability
    def _header(self, epoch: Epoch) -> dict:
        return {"epoch": epoch.id, "epoch_ns": self.epoch_ns, "closed": epoch.closed, "packets": epoch.packets,
                "batches": epoch.batches, "senders": self.senders, "counters": vars(self.counters),
                "written_at": time.time()}

    def _blobs(self, epoch: Epoch) -> dict[str, bytes]:
        return {name: self.sketchset.get(name).dump_state(state) for name, state in epoch.states.items()}

    def _write_epoch(self, epoch: Epoch) -> Path:
        path = self.data_dir / _epoch_file(epoch.id)
        _atomic_write(path, _encode(self._header(epoch), self._blobs(epoch)))
        return path

    def checkpoint(self) -> list[str]:
        """Write the closed epochs not yet on disk, then ``open.tsk`` (with the manifest of the
        closed epochs and the LSN it covers), then start a fresh log; returns the files written.
        A failure leaves the log as it was (it still holds everything since the last checkpoint)."""
        with self.lock:
            self._flush()  # the checkpoint holds every batch counted so far
            if self.data_dir is None or self.open is None:
                return []
            self._expire_senders()
            written = []
            for eid in sorted(self._unsaved):
                written.append(str(self._write_epoch(self.closed[eid])))
                self._unsaved.discard(eid)
            path = self.data_dir / "open.tsk"
            header = dict(self._header(self.open), lsn=self.lsn, wal=self.wal_enabled, senders_seen=self.sender_seen,
                          manifest={str(e.id): e.packets for e in self.closed.values()})
            _atomic_write(path, _encode(header, self._blobs(self.open)))
            written.append(str(path))
            for eid in sorted(self._doomed):
                (self.data_dir / _epoch_file(eid)).unlink(missing_ok=True)
            self._doomed.clear()
            if self.wal_enabled:
                self._new_log(self.lsn)
            elif (self.data_dir / "wal.log").exists():
                os.truncate(self.data_dir / "wal.log", 0)
            return written[::-1]

    def _expire_senders(self) -> None:
        if not self.sender_ttl_seconds:
            return
        cutoff = time.time() - self.sender_ttl_seconds
        idle = [s for s in self.senders if self.sender_seen.get(s, cutoff) < cutoff]
        for s in idle:
            del self.senders[s]
            self.sender_seen.pop(s, None)
        if idle:
            log.info("%d senders idle for more than %g s left the sequence table", len(idle), self.sender_ttl_seconds)

    def _damage(self, message: str) -> None:
        """Damage found at start-up: refuse (:class:`DataDirError`), or with ``recover`` log the loss."""
        if not self.recover:
            raise DataDirError(f"{message}; refusing to start. `telesketch serve --recover` keeps what is intact "
                               f"and logs exactly what it drops")
        log.error("recovery: %s", message)
        self.recovered.append(message)

    def _check_settings(self, settings: dict) -> None:
        path = self.data_dir / SETTINGS_FILE
        if not path.exists():
            _atomic_write(path, [json.dumps(dict(settings, format=1), indent=1, sort_keys=True).encode()])
            return
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataDirError(f"{path} is unreadable ({exc}); it records the settings the directory was made with") from None
        difference = _settings_difference(recorded, settings)
        if difference is not None:
            raise DataDirError(f"data directory {self.data_dir}: {difference}; start with the settings it was "
                               f"made with, or give another --data-dir")
        added = sorted(set(settings["sketches"]) - set(recorded.get("sketches", {})))
        if added:  # a new sketch starts empty in the restored epochs (nothing of theirs is lost)
            log.info("sketch(es) %s added to data directory %s: empty in the epochs restored from it",
                     added, self.data_dir)
            _atomic_write(path, [json.dumps(dict(settings, format=1), indent=1, sort_keys=True).encode()])

    def _load_states(self, header: dict, blobs: dict[str, bytes]) -> dict[str, Any]:
        states = {}
        for cs in self.sketchset.active:
            if cs.name in blobs:
                states[cs.name] = cs.load_state(blobs[cs.name], closed=header["closed"])
            else:
                log.warning("epoch %s has no state for sketch %s; it starts empty", header["epoch"], cs.name)
                states[cs.name] = cs.empty_state(closed=header["closed"])
        return states

    def _read_log(self, wal_path: Path) -> tuple[bytes | None, int, int | None]:
        """``(data, first record offset, base lsn)``; base lsn None for a format-1 (unframed) log."""
        if not wal_path.exists():
            return None, 0, 0
        data = wal_path.read_bytes()
        if not data:
            return data, 0, None
        if not data.startswith(WAL_MAGIC[:4]):
            return data, 0, None
        if len(data) < _WAL_HEAD.size:
            log.warning("%s: cut a torn log header (%d bytes dropped: a write cut short by a crash)", wal_path, len(data))
            self._rewrite_log = True
            return data, len(data), 0
        magic, base, crc = _WAL_HEAD.unpack_from(data)
        if magic != WAL_MAGIC or crc32c.crc32c(data[:16]) != crc:
            self._damage(f"{wal_path}: damaged log header at offset 0 ({len(data)} bytes in the log dropped)")
            self._rewrite_log = True
            return data, len(data), 0
        return data, _WAL_HEAD.size, base

    def _load(self) -> None:
        open_path, wal_path = self.data_dir / "open.tsk", self.data_dir / "wal.log"
        data, start, base_lsn = self._read_log(wal_path)
        checkpoint = None
        if open_path.exists():
            try:
                checkpoint = read_snapshot(open_path)
            except SnapshotError as exc:
                self._damage(f"{exc} (the open epoch's checkpoint: its packets up to the log's start are lost)")
        elif base_lsn:
            self._damage(f"{open_path} is missing, but {wal_path} starts after checkpoint LSN {base_lsn}: "
                         f"the checkpoint was deleted (the open epoch's packets before it are lost)")
        if checkpoint is not None and "manifest" in checkpoint[0]:
            self._load_manifest(checkpoint[0])
        else:
            self._load_closed_v1(checkpoint, wal_pending=bool(data) and len(data) > start)
        while len(self.closed) > self.keep_epochs:
            self.closed.popitem(last=False)
        if checkpoint is not None:
            header, blobs = checkpoint
            self.open = Epoch(header["epoch"], self._load_states(header, blobs), header["packets"], header["batches"])
            self.generation += 1
            self.senders = dict(header["senders"])
            now = time.time()
            seen = header.get("senders_seen", {})
            self.sender_seen = {s: float(seen.get(s, now)) for s in self.senders}
            self.counters = Counters(**header["counters"])
            self.lsn = int(header.get("lsn", 0))
            if header.get("wal") and self.wal_enabled and data is None:
                self._damage(f"{wal_path} is missing (the checkpoint was written with the log on): the batches "
                             f"acknowledged since the checkpoint are lost")
            if base_lsn and self.lsn < base_lsn:
                self._damage(f"{wal_path} starts after LSN {base_lsn} but {open_path} covers only up to LSN "
                             f"{self.lsn}: batches {self.lsn + 1}..{base_lsn} are lost")
                self.lsn = base_lsn
        elif base_lsn:
            self.lsn = base_lsn
        if data and len(data) > start:
            if base_lsn is None:
                self._replay_v1(data, wal_path)
            else:
                self._replay(data, start, wal_path)
        log.info("loaded %d closed epochs%s from %s", len(self.closed),
                 f" and open epoch {self.open.id}" if self.open else "", self.data_dir)

    def _load_manifest(self, header: dict) -> None:
        """The closed epochs a format-2 checkpoint lists: each must exist and verify."""
        listed = {int(eid): packets for eid, packets in header["manifest"].items()}
        for eid in sorted(listed):
            path = self.data_dir / _epoch_file(eid)
            try:
                h, blobs = read_snapshot(path)
                if h["epoch"] != eid:
                    raise SnapshotError(f"{path} holds epoch {h['epoch']}, not {eid}")
            except SnapshotError as exc:
                self._damage(f"{exc} (closed epoch {eid}, {listed[eid]} packets, listed in the checkpoint's manifest)")
                continue
            self.closed[eid] = Epoch(eid, self._load_states(h, blobs), h["packets"], h["batches"], closed=True)
        for path in sorted(self.data_dir.glob("epoch-*.tsk")):
            try:
                eid = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if eid not in listed:  # from a checkpoint that did not complete (or evicted): the log rebuilds it
                log.info("%s is not in the checkpoint's manifest; ignored", path.name)

    def _load_closed_v1(self, checkpoint, wal_pending: bool) -> None:
        """Closed epochs of a directory written before manifests (format 1)."""
        for path in sorted(self.data_dir.glob("epoch-*.tsk")):
            try:
                header, blobs = read_snapshot(path)
            except SnapshotError as exc:
                self._damage(str(exc))
                continue
            if checkpoint is not None and header["epoch"] >= checkpoint[0]["epoch"]:
                continue  # an unfinished rotation: the log replay rebuilds it
            if checkpoint is None and wal_pending:
                continue
            self.closed[header["epoch"]] = Epoch(header["epoch"], self._load_states(header, blobs),
                                                 header["packets"], header["batches"], closed=True)
            self.senders = dict(header["senders"])
            self.counters = Counters(**header["counters"])

    def _replay(self, data: bytes, offset: int, wal_path: Path) -> None:
        """Apply the log's records after the checkpoint's LSN (see the module docstring for damage)."""
        from telesketch.v1 import batch_pb2

        replayed = 0
        self._replaying = True
        try:
            while offset < len(data):
                rec = _record_at(data, offset, self.max_record_bytes)
                if rec is None:
                    self._damaged_record(data, offset, wal_path)
                    break
                lsn, payload = rec
                end = offset + _REC.size + len(payload)
                if lsn <= self.lsn:  # already in the checkpoint
                    offset = end
                    continue
                if lsn != self.lsn + 1:
                    self._damage(f"{wal_path}: record at offset {offset} has LSN {lsn}, expected {self.lsn + 1}: "
                                 f"batches {self.lsn + 1}..{lsn - 1} are missing")
                try:
                    message = batch_pb2.PacketBatch.FromString(payload)
                    batch = message_to_batch(message)
                except Exception as exc:  # noqa: BLE001 - any decode failure is damage, named by offset
                    self._damage(f"{wal_path}: record at offset {offset} (LSN {lsn}) does not decode "
                                 f"({type(exc).__name__}: {exc}); dropped")
                    self.lsn = lsn
                    offset = end
                    self._rewrite_log = True
                    continue
                self.apply(batch, message.sender_id, message.sequence)
                self.lsn = lsn
                offset = end
                replayed += 1
        finally:
            self._replaying = False
        log.info("replayed %d logged batches", replayed)
        self._replayed = replayed

    def _damaged_record(self, data: bytes, offset: int, wal_path: Path) -> None:
        """A record at ``offset`` that fails its length or checksum: a torn tail (nothing intact
        after it) is cut with a warning; otherwise damage (refuse, or recover and report)."""
        from telesketch.v1 import batch_pb2

        self._rewrite_log = True
        later = _intact_after(data, offset + 1, self.max_record_bytes, self.lsn)
        if not later:
            log.warning("%s: cut a torn record at offset %d (%d bytes dropped: a write cut short by a crash, "
                        "never acknowledged)", wal_path, offset, len(data) - offset)
            return
        packets = 0
        for _, _, payload in later:
            try:
                packets += batch_pb2.PacketBatch.FromString(payload).count
            except Exception:  # noqa: BLE001
                pass
        self._damage(f"{wal_path}: damaged record at offset {offset} (LSN {self.lsn + 1}), with {len(later)} intact "
                     f"records after it (LSN {later[0][1]}..{later[-1][1]}, {packets} packets); "
                     f"{len(data) - offset} bytes from offset {offset} dropped")
        aside = wal_path.with_name(f"wal.log.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        shutil.copyfile(wal_path, aside)
        log.error("recovery: the damaged log is kept as %s", aside)

    def _replay_v1(self, data: bytes, wal_path: Path) -> None:
        """A format-1 log (length-prefixed messages, no checksums or LSNs): dedup by sequence."""
        from telesketch.v1 import batch_pb2

        offset, replayed = 0, 0
        self._replaying = True
        self._rewrite_log = True
        try:
            while offset + 4 <= len(data):
                (size,) = _LEN.unpack_from(data, offset)
                if offset + 4 + size > len(data):
                    log.warning("%s: cut a torn record at offset %d (%d bytes dropped)", wal_path, offset,
                                len(data) - offset)
                    break
                message = batch_pb2.PacketBatch.FromString(data[offset + 4 : offset + 4 + size])
                self.apply(message_to_batch(message), message.sender_id, message.sequence)
                self.lsn += 1
                offset += 4 + size
                replayed += 1
        finally:
            self._replaying = False
        log.info("replayed %d batches of a format-1 log", replayed)
        self._replayed = replayed

    def close(self) -> None:
        """Checkpoint and close the log (graceful shutdown)."""
        with self.lock:
            try:
                self.checkpoint()
            except (OSError, SnapshotError) as exc:  # the log keeps everything for the next start
                log.error("no checkpoint at shutdown (%s); the next start replays the write-ahead log", exc)
            finally:  # no checkpoint (e.g. a lost shard): the log keeps everything for the next start
                self._release()


    # ------------------------------------------------------------------ windows
    def epochs(self) -> list[Epoch]:
        """Retained epochs, oldest first, the open one last."""
        with self.lock:
            return list(self.closed.values()) + ([self.open] if self.open is not None else [])

    def window(self, epoch: int | None = None, last: int | None = None, closed_only: bool = False,
               offset: int = 0) -> list[Epoch]:
        """The epochs of a window; ``offset`` windows back (heavy changers). Raises ``LookupError``
        (unknown epoch / not enough epochs) or ``ValueError`` (bad arguments)."""
        epochs = [e for e in self.epochs() if e.closed or not closed_only]
        if not epochs:
            raise LookupError("no epochs yet: nothing has been ingested")
        ids = [e.id for e in epochs]
        if epoch is not None:
            target = epoch - offset
            for e in epochs:
                if e.id == target:
                    return [e]
            raise LookupError(f"epoch {target} is not retained (retained: {ids})")
        n = 1 if last is None else last
        if n < 1:
            raise ValueError(f"window.last must be at least 1, got {n}")
        end = len(epochs) - offset * n
        if end - n < 0:
            need = n * (offset + 1)
            raise LookupError(f"a window of the last {n} epochs{' and the one before it' if offset else ''} "
                              f"needs {need} retained epochs; {len(epochs)} are retained ({ids})")
        return epochs[end - n : end]
