"""The query engine shared by the gRPC ``Query`` service and the HTTP ``/api/v1`` API.

Each query names a window (:meth:`EpochManager.window`), optionally a sketch, and its parameters;
it validates them (:mod:`telesketch.errors`: ``QueryError`` and its kinds), resolves the epochs, and asks
:mod:`telesketch.service.sketchset` for the answer. Answers are plain Python: keys are ``int``
(4-byte keys: IPv4 addresses; LLM-Sketch: 32-bit fingerprints), 16-byte ``bytes`` (IPv6 addresses),
13-byte (IPv4) or 37-byte (IPv6) ``bytes`` flow keys; HHH rows are ``HHHRow`` of both families.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from telesketch.packets import FLOW_KEY37_BYTES, FLOW_KEY_BYTES, V4_MAPPED_PREFIX
from telesketch.presenter import key_bytes, key_text, time_text  # noqa: F401 - re-exported for callers
from telesketch.service import sketchset as ss
from telesketch.service.epochs import Epoch, EpochManager
from telesketch.service.overload import OverloadWatch
from telesketch.errors import NotFound, QueryError, TooLarge, Unavailable
from telesketch.sketches.cocosketch import HHHRow
from telesketch.sketches.core import SketchError
from telesketch.sketches.gapfilter import GAP_EVENT_DTYPE

log = logging.getLogger("telesketch.service")

MAX_TOP_K = 100_000
MAX_FLOW_KEYS = 100_000
#: One row of a gaps answer: a gap event's fields and the id of the epoch that holds it.
GAP_ROW_DTYPE = np.dtype(GAP_EVENT_DTYPE.descr + [("epoch", "<u8")])


@dataclass
class WindowSpec:
    """A window as asked: one ``epoch`` id, or the ``last`` N epochs (default: the last one)."""

    epoch: int | None = None
    last: int | None = None
    closed_only: bool = False


@dataclass
class Answer:
    """Rows of one query and what produced them."""

    rows: list
    epochs: list[int]
    packets: int
    sketch: str
    combine: str
    int_keys: str = "ipv4"
    extra: dict[str, Any] = field(default_factory=dict)
    #: some epoch's (or shard's) decode could not finish: keys may be missing and some estimates
    #: are upper bounds (Hidden Sketch too small for the traffic; see HHResult.partial)
    partial: bool = False


def _check_fraction(phi, threshold) -> None:
    if phi is not None and threshold is not None:
        raise QueryError("give phi or threshold, not both")
    if phi is not None and not (0.0 < phi < 1.0):
        raise QueryError(f"phi must be in (0, 1), got {phi}")
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise QueryError(f"threshold must be a finite number >= 0, got {threshold}")


class QueryEngine:
    """Answers queries against an :class:`EpochManager`; ``observe(query, seconds)`` records latency,
    ``on_partial(sketch)`` a partial answer; ``watch`` logs each partial epoch once (a WARNING).

    Queries do not hold ingestion back: with the sketches in this process, a query takes the
    manager's lock only to pick its epochs and copy the one sketch state it reads from the open
    epoch (closed epochs are never updated), then answers without it. The copy is reused while
    the open epoch is unchanged (``EpochManager.generation``), so a poller asking again between
    two batches copies nothing. Queries still run one at a time among themselves
    (``_query_lock``). Sharded sketches (Ray) keep the old rule: the manager's lock for the whole
    query.

    Memory: the kept copies cost **one extra open-epoch state per polled sketch** (its
    ``ConfiguredSketch.memory``, e.g. a Hidden Sketch's full tables), held between queries. Bound:
    at most one copy per sketch name, all of the current generation: when a batch has landed, the
    next query drops every stale copy before it takes its own, so the copies never exceed one open
    epoch's states (the sum of ``telesketch_sketch_memory_bytes``) and the old and new copy of a
    sketch are never held together. A stale copy outlives its batch until the next query that
    reads an open epoch (one over closed epochs only copies nothing and drops nothing).
    :attr:`open_copy_bytes` (the ``telesketch_query_open_copy_bytes`` gauge) is what they hold now.

    ``query_share`` (in (0, 1]; 1: no pacing) paces queries so that, run back to back, they use at
    most that share of wall-clock time: after a query that took ``d`` seconds, the next one starts
    no sooner than ``d * (1 - share) / share`` seconds after it ended (it waits, up to
    ``max_query_wait_seconds``). A lone query on a quiet server never waits; a client polling
    back to back gets answers at most ``share`` of the time and leaves the rest to ingestion (two
    cores shared by 8 pushing clients and one poller: issue 16, fault 7). The wait is measured on
    the query's own wall time, so a query slowed by ingest load earns a longer pause.
    ``paced_seconds`` is the total wait so far, ``busy_seconds`` and ``cpu_seconds`` the wall
    and CPU time of the answers (engine work; the gRPC reply is built outside).
    """

    def __init__(self, manager: EpochManager, observe=None, on_partial=None, watch: OverloadWatch | None = None,
                 query_share: float = 1.0, max_query_wait_seconds: float = 1.0, clock=time.perf_counter,
                 sleep=time.sleep):
        if not 0.0 < query_share <= 1.0:
            raise ValueError(f"query_share must be in (0, 1], got {query_share}")
        self.manager = manager
        self.observe = observe or (lambda query, seconds: None)
        self.on_partial = on_partial or (lambda sketch: None)
        #: logs (and counts) each partial epoch once, however many queries read it
        self.watch = watch or OverloadWatch()
        self.query_share = float(query_share)
        self.max_query_wait_seconds = float(max_query_wait_seconds)
        self.paced_seconds = 0.0  #: seconds queries have waited for their share so far
        self.busy_seconds = 0.0   #: wall seconds queries have run (what the share is measured on)
        self.cpu_seconds = 0.0    #: CPU seconds of the threads answering them (``time.thread_time``)
        self._clock, self._sleep = clock, sleep
        self._next_start = 0.0    # clock value before which the next query waits (pacing)
        self._query_lock = threading.Lock()
        self._copy_open = type(manager.sketchset) is ss.SketchSet
        #: sketch name -> (manager generation, copied open-epoch state, its bytes): reused until a batch lands
        self._open_copies: dict[str, tuple[int, Any, int]] = {}

    @property
    def open_copy_bytes(self) -> int:
        """Bytes of the open-epoch copies kept for reuse (``ConfiguredSketch.memory`` of each; at
        most one per sketch, see the class docstring)."""
        return sum(nbytes for _, _, nbytes in list(self._open_copies.values()))

    # ------------------------------------------------------------------ helpers
    def _epochs(self, window: WindowSpec, offset: int = 0, cs=None):
        """The window's epochs; with ``cs``, the open one as a copy holding only ``cs``'s state."""
        if not self._copy_open or cs is None:
            return self._window(window, offset)
        with self.manager.lock:
            epochs = self._window(window, offset)
            return [e if e.closed else Epoch(e.id, {cs.name: self._open_copy(cs, e)}, e.packets, e.batches)
                    for e in epochs]

    def _open_copy(self, cs, epoch: Epoch):
        """A copy of the open ``epoch``'s state of ``cs``, reused while the manager's generation is
        unchanged (queries only read states). Copies of an older generation, of any sketch, are
        dropped first (the bound in the class docstring). Called with the manager's lock held."""
        generation = self.manager.generation
        cached = self._open_copies.get(cs.name)
        if cached is not None and cached[0] == generation:
            return cached[1]
        self._open_copies = {name: c for name, c in self._open_copies.items() if c[0] == generation}
        state = cs.copy(epoch.states[cs.name])
        self._open_copies[cs.name] = (generation, state, cs.memory(state))
        return state

    def _window(self, window: WindowSpec, offset: int = 0):
        if window.epoch is not None and window.last is not None:
            raise QueryError("a window names an epoch or the last N epochs, not both")
        if window.last is not None and window.last < 1:
            raise QueryError(f"window.last must be at least 1, got {window.last}")
        try:
            return self.manager.window(window.epoch, window.last, window.closed_only, offset)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise QueryError(str(exc)) from None

    def _run(self, query: str, fn):
        start = time.perf_counter()
        try:
            with self._query_lock:
                self._pace()
                if self._copy_open:
                    return self._timed(fn)
                with self.manager.lock:
                    return self._timed(fn)
        except SketchError as exc:  # the sketch refused the parameters
            raise QueryError(f"{query}: {exc}") from None
        except Unavailable as exc:
            raise Unavailable(f"{query}: {exc}") from None
        finally:
            self.observe(query, time.perf_counter() - start)

    def _pace(self) -> None:
        """Wait (with ``_query_lock`` held) until this query's share of time is available."""
        wait = min(self._next_start - self._clock(), self.max_query_wait_seconds)
        if wait > 0:
            self.paced_seconds += wait
            self._sleep(wait)

    def _timed(self, fn):
        """``fn()``, then push the next query's start back by the pause its run time earns."""
        began, cpu = self._clock(), time.thread_time()
        try:
            return fn()
        finally:
            ended = self._clock()
            self.busy_seconds += ended - began
            self.cpu_seconds += time.thread_time() - cpu
            if self.query_share < 1.0:
                self._next_start = ended + (ended - began) * (1.0 - self.query_share) / self.query_share

    def _answer(self, cs, epochs, rows, combine, partial: bool = False, read=None, **extra) -> Answer:
        """The answer over ``epochs``; a partial one is counted (``on_partial``) and the epochs of
        ``read`` (default ``epochs``) whose decode was partial are logged, each once per sketch
        (:class:`~telesketch.service.overload.OverloadWatch`)."""
        if partial:
            self.on_partial(cs.name)
            read = epochs if read is None else read
            positions = cs.window([e.states[cs.name] for e in read]).partial_epochs()
            self.watch.partial_epochs(cs.name, [read[i].id for i in positions])
        return Answer(rows, [e.id for e in epochs], sum(e.packets for e in epochs), cs.name, combine,
                      cs.kind.int_keys, extra, partial)

    # ------------------------------------------------------------------ queries
    def heavy_hitters(self, window: WindowSpec, sketch: str = "", phi=None, threshold=None) -> Answer:
        _check_fraction(phi, threshold)

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "heavy_hitters", sketch)
            epochs = self._epochs(window, cs=cs)
            n = sum(e.packets for e in epochs)
            got = ss.heavy_hitters(cs, [e.states[cs.name] for e in epochs], n, phi, threshold)
            return self._answer(cs, epochs, got.rows, got.combine, partial=got.partial > 0, **_unit(cs))
        return self._run("heavy_hitters", run)

    def heavy_changers(self, window: WindowSpec, sketch: str = "", phi=None, threshold=None) -> Answer:
        _check_fraction(phi, threshold)

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "heavy_changers", sketch)
            after = self._epochs(window, cs=cs)
            before = self._epochs(window, offset=1, cs=cs)
            got = ss.heavy_changers(
                cs, [e.states[cs.name] for e in before], [e.states[cs.name] for e in after],
                sum(e.packets for e in before), sum(e.packets for e in after), phi, threshold)
            return self._answer(cs, after, got.rows, got.combine, partial=got.partial > 0, read=before + after,
                                before=[e.id for e in before], **_unit(cs))
        return self._run("heavy_changers", run)

    def hhh(self, window: WindowSpec, sketch: str = "", phi=None, threshold=None, families=(4, 6)) -> Answer:
        """Rows :class:`HHHRow` ``(family, prefix bytes, length, estimate, discounted)`` of the
        ``families`` asked (4, 6 or both: the IPv4 and IPv6 trees side by side, one threshold over
        the window's packets of both), IPv4 first, then by length and prefix (coarsest first)."""
        _check_fraction(phi, threshold)
        families = _families(families)

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "hhh", sketch)
            epochs = self._epochs(window, cs=cs)
            n = sum(e.packets for e in epochs)
            got = ss.hhh(cs, [e.states[cs.name] for e in epochs], n, phi, threshold)
            rows = sorted((HHHRow(int(r.family), bytes(r.prefix), int(r.length), float(r.estimate), float(r.discounted))
                           for r in got.rows if r.family in families),
                          key=lambda r: (r.family, r.length, r.prefix))
            unit = cs.params.get("weight", "packets")  # byte-weighted: estimates and thresholds in bytes
            return self._answer(cs, epochs, rows, got.combine, **({"unit": unit} if unit == "bytes" else {}))
        return self._run("hhh", run)

    def gaps(self, window: WindowSpec, sketch: str = "", limit: int = 0, with_rows: bool = True) -> Answer:
        """Rows: the window's gap events as one structured array (:data:`GAP_ROW_DTYPE`: the event
        fields and ``epoch``) ordered by time (the newest ``limit``), formatted by
        :func:`telesketch.presenter.gap_rows`; ``extra["per_epoch"]``: events per epoch.
        ``with_rows=False``: only the counts (no rows built)."""
        if limit < 0:
            raise QueryError(f"limit must be >= 0, got {limit}")

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "gaps", sketch)
            epochs = self._epochs(window, cs=cs)
            got = ss.gap_events(cs, [e.states[cs.name] for e in epochs])
            per_epoch, combine = list(zip([e.id for e in epochs], got.rows)), got.combine
            rows = _gap_rows(per_epoch if with_rows else [], limit)
            counts = {eid: len(ev) for eid, ev in per_epoch}
            return self._answer(cs, epochs, rows, combine, per_epoch=counts)
        return self._run("gaps", run)

    def flow_size(self, window: WindowSpec, keys: list[bytes], sketch: str = "") -> Answer:
        if not keys:
            raise QueryError("flow_size needs at least one key")
        if len(keys) > MAX_FLOW_KEYS:
            raise TooLarge(f"at most {MAX_FLOW_KEYS} keys per flow_size query, got {len(keys)}")
        array = _flow_key_array(keys)

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "flow_size", sketch)
            epochs = self._epochs(window, cs=cs)
            got = ss.flow_size(cs, [e.states[cs.name] for e in epochs], array)
            return self._answer(cs, epochs, list(zip(keys, np.asarray(got.rows).tolist())), got.combine, **_unit(cs))
        return self._run("flow_size", run)

    def top_flows(self, window: WindowSpec, k: int = 10, sketch: str = "") -> Answer:
        if not 1 <= k <= MAX_TOP_K:
            raise QueryError(f"k must be in [1, {MAX_TOP_K}], got {k}")

        def run():
            cs = ss.pick(self.manager.sketchset.sketches, "top_flows", sketch)
            epochs = self._epochs(window, cs=cs)
            got = ss.top_flows(cs, [e.states[cs.name] for e in epochs], k)
            return self._answer(cs, epochs, got.rows, got.combine, **_unit(cs))
        return self._run("top_flows", run)


