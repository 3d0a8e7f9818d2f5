"""The configured sketches: build them by kind name, and ask each query of their kind's window.

The service holds no sketch arithmetic. It calls the sketch contract
(:class:`telesketch.sketches.core.SketchContract`): ``update``, ``to_bytes``/``from_bytes``,
``copy``, ``successor``, ``start_epoch``, and for a query the kind's ``combine`` over the window's
states, whose window answers it with the kind's rule (:mod:`telesketch.sketches.combine`; also in
the API docs, ``telesketch/service/__init__.py``). Each epoch's LLM-Sketch is the previous one's
``successor()``: the per-flow score cache carries over, so flows are scored once, not once per epoch.

Sharded windows (the service on Ray shards, :mod:`telesketch.distributed.service`): the sharded
configured sketch combines each shard's states over the epochs, then the shards' windows, by the
same kind rule the Ray front end (:mod:`telesketch.distributed.cluster`) uses.

A kind whose module is missing or fails a probe (build, update a 2-packet batch, round-trip
through ``to_bytes``) is skipped with a log line and a note in ``Stats``: a sketch not yet built is
simply not configured. Bad parameters for a kind that does import are a configuration error.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from telesketch.errors import NotFound, Precondition, QueryError, Unavailable
from telesketch.kinds_config import kind_config
from telesketch.packets import PacketBatch
from telesketch.service.config import ConfigError
from telesketch.service.overload import OverloadWatch
from telesketch.sketches.core import (EPOCHS, Combined, MergedWindow, SketchError, Window, envelope_algorithm,
                                      pack_state, unpack_state, window_threshold)

log = logging.getLogger("telesketch.service")

#: per pool thread: whether its Numba thread count has been set to 1 (``update_parts``' ``drain``)
_pool_thread = threading.local()

#: Envelope of a sharded state (:mod:`telesketch.distributed.service`): one blob per shard.
SHARDS_ENVELOPE = "service-shards"

#: Query names, as used in ``Kind.queries`` and ``Stats``.
QUERIES = ("heavy_hitters", "heavy_changers", "hhh", "gaps", "flow_size", "top_flows")


@dataclass(frozen=True)
class Kind:
    """A sketch kind: where its class lives and which queries it answers.

    ``continuous``: one instance lives across epochs (GapFilter: flows persist); a closed epoch
    keeps only its gap events and coverage (:class:`ClosedGapEpoch`). ``load_params``: parameters also passed to ``from_bytes`` (things
    not in the serialised state, e.g. LLM-Sketch's estimator). ``int_keys``: how integer keys read
    (``ipv4`` addresses, or ``fingerprint`` for LLM-Sketch's flow-size task).
    """

    module: str
    cls: str
    queries: frozenset
    continuous: bool = False
    load_params: tuple[str, ...] = ()
    int_keys: str = "ipv4"
    gpu_cls: str = ""  #: ``module:Class`` of the GPU twin (:mod:`telesketch.gpu`), "" when there is none
    #: Ray shards: a key's packets spread over the shards (prefixes: ResidualSketch), so each shard
    #: promotes at its share of the threshold and reseeds (spec §4)
    spread_keys: bool = False
    #: Ray shards: packets routed by this address column when the sketch's ``key`` is it ("" : by flow);
    #: read from :data:`telesketch.kinds_config.KIND_CONFIG`, which config validation checks ``key`` against
    route_key: str = ""
    #: the state charges its IPv6 tree apart from ``memory_bytes`` (``ipv6_memory_bytes``, allocated
    #: with the sketch: ResidualSketch); :meth:`ConfiguredSketch.memory` adds the two
    ipv6_tree_memory: bool = False
    #: counts exactly (the ``exact`` kind): a ground truth, not an estimate; the report lists only
    #: estimating sketches among "more heavy hitters"
    exact: bool = False
    #: parameters only the GPU twin takes (ResidualSketch's update mode): :func:`configure` refuses
    #: them with a :class:`ConfigError` on a sketch that runs on the CPU
    gpu_params: tuple[str, ...] = ()


class ClosedGapEpoch:
    """A closed epoch of a continuous kind (GapFilter): the live sketch moves on to the next epoch,
    the closed one keeps its gap ``events`` (``GAP_EVENT_DTYPE`` structured array, arrival order) and
    its :meth:`coverage` (the sketch's ``coverage()`` at close: packets inspected and IPv6 packets
    skipped by reason), so the report and the metrics count the closed epochs' IPv6 coverage too.
    ``coverage`` is ``None`` where it is unknown: an epoch written before it was kept, or one whose
    snapshot lacked this sketch."""

    load_factor = None  #: a closed gap epoch holds no sketch whose decode could overflow

    def __init__(self, events: np.ndarray, coverage: dict | None):
        self.events = events
        self._coverage = coverage

    def gap_events(self) -> np.ndarray:
        return self.events

    def coverage(self) -> dict | None:
        """``{"covered_packets": n, "skipped_packets": {reason: n}}`` at close, or ``None`` (unknown)."""
        if self._coverage is None:
            return None
        return {"covered_packets": int(self._coverage["covered_packets"]),
                "skipped_packets": {str(r): int(n) for r, n in self._coverage["skipped_packets"].items()}}

    @property
    def memory_bytes(self) -> int:
        """Bytes of the events kept."""
        return int(self.events.nbytes)


def _twin(cls: str) -> str:
    return f"telesketch.gpu.{cls}"


#: ResidualSketch's GPU update settings (``gpu.residualsketch``): not in the state, so also load parameters
_RESIDUAL_GPU_UPDATE = ("gpu_update", "batched_chunk")


KINDS: dict[str, Kind] = {
    "gapfilter_so": Kind("telesketch.sketches.gapfilter", "GapFilterSO", frozenset({"gaps"}), continuous=True,
                         gpu_cls=_twin("gapfilter:GapFilterSO")),
    "gapfilter_ao": Kind("telesketch.sketches.gapfilter", "GapFilterAO", frozenset({"gaps"}), continuous=True,
                         gpu_cls=_twin("gapfilter:GapFilterAO")),
    "gapfilter_straw": Kind("telesketch.sketches.gapfilter", "GapFilterStraw", frozenset({"gaps"}), continuous=True),
    "hiddensketch": Kind("telesketch.sketches.hiddensketch", "HiddenSketch",
                         frozenset({"heavy_hitters", "heavy_changers"}), gpu_cls=_twin("hiddensketch:HiddenSketch"),
                         route_key=kind_config("hiddensketch").route_key),
    "residualsketch": Kind("telesketch.sketches.residualsketch", "ResidualSketch", frozenset({"hhh"}),
                           gpu_cls=_twin("residualsketch:ResidualSketch"), spread_keys=True, ipv6_tree_memory=True,
                           load_params=_RESIDUAL_GPU_UPDATE, gpu_params=_RESIDUAL_GPU_UPDATE),
    "llmsketch": Kind("telesketch.sketches.llmsketch", "LLMSketch", frozenset({"flow_size", "top_flows"}),
                      load_params=("estimator", "estimator_path", "rescore", "cache_flows", "floor_from", "pivot",
                                   "memory_bytes", "scorer_memory", "scorer_share"),
                      int_keys="fingerprint",
                      gpu_cls=_twin("llmsketch:LLMSketch")),
    "exact": Kind("telesketch.service.exactsketch", "ExactSketch", frozenset(QUERIES), exact=True),
}


#: A sketch state cannot be reached now (a lost Ray shard): ingest and queries answer ``UNAVAILABLE``.
StateUnavailableError = Unavailable


def _probe_batch() -> PacketBatch:
    return PacketBatch.from_columns(
        ts_ns=np.array([1, 2], np.uint64), src_ip=np.array([0x0A000001, 0x0A000002], np.uint32),
        dst_ip=np.array([0x0A000003, 0x0A000003], np.uint32), src_port=np.array([1, 2], np.uint16),
        dst_port=np.array([80, 80], np.uint16), proto=np.array([6, 6], np.uint8), ip_id=np.array([1, 2], np.uint16))


@dataclass
class ConfiguredSketch:
    """One named sketch instance from the config. ``active`` False: skipped (see ``note``)."""

    name: str
    kind_name: str
    params: dict[str, Any]
    kind: Kind | None = None
    cls: type | None = None
    active: bool = False
    note: str = ""
    device: str = "cpu"     #: where its states live and update: "cpu" or "gpu"
    backend: str = "numpy"  #: the array backend there: numpy (CPU), or cupy / numba / simulator (GPU)
    #: its sketch's ``batch_invariant`` (asked of the probe sketch built by :func:`configure`): joined
    #: batches leave the state that the same batches one by one leave
    batch_invariant: bool = False

    # ------------------------------------------------------------------ lifecycle
    def build(self):
        return self.cls(**self.params)

    def load(self, data: bytes, live: bool = True):
        """A state from bytes; ``live=False`` (a closed epoch: queried, never updated) leaves out what
        only updates need, e.g. LLM-Sketch's estimator and its flow-score cache."""
        extra = {k: self.params[k] for k in self.kind.load_params if k in self.params} if live else {}
        return self.cls.from_bytes(data, **extra)

    def copy(self, sketch):
        return sketch.copy()

    def window(self, states: list) -> Window:
        """The kind's combination of one state per epoch of a query window (:meth:`Sketch.combine`)."""
        return self.cls.combine(states, EPOCHS)

    def dump_state(self, state) -> bytes:
        """Bytes of a per-epoch state: the sketch's ``to_bytes``, or a closed epoch's gap events and
        coverage (:class:`ClosedGapEpoch`; layout 1, the coverage an optional parameter that earlier
        readers ignore)."""
        if isinstance(state, ClosedGapEpoch):
            events, coverage = state.events, state.coverage()
            params = {} if coverage is None else {"coverage": coverage}
            return pack_state("service-gap-events", 1, params, {"events": events.view(np.uint8).reshape(-1)},
                              extra={"dtype": events.dtype.descr})
        return state.to_bytes()

    def load_state(self, data: bytes, closed: bool):
        if envelope_algorithm(data) == SHARDS_ENVELOPE:
            shards = unpack_state(data, SHARDS_ENVELOPE, 1)[0].get("shards")
            raise SketchError(f"sketch {self.name!r}: the data directory was written by a service with its sketches "
                              f"on {shards} Ray shards; start it with shards = {shards}, or use another data_dir")
        if self.kind.continuous and closed:
            params, arrays, _, extra = unpack_state(data, "service-gap-events", 1)
            dtype = np.dtype([tuple(f) for f in extra["dtype"]])
            return ClosedGapEpoch(arrays["events"].view(dtype), params.get("coverage"))
        return self.load(data, live=not closed)

    def empty_state(self, closed: bool):
        """An empty state (an epoch whose snapshot lacks this sketch, e.g. one added to the config):
        no gap events (coverage unknown) for a closed epoch of a continuous kind, else a fresh sketch."""
        if self.kind.continuous and closed:
            return ClosedGapEpoch(self.build().gap_events(), None)
        return self.build()

    def close(self, state, epoch: int | None = None, watch: OverloadWatch | None = None):
        """The closed epoch's representation of ``state`` (events for continuous kinds).

        Hands the state's ``load_factor`` to ``watch`` (a fresh log-only one when ``None``), which
        warns once per epoch when it is 1 or more (Hidden Sketch: its answers for the epoch will
        likely be partial, the configured memory is too small for the traffic) and counts it."""
        load = state.load_factor
        if load is not None:
            (watch or OverloadWatch()).epoch_closed(self.name, epoch, load, self.memory(state))
        return ClosedGapEpoch(state.gap_events(), state.coverage()) if self.kind.continuous else state

    def next_state(self, state, epoch: int):
        """The state for the next epoch: the same live sketch (continuous kinds), an empty
        ``successor()`` sharing what outlives an epoch (LLM-Sketch's flow-score cache), or a fresh one."""
        if state is None:
            return self.build()
        if self.kind.continuous:
            state.start_epoch(int(epoch))
            return state
        successor = state.successor()
        return self.build() if successor is None else successor

    def memory(self, state) -> int:
        """Bytes of one epoch's state, both address families: ``memory_bytes`` (a closed GapFilter
        epoch's: its events) plus, for a kind with :attr:`Kind.ipv6_tree_memory`, the IPv6 tree's
        ``ipv6_memory_bytes`` (Hidden Sketch's ``memory_bytes`` already counts its IPv6 companion
        once the first IPv6 row made it)."""
        ipv6 = state.ipv6_memory_bytes if self.kind.ipv6_tree_memory else 0
        return int(state.memory_bytes + ipv6)


def configure(specs: dict[str, dict[str, Any]], device: str = "cpu") -> list[ConfiguredSketch]:
    """Resolve the ``[sketches]`` table: import, build and probe each; skip the unavailable ones.

    ``device`` (``cpu`` or ``gpu``) is where sketches without their own ``device`` key run; a kind
    without a GPU twin (``exact``, ``gapfilter_straw``) stays on the CPU unless its own key asks for
    the GPU, which is a :class:`ConfigError`. A sketch on the GPU is never skipped and never falls
    back to the CPU: a missing ``[gpu]`` extra, no usable device, or a failed probe is a
    :class:`ConfigError` saying so.
    """
    out = []
    for name, spec in specs.items():
        params = {k: v for k, v in spec.items() if k not in ("kind", "device")}
        cs = ConfiguredSketch(name, spec["kind"], params)
        out.append(cs)
        kind = KINDS.get(cs.kind_name)
        if kind is None:
            raise ConfigError(f"sketch {name!r}: unknown kind {cs.kind_name!r}; known: {sorted(KINDS)}")
        cs.kind = kind
        wanted = spec.get("device", device if kind.gpu_cls else "cpu")
        if wanted == "gpu":
            _configure_gpu(cs)
            continue
        if wanted != "cpu":
            raise ConfigError(f"sketch {name!r}: device must be 'cpu' or 'gpu', got {wanted!r}")
        for key in kind.gpu_params:
            if key in params:
                raise ConfigError(f"sketch {name!r} ({cs.kind_name}): {key} = {params[key]!r} applies to "
                                  f"device = \"gpu\" only, and this sketch runs on the CPU; remove it or set "
                                  f"device = \"gpu\"")
        try:
            cs.cls = getattr(importlib.import_module(kind.module), kind.cls)
        except Exception as exc:  # noqa: BLE001 - a half-written module must not stop the service
            cs.note = f"not available: {kind.module}.{kind.cls} does not import ({type(exc).__name__}: {exc})"
            log.warning("sketch %s (%s) skipped: %s", name, cs.kind_name, cs.note)
            continue
        try:
            sketch = cs.build()
        except (SketchError, TypeError, ValueError) as exc:
            raise ConfigError(f"sketch {name!r} ({cs.kind_name}): bad parameters: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. a missing optional estimator package
            cs.note = f"cannot be built here ({type(exc).__name__}: {exc})"
            log.warning("sketch %s (%s) skipped: %s", name, cs.kind_name, cs.note)
            continue
        try:
            sketch.update(_probe_batch())
            cs.load(sketch.to_bytes())
        except Exception as exc:  # noqa: BLE001
            cs.note = f"failed its probe (update + to_bytes/from_bytes): {type(exc).__name__}: {exc}"
            log.warning("sketch %s (%s) skipped: %s", name, cs.kind_name, cs.note)
            continue
        cs.active = True
        cs.batch_invariant = bool(sketch.batch_invariant)
        log.info("sketch %s: %s %s", name, cs.kind_name, params)
        if getattr(sketch, "scorer_bytes", 0):
            log.info("sketch %s: its flow-score cache holds %.1f MiB %s the sketch's %d bytes", name,
                     sketch.scorer_bytes / 2**20, "within" if getattr(sketch, "scorer_charged", False) else "beside",
                     sketch.memory_bytes)
    return out


def _configure_gpu(cs: ConfiguredSketch) -> None:
    """Make ``cs`` a sketch on the GPU twin of its kind, or raise :class:`ConfigError` saying why not."""
    where = f"sketch {cs.name!r} ({cs.kind_name}) on device gpu"
    if not cs.kind.gpu_cls:
        twins = sorted(k for k, v in KINDS.items() if v.gpu_cls)
        raise ConfigError(f"{where}: kind {cs.kind_name!r} has no GPU implementation (kinds with one: {twins}); "
                          f"set device = \"cpu\" for it")
    module, cls = cs.kind.gpu_cls.split(":")
    try:
        cs.cls = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ConfigError(f"{where}: the GPU support does not import ({exc}); "
                          f"install it with pip install 'telesketch[gpu]'") from None
    from telesketch.gpu.core import GpuUnavailableError

    try:
        sketch = cs.build()
    except GpuUnavailableError as exc:
        raise ConfigError(f"{where}: no usable GPU: {exc}") from None
    except (SketchError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad parameters: {exc}") from None
    try:
        sketch.update(_probe_batch())
        cs.load(sketch.to_bytes())
    except Exception as exc:  # noqa: BLE001 - never a silent fall-back to the CPU
        raise ConfigError(f"{where}: failed its probe (update + to_bytes/from_bytes): "
                          f"{type(exc).__name__}: {exc}") from None
    cs.device, cs.backend, cs.active = "gpu", sketch.device_backend, True
    cs.batch_invariant = bool(sketch.batch_invariant)
    log.info("sketch %s: %s on the GPU (%s) %s", cs.name, cs.kind_name, cs.backend, cs.params)


def pick(sketches: list[ConfiguredSketch], query: str, name: str = "") -> ConfiguredSketch:
    """The named active sketch, or the first active one answering ``query``; else ``QueryError``."""
    if name:
        for cs in sketches:
            if cs.name == name:
                if not cs.active:
                    raise Precondition(f"sketch {name!r} is configured but not active: {cs.note}")
                if query not in cs.kind.queries:
                    raise QueryError(f"sketch {name!r} ({cs.kind_name}) does not answer {query}; "
                                                         f"it answers {sorted(cs.kind.queries)}")
                return cs
        raise NotFound(f"no sketch named {name!r}; configured: {[c.name for c in sketches]}")
    for cs in sketches:
        if cs.active and query in cs.kind.queries:
            return cs
    raise Precondition(f"no active sketch answers {query}; configured: "
                                            f"{[(c.name, c.kind_name, c.active) for c in sketches]}")


# ====================================================================== queries over a window
# Each function asks the kind's window (``cs.window(states)``: the kind's ``combine`` over the
# window's epochs, and over the shards of a sharded sketch) for the query's rows; the rules live in
# the kinds (:mod:`telesketch.sketches.combine`), none here.
def merged_state(cs: ConfiguredSketch, states: list):
    """One merged copy of the states of a mergeable kind (``exact``)."""
    return MergedWindow(states).merged()


def heavy_hitters(cs, states, n_packets, phi=None, threshold=None) -> Combined:
    window = cs.window(states)
    volume = window.volume(n_packets)  # bytes for a byte-weighted sketch
    window.check_floor(window_threshold(phi, threshold, volume), "heavy_hitters", cs.name)
    return window.heavy_hitters(n_packets, phi, threshold)


def heavy_changers(cs, before, after, n_before, n_after, phi=None, threshold=None) -> Combined:
    window, packets = cs.window(after), max(n_before, n_after)
    volume = max(window.volume(n_after), cs.window(before).volume(n_before))  # the larger window's
    window.check_floor(window_threshold(phi, threshold, volume), "heavy_changers", cs.name)
    return window.heavy_changers(cs.window(before), packets, phi, threshold)


def hhh(cs, states, n_packets, phi=None, threshold=None) -> Combined:
    """Rows: ``HHHRow`` of both address families (:meth:`Window.hhh_rows`)."""
    return cs.window(states).hhh_rows(n_packets, phi, threshold)


def gap_events(cs, states) -> Combined:
    """Rows: per epoch of ``states``, its gap events (structured arrays); the window is their union."""
    return cs.window(states).gap_events()


def flow_size(cs, states, keys: np.ndarray) -> Combined:
    return cs.window(states).flow_size(keys)


def top_flows(cs, states, k: int) -> Combined:
    return cs.window(states).top_flows(k)


def default_concurrency() -> int:
    """Threads that update one batch's sketches: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class SketchSet:
    """The configured sketches plus helpers to make, update and serialise one epoch's states.

    ``concurrency``: threads that apply one batch to the sketches (``None``: the available cores;
    1: one after another on the calling thread). The sketches' kernels release the GIL, so
    different sketches of the same batch run on different cores; each sketch still sees the
    batches one at a time and in order (``update`` returns when every sketch has applied the
    batch), so every state and answer is the same as with ``concurrency=1``.
    """

    sketches: list[ConfiguredSketch] = field(default_factory=list)
    concurrency: int | None = None
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False, compare=False)
    _cost: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: wall seconds each sketch spent in ``update`` so far (for benchmarks)
    update_seconds: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: IPv6 packets withheld from each IPv4-only sketch (``Sketch.takes_ipv6``)
    ipv6_withheld: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: warns about (and counts) epochs closing over their sketch's load factor, once each (the
    #: service sets one with its metrics; ``None``: log only)
    watch: OverloadWatch | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, specs: dict[str, dict[str, Any]], device: str = "cpu") -> "SketchSet":
        """The sketches of ``specs``; ``device``: where those without a ``device`` key run.
        :class:`ConfigError` when none of them is active (a service that would answer nothing does
        not start)."""
        built = cls(configure(specs, device))
        if specs and not built.active:
            raise ConfigError("no configured sketch is active, so the service would answer nothing: "
                              + "; ".join(f"{cs.name!r} ({cs.kind_name}) {cs.note}" for cs in built.sketches))
        return built

    @property
    def active(self) -> list[ConfiguredSketch]:
        return [cs for cs in self.sketches if cs.active]

    def new_states(self, epoch: int, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        previous = previous or {}
        return {cs.name: cs.next_state(previous.get(cs.name), epoch) for cs in self.active}

    @property
    def batch_invariant(self) -> bool:
        """Whether one :meth:`update` with batches joined in order (``PacketBatch.concat``) leaves
        every active sketch's state exactly as updating with them one by one would: each sketch's
        ``batch_invariant`` (``Sketch.batch_invariant``). The service joins the batches queued behind
        one another only then (:meth:`telesketch.service.epochs.EpochManager.apply_many`). True for
        a set with no active sketch (no state that could differ)."""
        return all(cs.batch_invariant for cs in self.active)

    def applied_marker(self) -> int | None:
        """``None``: :meth:`update` returns only once every sketch applied the batch. (The sharded
        set may return earlier and hand out a marker to wait for; see ``ShardedSketchSet``.)"""
        return None

    def wait_applied(self, marker: int) -> None:
        """Nothing to wait for here (see :meth:`applied_marker`)."""

    def applied_through(self) -> int:
        """The latest marker known applied everywhere without waiting (nothing to wait for here: 0,
        as no marker is handed out)."""
        return 0

    def count_withheld(self, name: str, rows: int) -> None:
        """Count ``rows`` IPv6 rows withheld from the IPv4-only sketch ``name`` (``ipv6_withheld``)."""
        self.ipv6_withheld[name] = self.ipv6_withheld.get(name, 0) + rows

    def update(self, states: dict[str, Any], batch: PacketBatch) -> None:
        """Apply ``batch`` to every active sketch's state (concurrently, see ``concurrency``)."""
        self.update_parts(states, {cs.name: batch for cs in self.active})

    def update_batches(self, states: dict[str, Any], batches: list[PacketBatch]) -> None:
        """Apply ``batches`` in order to every active sketch: one :meth:`update_parts` (one round
        trip through the update threads) for all of them, each sketch updated batch by batch, so
        every state is the one :meth:`update` of each batch in turn leaves (for any kind)."""
        if len(batches) == 1:
            self.update(states, batches[0])
            return
        run = tuple(batches)
        self.update_parts(states, {cs.name: run for cs in self.active})

    def update_parts(self, states: dict[str, Any],
                     parts: dict[str, PacketBatch | tuple[PacketBatch, ...] | None]) -> None:
        """``states[name].update(parts[name])`` for every name (empty or ``None`` parts skipped); a
        tuple of batches updates that sketch with each in turn (:meth:`update_batches`).

        With more than one thread the updates run concurrently: the calling thread and
        ``concurrency - 1`` pool threads take sketches from one list, the costliest first
        (per-packet seconds of earlier batches), each on one Numba thread, and this returns when
        all are done. If updates fail, the first failing sketch's exception (in ``parts`` order)
        is raised after the others have finished. ``update_seconds[name]`` adds up each sketch's
        wall time. A state whose ``caller_thread_only`` is set (the GPU twins: one device queue, and
        Numba's CUDA simulator is not thread-safe) is updated on the calling thread, first.
        """
        parts = {name: part if part is None or isinstance(part, tuple) else (part,) for name, part in parts.items()}
        # id(part) -> (its IPv4 rows, its IPv6 rows withheld): counted and filtered once per distinct
        # part, not per IPv4-only sketch (the sketches only read their input, as they share the batch)
        ipv4_rows: dict[int, tuple[PacketBatch, int]] = {}
        for cs in (cs for cs in self.sketches if parts.get(cs.name) is not None and not cs.cls.takes_ipv6(cs.params)):
            kept = []
            for part in parts[cs.name]:
                if id(part) not in ipv4_rows:
                    ipv4_rows[id(part)] = part.only_ipv4()  # IPv6 rows must not count as IPv4
                rows, n6 = ipv4_rows[id(part)]
                kept.append(rows)
                self.count_withheld(cs.name, n6)
            parts[cs.name] = tuple(kept)
        sizes = {name: sum(len(part) for part in run) for name, run in parts.items() if run is not None}
        names = [name for name, size in sizes.items() if size]
        threads = min(len(names), self.threads) if names else 0  # no sketch: no affinity lookup per batch
        if threads <= 1:
            for name in names:
                self._timed_update(states[name], name, parts[name])
            return
        errors: dict[str, BaseException] = {}
        on_caller = {cs.name for cs in self.sketches if cs.active and cs.cls.caller_thread_only}
        for name in [name for name in names if name in on_caller]:
            try:
                self._timed_update(states[name], name, parts[name])
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in parts order
                errors[name] = exc
        names = [name for name in names if name not in on_caller]
        threads = min(len(names), self.threads)
        names.sort(key=lambda name: -self._cost.get(name, 0.0) * sizes[name])
        pending = iter(names)
        take = threading.Lock()

        def drain() -> None:
            # the cores are taken by the sketches themselves: each kernel runs on one thread
            # (Numba's thread count is per calling thread; the parallel kernels give the same results).
            # A pool thread sets it once (nothing else runs there); the caller's is set and restored below.
            if threading.current_thread() is not caller and not getattr(_pool_thread, "one_numba_thread", False):
                numba.set_num_threads(1)
                _pool_thread.one_numba_thread = True
            while True:
                with take:
                    name = next(pending, None)
                if name is None:
                    return
                try:
                    self._timed_update(states[name], name, parts[name])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                    errors[name] = exc

        caller = threading.current_thread()
        pool = self._executor()
        helpers = [pool.submit(drain) for _ in range(threads - 1)]
        own_threads = numba.get_num_threads()
        if own_threads != 1:
            numba.set_num_threads(1)
        try:
            drain()
        finally:
            if own_threads != 1:
                numba.set_num_threads(own_threads)
        for helper in helpers:
            helper.result()
        for name in parts:
            if name in errors:
                raise errors[name]

    def _timed_update(self, state, name: str, run: tuple[PacketBatch, ...]) -> None:
        """``state.update`` of each non-empty batch of ``run`` in turn, timed (``update_seconds``,
        and the per-packet cost that orders the sketches)."""
        start = time.perf_counter()
        packets = 0
        for part in run:
            if len(part):
                state.update(part)
                packets += len(part)
        seconds = time.perf_counter() - start
        previous = self._cost.get(name)
        per_packet = seconds / packets
        self._cost[name] = per_packet if previous is None else 0.8 * previous + 0.2 * per_packet
        self.update_seconds[name] = self.update_seconds.get(name, 0.0) + seconds

    @property
    def threads(self) -> int:
        """Threads used per batch (``concurrency``, or the available cores when ``None``)."""
        return default_concurrency() if self.concurrency is None else max(1, int(self.concurrency))

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, self.threads - 1), thread_name_prefix="telesketch-sketch")
        return self._pool

    def shutdown_pool(self) -> None:
        """Stop the update threads (a later update starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def shutdown(self) -> None:
        """Release what the sketches hold outside this object: the update threads (and, for the
        sharded set, the Ray shard actors)."""
        self.shutdown_pool()

    def close(self, states: dict[str, Any], epoch: int | None = None) -> dict[str, Any]:
        """The closed representations of epoch ``epoch``'s ``states`` (:meth:`ConfiguredSketch.close`)."""
        return {name: self.get(name).close(state, epoch, self.watch) for name, state in states.items()}

    def get(self, name: str) -> ConfiguredSketch:
        for cs in self.sketches:
            if cs.name == name:
                return cs
        raise KeyError(name)
