"""Pieces every sketch shares: the serialisation envelope, the error types and the contract
(:class:`SketchContract`, :class:`Sketch`, and :meth:`Sketch.combine` windows over epochs and shards).

Serialised form (``to_bytes``), versioned so that a reader refuses what it cannot interpret:

    b"TSKS" | u32 header length (LE) | header JSON (utf-8) | array payloads, in header order

The header holds ``format`` (this envelope's version), ``algorithm``, ``version`` (the algorithm's
state layout version), ``params`` (the frozen-dataclass parameters, seeds included), ``epoch`` and
``arrays`` (name, dtype, shape of each payload). Arrays are raw little-endian C-order bytes.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

import numpy as np

MAGIC = b"TSKS"
ENVELOPE_FORMAT = 1
_MAX_HEADER = 1 << 20


class SketchError(ValueError):
    """Bad parameters, a mismatched merge, or serialised state that does not fit this sketch."""


class NotMergeableError(SketchError):
    """The algorithm's state cannot be merged (e.g. order-dependent GapFilter buckets)."""


def clone_with_arrays(obj, names: tuple[str, ...]):
    """A shallow clone of ``obj`` (same class, same attribute values) whose attributes ``names``
    (numpy arrays) are copies: for state whose other attributes are scalars or are never written
    in place (parameters, seeds, geometry), so the clone and ``obj`` then evolve independently."""
    clone = object.__new__(type(obj))
    clone.__dict__.update(obj.__dict__)
    for name in names:
        setattr(clone, name, getattr(obj, name).copy())
    return clone


def pack_state(
    algorithm: str,
    version: int,
    params: Any,
    arrays: Mapping[str, np.ndarray],
    epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a sketch's parameters and state arrays into the versioned envelope."""
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    entries, payloads = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        payloads.append(arr.tobytes())
    header = {
        "format": ENVELOPE_FORMAT,
        "algorithm": algorithm,
        "version": version,
        "params": params,
        "epoch": int(epoch),
        "arrays": entries,
        "extra": dict(extra or {}),
    }
    blob = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(blob)) + blob + b"".join(payloads)


def envelope_algorithm(data: bytes) -> str | None:
    """The ``algorithm`` named by an envelope's header, or ``None`` if ``data`` is not one."""
    data = bytes(data[:8]) + bytes(data[8:8 + _MAX_HEADER])
    if len(data) < 8 or data[:4] != MAGIC:
        return None
    (hlen,) = struct.unpack_from("<I", data, 4)
    try:
        return json.loads(data[8 : 8 + hlen]).get("algorithm")
    except (ValueError, AttributeError):
        return None


def unpack_state(data: bytes, algorithm: str, version: int) -> tuple[dict, dict[str, np.ndarray], int, dict]:
    """Parse an envelope written by :func:`pack_state` for ``algorithm`` at layout ``version``.

    Returns ``(params, arrays, epoch, extra)``; arrays are writable copies. Raises
    :class:`SketchError` naming what does not match (magic, algorithm, version, sizes).
    """
    data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise SketchError("not a telesketch sketch (bad magic)")
    (hlen,) = struct.unpack_from("<I", data, 4)
    if hlen > _MAX_HEADER or 8 + hlen > len(data):
        raise SketchError(f"corrupt sketch header (length {hlen}, data {len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as exc:
        raise SketchError(f"corrupt sketch header: {exc}") from None
    if header.get("format") != ENVELOPE_FORMAT:
        raise SketchError(f"unsupported envelope format {header.get('format')!r}")
    if header.get("algorithm") != algorithm:
        raise SketchError(f"state is for {header.get('algorithm')!r}, not {algorithm!r}")
    if header.get("version") != version:
        raise SketchError(f"{algorithm} state layout version {header.get('version')!r}, expected {version}")
    arrays, offset = {}, 8 + hlen
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(data):
            raise SketchError(f"sketch state truncated in array {entry['name']!r}")
        arrays[entry["name"]] = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape).copy()
        offset += size
    if offset != len(data):
        raise SketchError(f"{len(data) - offset} unexpected trailing bytes after sketch state")
    return header["params"], arrays, header["epoch"], header.get("extra", {})


