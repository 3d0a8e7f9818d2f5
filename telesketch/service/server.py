"""The gRPC service (``grpc.aio``): Ingest, Query, Admin, health checking and reflection.

Packet path: the RPC handler decodes and validates a ``PacketBatch`` on the event loop (column
``np.frombuffer``, no per-packet work), waits for a slot in the bounded queue (backpressure: at
most ``queue_batches`` batches admitted and not applied, so memory is bounded), and hands the batch
to the one sketch worker thread. The worker applies batches in admission order, the sketches of
one batch concurrently on the cores (``sketch_threads``; Numba kernels release the GIL, so the
event loop keeps reading meanwhile) and resolves the RPC's future; the ack
is sent only after the batch is applied (and logged, see :mod:`telesketch.service.epochs`).

``Push`` pipelines: it admits the stream's batches as fast as slots free up and answers once all
are applied. A malformed batch in a stream ends the stream with ``INVALID_ARGUMENT`` naming it, after
the batches before it were applied (their sequence numbers make a retry of the whole stream safe).

Refusals change nothing and are counted in ``telesketch_batches_rejected{reason=...}``: ``undecodable``
(not a ``PacketBatch``; logged once per peer per minute, no traceback), ``invalid``, ``oversized``,
``future_timestamp`` (stamped more than ``max_future_skew_seconds`` ahead of the server clock),
``too_many_epochs``, ``sequence_jump``, ``unauthenticated``, ``admin_denied``, ``busy`` (the
in-flight budget is full, see below). A batch whose log
write fails is not applied and answers UNAVAILABLE with the reason (e.g. disk full): retryable, as
clients such as ``telesketch replay`` treat it (RESOURCE_EXHAUSTED means an oversized batch: not retried,
unless the trailing metadata carries ``telesketch-retry-after-ms``: busy).

In-flight budget: every ingest message reserves its size from one shared budget
(``max_inflight_bytes``, :mod:`telesketch.service.budget`) in the request deserializer, before it
is decoded, and gives it back when the worker is done with the batch. A message that does not fit
is refused at once, undecoded: RESOURCE_EXHAUSTED "busy" with ``telesketch-retry-after-ms`` in the
trailing metadata; :class:`telesketch.client.Client` retries it with backoff. A ``Push`` stream
refused part-way says in its trailing metadata how many of its batches were applied
(``telesketch-applied-batches``) and their summary, so the client resends exactly the rest.

Roles: with ``token`` set every RPC but health needs it (or the admin token); Admin calls need
``admin_token`` when one is set, else they are served to loopback peers only. Tokens are compared
in constant time.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from telesketch.packets import BatchError, PacketBatch
from telesketch.service.config import ServiceConfig
from telesketch.service.auth import bearer_matches
from telesketch.service.budget import (APPLIED_BATCHES_KEY, PARTIAL_SUMMARY_KEY, RETRY_AFTER_KEY, RETRY_AFTER_MS,
                                       InflightBudget)
from telesketch.service.epochs import (ApplyResult, BatchRejected, EpochManager, LogWriteError,
                                       data_dir_settings)
from telesketch.service.metrics import ServiceMetrics
from telesketch.service.overload import OverloadWatch
from telesketch.presenter import format_prefix, gap_rows, key_bytes, key_family, key_text
from telesketch.service.queries import QueryEngine, WindowSpec
from telesketch.service.replies import int_key_entries
from telesketch.errors import (IngestRejected, NotFound, Precondition, QueryError, TelesketchError, TooLarge,
                               Unavailable)
from telesketch.service.sketchset import SketchSet
from telesketch import wire
from telesketch.v1 import batch_pb2, service_pb2, service_pb2_grpc

log = logging.getLogger("telesketch.service")

MAX_SENDER_ID = 256
SERVICE_NAMES = ("telesketch.v1.Ingest", "telesketch.v1.Query", "telesketch.v1.Admin")


# ====================================================================== worker
class SketchWorker:
    """One thread applying batches in order; ``admit`` is the bounded, awaitable entry.

    ``coalesce_packets`` (``ServiceConfig.coalesce_packets``): after taking a batch, the worker also takes
    the batches already waiting behind it (never waiting for more) while their packets add up to at
    most this many, and applies them as one group (:meth:`EpochManager.apply_many`: one round trip
    through the sketches' update threads and, with durability every-batch, one fsync for the group;
    each batch still deduplicated, logged, counted and answered on its own, in admission order).
    Only for a sketch set whose ``batch_invariant`` is true (the states are exactly those of one
    batch at a time); 0 or 1 applies every batch on its own."""

    def __init__(self, manager: EpochManager, capacity: int, metrics: ServiceMetrics,
                 budget: InflightBudget | None = None, coalesce_packets: int = 0):
        self.manager = manager
        self.budget = budget
        self.capacity = capacity
        self.coalesce_packets = int(coalesce_packets)
        self.metrics = metrics
        self.depth = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        #: answers the worker has settled and the event loop has not yet delivered (``_done``'s
        #: arguments, oldest first); ``_flush_scheduled``: a ``_flush`` is already on its way to the
        #: loop, so settling another answer needs no second wake-up (both under ``_answers_lock``)
        self._answers: deque = deque()
        self._answers_lock = threading.Lock()
        self._flush_scheduled = False
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="telesketch-sketch-worker", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.capacity)
        self._thread.start()

    async def admit(self, batch: PacketBatch, sender_id: str, sequence: int, raw: bytes | None,
                    reserved: int = 0) -> asyncio.Future:
        """Wait for a queue slot, enqueue; the returned future resolves to the ApplyResult.

        ``reserved``: bytes of the in-flight budget the batch holds; once enqueued, the worker
        gives them back when it is done with the batch (not when the caller stops waiting)."""
        await self._slots.acquire()
        self.depth += 1
        self.metrics.queue_depth.set(self.depth)
        future = self._loop.create_future()
        self._queue.put((batch, sender_id, sequence, raw, future, reserved))
        return future

    def _answer(self, future: asyncio.Future, result, error, reserved: int = 0) -> None:
        """Hand one settled batch to the event loop (from the worker thread), in settling order.

        One ``call_soon_threadsafe`` (a self-pipe write and an event-loop wake-up) per batch was a
        large part of the server's CPU per small batch (issue 21 (a)). While a ``_flush`` is already
        scheduled and not yet run, later answers join its list instead of scheduling another: the
        loop delivers them all in one callback, in the same order, each through ``_done`` as before."""
        with self._answers_lock:
            self._answers.append((future, result, error, reserved))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """On the event loop: deliver every answer settled so far (``_done`` each, oldest first)."""
        with self._answers_lock:
            self._flush_scheduled = False
            answers = list(self._answers)
            self._answers.clear()
        for answer in answers:
            try:
                self._done(*answer)
            except Exception:  # noqa: BLE001 - as a failing loop callback was: logged, the others still delivered
                log.exception("delivering a batch's answer failed")

    def _done(self, future: asyncio.Future, result, error, reserved: int = 0) -> None:
        self.depth -= 1
        self.metrics.queue_depth.set(self.depth)
        self._slots.release()
        if reserved and self.budget is not None:
            self.budget.release(reserved)
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _run(self) -> None:
        """Apply batches in admission order. With a sketch set that returns before its shards have
        applied a batch (``applied_marker`` not ``None``: the sharded service, pipelined), the
        batch's answer waits in ``pending`` until ``wait_applied`` says the shards applied it, while
        the next batches are routed and sent; answers still go out in admission order and a batch
        is acknowledged only once applied everywhere (a failure there answers that batch with it)."""
        sketchset = self.manager.sketchset
        # joining needs states that do not depend on the cuts, and answers that need no shard marker
        join = self.coalesce_packets if self.coalesce_packets > 1 and sketchset.batch_invariant else 0
        pending: deque = deque()  # (marker or None, future, result, error, reserved), oldest first
        carried = None  # a batch taken from the queue that did not fit the last group: the next one's first
        while True:
            if carried is not None:
                item, carried = carried, None
            elif pending:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:  # nothing new to send: settle the oldest answer meanwhile
                    self._settle(sketchset, pending.popleft())
                    continue
            else:
                item = self._queue.get()
            if item is None:
                while pending:
                    self._settle(sketchset, pending.popleft())
                return
            if join:
                group, packets, stop = [item], len(item[0]), False
                while packets < join:
                    try:
                        waiting = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if waiting is None:
                        stop = True
                        break
                    if packets + len(waiting[0]) > join:
                        carried = waiting
                        break
                    group.append(waiting)
                    packets += len(waiting[0])
                del item
                if len(group) > 1:
                    self._apply_group(group)
                    if stop:
                        self._queue.put(None)
                    continue
                item = group.pop()
                if stop:
                    self._queue.put(None)
            batch, sender_id, sequence, raw, future, reserved = item
            del item
            start = time.perf_counter()
            result = error = marker = None
            try:
                result = self.manager.apply(batch, sender_id, sequence, raw)
                marker = sketchset.applied_marker()
                self._account(result, time.perf_counter() - start)
            except (BatchRejected, LogWriteError) as exc:  # nothing applied; the handler answers and counts
                if isinstance(exc, LogWriteError):
                    log.error("%s", exc)
                error = exc
            except Exception as exc:  # noqa: BLE001 - reported to the caller as INTERNAL
                log.exception("applying a batch failed")
                error = exc
            del batch, raw  # the budget is given back only once the worker holds no reference
            if marker is None and not pending:
                self._answer(future, result, error, reserved)
            else:
                pending.append((marker, future, result, error, reserved))
                self._settle_applied(sketchset, pending)

    def _apply_group(self, group: list) -> None:
        """Apply queued items as one group (:meth:`EpochManager.apply_many`) and answer each in
        admission order; ``group`` is emptied first (the budget is given back only once the worker
        holds no reference to the batches). A batch's ``apply_seconds`` is the group's wall time
        times its share of the group's packets."""
        start = time.perf_counter()
        try:
            outcomes = self.manager.apply_many([item[:4] for item in group])
        except Exception as exc:  # noqa: BLE001 - apply_many answers per batch; this would be a bug there
            log.exception("applying a group of %d batches failed", len(group))
            outcomes = [exc] * len(group)
        seconds = time.perf_counter() - start
        total = sum(len(item[0]) for item in group) or 1
        answers = []
        for item, outcome in zip(group, outcomes):
            share, future, reserved = len(item[0]) / total, item[4], item[5]
            if isinstance(outcome, Exception):
                if isinstance(outcome, LogWriteError):
                    log.error("%s", outcome)
                elif not isinstance(outcome, BatchRejected):  # reported to the caller as INTERNAL
                    log.error("applying a batch failed", exc_info=outcome)
                answers.append((future, None, outcome, reserved))
            else:
                self._account(outcome, seconds * share)
                answers.append((future, outcome, None, reserved))
        group.clear()
        del item
        for answer in answers:
            self._answer(*answer)

    def _settle_applied(self, sketchset, pending: deque) -> None:
        """Answer the oldest pending batches that need no waiting: the shards already applied them
        (marker up to ``applied_through``), or they carry their own error. Without this, answers waited
        for the queue to run empty, holding their slots and budget behind every batch queued after them."""
        try:
            done = sketchset.applied_through()
        except Exception:  # noqa: BLE001 - never let the worker thread die here: settle them by waiting later
            return
        while pending and (pending[0][0] is None or pending[0][3] is not None or pending[0][0] <= done):
            self._settle(sketchset, pending.popleft())

    def _settle(self, sketchset, entry: tuple) -> None:
        """Answer one pending batch once the shards applied it (``wait_applied`` of its marker)."""
        marker, future, result, error, reserved = entry
        if marker is not None and error is None:
            try:
                sketchset.wait_applied(marker)
            except Exception as exc:  # noqa: BLE001 - reported to the caller (UNAVAILABLE / INTERNAL)
                log.error("a batch failed on the shards: %s", exc)
                result, error = None, exc
        self._answer(future, result, error, reserved)

    def _account(self, result: ApplyResult, seconds: float) -> None:
        m = self.metrics
        m.batches.inc()
        if result.duplicate:
            m.duplicates.inc()
            return
        m.apply_seconds.observe(seconds)
        m.packets.inc(result.applied_packets)
        if result.late_packets:  # inc(0) changes nothing but costs a lock per batch
            m.late.inc(result.late_packets)
        m.set_epoch(result.epoch)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)