def ipv4_triples(rows: list) -> list[tuple[int, int, float]]:
    """The IPv4 rows of an HHH answer as ``(prefix int, length, discounted)``, the row form of
    answers before IPv6 (for callers that print IPv4 prefixes only)."""
    return [(int.from_bytes(r.prefix, "big"), r.length, r.discounted) for r in rows if r.family == 4]


def _flow_key_array(keys: list[bytes]) -> np.ndarray:
    """Flow keys as one array: ``uint8[n, 13]`` when every key is a 13-byte IPv4 key, else
    ``uint8[n, 37]`` (13-byte keys written as their v4-mapped 37-byte form, which every kind reads
    as the same IPv4 flow). ``QueryError`` naming the first key of another length."""
    bad = [i for i, k in enumerate(keys) if len(k) not in (FLOW_KEY_BYTES, FLOW_KEY37_BYTES)]
    if bad:
        raise QueryError(f"flow keys are {FLOW_KEY_BYTES} bytes (IPv4) or {FLOW_KEY37_BYTES} bytes (either family); "
                         f"key #{bad[0]} has {len(keys[bad[0]])}")
    if all(len(k) == FLOW_KEY_BYTES for k in keys):
        return np.frombuffer(b"".join(keys), np.uint8).reshape(-1, FLOW_KEY_BYTES)
    return np.frombuffer(b"".join(bytes(_key37(k)) for k in keys), np.uint8).reshape(-1, FLOW_KEY37_BYTES)


