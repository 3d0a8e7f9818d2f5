"""``telesketch replay``: stream captures to the service over gRPC, paced or as fast as possible.

Each batch ``read_capture`` yields is one ``Ingest.PushOne`` call carrying the replay's sender id
and the next sequence number; the next batch goes only after the previous one is acknowledged
(the server applies a sender's batches in sequence order and drops any at or below the last one
it applied, so batches must not overtake each other). Reading and decoding the next batch overlaps
the wait for the acknowledgement (a reader thread keeps two batches ready).

* **Pacing.** ``speed=None`` sends as fast as acknowledgements come back. ``speed=X`` replays at X
  times the recorded pace: inside each file a packet is due ``(ts - first ts of the file) / X``
  seconds after the file started; batches are cut into groups of at most ``tick_s`` of wall time
  and a group is sent when its last packet is due. Files play back to back.
* **Timestamps.** By default (like tcpreplay) a replay happens *now*: every file is re-timed so
  its first packet is stamped at the replay's start (the later of the wall clock and the start of
  the service's open epoch, so a replay never lands before traffic already there), the next file
  right after the previous one's last packet, inter-packet gaps kept. Sent as fast as possible, a
  capture longer than the time since its anchor would run ahead of the clock (the service refuses
  stamps past its ``max_future_skew_seconds``): stamps are held within :data:`RETIME_LEAD_NS` (60 s)
  of the wall clock by shrinking the gaps of the batches that would pass it, order kept, and the
  summary says how much recorded time was squeezed out (``speed=1`` keeps every gap). ``keep_timestamps=True``
  sends the recorded stamps (a capture older than what the service already holds is then late).
* **Loops.** ``loop=N`` plays the files N times; with ``keep_timestamps`` pass ``p`` shifts every
  timestamp by ``p`` times the span of the first pass (plus 1 µs) so the service sees continuous
  traffic, not late packets (re-timed passes simply follow each other).
* **Late packets.** Packets the service refuses as late (older than its open epoch) are counted;
  any makes the summary carry a warning with the count and the reason, and more than ``max_late``
  (a fraction of the acknowledged packets, default 1%) sets :attr:`ReplaySummary.too_late` (the
  CLI then exits with status 3).
* **Failures.** ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` / ``ABORTED`` / ``CANCELLED`` (server not
  there, or gone mid-call) are retried with the same sequence number after ``backoff_s``,
  doubling up to ``max_backoff_s``, at most ``retries`` times; the server deduplicates a batch it
  had applied already (the ack says ``duplicate``). Then :class:`ReplayError`.
  ``INVALID_ARGUMENT`` / ``RESOURCE_EXHAUSTED`` / ``FAILED_PRECONDITION`` / ``INTERNAL`` reject that
  batch (counted, listed, the replay goes on); ``UNAUTHENTICATED`` and the rest stop the replay.
* **Stopping.** Setting ``stop`` (the CLI sets it on the first Ctrl-C) ends the replay before the
  next batch: the in-flight batch is acknowledged first.
* **Corrupt input.** Every good batch before the damage is sent and acknowledged, then the
  :class:`~telesketch.traces.CaptureError` (which names the byte offset) ends the replay.

The :class:`ReplaySummary` says exactly which sequence numbers were acknowledged and which batch,
if any, was sent but not acknowledged.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesketch.packets import PacketBatch

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED"})
REJECTED = frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "INTERNAL"})


class ReplayError(RuntimeError):
    """The replay stopped: server unreachable after the retries, refused credentials, bad input."""


#: Default ``max_late``: the fraction of acknowledged packets that may be refused as late before
#: the replay counts as failed (``ReplaySummary.too_late``; ``telesketch replay`` exit status 3).
DEFAULT_MAX_LATE = 0.01


def split_target(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` / ``[IPv6]:PORT`` target (None for ``unix:`` paths);
    ``ValueError`` naming the rule when the port is missing or outside 1..65535."""
    if target.startswith("unix:"):
        return None
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or (":" in host and not target.startswith("[")):
        raise ValueError(f"target must be HOST:PORT (e.g. 127.0.0.1:50051), got {target!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"target port must be in 1..65535, got {target!r}")
    return host, int(port)


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay. ``speed``: multiple of the recorded pace, ``None`` = as fast as possible."""

    target: str
    speed: float | None = None
    loop: int = 1
    batch_size: int = 65536
    sender_id: str = ""             #: "" = a fresh id (replay-<host>-<pid>-<time>), sequences from 1
    token: str = ""
    tls: bool = False
    root_certificates: bytes | None = None
    retries: int = 6                #: retries of one batch after its first attempt
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    timeout_s: float = 60.0         #: per call
    tick_s: float = 0.05            #: paced mode: wall-clock length of one batch at most
    keep_timestamps: bool = False   #: send the recorded stamps (default: re-timed to now)
    max_late: float = DEFAULT_MAX_LATE  #: fraction of acked packets that may be late (else too_late)

    def __post_init__(self):
        split_target(self.target)
        if not 0.0 <= self.max_late <= 1.0:
            raise ValueError(f"max_late must be a fraction in [0, 1], got {self.max_late}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if self.loop < 1:
            raise ValueError(f"loop must be at least 1, got {self.loop}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff must be non-negative")


@dataclass
class SentBatch:
    """One batch as sent: where its packets come from, and what became of it."""

    sequence: int
    file: str
    loop: int
    first_packet: int               #: index of its first packet among the file's IPv4 packets
    packets: int
    ip_bytes: int
    status: str = "in flight"       #: acknowledged | duplicate | rejected | in flight
    late: int = 0
    reason: str = ""

    def where(self) -> str:
        return (f"{Path(self.file).name}{f' pass {self.loop + 1}' if self.loop else ''} packets "
                f"{self.first_packet:,}-{self.first_packet + self.packets - 1:,}")


@dataclass
class ReplaySummary:
    """Counters of one replay and the fate of every batch (see :meth:`render`)."""

    target: str
    sender_id: str
    first_sequence: int = 1
    packets_sent: int = 0
    bytes_sent: int = 0             #: IP bytes of the packets sent
    packets_acked: int = 0          #: in acknowledged batches (applied or duplicates)
    packets_applied: int = 0
    packets_late: int = 0           #: acknowledged but older than the open epoch: not applied
    packets_rejected: int = 0
    batches: list[SentBatch] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    error: str | None = None
    #: ``"input"`` (unreadable or corrupt capture) or ``"server"`` (unreachable, lost, refused)
    error_kind: str | None = None
    max_late: float = DEFAULT_MAX_LATE
    keep_timestamps: bool = False
    retimed_to_ns: int | None = None  #: where the first packet was stamped (None: recorded stamps)
    #: re-timed at full speed: nanoseconds of recorded time squeezed out, per batch it happened to,
    #: so that no stamp ran more than ``RETIME_LEAD_NS`` ahead of the clock
    held_back: list[int] = field(default_factory=list)

    @property
    def too_late(self) -> bool:
        """More packets refused as late than ``max_late`` of the acknowledged ones."""
        return self.packets_late > self.max_late * self.packets_acked

    @property
    def warnings(self) -> list[str]:
        """One line per thing an operator should know although the replay itself succeeded."""
        notes = []
        if self.packets_rejected:
            notes.append(f"{self.packets_rejected:,} packets in {len(self.rejected):,} batch(es) were refused by the "
                         "service and not counted (see 'rejected batch' above)")
        if self.held_back:
            notes.append(f"re-timed at full speed: {sum(self.held_back) / 1e9:,.1f} s of recorded time squeezed out "
                         f"of {len(self.held_back):,} batch(es) so that no packet is stamped more than "
                         f"{RETIME_LEAD_NS // 10**9} s ahead of the clock (order kept; --speed 1 or "
                         "--keep-timestamps keeps every gap)")
        if not self.packets_late:
            return notes
        share = self.packets_late / max(1, self.packets_acked)
        why = ("their timestamps are older than the service's open epoch (it only moves forward)")
        fix = ("; replay without --keep-timestamps to re-time the capture to now" if self.keep_timestamps
               else "; the capture is out of order across epochs")
        return notes + [f"{self.packets_late:,} of {self.packets_acked:,} acknowledged packets ({share:.1%}) were "
                        f"refused as late and not counted: {why}{fix} (limit --max-late {self.max_late:g})"]

    @property
    def acked_sequences(self) -> list[int]:
        return [b.sequence for b in self.batches if b.status in ("acknowledged", "duplicate")]

    @property
    def unacknowledged(self) -> list[SentBatch]:
        return [b for b in self.batches if b.status == "in flight"]

    @property
    def rejected(self) -> list[SentBatch]:
        return [b for b in self.batches if b.status == "rejected"]

    @property
    def packets_per_second(self) -> float:
        return self.packets_acked / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        acked_bytes = sum(b.ip_bytes for b in self.batches if b.status in ("acknowledged", "duplicate"))
        return acked_bytes / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"target": self.target, "sender_id": self.sender_id, "packets_sent": self.packets_sent,
                "packets_acknowledged": self.packets_acked, "packets_applied": self.packets_applied,
                "packets_late": self.packets_late, "packets_rejected": self.packets_rejected,
                "acknowledged_sequences": ranges(self.acked_sequences),
                "rejected": [{"sequence": b.sequence, "where": b.where(), "reason": b.reason} for b in self.rejected],
                "unacknowledged": [{"sequence": b.sequence, "where": b.where()} for b in self.unacknowledged],
                "retries": self.retries, "seconds": self.seconds, "packets_per_second": self.packets_per_second,
                "bytes_per_second": self.bytes_per_second, "interrupted": self.interrupted, "error": self.error,
                "error_kind": self.error_kind, "keep_timestamps": self.keep_timestamps,
                "retimed_to_ns": self.retimed_to_ns, "warnings": self.warnings, "too_late": self.too_late}

    def render(self) -> str:
        """The end-of-replay summary (multi-line text)."""
        acked = self.acked_sequences
        lines = [
            f"replay to {self.target} as sender {self.sender_id!r}"
            + (" (interrupted)" if self.interrupted else "") + (" (FAILED)" if self.error else ""),
            f"  packets sent          {self.packets_sent:,}",
            f"  acknowledged          {self.packets_acked:,} in {len(acked):,} batches"
            f" (sequences {_ranges_text(acked) or 'none'})",
            f"  applied / late        {self.packets_applied:,} / {self.packets_late:,}",
            f"  rejected              {self.packets_rejected:,} in {len(self.rejected)} batches",
            f"  achieved rate         {self.packets_per_second:,.0f} packets/s, "
            f"{self.bytes_per_second / 1e6:,.1f} MB/s over {self.seconds:.2f} s"
            + (f" ({self.retries} retries)" if self.retries else ""),
        ]
        for b in self.rejected:
            lines.append(f"  rejected batch        sequence {b.sequence} ({b.where()}): {b.reason}")
        for b in self.unacknowledged:
            lines.append(f"  NOT acknowledged      sequence {b.sequence} ({b.where()}); nothing after it was sent")
        if acked:
            last = next(b for b in reversed(self.batches) if b.sequence == acked[-1])
            lines.append(f"  last acknowledged     sequence {last.sequence} ({last.where()})")
        if self.retimed_to_ns is not None:
            from telesketch.service.queries import time_text

            lines.append(f"  timestamps            re-timed: first packet at {time_text(self.retimed_to_ns)}"
                         " (--keep-timestamps sends the recorded ones)")
        for w in self.warnings:
            lines.append(f"  WARNING {w}")
        if self.error:
            lines.append(f"  error                 {self.error}")
        return "\n".join(lines)


def ranges(values: list[int]) -> list[list[int]]:
    """``[1, 2, 3, 5]`` -> ``[[1, 3], [5, 5]]``."""
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def _ranges_text(values: list[int]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges(values))


def default_sender_id() -> str:
    return f"replay-{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000) % 10**9}"


# ====================================================================== progress
class Progress:
    """Replay progress (:class:`telesketch.progress.ProgressBar`): the share of the replay that the
    server has *acknowledged* (by file position of the last acknowledged packet), packets
    acknowledged and rates; a tqdm bar on a terminal, a plain line every 10 s otherwise.
    ``enabled=False``: nothing."""

    def __init__(self, stream=None, enabled: bool | None = None, interval: float | None = None):
        from telesketch.progress import ProgressBar

        self._bar = ProgressBar("replay", total=100.0, unit="%", enabled=enabled, stream=stream, interval_s=interval,
                                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
        self.enabled = self._bar.mode != "off"
        self._percent = 0.0

    def update(self, fraction: float | None, summary: ReplaySummary, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        if fraction is not None:
            self._percent = 100.0 * min(max(fraction, 0.0), 1.0)
        text = (f"{summary.packets_acked:,} pkts acked  {summary.packets_per_second:,.0f} pkt/s  "
                f"{summary.bytes_per_second / 1e6:,.1f} MB/s  late {summary.packets_late:,}  "
                f"rejected {summary.packets_rejected:,}")
        if note:
            self._bar.note(f"replay: {note}")
        self._bar.set(self._percent, text)

    def close(self) -> None:
        self._bar.close()


# ====================================================================== reading
@dataclass
class _Item:
    """A batch ready to send (``batch`` None with ``error`` set: the reader stopped there)."""

    batch: PacketBatch | None
    file: str = ""
    loop: int = 0
    first_packet: int = 0
    due: float | None = None        #: seconds after the replay started (paced mode)
    fraction: float | None = None   #: of the whole replay, by file bytes
    error: BaseException | None = None


def _groups(ts: np.ndarray, ts0: int, speed: float, tick_s: float) -> list[tuple[int, int]]:
    """``[(start, end)]`` cuts of a batch so that each spans at most one tick of wall time."""
    tick = np.uint64(max(1, int(tick_s * speed * 1e9)))
    rel = ts.astype(np.int64) - np.int64(ts0)
    ticks = np.maximum(rel, 0).astype(np.uint64) // tick
    cuts = np.flatnonzero(np.diff(ticks)) + 1
    edges = [0, *cuts.tolist(), len(ts)]
    return list(zip(edges[:-1], edges[1:]))


def _shifted(batch: PacketBatch, shift: int) -> PacketBatch:
    """The batch with ``shift`` ns added to every timestamp (negative shifts clamp at 0)."""
    if not shift:
        return batch
    cols = batch.columns()
    if shift > 0:
        cols["ts_ns"] = batch.ts_ns + np.uint64(shift)
    else:
        ts = batch.ts_ns
        cols["ts_ns"] = np.where(ts > np.uint64(-shift), ts - np.uint64(min(-shift, 2**64 - 1)), np.uint64(0))
    return PacketBatch(**cols)


#: A re-timed replay sent as fast as possible never stamps a packet more than this far ahead of
#: the wall clock (the service refuses batches past its ``max_future_skew_seconds``, 300 s by default).
RETIME_LEAD_NS = 60 * 10**9


def _not_ahead(batch: PacketBatch, floor_ns: int, limit_ns: int) -> PacketBatch:
    """``batch`` (re-timed, time-ordered stamps) with no stamp past ``limit_ns``.

    A batch that ends past the limit is moved back so that it ends there, but not before
    ``floor_ns`` (the newest stamp already sent: nothing may become late); if it is longer than
    ``[floor_ns, limit_ns]`` its gaps are shrunk in proportion to fit. Order is kept.
    """
    ts = batch.ts_ns
    hi = int(ts.max())
    if hi <= limit_ns:
        return batch
    lo = int(ts.min())
    limit_ns = max(limit_ns, floor_ns)
    if hi - lo <= limit_ns - floor_ns:
        return _shifted(batch, limit_ns - hi)
    scale = (limit_ns - floor_ns) / (hi - lo)
    cols = batch.columns()
    cols["ts_ns"] = (np.uint64(floor_ns) + ((ts - np.uint64(lo)).astype(np.float64) * scale).astype(np.uint64))
    return PacketBatch(**cols)


def _reader(files, opts: ReplayOptions, out: queue.Queue, stop: threading.Event,
            anchor_ns: int | None = None, held_back: list | None = None) -> None:
    """Producer thread: batches (cut and timed when paced) into ``out``; an error item at the end.

    ``anchor_ns``: re-time (the first file's first packet there, each next file right after the
    previous one's last packet); None keeps the recorded stamps (loop passes shifted). Re-timed and
    sent as fast as possible (``speed=None``), a capture longer than the time since its anchor would
    run ahead of the clock: its stamps are held within :data:`RETIME_LEAD_NS` of the wall clock
    (see :func:`_not_ahead`); ``held_back`` gets the nanoseconds of recorded time so squeezed.
    """
    from telesketch.traces import ReadStats, read_capture

    sizes = [max(1, Path(f).stat().st_size) for f in files]
    total = len(files) * opts.loop
    lo_ts, hi_ts, shift, file_start = None, None, 0, 0.0
    cursor = anchor_ns  # re-timing: where the next file's first packet goes
    newest = None  # re-timing: the newest stamp handed out so far
    try:
        for p in range(opts.loop):
            if p == 1:
                shift = (hi_ts - lo_ts + 1000) if lo_ts is not None else 0
            for i, path in enumerate(files):
                stats, first, ts0, file_end, done_after = ReadStats(), 0, None, file_start, 0.0
                file_shift = None
                for batch in read_capture(path, batch_size=opts.batch_size, stats=stats):
                    if stop.is_set():
                        return
                    if not len(batch):
                        continue
                    if p == 0:
                        lo = int(batch.ts_ns.min())
                        hi = int(batch.ts_ns.max())
                        lo_ts = lo if lo_ts is None else min(lo_ts, lo)
                        hi_ts = hi if hi_ts is None else max(hi_ts, hi)
                    before = done_after if first else 0.0  # file fraction before this batch
                    done_after = 0.0 if stats.compressed else min(1.0, stats.bytes_read / sizes[i])
                    done = p * len(files) + i + done_after
                    if cursor is None:
                        batch = _shifted(batch, shift * p)
                    else:
                        if file_shift is None:
                            file_shift = cursor - int(batch.ts_ns.min())
                        batch = _shifted(batch, file_shift)
                        if opts.speed is None:
                            wanted_hi = int(batch.ts_ns.max())
                            floor = anchor_ns if newest is None else newest
                            batch = _not_ahead(batch, floor, time.time_ns() + RETIME_LEAD_NS)
                            pulled = wanted_hi - int(batch.ts_ns.max())
                            if pulled:  # the rest of the file follows on from where this batch now ends
                                file_shift -= pulled
                                if held_back is not None:
                                    held_back.append(pulled)
                            newest = int(batch.ts_ns.max()) if newest is None else max(newest, int(batch.ts_ns.max()))
                        cursor = max(cursor, int(batch.ts_ns.max()) + 1000)
                    if opts.speed is None:
                        out.put(_Item(batch, str(path), p, first, None, done / total))
                        first += len(batch)
                        continue
                    if ts0 is None:
                        ts0 = int(batch.ts_ns[0])
                    for a, b in _groups(batch.ts_ns, ts0, opts.speed, opts.tick_s):
                        part = batch[a:b]
                        due = file_start + max(0, int(part.ts_ns[-1]) - ts0) / 1e9 / opts.speed
                        file_end = max(file_end, due)
                        at = p * len(files) + i + before + (done_after - before) * b / len(batch)
                        out.put(_Item(part, str(path), p, first, due, at / total))
                        first += len(part)
                file_start = file_end
    except BaseException as exc:  # noqa: BLE001 - handed to the sender, which raises it in order
        out.put(_Item(None, error=exc))
        return
    out.put(_Item(None))


# ====================================================================== sending
class Replayer:
    """Sends the batches of ``files`` one acknowledged call at a time (see the module docstring)."""

    def __init__(self, files, opts: ReplayOptions, stop: threading.Event | None = None,
                 progress: Progress | None = None, log=None):
        from telesketch.client import Client

        self.files = [str(f) for f in files]
        self.opts = opts
        self.stop = stop or threading.Event()
        self.progress = progress or Progress(enabled=False)
        self.log = log or (lambda text: None)
        self.client = Client(opts.target, sender_id=opts.sender_id or default_sender_id(), token=opts.token,
                             tls=opts.tls, root_certificates=opts.root_certificates, timeout=opts.timeout_s)
        self.summary = ReplaySummary(opts.target, self.client.sender_id, max_late=opts.max_late,
                                     keep_timestamps=opts.keep_timestamps)

    # ------------------------------------------------------------------ retry
    def _call(self, what: str, fn):
        """``fn()`` with the retry policy; returns its value, or ``("rejected", reason)``."""
        import grpc

        delay, attempt, started = self.opts.backoff_s, 0, time.perf_counter()
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() is not None else "UNKNOWN"
                detail = f"{code}: {exc.details()}"
                if code in REJECTED:
                    return ("rejected", detail)
                if code not in RETRYABLE:
                    raise ReplayError(f"{what}: the server refused it ({detail})") from None
                if attempt >= self.opts.retries or self.stop.is_set():
                    raise ReplayError(
                        f"{what}: no answer from {self.opts.target} after {attempt + 1} attempts over "
                        f"{time.perf_counter() - started:.1f} s (last error {detail})") from None
                attempt += 1
                self.summary.retries += 1
                self.log(f"{what}: {code}; retry {attempt}/{self.opts.retries} in {delay:.2f} s")
                self.progress.update(None, self.summary, f"retrying in {delay:.1f} s ({code})", force=True)
                if self.stop.wait(delay):
                    raise ReplayError(f"{what}: interrupted while waiting to retry ({detail})") from None
                delay = min(delay * 2 if delay else self.opts.backoff_s, self.opts.max_backoff_s)

    def _resolve(self) -> None:
        """Fail fast (no retries) when the target's host name does not resolve."""
        where = split_target(self.opts.target)
        if where is None:
            return
        try:
            socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ReplayError(f"cannot resolve the target host {where[0]!r} ({self.opts.target}): "
                              f"{getattr(exc, 'strerror', None) or exc}") from None

    def _anchor_ns(self) -> int:
        """Where a re-timed replay starts: now, or the start of the service's open epoch when that
        is later (an earlier fast replay stamped packets ahead of the clock), so none is late."""
        now = time.time_ns()
        try:
            stats = self.client.stats()
        except Exception as exc:  # noqa: BLE001 - no stats (old server, no answer yet): the clock
            self.log(f"no Stats from the server ({type(exc).__name__}); re-timing to the clock")
            return now
        open_starts = [int(e["start_ns"]) for e in stats.get("epochs", []) if not e.get("closed")]
        return max([now, *open_starts])

    def _first_sequence(self) -> int:
        if not self.opts.sender_id:
            return 1
        last = self._call("asking the server for the sender's last sequence", self.client.last_sequence)
        if isinstance(last, tuple):
            raise ReplayError(f"cannot resume sender {self.opts.sender_id!r}: {last[1]}")
        return int(last) + 1

    def _send(self, item: _Item, sequence: int) -> None:
        s = self.summary
        n = len(item.batch)
        ip_bytes = int(item.batch.length.sum(dtype=np.uint64))
        sent = SentBatch(sequence, item.file, item.loop, item.first_packet, n, ip_bytes)
        s.batches.append(sent)
        s.packets_sent += n
        s.bytes_sent += ip_bytes
        ack = self._call(f"batch {sequence} ({sent.where()})", lambda: self.client.push_one(item.batch, sequence))
        if isinstance(ack, tuple):
            sent.status, sent.reason = "rejected", ack[1]
            s.packets_rejected += n
            return
        sent.status = "duplicate" if ack.duplicate else "acknowledged"
        sent.late = ack.late_packets
        s.packets_acked += n
        s.packets_applied += ack.applied_packets
        s.packets_late += ack.late_packets

    # ------------------------------------------------------------------ run
    def run(self) -> ReplaySummary:
        """Replay everything (or until ``stop``); the summary, with ``error`` set on failure."""
        s = self.summary
        items: queue.Queue = queue.Queue(maxsize=2)
        start = time.perf_counter()
        try:
            self._resolve()
            sequence = self._first_sequence()
            s.first_sequence = sequence
            anchor = None if self.opts.keep_timestamps else self._anchor_ns()
            s.retimed_to_ns = anchor
            reader = threading.Thread(target=_reader, args=(self.files, self.opts, items, self.stop, anchor,
                                                            s.held_back),
                                      name="telesketch-replay-reader", daemon=True)
            reader.start()
            start = time.perf_counter()
            while True:
                item = self._next(items)
                if item is None:
                    break
                if item.batch is None:
                    if item.error is not None:
                        raise item.error
                    break
                if item.due is not None:
                    wait = start + item.due - time.perf_counter()
                    if wait > 0 and self.stop.wait(wait):
                        break
                if self.stop.is_set():
                    break
                self._send(item, sequence)
                sequence += 1
                s.seconds = time.perf_counter() - start
                self.progress.update(item.fraction, s)
        except ReplayError as exc:
            s.error, s.error_kind = str(exc), "server"
        except (ValueError, OSError) as exc:  # CaptureError is a ValueError
            s.error, s.error_kind = str(exc), "input"
        finally:
            s.seconds = time.perf_counter() - start
            s.interrupted = self.stop.is_set() and s.error is None or s.interrupted
            self.stop.set()  # ends the reader
            self.progress.update(None, s, force=True)
            self.progress.close()
            self.client.close()
        return s

    def _next(self, items: queue.Queue) -> _Item | None:
        while True:
            try:
                return items.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    self.summary.interrupted = True
                    return None


def replay(files, opts: ReplayOptions, stop: threading.Event | None = None, progress: Progress | None = None,
           log=None) -> ReplaySummary:
    """Replay ``files`` to ``opts.target``; never raises for server or input trouble (see ``error``)."""
    return Replayer(files, opts, stop, progress, log).run()
