"""Python client of the telesketch service: push batches, run queries, get plain Python back.

With a service listening on port 50051 (so the doctest run skips the session):

>>> from telesketch.client import Client
>>> with Client("127.0.0.1:50051", sender_id="collector-1") as c:  # doctest: +SKIP
...     c.push(batches)                      # one stream; sequence numbers assigned 1, 2, ...
...     c.heavy_hitters(last=3)              # [(key, estimate), ...]
...     c.hhh(epoch=1_700_000_000)           # [(prefix, length, discounted_estimate), ...]

Keys come back as in :mod:`telesketch.sketches.exact`: 4-byte keys as ``int`` (addresses; for
LLM-Sketch's flow-size task the 32-bit fingerprints), 13-byte flow keys as ``bytes``. Errors are
``grpc.RpcError`` with the server's status code and message.

A batch the server refuses as busy (its in-flight budget is full: ``RESOURCE_EXHAUSTED`` with
``telesketch-retry-after-ms`` in the trailing metadata; nothing of it was applied) is sent again
after a backoff (from the server's hint, doubling, at most :data:`MAX_BUSY_BACKOFF_S`) for up to
``timeout`` seconds; ``busy_retries`` counts them. A ``Push`` stream refused part-way is resumed at
the refused batch (the server says how many were applied), so each batch is applied once, with or
without a ``sender_id``.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import grpc

from telesketch.packets import PacketBatch
from telesketch.service.budget import APPLIED_BATCHES_KEY, PARTIAL_SUMMARY_KEY, RETRY_AFTER_KEY
from telesketch.wire import SCHEMA_VERSION, Ack, ack_from_message, batch_to_bytes
from telesketch.v1 import service_pb2, service_pb2_grpc


#: Sequence numbers are uint64 on the wire.
MAX_SEQUENCE = (1 << 64) - 1
#: Longest wait between two retries of a batch the server refused as busy (seconds).
MAX_BUSY_BACKOFF_S = 1.0


def busy_retry_after(error: grpc.RpcError) -> float | None:
    """Seconds the server asked to wait when it refused a batch as busy; None for any other error."""
    if not hasattr(error, "code") or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    trailing = dict(error.trailing_metadata() or ())
    value = trailing.get(RETRY_AFTER_KEY)
    try:
        return max(0.0, int(value) / 1000) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class PushSummary:
    batches: int
    duplicate_batches: int
    packets: int
    applied_packets: int
    late_packets: int
    last_sequence: int
    epoch: int


@dataclass(frozen=True)
class GapEvent:
    ts_ns: int
    key: bytes
    jump: int
    epoch: int


#: ``families`` of :meth:`Client.hhh` as the request's ``AddressFamilies``.
_FAMILIES = {(4,): service_pb2.FAMILIES_IPV4, (4, 6): service_pb2.FAMILIES_BOTH, (6,): service_pb2.FAMILIES_IPV6}


def _key(raw: bytes):
    return int.from_bytes(raw, "big") if len(raw) == 4 else bytes(raw)


def _fields(message, cls):
    return cls(**{name: getattr(message, name) for name in cls.__dataclass_fields__})


class Client:
    """A synchronous gRPC client. ``token``: bearer token; ``root_certificates``: PEM bytes for TLS
    (``tls=True`` with none uses the system roots). ``sender_id`` enables idempotent retries:
    sequence numbers continue from the server's last applied one (``Ingest.Resume``). Without a
    ``sender_id`` a batch has no identity: a retry after DEADLINE_EXCEEDED (the first try may have
    been applied) counts it twice, so give every collector a ``sender_id``. Admin calls need a
    client made with the server's admin token (or, with none configured, a loopback connection).
    ``schema_version``: the batch wire schema written (2, both address families; 1 speaks to
    servers older than IPv6 support and refuses batches holding IPv6)."""

    def __init__(self, target: str, *, sender_id: str = "", token: str = "", tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float = 60.0,
                 max_message_bytes: int = 64 << 20, schema_version: int = SCHEMA_VERSION):
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls or root_certificates:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.sender_id = sender_id
        self.busy_retries = 0  #: batches (or stream remainders) sent again after a busy refusal
        self.schema_version = schema_version
        self._next_sequence: int | None = None
        self._ingest = service_pb2_grpc.IngestStub(self._channel)
        self._query = service_pb2_grpc.QueryStub(self._channel)
        self._admin = service_pb2_grpc.AdminStub(self._channel)
        # Push and PushOne with a pass-through serializer: a request is sent as the ``bytes`` it is
        # (``wire.batch_to_bytes``: no message built, no second serialization) or serialized when
        # it is a ``PacketBatch`` message (push_messages' callers); issue 21 (a).
        self._push = self._channel.stream_unary(
            "/telesketch.v1.Ingest/Push", request_serializer=_serialize,
            response_deserializer=service_pb2.PushSummary.FromString)
        self._push_one = self._channel.unary_unary(
            "/telesketch.v1.Ingest/PushOne", request_serializer=_serialize,
            response_deserializer=service_pb2.Ack.FromString)

    # ------------------------------------------------------------------ ingest
    def _sequence(self, sequence: int | None) -> int:
        """The sequence for the next batch: the given one, else one past the last (asked of the
        server once). ``OverflowError`` (nothing sent) when it would not fit in 64 bits."""
        if not self.sender_id:
            return 0 if sequence is None else sequence
        if sequence is not None:
            if not 0 < sequence <= MAX_SEQUENCE:
                raise OverflowError(f"sequence {sequence} is outside 1..{MAX_SEQUENCE}")
            self._next_sequence = sequence + 1
            return sequence
        if self._next_sequence is None:
            self._next_sequence = self.last_sequence() + 1
        if self._next_sequence > MAX_SEQUENCE:
            raise OverflowError(f"sender {self.sender_id!r} has used every 64-bit sequence number; "
                                f"use a new sender_id")
        self._next_sequence += 1
        return self._next_sequence - 1

    def last_sequence(self, sender_id: str | None = None) -> int:
        """The server's last applied sequence for a sender (0 when it has none)."""
        reply = self._ingest.Resume(service_pb2.ResumeRequest(sender_id=sender_id or self.sender_id),
                                    timeout=self.timeout, metadata=self._metadata)
        return reply.last_sequence

    def push_one(self, batch: PacketBatch, sequence: int | None = None) -> Ack:
        """Send one batch; returns the server's ack (after the batch is applied). Busy refusals
        are retried (module docstring)."""
        message = batch_to_bytes(batch, sender_id=self.sender_id, sequence=self._sequence(sequence),
                                 schema_version=self.schema_version)
        backoff = _Backoff(self.timeout)
        while True:
            try:
                return ack_from_message(self._push_one(message, timeout=self.timeout, metadata=self._metadata))
            except grpc.RpcError as exc:
                backoff.wait_or_raise(exc)
                self.busy_retries += 1

    def push_messages(self, messages: Iterable) -> PushSummary:
        """Stream already-encoded ``PacketBatch`` messages (benchmarks, replays of recorded traffic):
        protobuf messages, or their serialized ``bytes`` (``wire.batch_to_bytes``), sent as they are.

        A stream refused as busy part-way goes on in a new stream from the refused batch; the
        stream's messages are kept until the server answers, to resend them (module docstring)."""
        source = _Resendable(messages)
        backoff = _Backoff(self.timeout)
        total: service_pb2.PushSummary | None = None
        while True:
            stream = _Stream()
            try:
                reply = self._push(source.stream(stream), timeout=self.timeout, metadata=self._metadata)
                return _fields(_add_summaries(total, reply), PushSummary)
            except grpc.RpcError as exc:
                source.close(stream)
                backoff.wait_or_raise(exc)
                trailing = dict(exc.trailing_metadata() or ())
                applied = int(trailing.get(APPLIED_BATCHES_KEY, 0))
                total = _add_summaries(total, service_pb2.PushSummary.FromString(
                    trailing.get(PARTIAL_SUMMARY_KEY, b"")))
                source.resend(stream.sent[applied:])
                self.busy_retries += 1

    def push(self, batches: Iterable[PacketBatch], start_sequence: int | None = None) -> PushSummary:
        """Stream batches; sequence numbers continue from ``start_sequence`` (or the server's)."""
        first = [start_sequence]

        def messages():
            for batch in batches:
                seq = self._sequence(first.pop() if first else None)
                yield batch_to_bytes(batch, sender_id=self.sender_id, sequence=seq,
                                     schema_version=self.schema_version)
        return self.push_messages(messages())

    # ------------------------------------------------------------------ queries
    @staticmethod
    def _window(epoch: int | None, last: int | None, closed_only: bool) -> service_pb2.Window:
        if epoch is not None:
            return service_pb2.Window(epoch=epoch, closed_only=closed_only)
        if last is not None:
            return service_pb2.Window(last=last, closed_only=closed_only)
        return service_pb2.Window(closed_only=closed_only)

    def _call(self, method, request):
        return method(request, timeout=self.timeout, metadata=self._metadata)

    def _thresholds(self, phi, threshold) -> dict:
        return {k: v for k, v in (("phi", phi), ("threshold", threshold)) if v is not None}

    def heavy_hitters(self, *, epoch=None, last=None, closed_only=False, phi=None, threshold=None, sketch="",
                      details=False, text=False):
        """``[(key, estimate)]``, largest first; ``details=True`` also returns the WindowInfo;
        ``text=True`` adds the server's rendering of each key (``(key, estimate, text)``)."""
        reply = self._call(self._query.HeavyHitters, service_pb2.HeavyHittersRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, **self._thresholds(phi, threshold)))
        return _key_rows(reply, details, text)

    def heavy_changers(self, *, epoch=None, last=None, closed_only=False, phi=None, threshold=None, sketch="",
                       details=False, text=False):
        """``[(key, change)]`` between the window and the equally long window before it."""
        reply = self._call(self._query.HeavyChangers, service_pb2.HeavyChangersRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, **self._thresholds(phi, threshold)))
        return _key_rows(reply, details, text)

    def hhh(self, *, epoch=None, last=None, closed_only=False, phi=None, threshold=None, sketch="", details=False,
            families=None):
        """``[(prefix, length, discounted_estimate)]`` of IPv4 prefixes, ordered by length then prefix.

        ``families`` ``(4, 6)``, ``(6,)`` or ``(4,)``: those families' rows instead, as
        ``HHHRow(family, prefix bytes, length, estimate, discounted)`` (``estimate`` the prefix's
        whole count), IPv4 first, each by length then prefix."""
        from telesketch.sketches.cocosketch import HHHRow

        which = _FAMILIES[tuple(sorted(set(families)))] if families is not None else service_pb2.FAMILIES_IPV4
        reply = self._call(self._query.HierarchicalHeavyHitters, service_pb2.HHHRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, families=which,
            **self._thresholds(phi, threshold)))
        if families is None:
            rows = [(e.prefix, e.length, e.estimate) for e in reply.entries]
        else:
            rows = [HHHRow(e.family, bytes(e.prefix_bytes), e.length, e.undiscounted_estimate, e.estimate)
                    for e in reply.entries]
        return (rows, reply.window) if details else rows

    def flow_gaps(self, *, epoch=None, last=None, closed_only=False, limit=0, sketch="", details=False):
        """``[GapEvent]`` by time."""
        reply = self._call(self._query.FlowGaps, service_pb2.FlowGapsRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, limit=limit))
        rows = [GapEvent(e.ts_ns, bytes(e.key), e.jump, e.epoch) for e in reply.events]
        return (rows, reply.window) if details else rows

    def flow_size(self, keys, *, epoch=None, last=None, closed_only=False, sketch="", details=False):
        """Estimated packets of each flow key: 13-byte IPv4 keys or 37-byte keys of either family
        (``bytes``, or ``uint8[n, 13]`` / ``uint8[n, 37]`` rows): ``[int]``. Bytes for a byte-weighted
        sketch: with ``details=True`` the reply's ``WindowInfo.unit`` says which (as on every count query)."""
        keys = [bytes(k) for k in keys]
        reply = self._call(self._query.FlowSize, service_pb2.FlowSizeRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, keys=keys))
        rows = [e.estimate for e in reply.entries]
        return (rows, reply.window) if details else rows

    def top_flows(self, k: int = 10, *, epoch=None, last=None, closed_only=False, sketch="", details=False,
                  text=False):
        """``[(key, estimate)]``: the ``k`` largest flows (LLM-Sketch keys are 32-bit fingerprints;
        ``text=True`` adds the server's rendering, e.g. ``fp:0x1234abcd``)."""
        reply = self._call(self._query.TopFlows, service_pb2.TopFlowsRequest(
            window=self._window(epoch, last, closed_only), sketch=sketch, k=k))
        return _key_rows(reply, details, text)

    def stats(self) -> dict:
        """Counters, retained epochs and configured sketches as a dict."""
        from google.protobuf.json_format import MessageToDict

        reply = self._call(self._query.Stats, service_pb2.StatsRequest())
        return MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    # ------------------------------------------------------------------ admin
    def rotate_epoch(self) -> tuple[bool, int, int]:
        """Close the open epoch now: ``(closed?, closed epoch, open epoch)``."""
        r = self._call(self._admin.RotateEpoch, service_pb2.RotateEpochRequest())
        return r.closed, r.closed_epoch, r.open_epoch

    def snapshot(self) -> list[str]:
        """Checkpoint the open epoch; returns the files written on the server."""
        return list(self._call(self._admin.Snapshot, service_pb2.SnapshotRequest()).files)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serialize(request) -> bytes:
    """A ``PacketBatch`` request as bytes: ``bytes`` pass through, a message is serialized."""
    return request if type(request) is bytes else request.SerializeToString()