def check_same_params(a: Any, b: Any, algorithm: str) -> None:
    """Raise :class:`SketchError` unless two sketches' parameters (seeds included) are equal."""
    if a != b:
        raise SketchError(f"cannot merge {algorithm} sketches with different parameters: {a} vs {b}")


# ====================================================================== the sketch contract
def window_threshold(phi: float | None, threshold: float | None, packets: float,
                     default_phi: float | None = None) -> float | None:
    """The one report threshold of a query, in packets: ``threshold`` if given, else ``phi`` (or
    ``default_phi``, the sketch's own) times the window's ``packets``; ``None`` when neither is set."""
    if threshold is not None:
        return float(threshold)
    if phi is not None:
        return phi * packets
    return None if default_phi is None else default_phi * packets


@dataclass(frozen=True)
class Rule:
    """How a kind's :meth:`Sketch.combine` joins its inputs.

    ``shards=False`` (:data:`EPOCHS`): the inputs are one process's states of consecutive epochs of
    a window. ``shards=True`` (:func:`over_shards`): the inputs are the windows of the shards of a
    sharded sketch (each already combined over its epochs); ``owner(keys)`` gives the owning shard
    of 13-byte flow keys ``uint8[n, 13]`` (``int64[n]``), ``threshold`` is the service-wide report
    threshold of one epoch (ResidualSketch's configured ``T``; each shard runs with a lower one).
    """

    shards: bool = False
    owner: Callable[[np.ndarray], np.ndarray] | None = None
    threshold: float = 0.0


#: Combine the states of a window's epochs (one process, or one shard).
EPOCHS = Rule()


def over_shards(owner: Callable[[np.ndarray], np.ndarray] | None = None, threshold: float = 0.0) -> Rule:
    """The rule that combines the shards' windows of a sharded sketch (see :class:`Rule`)."""
    return Rule(True, owner, float(threshold))


class Combined(NamedTuple):
    """A query's rows over a combination of states, the rule that combined them (the ``combine``
    label of the answer: ``single``, ``merged``, ``sum of per-epoch estimates``, ...) and how many
    of the states decoded only partially (Hidden Sketch too small for its traffic)."""

    rows: Any
    combine: str
    partial: int = 0


class Window:
    """Several states of one kind seen as one: what :meth:`Sketch.combine` returns.

    ``parts`` are sketch states (rule :data:`EPOCHS`) or the shards' windows (``rule.shards``).
    A kind's window subclass answers the kind's queries (``heavy_hitters``, ``hhh``, ...) with the
    kind's rule for combining them; a query the kind does not answer raises :class:`SketchError`.
    """

    def __init__(self, parts: list, rule: Rule = EPOCHS):
        self.parts, self.rule = list(parts), rule

    def volume(self, packets: int) -> int:
        """``N`` of the window's ``phi * N`` in the sketch's unit: ``packets`` for packet-counting
        kinds; a byte-weighted kind's window returns its bytes."""
        return packets

    @property
    def sharded(self) -> bool:
        return self.rule.shards

    def per_shard(self) -> list[list]:
        """Per shard, that shard's states over the window's epochs (epoch order); a window of one
        process is one shard, so a per-shard rule is also the one-process rule."""
        return [w.parts for w in self.parts] if self.sharded else [self.parts]

    def flat(self) -> list:
        """Every state: every shard's state of every epoch."""
        return [s for shard in self.per_shard() for s in shard]

    def per_epoch(self) -> list[list]:
        """Per epoch, its shards' states."""
        return [list(col) for col in zip(*self.per_shard())]

    def partial_epochs(self) -> list[int]:
        """Positions (epoch order) of the epochs whose answer is partial: some shard's decode could
        not finish (Hidden Sketch too small for its traffic). None for kinds that always answer whole."""
        return []

    def label(self, rule: str) -> str:
        """``single`` for one epoch of one process, else ``rule``."""
        return "single" if not self.sharded and len(self.parts) == 1 else rule

    def _refuse(self, query: str):
        raise SketchError(f"{type(self).__name__} does not answer {query}")

    def heavy_hitters(self, packets: int, phi=None, threshold=None) -> Combined:
        self._refuse("heavy_hitters")

    def heavy_changers(self, before: "Window", packets: int, phi=None, threshold=None) -> Combined:
        self._refuse("heavy_changers")

    def hhh(self, packets: int, phi=None, threshold=None) -> Combined:
        self._refuse("hhh")

    def hhh_rows(self, packets: int, phi=None, threshold=None) -> Combined:
        """Rows: both address families' heavy prefixes as ``HHHRow`` (``cocosketch.HHHRow``)."""
        self._refuse("hhh")

    def gap_events(self) -> Combined:
        """Rows: per epoch, its gap events (a structured array)."""
        self._refuse("gaps")

    def epoch_events(self) -> Combined:
        """Per epoch, its gap events: the union of its shards' events (one stream again, by time);
        ``union`` over several epochs. A live state and a closed epoch of a continuous kind (the
        service's ``ClosedGapEpoch``: its events and coverage) report them (``gap_events()``); a
        bare events array stands for itself."""
        out = []
        for shards in self.per_epoch():
            parts = [s if isinstance(s, np.ndarray) else s.gap_events() for s in shards]
            events = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if len(parts) > 1:
                events = events[np.argsort(events["ts_ns"], kind="stable")]
            out.append(events)
        return Combined(out, "single" if len(out) == 1 else "union")

    def flow_size(self, keys: np.ndarray) -> Combined:
        self._refuse("flow_size")

    def top_flows(self, k: int) -> Combined:
        self._refuse("top_flows")

    def check_floor(self, threshold: float | None, query: str, name: str) -> None:
        """Refuse (:class:`~telesketch.errors.Precondition`) an asked ``threshold`` below what the
        kind can report; most kinds report at any threshold."""


