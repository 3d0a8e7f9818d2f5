"""The configured sketches: build them by kind name, and map each query to their public methods.

The service holds no sketch arithmetic. It calls ``update``, ``to_bytes``/``from_bytes``, ``merge``
and the sketches' own queries; answers over several epochs are combined by the rules below (also in
the API docs, ``telesketch/service/__init__.py``):

* a kind whose state merges (``exact``) is merged at query time and queried once (``merged``);
* Hidden Sketch (not mergeable, one-pass): a key's window estimate is the sum over the window's
  epochs of its reported estimate, or the epoch's point estimate where it was not reported; keys
  reported in any epoch are candidates; reported when the sum passes the window threshold
  (``sum of per-epoch estimates``). Heavy changers compare such sums of two adjacent windows;
* ResidualSketch: the per-layer estimates of the epochs are summed and one HHH pass runs over them
  (the sketch module's own ``merged_hhh``; ``summed layer estimates``);
* GapFilter: its detection state carries across epochs (flows persist); each epoch keeps the gap
  events reported during it, and a window is the union of its epochs' events (``union``);
* LLM-Sketch: flow sizes are the sum of per-epoch estimates; top flows sum, for every flow in
  any epoch's heavy part, its estimates over all the window's epochs (``sum of per-epoch
  estimates``). Each epoch's sketch is the previous one's ``successor()``: the per-flow score
  cache carries over, so flows are scored once, not once per epoch.

Sharded windows (the service on Ray shards, :mod:`telesketch.distributed.service`): a state may
stand for one sketch's shards (it has ``shard_states()``). ``exact`` merges every shard of every
epoch; sketches whose state is sharded by their key (LLM-Sketch and Hidden Sketch: packets are
routed by flow, or by source for Hidden Sketch keyed by source) apply the rules above per shard and
union the shards' answers (a flow size is read from the key's owning shard); ResidualSketch (a
prefix's sources spread over shards) treats every shard of every epoch as one more state to sum, at
the service-wide threshold; GapFilter unions the shards' events.

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
from typing import Any, Callable

import numba
import numpy as np

from telesketch.packets import PacketBatch
from telesketch.sketches.core import NotMergeableError, SketchError, envelope_algorithm, pack_state, unpack_state
from telesketch.service.config import ConfigError

log = logging.getLogger("telesketch.service")

#: Envelope of a sharded state (:mod:`telesketch.distributed.service`): one blob per shard.
SHARDS_ENVELOPE = "service-shards"

#: Query names, as used in ``Kind.queries`` and ``Stats``.
QUERIES = ("heavy_hitters", "heavy_changers", "hhh", "gaps", "flow_size", "top_flows")


@dataclass(frozen=True)
class Kind:
    """A sketch kind: where its class lives and which queries it answers.

    ``continuous``: one instance lives across epochs (GapFilter: flows persist); a closed epoch
    keeps only its gap events. ``load_params``: parameters also passed to ``from_bytes`` (things
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


def _twin(cls: str) -> str:
    return f"telesketch.gpu.{cls}"


KINDS: dict[str, Kind] = {
    "gapfilter_so": Kind("telesketch.sketches.gapfilter", "GapFilterSO", frozenset({"gaps"}), continuous=True,
                         gpu_cls=_twin("gapfilter:GapFilterSO")),
    "gapfilter_ao": Kind("telesketch.sketches.gapfilter", "GapFilterAO", frozenset({"gaps"}), continuous=True,
                         gpu_cls=_twin("gapfilter:GapFilterAO")),
    "gapfilter_straw": Kind("telesketch.sketches.gapfilter", "GapFilterStraw", frozenset({"gaps"}), continuous=True),
    "hiddensketch": Kind("telesketch.sketches.hiddensketch", "HiddenSketch",
                         frozenset({"heavy_hitters", "heavy_changers"}), gpu_cls=_twin("hiddensketch:HiddenSketch")),
    "residualsketch": Kind("telesketch.sketches.residualsketch", "ResidualSketch", frozenset({"hhh"}),
                           gpu_cls=_twin("residualsketch:ResidualSketch")),
    "llmsketch": Kind("telesketch.sketches.llmsketch", "LLMSketch", frozenset({"flow_size", "top_flows"}),
                      load_params=("estimator", "estimator_path", "rescore", "cache_flows", "floor_from"), int_keys="fingerprint",
                      gpu_cls=_twin("llmsketch:LLMSketch")),
    "exact": Kind("telesketch.service.exactsketch", "ExactSketch", frozenset(QUERIES)),
}


class StateUnavailableError(RuntimeError):
    """A sketch state cannot be reached now (a lost Ray shard): the caller should retry later;
    ingest and queries answer ``UNAVAILABLE``."""


class QueryError(Exception):
    """A query that cannot be answered: ``code`` is a gRPC status name (``NOT_FOUND``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


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

    # ------------------------------------------------------------------ lifecycle
    def build(self):
        return self.cls(**self.params)

    def load(self, data: bytes, live: bool = True):
        """A state from bytes; ``live=False`` (a closed epoch: queried, never updated) leaves out what
        only updates need, e.g. LLM-Sketch's estimator and its flow-score cache."""
        extra = {k: self.params[k] for k in self.kind.load_params if k in self.params} if live else {}
        return self.cls.from_bytes(data, **extra)

    def copy(self, sketch):
        return sketch.copy() if hasattr(sketch, "copy") else self.load(sketch.to_bytes())

    def dump_state(self, state) -> bytes:
        """Bytes of a per-epoch state: the sketch's ``to_bytes``, or a closed epoch's gap events."""
        if isinstance(state, np.ndarray):
            return pack_state("service-gap-events", 1, {}, {"events": state.view(np.uint8).reshape(-1)},
                              extra={"dtype": state.dtype.descr})
        return state.to_bytes()

    def load_state(self, data: bytes, closed: bool):
        if envelope_algorithm(data) == SHARDS_ENVELOPE:
            shards = unpack_state(data, SHARDS_ENVELOPE, 1)[0].get("shards")
            raise SketchError(f"sketch {self.name!r}: the data directory was written by a service with its sketches "
                              f"on {shards} Ray shards; start it with shards = {shards}, or use another data_dir")
        if self.kind.continuous and closed:
            _, arrays, _, extra = unpack_state(data, "service-gap-events", 1)
            dtype = np.dtype([tuple(f) for f in extra["dtype"]])
            return arrays["events"].view(dtype)
        return self.load(data, live=not closed)

    def empty_state(self, closed: bool):
        """An empty state (an epoch whose snapshot lacks this sketch, e.g. one added to the config):
        no gap events for a closed epoch of a continuous kind, else a fresh sketch."""
        return self.build().gap_events() if self.kind.continuous and closed else self.build()

    def close(self, state):
        """The closed epoch's representation of ``state`` (events for continuous kinds).

        Warns when the state's ``load_factor`` (Hidden Sketch) is 1 or more: its answers for the
        epoch will likely be partial, the configured memory is too small for the traffic."""
        load = getattr(state, "load_factor", None)
        if isinstance(load, float) and load >= 1.0:
            log.warning("sketch %s: load factor %.2f at the end of an epoch: its memory (%d bytes) is too small "
                        "for this traffic, its answers will be partial (see `telesketch size`)",
                        self.name, load, self.memory(state))
        return state.gap_events() if self.kind.continuous else state

    def next_state(self, state, epoch: int):
        """The state for the next epoch: the same live sketch (continuous kinds), an empty
        ``successor()`` sharing what outlives an epoch (LLM-Sketch's flow-score cache), or a fresh one."""
        if self.kind.continuous and state is not None:
            if hasattr(state, "start_epoch"):
                state.start_epoch(int(epoch))
            return state
        if state is not None and hasattr(state, "successor"):
            return state.successor()
        return self.build()

    def memory(self, state) -> int:
        return int(state.nbytes if isinstance(state, np.ndarray) else state.memory_bytes)


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
        log.info("sketch %s: %s %s", name, cs.kind_name, params)
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
    log.info("sketch %s: %s on the GPU (%s) %s", cs.name, cs.kind_name, cs.backend, cs.params)


def pick(sketches: list[ConfiguredSketch], query: str, name: str = "") -> ConfiguredSketch:
    """The named active sketch, or the first active one answering ``query``; else ``QueryError``."""
    if name:
        for cs in sketches:
            if cs.name == name:
                if not cs.active:
                    raise QueryError("FAILED_PRECONDITION", f"sketch {name!r} is configured but not active: {cs.note}")
                if query not in cs.kind.queries:
                    raise QueryError("INVALID_ARGUMENT", f"sketch {name!r} ({cs.kind_name}) does not answer {query}; "
                                                         f"it answers {sorted(cs.kind.queries)}")
                return cs
        raise QueryError("NOT_FOUND", f"no sketch named {name!r}; configured: {[c.name for c in sketches]}")
    for cs in sketches:
        if cs.active and query in cs.kind.queries:
            return cs
    raise QueryError("FAILED_PRECONDITION", f"no active sketch answers {query}; configured: "
                                            f"{[(c.name, c.kind_name, c.active) for c in sketches]}")


# ====================================================================== query combination
def merged_state(cs: ConfiguredSketch, states: list):
    """One merged copy of the states, or None when the kind does not merge."""
    if len(states) == 1:
        return states[0]
    merged = cs.copy(states[0])
    try:
        for s in states[1:]:
            merged.merge(s)
    except NotMergeableError:
        return None
    return merged


def _note_partial(report: dict | None, states: list) -> None:
    """``report["partial"]``: how many of ``states`` (local states: shards of epochs) decoded only
    partially. A Hidden Sketch whose decode cannot finish answers with what it recovered (its
    ``decode().partial``): keys may be missing and some estimates are upper bounds."""
    if report is not None:
        report["partial"] = report.get("partial", 0) + sum(
            1 for s in states if hasattr(s, "decode") and getattr(s.decode(), "partial", False))


def _is_sharded(states: list) -> bool:
    return bool(states) and hasattr(states[0], "shard_states")


def _flat(states: list) -> list:
    """Every shard's state of every epoch (an unsharded state is its own single shard)."""
    return [x for s in states for x in (s.shard_states() if hasattr(s, "shard_states") else [s])]


def _per_shard(states: list) -> list[list]:
    """Per shard, that shard's states over the window's epochs (epoch order); an unsharded window
    is one shard, so the per-shard rules below are also the one-process rules."""
    if not _is_sharded(states):
        return [list(states)]
    return [list(col) for col in zip(*(s.shard_states() for s in states))]


def _combine_label(n_states: int, merged: bool, rule: str) -> str:
    return "single" if n_states == 1 else ("merged" if merged else rule)


def _merged_label(states: list) -> str:
    """``single`` for one unsharded state, else ``merged`` (several epochs, or one epoch's shards);
    counted without fetching a sharded state."""
    return _combine_label(sum(getattr(s, "shard_count", 1) for s in states), True, "")


def _threshold(phi, threshold, n, default_phi=None):
    if threshold is not None:
        return float(threshold)
    if phi is not None:
        return phi * n
    return None if default_phi is None else default_phi * n


def _hidden_window_estimates(states: list, keys) -> dict:
    """Per key: sum over epochs of its reported estimate, or the epoch's point estimate."""
    totals = {k: 0 for k in keys}
    for s in states:
        reported = dict(s.heavy_hitters())
        for k in totals:
            totals[k] += reported[k] if k in reported else int(s.estimate(k))
    return totals


def check_floor(cs, states, thr, query: str) -> None:
    """Refuse (``FAILED_PRECONDITION``) an asked threshold below what the sketch can report.

    Hidden Sketch: only keys whose first-stage estimate passes ``thresh`` in an epoch reach the
    second stage, so a key with at most ``thresh`` packets in every epoch is never reported. A
    threshold below that floor would silently miss keys; the message names the floor and the
    settings that lower it. (Over several epochs a key above the threshold in the window but at
    most ``thresh`` in each epoch can still be missed: the floor holds per epoch.)
    """
    if cs.kind_name != "hiddensketch" or thr is None or not states:
        return
    p = states[0].params
    if thr >= p.thresh:
        return
    how = f"its thresh: phi {p.phi:g} x expected_epoch_items {p.expected_epoch_items:,} - 10, unless set"
    raise QueryError("FAILED_PRECONDITION", (
        f"{query}: threshold {thr:,.0f} packets is below sketch {cs.name!r} ({cs.kind_name})'s floor of "
        f"{p.thresh:,} packets per epoch ({how}): keys at or under it are never reported, so the answer "
        f"would be incomplete. Ask for a threshold >= {p.thresh:,} packets, or lower the floor with a "
        f"smaller expected_epoch_items (or phi, or thresh) under [sketches.{cs.name}] (more keys reach "
        "the second stage: give it more memory_bytes)"))


def heavy_hitters(cs, states, n_packets, phi=None, threshold=None, report: dict | None = None):
    """``(rows, combine)``; ``report``, when given, gets ``"partial"``: the states whose decode
    could not finish (see :func:`_note_partial`)."""
    if cs.kind_name == "exact":
        return merged_state(cs, _flat(states)).heavy_hitters(phi=phi, threshold=threshold), _merged_label(states)
    sharded = _is_sharded(states)
    if not sharded and len(states) == 1 and phi is None and threshold is None:
        _note_partial(report, states)
        return list(states[0].heavy_hitters()), "single"
    if phi is not None or threshold is not None:
        check_floor(cs, states, _threshold(phi, threshold, n_packets), "heavy_hitters")
    thr = _threshold(phi, threshold, n_packets, states[0].params.phi)
    shards = _per_shard(states)
    rows = _by_count([row for shard in shards for row in _hidden_rows(shard, thr)])
    _note_partial(report, [s for shard in shards for s in shard])
    if sharded:  # each key lives on one shard (routed by its own key)
        return rows, "union over shards of sums of per-epoch estimates"
    return rows, _combine_label(len(states), False, "sum of per-epoch estimates")


def _by_count(rows: list) -> list:
    return sorted(rows, key=lambda kv: (-kv[1], kv[0]))


def _hidden_rows(states: list, thr: float) -> list:
    """``[(key, estimate)]`` above ``thr``: the window rule over ``states`` (one state: its reports)."""
    candidates = {k for s in states for k, _ in s.heavy_hitters()}
    totals = _hidden_window_estimates(states, candidates) if len(states) > 1 else dict(states[0].heavy_hitters())
    return [(k, v) for k, v in totals.items() if v > thr]


def _hidden_changes(before: list, after: list, thr: float) -> list:
    """``[(key, change)]``: sums of per-epoch estimates of two windows, change above ``thr``."""
    candidates = {k for s in before + after for k, _ in s.heavy_hitters()}
    now, then = _hidden_window_estimates(after, candidates), _hidden_window_estimates(before, candidates)
    return [(k, now[k] - then[k]) for k in candidates if abs(now[k] - then[k]) > thr]


def heavy_changers(cs, before, after, n_before, n_after, phi=None, threshold=None, report: dict | None = None):
    """``(rows, combine)``; ``report`` as in :func:`heavy_hitters`."""
    if cs.kind_name == "exact":
        merged_after, merged_before = merged_state(cs, _flat(after)), merged_state(cs, _flat(before))
        return merged_after.heavy_changers(merged_before, phi=phi, threshold=threshold), _merged_label(after)
    sharded = _is_sharded(after)
    if phi is not None or threshold is not None:
        check_floor(cs, after, _threshold(phi, threshold, max(n_before, n_after)), "heavy_changers")
    if not sharded and len(after) == 1:  # the sketch's own rule, at its own default threshold
        thr = _threshold(phi, threshold, max(n_before, n_after))
        rows = list(after[0].heavy_changers(before[0], hc_threshold=thr))
        _note_partial(report, [*before, *after])
        return rows, "single"
    thr = _threshold(phi, threshold, max(n_before, n_after), after[0].params.phi)
    rows = []
    for b, a in zip(_per_shard(before), _per_shard(after)):
        rows += list(a[0].heavy_changers(b[0], hc_threshold=thr)) if len(a) == 1 else _hidden_changes(b, a, thr)
        _note_partial(report, [*b, *a])
    rows.sort(key=lambda kv: (-abs(kv[1]), kv[0]))
    return rows, "union over shards" if sharded else "sum of per-epoch estimates"


def hhh(cs, states, n_packets, phi=None, threshold=None):
    flat = _flat(states)
    if cs.kind_name == "exact":
        return merged_state(cs, flat).hhh(phi=phi, threshold=threshold), _merged_label(states)
    thr = _threshold(phi, threshold, n_packets)
    if thr is None and getattr(flat[0].params, "threshold", None) is None:
        # default: the sketch's phi of the window's packets (not its construction T, which is
        # phi x expected_packets whatever the window holds)
        thr = flat[0].params.phi * n_packets
    if len(flat) == 1:
        return list(flat[0].hhh(thr)), "single"
    if thr is None:  # a configured absolute threshold: each epoch's own T (service-wide when sharded), summed
        thr = float(sum(s.T for s in states))
    module = importlib.import_module(cs.kind.module)
    entries = module.merged_hhh(flat, thr)
    return [(e.prefix, e.length, e.discounted) for e in entries], "summed layer estimates"


def gap_events(cs, epoch_states: list[tuple[int, Any]]) -> tuple[list[tuple[int, np.ndarray]], str]:
    """``[(epoch, events)]``: each epoch's gap events (structured arrays), window = their union."""
    out = []
    for epoch, state in epoch_states:
        parts = [s if isinstance(s, np.ndarray) else s.gap_events() for s in _flat([state])]
        events = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(parts) > 1:  # shards: one stream again, by time
            events = events[np.argsort(events["ts_ns"], kind="stable")]
        out.append((epoch, events))
    return out, _combine_label(len(epoch_states), False, "union")


def flow_size(cs, states, keys: np.ndarray):
    if cs.kind_name == "exact":
        return merged_state(cs, _flat(states)).flow_size(keys), _merged_label(states)
    sharded = _is_sharded(states)
    owner = states[0].owner(keys) if sharded else np.zeros(keys.shape[0], np.int64)
    total = np.zeros(keys.shape[0], np.int64)
    for shard, shard_states in enumerate(_per_shard(states)):  # each key from its owning shard
        mine = owner == shard
        if mine.any():
            for s in shard_states:
                total[mine] += np.asarray(s.flow_size(keys[mine]), np.int64)
    if sharded:
        return total, "owning shard, sum of per-epoch estimates"
    return total, _combine_label(len(states), False, "sum of per-epoch estimates")


def top_flows(cs, states, k: int):
    if cs.kind_name == "exact":
        return merged_state(cs, _flat(states)).top_flows(k), _merged_label(states)
    sharded = _is_sharded(states)
    if not sharded and len(states) == 1:
        return list(states[0].top_flows(k)), "single"
    # flows are whole on one shard: each shard's window answer, unioned
    rows = _by_count([row for shard in _per_shard(states) for row in _top_flows(shard, k)])[:k]
    return rows, "union over shards of sums of per-epoch estimates" if sharded else "sum of per-epoch estimates"


def _top_flows(states: list, k: int) -> list:
    """The ``k`` largest flows over ``states``: every epoch's top ``k``, re-estimated over all epochs."""
    if len(states) == 1:
        return list(states[0].top_flows(k))
    candidates = list(dict.fromkeys(key for s in states for key, _ in s.top_flows(k)))
    totals = np.zeros(len(candidates), np.int64)
    for s in states:
        totals += np.asarray(s.estimate_reported(candidates), np.int64)
    order = sorted(range(len(candidates)), key=lambda i: (-totals[i], candidates[i]))[:k]
    return [(candidates[i], int(totals[i])) for i in order]


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
    #: IPv6 packets withheld from each IPv4-only sketch (a kind is IPv6-capable when its class says ``IPV6 = True``)
    ipv6_withheld: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def update(self, states: dict[str, Any], batch: PacketBatch, on_time: Callable[[str, float], None] | None = None) -> None:
        """Apply ``batch`` to every active sketch's state (concurrently, see ``concurrency``)."""
        self.update_parts(states, {cs.name: batch for cs in self.active}, on_time)

    def update_parts(self, states: dict[str, Any], parts: dict[str, PacketBatch | None],
                     on_time: Callable[[str, float], None] | None = None) -> None:
        """``states[name].update(parts[name])`` for every name (empty or ``None`` parts skipped).

        With more than one thread the updates run concurrently: the calling thread and
        ``concurrency - 1`` pool threads take sketches from one list, the costliest first
        (per-packet seconds of earlier batches), each on one Numba thread, and this returns when
        all are done. If updates fail, the first failing sketch's exception (in ``parts`` order)
        is raised after the others have finished. ``on_time(name, seconds)`` is told each
        sketch's wall time.
        """
        parts = dict(parts)
        for cs in (cs for cs in self.sketches if parts.get(cs.name) is not None and not getattr(cs.cls, "IPV6", False)):
            parts[cs.name], skipped = parts[cs.name].only_ipv4()  # IPv6 rows must not count as IPv4
            self.ipv6_withheld[cs.name] = self.ipv6_withheld.get(cs.name, 0) + skipped
        names = [name for name, part in parts.items() if part is not None and len(part)]
        threads = min(len(names), self.threads)
        if threads <= 1:
            for name in names:
                self._timed_update(states[name], name, parts[name], on_time)
            return
        errors: dict[str, BaseException] = {}
        # GPU sketches launch their kernels from the calling thread only (one device queue; Numba's
        # CUDA simulator is not thread-safe), before the CPU sketches are shared out
        on_device = {cs.name for cs in self.sketches if cs.device == "gpu"}
        for name in [name for name in names if name in on_device]:
            try:
                self._timed_update(states[name], name, parts[name], on_time)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in parts order
                errors[name] = exc
        names = [name for name in names if name not in on_device]
        threads = min(len(names), self.threads)
        names.sort(key=lambda name: -self._cost.get(name, 0.0) * len(parts[name]))
        pending = iter(names)
        take = threading.Lock()

        def drain() -> None:
            # the cores are taken by the sketches themselves: each kernel runs on one thread
            # (Numba's thread count is per calling thread; the parallel kernels give the same results)
            numba.set_num_threads(1)
            while True:
                with take:
                    name = next(pending, None)
                if name is None:
                    return
                try:
                    self._timed_update(states[name], name, parts[name], on_time)
                except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                    errors[name] = exc

        pool = self._executor()
        helpers = [pool.submit(drain) for _ in range(threads - 1)]
        own_threads = numba.get_num_threads()
        try:
            drain()
        finally:
            numba.set_num_threads(own_threads)
        for helper in helpers:
            helper.result()
        for name in parts:
            if name in errors:
                raise errors[name]

    def _timed_update(self, state, name: str, part: PacketBatch, on_time) -> None:
        start = time.perf_counter()
        state.update(part)
        seconds = time.perf_counter() - start
        previous = self._cost.get(name)
        per_packet = seconds / len(part)
        self._cost[name] = per_packet if previous is None else 0.8 * previous + 0.2 * per_packet
        if on_time is not None:
            on_time(name, seconds)

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

    def close(self, states: dict[str, Any]) -> dict[str, Any]:
        return {name: self.get(name).close(state) for name, state in states.items()}

    def get(self, name: str) -> ConfiguredSketch:
        for cs in self.sketches:
            if cs.name == name:
                return cs
        raise KeyError(name)