# ====================================================================== ingest
@dataclass
class RawBatch:
    """A request as received: the serialised bytes (for the write-ahead log) and the message
    (None when the bytes are not a ``PacketBatch``: ``error`` says why)."""

    raw: bytes
    message: batch_pb2.PacketBatch | None
    error: str = ""
    #: bytes of the in-flight budget this request holds (0: none, e.g. an oversized message)
    reserved: int = 0
    #: the budget had no room: refused undecoded (``raw`` is empty, ``size`` is what arrived)
    busy: bool = False
    size: int = 0


def _deserialize_batch(raw: bytes) -> RawBatch:
    """Never raises: a failure here would answer UNKNOWN with a traceback in the log."""
    try:
        return RawBatch(raw, batch_pb2.PacketBatch.FromString(raw), size=len(raw))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or anything a hostile input triggers
        return RawBatch(raw, None, f"{type(exc).__name__}: {exc}", size=len(raw))


#: Undecodable messages are logged at most once per peer address per this many seconds.
UNDECODABLE_LOG_INTERVAL = 60.0


class IngestService:
    def __init__(self, service: "Service"):
        self.service = service
        self._undecodable_logged: dict[str, float] = {}

    def _admit_bytes(self, raw: bytes) -> RawBatch:
        """The request deserializer: reserve the message's bytes from the in-flight budget, then
        decode. No room: the bytes are dropped undecoded and the handler refuses the call as busy.
        An oversized message reserves nothing (the handler refuses it as oversized, not busy: a
        retry could never fit)."""
        size = len(raw)
        if size > self.service.config.max_message_bytes:
            return _deserialize_batch(raw)
        if not self.service.budget.try_reserve(size):
            return RawBatch(b"", None, busy=True, size=size)
        request = _deserialize_batch(raw)
        request.reserved = size
        return request

    def _release(self, request: RawBatch) -> None:
        """Give back a request's bytes when it will not reach the worker (refused, cancelled)."""
        if request.reserved:
            self.service.budget.release(request.reserved)
            request.reserved = 0

    def _busy(self, request: RawBatch) -> BatchRejected:
        budget = self.service.budget
        return BatchRejected(
            TooLarge, "busy",
            f"server busy: batches in flight hold {budget.in_use:,} of max_inflight_bytes {budget.limit:,} bytes, "
            f"no room for this batch of {request.size:,} bytes; it was not applied: retry after a short wait")

    def _decode(self, request: RawBatch, context) -> PacketBatch:
        """Validate everything the sender controls; raises BatchRejected with the status to send.

        The size limit is checked here, not only by gRPC, so that refusals are counted in
        ``rejected{reason="oversized"}`` (gRPC itself refuses only messages over twice the limit;
        see :func:`grpc_server_options`)."""
        cfg = self.service.config
        if request.busy:
            raise self._busy(request)
        if len(request.raw) > cfg.max_message_bytes:
            raise BatchRejected(TooLarge, "oversized",
                                f"batch message of {len(request.raw):,} bytes exceeds max_message_bytes "
                                f"{cfg.max_message_bytes:,}")
        message = request.message
        if message is None:
            self._log_undecodable(context, request)
            raise BatchRejected(QueryError, "undecodable",
                                f"not a telesketch.v1.PacketBatch message ({request.error})")
        if message.count > cfg.max_batch_packets:
            raise BatchRejected(TooLarge, "oversized",
                                f"batch of {message.count} packets exceeds max_batch_packets {cfg.max_batch_packets}")
        if len(message.sender_id) > MAX_SENDER_ID:
            raise BatchRejected(QueryError, "invalid", f"sender_id longer than {MAX_SENDER_ID} characters")
        if message.sender_id and message.sequence == 0:
            raise BatchRejected(QueryError, "invalid",
                                f"sender {message.sender_id!r}: sequence numbers start at 1 (0 is only for anonymous senders)")
        try:
            batch = wire.message_to_batch(message)
        except BatchError as exc:
            raise BatchRejected(QueryError, "invalid", str(exc)) from None
        if len(batch):
            self._check_time(batch)
        return batch

    def _check_time(self, batch: PacketBatch) -> None:
        """Refuse a batch stamped too far in the future (one would move the open epoch ahead and make
        every real packet late) or spanning too many epochs (each one opened costs a rotation)."""
        cfg, epoch_ns = self.service.config, self.service.manager.epoch_ns
        ts = batch.ts_ns
        hi = int(ts.max())
        limit = time.time_ns() + int(cfg.max_future_skew_seconds * 1e9)
        if hi > limit:
            ahead = int(np.count_nonzero(ts > np.uint64(limit)))
            raise BatchRejected(
                QueryError, "future_timestamp",
                f"{ahead} of {len(batch)} packets are stamped more than {cfg.max_future_skew_seconds:g} s ahead of the "
                f"server clock (the latest by {(hi - time.time_ns()) / 1e9:.0f} s; max_future_skew_seconds): "
                f"check the collector's clock; nothing of the batch was applied")
        lo = int(ts.min())
        if (hi - lo) // epoch_ns + 1 > cfg.max_epochs_per_batch:
            spanned = int(np.unique(ts // np.uint64(epoch_ns)).size)
            if spanned > cfg.max_epochs_per_batch:
                raise BatchRejected(
                    QueryError, "too_many_epochs",
                    f"batch spans {spanned} epochs, more than max_epochs_per_batch {cfg.max_epochs_per_batch}: "
                    f"send it in smaller, time-ordered batches")

    def _log_undecodable(self, context, request: RawBatch) -> None:
        peer = _peer_host(context.peer() or "")
        now = time.monotonic()
        last = self._undecodable_logged.get(peer)
        if last is not None and now - last < UNDECODABLE_LOG_INTERVAL:
            return
        if len(self._undecodable_logged) > 10_000:  # bounded: many peers only cost more log lines
            self._undecodable_logged.clear()
        self._undecodable_logged[peer] = now
        log.warning("undecodable PacketBatch from %s (%d bytes: %s); further ones from it are counted in "
                    "telesketch_batches_rejected{reason=\"undecodable\"}, logged at most once a minute",
                    peer, len(request.raw), request.error[:200])

    async def _reject(self, context, error: BatchRejected, prefix: str = "", trailing=()):
        self.service.metrics.rejected.labels(error.reason).inc()
        if error.reason == "busy":
            trailing = (*trailing, (RETRY_AFTER_KEY, str(RETRY_AFTER_MS)))
        await context.abort(grpc_status(error), prefix + str(error), tuple(trailing))

    async def _admit(self, request: RawBatch, batch: PacketBatch) -> asyncio.Future:
        """Hand a decoded batch to the worker, which then owns its budget bytes; released here if
        the call ends (cancelled) before the batch is queued."""
        message = request.message
        try:
            future = await self.service.worker.admit(batch, message.sender_id, message.sequence, request.raw,
                                                     request.reserved)
        except BaseException:
            self._release(request)
            raise
        request.reserved = 0
        return future

    async def PushOne(self, request: RawBatch, context) -> service_pb2.Ack:
        try:
            batch = self._decode(request, context)
        except BatchRejected as exc:
            self._release(request)
            await self._reject(context, exc)
        future = await self._admit(request, batch)
        result = await _result(future, context, self.service.metrics)
        return wire.ack_to_message(result)

    async def Push(self, request_iterator, context) -> service_pb2.PushSummary:
        futures, index = [], 0
        async for request in request_iterator:
            index += 1
            message = request.message
            try:
                batch = self._decode(request, context)
            except BatchRejected as exc:
                self._release(request)
                await self._refuse_in_stream(context, exc, futures, index, message)
            futures.append(await self._admit(request, batch))
            del request, batch
        return await self._summary(futures, context)

    async def _summary(self, futures, context) -> service_pb2.PushSummary:
        """The stream's summary once every batch is applied (aborts with the first batch's error)."""
        summary = service_pb2.PushSummary()
        for future in futures:
            r = await _result(future, context, self.service.metrics)
            summary.batches += 1
            summary.duplicate_batches += r.duplicate
            summary.packets += r.packets
            summary.applied_packets += r.applied_packets
            summary.late_packets += r.late_packets
            summary.last_sequence = max(summary.last_sequence, r.sequence)
            summary.epoch = r.epoch
        return summary

    async def _refuse_in_stream(self, context, exc: BatchRejected, futures, index: int, message) -> None:
        """End a stream at its refused batch #``index``: the batches before it are applied first (so
        Resume agrees with the answer); the trailing metadata says how many and their summary, so a
        client resends exactly the rest. An earlier batch that failed ends the stream with its error."""
        summary = await self._summary(futures, context)
        who = f" (sender {message.sender_id!r}, sequence {message.sequence})" if message is not None else ""
        await self._reject(context, exc, f"batch #{index} of the stream{who}; the {index - 1} before it were applied: ",
                           ((APPLIED_BATCHES_KEY, str(index - 1)), (PARTIAL_SUMMARY_KEY, summary.SerializeToString())))

    async def Resume(self, request, context) -> service_pb2.ResumeReply:
        with self.service.manager.lock:
            return service_pb2.ResumeReply(last_sequence=self.service.manager.senders.get(request.sender_id, 0))

    def handlers(self) -> grpc.GenericRpcHandler:
        reply = lambda m: m.SerializeToString()  # noqa: E731
        return grpc.method_handlers_generic_handler("telesketch.v1.Ingest", {
            "Push": grpc.stream_unary_rpc_method_handler(self.Push, self._admit_bytes, reply),
            "PushOne": grpc.unary_unary_rpc_method_handler(self.PushOne, self._admit_bytes, reply),
            "Resume": grpc.unary_unary_rpc_method_handler(
                self.Resume, service_pb2.ResumeRequest.FromString, reply),
        })


async def _result(future: asyncio.Future, context, metrics: ServiceMetrics) -> ApplyResult:
    try:
        return await future
    except BatchRejected as exc:
        metrics.rejected.labels(exc.reason).inc()
        await context.abort(grpc_status(exc), str(exc))
    except LogWriteError as exc:  # not applied, not acknowledged: the sender's retry applies it once
        metrics.log_write_failures.inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except Exception as exc:  # noqa: BLE001
        # Unavailable (a lost shard): not acknowledged, the sender retries; anything else INTERNAL
        await context.abort(grpc_status(exc), f"applying the batch failed: {type(exc).__name__}: {exc}")


# ====================================================================== errors -> gRPC status
#: The one table from domain errors (:mod:`telesketch.errors`) to gRPC status codes; an error maps
#: as its nearest listed class, an ingest rejection as its ``refusal`` (see :func:`grpc_status`).
GRPC_STATUS: dict[type, grpc.StatusCode] = {
    QueryError: grpc.StatusCode.INVALID_ARGUMENT, NotFound: grpc.StatusCode.NOT_FOUND,
    Precondition: grpc.StatusCode.FAILED_PRECONDITION, TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(error: BaseException) -> grpc.StatusCode:
    """The gRPC status of an error: a domain error's by the table, anything else ``INTERNAL``."""
    kind = error.refusal if isinstance(error, IngestRejected) else type(error)
    return next((GRPC_STATUS[cls] for cls in kind.__mro__ if cls in GRPC_STATUS), grpc.StatusCode.INTERNAL)


# ====================================================================== queries
def _window(message) -> WindowSpec:
    which = message.WhichOneof("selector") if message is not None else None
    return WindowSpec(epoch=message.epoch if which == "epoch" else None,
                      last=message.last if which == "last" else None,
                      closed_only=bool(message.closed_only))


def _opt(request, name):
    return getattr(request, name) if request.HasField(name) else None


def _info(answer, with_unit: bool = False) -> service_pb2.WindowInfo:
    """The reply's ``WindowInfo``; ``with_unit``: estimates are counts, say in what (``unit``)."""
    unit = answer.extra.get("unit", "packets") if with_unit else ""
    return service_pb2.WindowInfo(epochs=answer.epochs, packets=answer.packets, sketch=answer.sketch,
                                  combine=answer.combine, partial=answer.partial, unit=unit)


#: Address families of an ``AddressFamilies`` value (unset: IPv4, what clients before IPv6 expect).
HHH_FAMILIES = {service_pb2.FAMILIES_IPV4: (4,), service_pb2.FAMILIES_BOTH: (4, 6), service_pb2.FAMILIES_IPV6: (6,)}


def _keys(answer) -> service_pb2.KeyEstimates:
    """The ``KeyEstimates`` reply: integer keys (addresses, fingerprints) encoded array-at-a-time
    (:func:`~telesketch.service.replies.int_key_entries`), byte keys one entry each."""
    rows = answer.rows
    keys = [k for k, _ in rows]
    encoded = int_key_entries(keys, [float(v) for _, v in rows], answer.int_keys) if rows else None
    if encoded is not None:
        reply = service_pb2.KeyEstimates.FromString(encoded)
        reply.window.CopyFrom(_info(answer, with_unit=True))
        return reply
    return _keys_per_row(answer)


def _keys_per_row(answer) -> service_pb2.KeyEstimates:
    """The ``KeyEstimates`` reply built one ``KeyEstimate`` per row (any key form)."""
    return service_pb2.KeyEstimates(
        entries=[service_pb2.KeyEstimate(key=key_bytes(k), estimate=float(v), text=key_text(k, answer.int_keys),
                                         family=key_family(k, answer.int_keys))
                 for k, v in answer.rows], window=_info(answer, with_unit=True))


def _prefixes(answer) -> service_pb2.PrefixEstimates:
    return service_pb2.PrefixEstimates(
        entries=[service_pb2.PrefixEstimate(
            prefix=int.from_bytes(r.prefix, "big") if r.family == 4 else 0, length=r.length, estimate=r.discounted,
            text=format_prefix(r.prefix, r.length), family=r.family, prefix_bytes=r.prefix, undiscounted_estimate=r.estimate)
            for r in answer.rows], window=_info(answer, with_unit=True))


class QueryService(service_pb2_grpc.QueryServicer):
    def __init__(self, service: "Service"):
        self.service = service

    async def _call(self, context, fn):
        try:
            return await asyncio.get_running_loop().run_in_executor(self.service.query_pool, fn)
        except TelesketchError as exc:
            await context.abort(grpc_status(exc), str(exc))

    async def HeavyHitters(self, request, context):
        q = self.service.queries
        answer = await self._call(context, lambda: q.heavy_hitters(
            _window(request.window), request.sketch, _opt(request, "phi"), _opt(request, "threshold")))
        return _keys(answer)

    async def HeavyChangers(self, request, context):
        q = self.service.queries
        answer = await self._call(context, lambda: q.heavy_changers(
            _window(request.window), request.sketch, _opt(request, "phi"), _opt(request, "threshold")))
        return _keys(answer)

    async def HierarchicalHeavyHitters(self, request, context):
        q = self.service.queries
        families = HHH_FAMILIES.get(request.families)
        if families is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown address families value {request.families}")
        answer = await self._call(context, lambda: q.hhh(
            _window(request.window), request.sketch, _opt(request, "phi"), _opt(request, "threshold"), families))
        return _prefixes(answer)

    async def FlowGaps(self, request, context):
        q = self.service.queries
        answer = await self._call(context, lambda: q.gaps(_window(request.window), request.sketch, request.limit))
        return service_pb2.GapEvents(
            events=[service_pb2.GapEvent(ts_ns=r["ts_ns"], key=r["key"], jump=r["jump"], epoch=r["epoch"], text=r["text"],
                                      family=key_family(r["key"]))
                    for r in gap_rows(answer.rows)], window=_info(answer))

    async def FlowSize(self, request, context):
        q = self.service.queries
        answer = await self._call(context, lambda: q.flow_size(_window(request.window), list(request.keys), request.sketch))
        return _keys(answer)

    async def TopFlows(self, request, context):
        q = self.service.queries
        answer = await self._call(context, lambda: q.top_flows(_window(request.window), request.k or 10, request.sketch))
        return _keys(answer)

    async def Stats(self, request, context):
        return self.service.stats_message()


def _peer_host(peer: str) -> str:
    """The address of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def is_loopback_peer(peer: str) -> bool:
    """True for loopback (and unix-socket) peers of a gRPC call."""
    if peer.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(_peer_host(peer)).is_loopback
    except ValueError:
        return False


class AdminService(service_pb2_grpc.AdminServicer):
    """Admin calls: the bearer check (admin token) is in :class:`BearerTokenInterceptor`; without an
    admin token they are served to loopback peers only."""

    def __init__(self, service: "Service"):
        self.service = service

    async def _authorize(self, context) -> None:
        if self.service.config.admin_token or is_loopback_peer(context.peer() or ""):
            return
        self.service.metrics.rejected.labels("admin_denied").inc()
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            "Admin calls from other hosts need admin_token to be configured on the server")

    async def RotateEpoch(self, request, context):
        await self._authorize(context)
        loop = asyncio.get_running_loop()
        closed, old, new = await loop.run_in_executor(self.service.query_pool, self.service.manager.rotate)
        self.service.metrics.set_epoch(new)
        return service_pb2.RotateEpochReply(closed=closed, closed_epoch=old, open_epoch=new)

    async def Snapshot(self, request, context):
        await self._authorize(context)
        manager = self.service.manager
        try:
            files = await asyncio.get_running_loop().run_in_executor(self.service.query_pool, manager.checkpoint)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"checkpoint failed ({exc}); the write-ahead log still holds every batch")
        return service_pb2.SnapshotReply(files=files, epoch=manager.open.id if manager.open else 0)


# ====================================================================== auth
def _same(supplied: bytes, token: str) -> bool:
    """Constant-time comparison of a supplied ``authorization`` value with ``Bearer <token>``."""
    return bearer_matches(supplied, token)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Roles by bearer token. With ``token`` set, every RPC except health checking needs
    ``authorization: Bearer <token>`` (or the admin token). With ``admin_token`` set, Admin calls
    need exactly it (PERMISSION_DENIED for the ingest token). A refused call ends before its handler
    runs, so nothing is applied."""

    def __init__(self, token: str, metrics: ServiceMetrics, admin_token: str = ""):
        self._token = token
        self._admin_token = admin_token
        self._metrics = metrics

    async def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        supplied = dict(details.invocation_metadata or ()).get("authorization", "")
        supplied = supplied.encode() if isinstance(supplied, str) else bytes(supplied)
        handler = await continuation(details)
        if handler is None:
            return handler
        admin = _same(supplied, self._admin_token)
        if details.method.startswith("/telesketch.v1.Admin/") and self._admin_token:
            if admin:
                return handler
            ingest = _same(supplied, self._token)
            self._metrics.rejected.labels("admin_denied" if ingest else "unauthenticated").inc()
            code = grpc.StatusCode.PERMISSION_DENIED if ingest else grpc.StatusCode.UNAUTHENTICATED
            message = ("Admin calls need the admin token, not the ingest token" if ingest
                       else "missing bearer token" if not supplied else "wrong bearer token")
            return _deny(handler, code, message)
        if not self._token or admin or _same(supplied, self._token):
            return handler
        self._metrics.rejected.labels("unauthenticated").inc()
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                     "missing bearer token" if not supplied else "wrong bearer token")


def _deny(handler, code, message):
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""
    async def deny(request, context):
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


# ====================================================================== the service
#: Keepalive: the server pings an idle connection every 60 s and drops it when the ping is not
#: answered in 20 s (a collector that vanished without closing frees its stream); clients may ping
#: as often as every 10 s, also without calls in flight, without being told "too many pings".
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)


def grpc_server_options(cfg: ServiceConfig) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server.

    Receive limit: gRPC itself refuses messages over twice ``max_message_bytes`` before any
    handler sees them (a memory backstop; the client gets RESOURCE_EXHAUSTED, uncounted here);
    messages between the two limits reach the ingest handler, which refuses and counts them as
    ``rejected{reason="oversized"}``. Compression: gzip and deflate requests (``grpc-encoding``)
    are decompressed by gRPC before the size checks; answers are sent uncompressed.
    """
    return [("grpc.max_receive_message_length", min(2 * cfg.max_message_bytes, 2**31 - 1)),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            *KEEPALIVE_OPTIONS]

#: ``stats()`` sketch fields that the gRPC ``SketchInfo`` message does not carry (HTTP and /metrics do).
_NOT_IN_SKETCH_INFO = ("device", "backend", "scorer_bytes", "scorer_charged")

def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sketchset(config: ServiceConfig) -> SketchSet:
    """The configured sketches: in this process, or (``shards > 1``) the open epoch on Ray actors."""
    if config.shards == 1:
        sketchset = SketchSet.from_config(config.sketches, config.device)
        sketchset.concurrency = config.sketch_threads or None
        return sketchset
    from telesketch.distributed.service import ShardedSketchSet

    return ShardedSketchSet.from_config(config.sketches, config.shards, address=config.ray_address)


class Service:
    """The whole service: epochs, worker, gRPC server and HTTP server. ``await start()``, ``await stop()``."""

    def __init__(self, config: ServiceConfig):
        from concurrent.futures import ThreadPoolExecutor

        self.config = config.validate()
        self.metrics = ServiceMetrics(config.epoch_ns)
        self.sketchset = _sketchset(config)
        self.sketchset.watch = OverloadWatch(self.metrics)  # once-per-epoch sizing warnings (closes, queries)
        try:
            self.manager = EpochManager(
                self.sketchset, config.epoch_ns, config.keep_epochs, config.data_dir or None, wal=config.wal,
                durability=config.durability_mode, fsync_interval_seconds=config.fsync_interval_seconds,
                settings=data_dir_settings(config.epoch_ns, config.sketches, config.shards),
                max_sequence_jump=config.max_sequence_jump, recover=config.recover,
                sender_ttl_seconds=config.sender_ttl_seconds)
        except BaseException:
            self._shutdown_sketches()  # the shard actors must not outlive a failed start
            raise
        self.metrics.checkpoint_failures.set_function(lambda: self.manager.checkpoint_failures)
        self.metrics.watch(self.manager)  # the IPv6 and gap-coverage series, read at scrape time
        self.queries = QueryEngine(self.manager, self.metrics.observe_query, self.metrics.observe_partial,
                                   self.sketchset.watch, query_share=config.query_share)
        self.metrics.query_paced.set_function(lambda: self.queries.paced_seconds)
        self.metrics.query_cpu.set_function(lambda: self.queries.cpu_seconds)
        self.metrics.query_open_copy.set_function(lambda: self.queries.open_copy_bytes)
        self.budget = InflightBudget(config.max_inflight_bytes, self.metrics.inflight_bytes.set)
        self.metrics.inflight_limit.set(config.max_inflight_bytes)
        self.metrics.inflight_peak.set_function(lambda: self.budget.peak)
        self.worker = SketchWorker(self.manager, config.queue_batches, self.metrics, self.budget,
                                   coalesce_packets=config.coalesce_packets)
        if config.shards > 1:  # the worker acknowledges a batch only after the shards applied it
            from telesketch.distributed.cluster import INFLIGHT_BATCHES

            self.sketchset.pipeline(INFLIGHT_BATCHES)
        self.query_pool = ThreadPoolExecutor(2, thread_name_prefix="telesketch-query")
        self.metrics.queue_capacity.set(config.queue_batches)
        for cs in self.sketchset.sketches:
            if cs.active:
                self.metrics.sketch_device.labels(cs.name, cs.device, cs.backend).set(1)
        if self.manager.open is not None:
            self.metrics.set_epoch(self.manager.open.id)
        self.grpc_port = 0
        self.http_port = 0
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._http = None
        self.started_at = time.time()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:  # e.g. the port is taken: nothing may outlive the failed start
            self._http_stop()
            if self._server is not None:
                await self._server.stop(0)
            self.worker.stop()
            self.manager.close()
            self._shutdown_sketches()
            raise

    def _http_stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def _shutdown_sketches(self) -> None:
        self.sketchset.shutdown()

    async def _start(self) -> None:
        cfg = self.config
        interceptors = ([BearerTokenInterceptor(cfg.token, self.metrics, cfg.admin_token)]
                        if cfg.token or cfg.admin_token else [])
        host = cfg.grpc_address.rsplit(":", 1)[0].strip("[]")
        if (cfg.token or cfg.admin_token) and not cfg.tls_cert and not _is_loopback_host(host):
            log.warning("bearer tokens will travel in clear text: gRPC listens on %s without TLS "
                        "(set tls_cert and tls_key)", cfg.grpc_address)
        self._server = grpc.aio.server(interceptors=interceptors, options=grpc_server_options(cfg))
        self._server.add_generic_rpc_handlers((IngestService(self).handlers(),))
        service_pb2_grpc.add_QueryServicer_to_server(QueryService(self), self._server)
        service_pb2_grpc.add_AdminServicer_to_server(AdminService(self), self._server)
        health_servicer = self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
        reflection.enable_server_reflection(SERVICE_NAMES + (reflection.SERVICE_NAME, health.SERVICE_NAME),
                                            self._server)
        try:
            if cfg.tls_cert:
                with open(cfg.tls_key, "rb") as k, open(cfg.tls_cert, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                self.grpc_port = self._server.add_secure_port(cfg.grpc_address, creds)
            else:
                self.grpc_port = self._server.add_insecure_port(cfg.grpc_address)
        except RuntimeError as exc:  # grpc's "Failed to bind"
            raise OSError(f"cannot listen for gRPC on {cfg.grpc_address} (in use?): {exc}") from None
        self.worker.start()
        await self._server.start()
        for name in ("",) + SERVICE_NAMES:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.http_address:
            from telesketch.service.http import HttpServer

            host, port = cfg.http_address.rsplit(":", 1)
            try:
                self._http = HttpServer(self, host, int(port))
            except OSError as exc:
                raise OSError(f"cannot listen for HTTP on {cfg.http_address}: {exc.strerror or exc}") from None
            self._http.start()
            self.http_port = self._http.port
        log.info("telesketch serving gRPC on port %d, HTTP on port %d", self.grpc_port, self.http_port)

    async def stop(self, grace: float = 2.0) -> None:
        try:
            if self._health is not None:  # load balancers see NOT_SERVING while in-flight calls drain
                await self._health.enter_graceful_shutdown()
            self._http_stop()
            if self._server is not None:
                await self._server.stop(grace)
            self.worker.stop()
            self.query_pool.shutdown(wait=True)
            try:
                self.manager.close()
            except Unavailable as exc:
                log.warning("no checkpoint at shutdown (%s); the next start replays the write-ahead log", exc)
        finally:
            self._shutdown_sketches()

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        """Everything ``Stats`` / ``/api/v1/stats`` report, as plain Python."""
        m = self.manager
        with m.lock:
            last_ns = (1 << 64) - 1  # an epoch restored from before timestamps were checked may end past 2**64
            epochs = [{"epoch": e.id, "start_ns": min(e.id * m.epoch_ns, last_ns),
                       "end_ns": min((e.id + 1) * m.epoch_ns, last_ns),
                       "packets": e.packets, "batches": e.batches, "closed": e.closed} for e in m.epochs()]
            sketches = []
            for cs in self.sketchset.sketches:
                memory = cs.memory(m.open.states[cs.name]) if cs.active and m.open is not None else 0
                state = m.open.states[cs.name] if cs.active and m.open is not None else None
                scorer = int(getattr(state, "scorer_bytes", 0))  # LLM-Sketch's flow-score cache
                charged = bool(getattr(state, "scorer_charged", False))  # ... already in memory_bytes
                if cs.active:
                    self.metrics.sketch_memory.labels(cs.name).set(memory)
                    if scorer:
                        self.metrics.scorer_memory.labels(cs.name).set(scorer)
                    load = m.open.states[cs.name].load_factor if m.open is not None else None
                    if load is not None:
                        self.metrics.load_factor.labels(cs.name).set(load)
                sketches.append({"name": cs.name, "kind": cs.kind_name, "active": cs.active, "note": cs.note,
                                 "memory_bytes": memory, "scorer_bytes": scorer, "scorer_charged": charged,
                                 "queries": sorted(cs.kind.queries) if cs.kind else [],
                                 "device": cs.device, "backend": cs.backend})
            self.metrics.epochs_retained.set(len(epochs))
            return {
                "packets": m.counters.packets, "batches": m.counters.batches,
                "late_packets": m.counters.late_packets, "duplicate_batches": m.counters.duplicate_batches,
                "rejected_batches": int(sum(s.value for metric in self.metrics.rejected.collect()
                                            for s in metric.samples if s.name.endswith("_total"))),
                "queue_depth": self.worker.depth, "queue_capacity": self.config.queue_batches,
                "open_epoch": m.open.id if m.open else 0, "has_open_epoch": m.open is not None,
                "epoch_seconds": self.config.epoch_seconds, "epochs": epochs, "sketches": sketches,
                "notes": [f"sketch {s['name']} ({s['kind']}) {s['note']}" for s in sketches if not s["active"]],
            }

    def stats_message(self) -> service_pb2.StatsReply:
        s = self.stats()
        return service_pb2.StatsReply(
            **{k: v for k, v in s.items() if k not in ("epochs", "sketches")},
            epochs=[service_pb2.EpochInfo(**e) for e in s["epochs"]],
            sketches=[service_pb2.SketchInfo(**{k: v for k, v in x.items() if k not in _NOT_IN_SKETCH_INFO})
                      for x in s["sketches"]])


# ====================================================================== running it
async def serve(config: ServiceConfig, ready=None) -> None:
    """Run until cancelled or SIGINT/SIGTERM; ``ready(service)`` is called once listening."""
    import signal

    service = Service(config)
    await service.start()
    if ready is not None:
        ready(service)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        await service.stop()


class ServiceThread:
    """A service on its own event loop in a background thread (tests, benchmarks, notebooks).

    With ``config`` a :class:`ServiceConfig` (skipped by the doctest run: it starts a server):

    >>> with ServiceThread(config) as svc:  # doctest: +SKIP
    ...     client = Client(f"127.0.0.1:{svc.grpc_port}")
    """

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.service: Service | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="telesketch-service", daemon=True)

    def start(self) -> "ServiceThread":
        self._thread.start()
        self.service = Service(self.config)
        asyncio.run_coroutine_threadsafe(self.service.start(), self._loop).result(timeout=60)
        return self

    def stop(self) -> None:
        if self.service is not None:
            asyncio.run_coroutine_threadsafe(self.service.stop(0.5), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def grpc_port(self) -> int:
        return self.service.grpc_port

    @property
    def http_port(self) -> int:
        return self.service.http_port

    def __enter__(self) -> "ServiceThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