class MergedWindow(Window):
    """A mergeable kind's window: every state merged into a copy, queried once (``merged``)."""

    def merged(self):
        flat = self.flat()
        merged = flat[0] if len(flat) == 1 else flat[0].copy()
        for s in flat[1:]:
            merged.merge(s)
        return merged

    def _label(self) -> str:
        return "single" if len(self.flat()) == 1 else "merged"

    def heavy_hitters(self, packets, phi=None, threshold=None) -> Combined:
        return Combined(self.merged().heavy_hitters(phi=phi, threshold=threshold), self._label())

    def heavy_changers(self, before, packets, phi=None, threshold=None) -> Combined:
        return Combined(self.merged().heavy_changers(before.merged(), phi=phi, threshold=threshold), self._label())

    def hhh(self, packets, phi=None, threshold=None) -> Combined:
        return Combined(self.merged().hhh(phi=phi, threshold=threshold), self._label())

    def hhh_rows(self, packets, phi=None, threshold=None) -> Combined:
        return Combined(self.merged().hhh_rows(phi=phi, threshold=threshold), self._label())

    def gap_events(self) -> Combined:
        return self.epoch_events()  # per epoch, as every kind answers gaps

    def flow_size(self, keys) -> Combined:
        return Combined(self.merged().flow_size(keys), self._label())

    def top_flows(self, k) -> Combined:
        return Combined(self.merged().top_flows(k), self._label())


@runtime_checkable
class SketchContract(Protocol):
    """What the service, the Ray shards and the tests may call on every sketch kind (CPU and GPU).

    Besides these, a kind answers its own queries (``heavy_hitters``, ``hhh``, ``gap_events``,
    ``flow_size``, ``top_flows``, ...), each also answered over several states by its
    :meth:`combine` window.
    """

    params: Any

    def update(self, batch) -> None: ...
    def merge(self, other) -> None: ...
    def to_bytes(self) -> bytes: ...
    @classmethod
    def from_bytes(cls, data: bytes): ...
    @property
    def memory_bytes(self) -> int: ...
    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window: ...