def _key37(key: bytes) -> bytes:
    """A 13-byte IPv4 flow key as its 37-byte v4-mapped form; a 37-byte key as it is."""
    if len(key) == FLOW_KEY37_BYTES:
        return key
    return V4_MAPPED_PREFIX + key[0:4] + V4_MAPPED_PREFIX + key[4:8] + key[8:13]


def _families(families) -> tuple[int, ...]:
    """The address families a query asks for: a non-empty subset of (4, 6)."""
    families = tuple(sorted({int(f) for f in families}))
    if not families or any(f not in (4, 6) for f in families):
        raise QueryError(f"address families are 4 and/or 6, got {list(families)}")
    return families


def _gap_rows(per_epoch: list[tuple[int, np.ndarray]], limit: int) -> np.ndarray:
    """Every ``(epoch id, events)`` pair's events in one :data:`GAP_ROW_DTYPE` array, each tagged
    with its epoch, stably ordered by ``ts_ns``; the newest ``limit`` (0: all). Fields an epoch's
    events lack (layout-1 snapshots: IPv4 only) stay zero."""
    rows = np.zeros(sum(len(ev) for _, ev in per_epoch), GAP_ROW_DTYPE)
    at = 0
    for eid, ev in per_epoch:
        part = rows[at:at + len(ev)]
        for name in ev.dtype.names:
            part[name] = ev[name]
        part["epoch"] = eid
        at += len(ev)
    rows = rows[np.argsort(rows["ts_ns"], kind="stable")]
    return rows[-limit:] if limit else rows


def _unit(cs) -> dict:
    """``{"unit": "bytes"}`` for a byte-weighted sketch (estimates and thresholds in bytes), else nothing."""
    return {"unit": "bytes"} if cs.params.get("weight", "packets") == "bytes" else {}