class _Backoff:
    """Waits between retries of busy refusals: the server's hint, doubling, with jitter, up to
    :data:`MAX_BUSY_BACKOFF_S`; re-raises any other error, or a busy one past ``budget_s``."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.delay = 0.0

    def wait_or_raise(self, error: grpc.RpcError) -> None:
        hint = busy_retry_after(error)
        if hint is None:
            raise error
        self.delay = min(max(hint, 2 * self.delay), MAX_BUSY_BACKOFF_S)
        wait = self.delay * random.uniform(0.5, 1.0)
        if time.monotonic() + wait > self.deadline:
            raise error
        time.sleep(wait)


class _Stream:
    """One ``Push`` call's record: the messages handed to gRPC, and whether the call has ended."""

    def __init__(self):
        self.sent: list = []
        self.closed = False


class _Resendable:
    """The messages of a ``Push`` that may span several streams: each stream's generator records
    what it handed to gRPC; after a refusal the unapplied ones are sent first in the next stream.

    gRPC pulls requests on its own thread, which may still be inside ``next`` when a call ends;
    the lock makes every message either recorded in the closed stream's list or left for the next
    stream, and keeps two streams from pulling the source at once."""

    def __init__(self, messages: Iterable):
        self._source = iter(messages)
        self._backlog: deque = deque()
        self._lock = threading.Lock()

    def stream(self, record: _Stream):
        while True:
            with self._lock:
                if record.closed:
                    return
                if self._backlog:
                    message = self._backlog.popleft()
                else:
                    message = next(self._source, _END)
                    if message is _END:
                        return
                record.sent.append(message)
            yield message

    def close(self, record: _Stream) -> None:
        """That stream's call has ended: it takes no more messages."""
        with self._lock:
            record.closed = True

    def resend(self, messages: list) -> None:
        """Send these first (in order), before anything not yet sent."""
        with self._lock:
            self._backlog.extendleft(reversed(messages))


_END = object()


def _add_summaries(total: service_pb2.PushSummary | None, part: service_pb2.PushSummary) -> service_pb2.PushSummary:
    """Two streams' summaries as one (counts added; the later epoch)."""
    if total is None:
        return part
    return service_pb2.PushSummary(
        batches=total.batches + part.batches, duplicate_batches=total.duplicate_batches + part.duplicate_batches,
        packets=total.packets + part.packets, applied_packets=total.applied_packets + part.applied_packets,
        late_packets=total.late_packets + part.late_packets,
        last_sequence=max(total.last_sequence, part.last_sequence), epoch=part.epoch if part.batches else total.epoch)


def _key_rows(reply, details: bool, text: bool = False):
    rows = [(_key(e.key), e.estimate, e.text) if text else (_key(e.key), e.estimate) for e in reply.entries]
    return (rows, reply.window) if details else rows