class Sketch:
    """Base class of every sketch kind: the lifecycle defaults of :class:`SketchContract`.

    A kind overrides what differs: ``combine`` (its rule over epochs and shards; default: merge),
    ``copy`` (default: the ``COPY_ARRAYS`` it names copied, else a round trip through ``to_bytes``), ``successor`` (what outlives an epoch;
    default ``None``: nothing, the service builds a fresh sketch), ``start_epoch`` (continuous
    kinds), ``load_factor`` (how full it is; ``None`` when the kind cannot tell),
    ``batch_invariant`` (whether joined batches give the same state; default ``False``).
    """

    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        return MergedWindow(parts, rule)

    #: the attributes :meth:`copy` duplicates (arrays updated in place); empty: copy through bytes
    COPY_ARRAYS: tuple[str, ...] = ()
    #: the exact classes whose state is only ``COPY_ARRAYS`` plus values never written in place (a
    #: subclass such as a GPU twin may keep more state, e.g. on the device: it copies through bytes)
    COPY_EXACT: tuple[str, ...] = ()

    def copy(self):
        """An independent sketch in the same state, that later updates of either do not change.

        Kinds that name their mutable arrays (``COPY_ARRAYS``) get a shallow clone with those
        arrays copied: a memcpy per array, what a service query does under the ingest lock. Every
        other kind (or a subclass not named in ``COPY_EXACT``) round-trips ``to_bytes``."""
        if self.COPY_ARRAYS and f"{type(self).__module__}:{type(self).__qualname__}" in self.COPY_EXACT:
            return clone_with_arrays(self, self.COPY_ARRAYS)
        return type(self).from_bytes(self.to_bytes())

    def successor(self):
        return None

    def start_epoch(self, epoch: int) -> None:
        """A new epoch starts (continuous kinds keep their state and tag what follows)."""

    def coverage(self) -> dict | None:
        """Which packets the sketch inspected: ``{"covered_packets": n, "skipped_packets": {reason:
        n}}`` for kinds that skip some (GapFilter: IPv6 packets without a sequence), ``None`` for
        kinds that count every packet they are given."""
        return None

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """Whether a sketch built from ``params`` counts IPv6 rows. When not, the service withholds
        them from it (``PacketBatch.only_ipv4``) and counts them, so they never count as IPv4."""
        return False

    @classmethod
    def truth_params(cls, params: dict) -> dict:
        """The ``exact`` kind's parameters (:class:`~telesketch.service.exactsketch.ExactSketchParams`
        fields) that a ground truth for a sketch built from ``params`` must share to answer the same
        question: the key it counts, the HHH mode, the gap thresholds. ``{}`` (the default): the
        truth's defaults do. Read by the report (``truth_specs``), so it dispatches on no kind name."""
        return {}

    def shard_params(self, params: dict) -> dict:
        """The sketch config (``params``: the service's, as built into this sketch; ``kind`` and
        ``device`` keys may be in it) that a Ray shard should build from, for a kind whose keys
        spread over the shards (``Kind.spread_keys``): such a shard gets its threshold as a number
        (no ``phi`` / ``expected_packets``), so a choice the kind makes from the whole stream's
        figures is pinned here to what this sketch chose. Default: ``params`` unchanged. Read by
        ``distributed.cluster.shard_specs``, so it dispatches on no kind name or parameter."""
        return params

    #: updates must run on the thread that made the sketch (the GPU twins: one device queue, and
    #: Numba's CUDA simulator is not thread-safe); the service then never hands it to a pool thread
    caller_thread_only: bool = False

    @property
    def batch_invariant(self) -> bool:
        """Whether ``update(PacketBatch.concat([a, b, ...]))`` leaves exactly the state (``to_bytes``
        byte for byte) that ``update(a); update(b); ...`` leaves, for any batches cut anywhere.

        The service then applies the batches already queued behind one another as one update
        (fewer per-batch costs: the sketch pool round trip, kernel dispatch, scoring set-up), so a
        ``True`` here is a promise that batch boundaries never show in the state. Default
        ``False`` (the safe answer): a kind that keeps its own per-batch steps (an approximate
        whole-batch update, a model scoring rows together) never has its batches joined.
        ``tests/test_batch_invariance.py`` checks every registered kind's answer."""
        return False

    @property
    def load_factor(self) -> float | None:
        """How full the sketch is (1: answers start to be partial); ``None`` when the kind cannot tell."""
        return None
