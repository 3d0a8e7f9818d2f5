"""Epochs: tumbling windows by packet timestamp, retention, snapshots, checkpoint and write-ahead log.

Epoch ``e`` holds the packets with ``e * epoch_ns <= ts_ns < (e + 1) * epoch_ns``. One epoch is
open; packets of a later epoch close it (it is snapshotted) and open theirs; packets of an earlier
epoch than the open one are *late*: counted, reported in the ack, not applied. A batch that spans
epochs is applied epoch by epoch in ascending order (each part keeps arrival order).

Durability (data directory):

* ``epoch-<id>.tsk``: a closed epoch, written atomically (temporary file, fsync, rename, fsync of
  the directory) when it closes; the last ``keep_epochs`` are kept.
* ``open.tsk``: checkpoint of the open epoch (sketch states, counters, each sender's last applied
  sequence), written after every rotation, on ``Admin.Snapshot`` and on shutdown.
* ``wal.log``: every batch applied since the checkpoint (length-prefixed ``PacketBatch`` messages),
  appended before the batch is acknowledged (``fsync`` too with ``wal_fsync``); truncated at each
  checkpoint. Restart = closed epochs + checkpoint + replay of the log, so a restart (even after
  ``kill -9``) loses nothing that was acknowledged. With ``wal = false`` only closed epochs and
  the last checkpoint survive a crash.

Closed-epoch files whose id is at or above the checkpoint's open epoch come from a rotation whose
checkpoint did not complete; they are ignored on load and rebuilt by the log replay.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telesketch.packets import PacketBatch
from telesketch.service.sketchset import SketchSet

log = logging.getLogger("telesketch.service")

MAGIC = b"TSKE"
FORMAT = 1
_LEN = struct.Struct("<I")


class SnapshotError(ValueError):
    """A snapshot file is not one this server wrote (bad magic, format, truncated)."""


class DataDirInUseError(OSError):
    """Another running server holds the data directory (two writers would corrupt its log)."""


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


@dataclass
class ApplyResult:
    """What applying one batch did (becomes the gRPC ``Ack``)."""

    sender_id: str
    sequence: int
    duplicate: bool
    packets: int
    applied_packets: int
    late_packets: int
    epoch: int


@dataclass
class Counters:
    packets: int = 0
    batches: int = 0
    late_packets: int = 0
    duplicate_batches: int = 0


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(header: dict, blobs: dict[str, bytes]) -> list[bytes]:
    header = dict(header, format=FORMAT, sketches=[[name, len(b)] for name, b in blobs.items()])
    raw = json.dumps(header, sort_keys=True).encode()
    return [MAGIC, _LEN.pack(len(raw)), raw, *blobs.values()]


def read_snapshot(path: Path) -> tuple[dict, dict[str, bytes]]:
    """``(header, {sketch name: state bytes})`` of a snapshot file; :class:`SnapshotError` if bad."""
    data = path.read_bytes()
    if data[:4] != MAGIC or len(data) < 8:
        raise SnapshotError(f"{path} is not a telesketch epoch snapshot")
    (hlen,) = _LEN.unpack_from(data, 4)
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as exc:
        raise SnapshotError(f"{path}: corrupt header ({exc})") from None
    if header.get("format") != FORMAT:
        raise SnapshotError(f"{path}: snapshot format {header.get('format')!r}, expected {FORMAT}")
    blobs, offset = {}, 8 + hlen
    for name, size in header["sketches"]:
        if offset + size > len(data):
            raise SnapshotError(f"{path}: truncated in sketch {name!r}")
        blobs[name] = data[offset : offset + size]
        offset += size
    return header, blobs


class EpochManager:
    """Owns the epochs and the sender sequence table; every method takes the lock.

    ``apply`` runs on the single sketch worker thread; queries take the same lock and read.
    """

    def __init__(self, sketchset: SketchSet, epoch_ns: int, keep_epochs: int, data_dir: str | Path | None,
                 wal: bool = True, wal_fsync: bool = False):
        self.sketchset = sketchset
        self.epoch_ns = int(epoch_ns)
        self.keep_epochs = int(keep_epochs)
        self.data_dir = Path(data_dir) if data_dir else None
        self.wal_enabled = bool(wal) and self.data_dir is not None
        self.wal_fsync = wal_fsync
        self.lock = threading.RLock()
        self.open: Epoch | None = None
        self.closed: OrderedDict[int, Epoch] = OrderedDict()
        self.senders: dict[str, int] = {}
        self.counters = Counters()
        self._wal = None
        self._replaying = False
        self._replayed = 0
        self._lock = None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_data_dir(self.data_dir)
            try:
                self._load()
                if self.wal_enabled:
                    self._wal = open(self.data_dir / "wal.log", "ab")
                if self._replayed:
                    self.checkpoint()  # folds the replayed batches into open.tsk, empties the log
            except BaseException:
                self._release()
                raise

    def _release(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ ingest
    def apply(self, batch: PacketBatch, sender_id: str = "", sequence: int = 0, raw: bytes | None = None) -> ApplyResult:
        """Apply a validated batch (dedup by sender sequence, split by epoch, log, checkpoint)."""
        with self.lock:
            n = len(batch)
            if sender_id and sequence <= self.senders.get(sender_id, 0):
                self.counters.duplicate_batches += 1
                return ApplyResult(sender_id, sequence, True, n, 0, 0, self._open_id())
            rotated = False
            late = 0
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
                    late = int(np.count_nonzero(eids < np.uint64(self.open.id)))
                    for eid in np.unique(eids[eids >= np.uint64(self.open.id)]).tolist():
                        rotated |= self._rotate_to(eid)
                        self._update(batch[eids == np.uint64(eid)])
            if self.open is not None:
                self.open.batches += 1
            if sender_id:
                self.senders[sender_id] = sequence
            self.counters.batches += 1
            self.counters.packets += n - late
            self.counters.late_packets += late
            if self._wal is not None and not self._replaying:
                self._log(batch, sender_id, sequence, raw)
            if rotated and not self._replaying:
                self.checkpoint()
            return ApplyResult(sender_id, sequence, False, n, n - late, late, self._open_id())

    def _open_id(self) -> int:
        return self.open.id if self.open is not None else 0

    def _update(self, batch: PacketBatch) -> None:
        self.sketchset.update(self.open.states, batch)
        self.open.packets += len(batch)

    def _start(self, epoch: int) -> None:
        self.open = Epoch(epoch, self.sketchset.new_states(epoch))

    def _rotate_to(self, epoch: int) -> bool:
        if epoch <= self.open.id:
            return False
        self._close_open(next_epoch=epoch)
        return True

    def _close_open(self, next_epoch: int) -> None:
        old = self.open
        closed = Epoch(old.id, self.sketchset.close(old.states), old.packets, old.batches, closed=True)
        self.open = Epoch(next_epoch, self.sketchset.new_states(next_epoch, old.states))
        self.closed[closed.id] = closed
        self.closed.move_to_end(closed.id)
        if self.data_dir is not None:
            self._write_epoch(closed)
        while len(self.closed) > self.keep_epochs:
            dropped, _ = self.closed.popitem(last=False)
            if self.data_dir is not None:
                (self.data_dir / f"epoch-{dropped:020d}.tsk").unlink(missing_ok=True)

    def rotate(self) -> tuple[bool, int, int]:
        """Close the open epoch now and open the next: ``(closed?, closed id, open id)``."""
        with self.lock:
            if self.open is None:
                return False, 0, 0
            old = self.open.id
            self._close_open(old + 1)
            self.checkpoint()
            return True, old, self.open.id

    # ------------------------------------------------------------------ durability
    def _header(self, epoch: Epoch) -> dict:
        return {"epoch": epoch.id, "epoch_ns": self.epoch_ns, "closed": epoch.closed, "packets": epoch.packets,
                "batches": epoch.batches, "senders": self.senders, "counters": vars(self.counters),
                "written_at": time.time()}

    def _blobs(self, epoch: Epoch) -> dict[str, bytes]:
        return {name: self.sketchset.get(name).dump_state(state) for name, state in epoch.states.items()}

    def _write_epoch(self, epoch: Epoch) -> Path:
        path = self.data_dir / f"epoch-{epoch.id:020d}.tsk"
        _atomic_write(path, _encode(self._header(epoch), self._blobs(epoch)))
        return path

    def checkpoint(self) -> list[str]:
        """Write ``open.tsk`` and truncate the log; returns the files written."""
        with self.lock:
            if self.data_dir is None or self.open is None:
                return []
            path = self.data_dir / "open.tsk"
            _atomic_write(path, _encode(self._header(self.open), self._blobs(self.open)))
            if self._wal is not None:
                self._wal.truncate(0)
                self._wal.seek(0)
            elif (self.data_dir / "wal.log").exists():
                os.truncate(self.data_dir / "wal.log", 0)
            return [str(path)]

    def _log(self, batch: PacketBatch, sender_id: str, sequence: int, raw: bytes | None) -> None:
        if raw is None:
            raw = batch.to_message(sender_id=sender_id, sequence=sequence).SerializeToString()
        self._wal.write(_LEN.pack(len(raw)) + raw)
        self._wal.flush()
        if self.wal_fsync:
            os.fsync(self._wal.fileno())

    def _load_states(self, header: dict, blobs: dict[str, bytes]) -> dict[str, Any]:
        states = {}
        for cs in self.sketchset.active:
            if cs.name in blobs:
                states[cs.name] = cs.load_state(blobs[cs.name], closed=header["closed"])
            else:
                log.warning("epoch %s has no state for sketch %s; it starts empty", header["epoch"], cs.name)
                states[cs.name] = cs.empty_state(closed=header["closed"])
        return states

    def _load(self) -> None:
        open_path, wal_path = self.data_dir / "open.tsk", self.data_dir / "wal.log"
        checkpoint = read_snapshot(open_path) if open_path.exists() else None
        wal_pending = wal_path.exists() and wal_path.stat().st_size > 0
        files = sorted(self.data_dir.glob("epoch-*.tsk"))
        for path in files:
            header, blobs = read_snapshot(path)
            if checkpoint is not None and header["epoch"] >= checkpoint[0]["epoch"]:
                continue  # an unfinished rotation: the log replay rebuilds it
            if checkpoint is None and wal_pending:
                continue
            if header["epoch_ns"] != self.epoch_ns:
                log.warning("%s was written with epoch length %s ns, not %s", path, header["epoch_ns"], self.epoch_ns)
            self.closed[header["epoch"]] = Epoch(header["epoch"], self._load_states(header, blobs),
                                                 header["packets"], header["batches"], closed=True)
            self.senders = dict(header["senders"])
            self.counters = Counters(**header["counters"])
        while len(self.closed) > self.keep_epochs:
            self.closed.popitem(last=False)
        if checkpoint is not None:
            header, blobs = checkpoint
            self.open = Epoch(header["epoch"], self._load_states(header, blobs), header["packets"], header["batches"])
            self.senders = dict(header["senders"])
            self.counters = Counters(**header["counters"])
            # the live state of continuous kinds continues in the open epoch
        if wal_pending:
            self._replay(wal_path)
        log.info("loaded %d closed epochs%s from %s", len(self.closed),
                 f" and open epoch {self.open.id}" if self.open else "", self.data_dir)

    def _replay(self, wal_path: Path) -> None:
        from telesketch.v1 import batch_pb2

        data = wal_path.read_bytes()
        offset, replayed = 0, 0
        self._replaying = True
        try:
            while offset + 4 <= len(data):
                (size,) = _LEN.unpack_from(data, offset)
                if offset + 4 + size > len(data):
                    break  # torn last record: it was never acknowledged
                message = batch_pb2.PacketBatch.FromString(data[offset + 4 : offset + 4 + size])
                self.apply(PacketBatch.from_message(message), message.sender_id, message.sequence)
                offset += 4 + size
                replayed += 1
        finally:
            self._replaying = False
        log.info("replayed %d logged batches", replayed)
        self._replayed = replayed

    def close(self) -> None:
        """Checkpoint and close the log (graceful shutdown)."""
        with self.lock:
            try:
                self.checkpoint()
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
