"""Sharded sketches on Ray actors: route packets by key, fan queries out, combine answers.

Routing. Every sketch sees whole keys of its own kind. Packet ``i`` goes to shard
``flow_route_hashes(batch, ROUTE_SEED)[i] % shards`` for the per-flow sketches (every packet of a
flow lands on one shard, in arrival order: GapFilter, LLM-Sketch, Hidden Sketch by 5-tuple,
ResidualSketch as its spec §4 says, ``exact``), and to ``source_route_hashes(batch, ROUTE_SEED)[i]
% shards`` for Hidden Sketch by source address (:func:`routed_by_source`; every packet of a source
on one shard, so its one-pass FS gate sees the source's whole count, as in one process). An IPv4
row hashes its 13-byte 5-tuple / 4-byte source (``hash_5tuple`` / ``hash_u32``); an IPv6 row its
37-byte flow key (:meth:`PacketBatch.flow_keys37`) / 16-byte source address (``hash_keys``), so
IPv6 flows and sources spread over the shards like IPv4 ones (their IPv4 columns are 0). A shard's
parts of a batch travel as one :class:`PackedParts` buffer holding the columns that hold data
(columns the collector did not send stay behind and are zero again on the shard): written into a
:class:`SharedRing` slot when the shard runs on the front end's machine, else as one object through
Ray's object store. :func:`route_parts` gives the same parts as separate :class:`ShardPart` objects.

Each shard actor builds its sketches from the service's sketch config dicts through
:mod:`telesketch.service.sketchset` (one epoch, no epoch management). :func:`shard_specs` adapts a
config for one of S shards: ResidualSketch / CocoSketch get the shard promotion threshold
``shard_threshold(T, S)`` (spec §4); everything else is built as configured.

How a query combines the shards' states: by the kind's ``combine`` over the shards
(:func:`~telesketch.sketches.core.over_shards`; the rules in :mod:`telesketch.sketches.combine`),
the same rule the sharded service applies to each epoch. State sharded by key is *unioned*,
mergeable state is *merged*, additive estimates are *summed*:

* ``exact``: the shards' states are merged (concatenation) and queried once, so every answer is
  exactly the single-process answer.
* Hidden Sketch (keys whole on their shard, by 5-tuple or by source): union of the shards' reports
  above the *global* limit ``phi * N``; each shard's own decode threshold is ``phi * N_shard``,
  lower, so nothing above the global limit is lost to it.
* ResidualSketch / CocoSketch (a prefix's sources spread over shards): per-layer estimates summed
  over shards, one HHH pass at the global report threshold (``merged_hhh``).
* GapFilter: union of the shards' gap events, ordered by timestamp.
* LLM-Sketch: a flow's size is read from its owning shard; top flows are the shards' top-k lists
  merged, k largest kept.
"""
from __future__ import annotations

import importlib
import weakref
from typing import Any

import numpy as np

from telesketch.hashing import hash_5tuple, hash_keys, hash_u32
from telesketch.jit import kernel
from telesketch.packets import (BLOCK_COLUMNS, COLUMN_DTYPES, FLOW_KEY37_BYTES, FLOW_KEY_BYTES, PacketBatch,
                                pack_flow_keys37)
from telesketch.service import sketchset as ss
from telesketch.errors import NotFound, Precondition, QueryError
from telesketch.sketches.core import EPOCHS, SketchError, Window, over_shards
from telesketch.sketches.llmsketch import canonical_flow_keys, key13_of, v4_mapped_rows

#: Seed of the routing hash (independent of every sketch's own seeds).
ROUTE_SEED = 0x5EED_0001
#: Batches the sharded service leaves in flight per shard while it routes and sends the next
#: (``ShardPool.pipeline``); each is acknowledged only once every shard applied it. 2: the front end
#: routes batch k + 1 while the shards apply batch k.
INFLIGHT_BATCHES = 2


def _kind(spec: dict[str, Any]) -> ss.Kind | None:
    return ss.KINDS.get(spec.get("kind"))


class RayNotInstalledError(ImportError):
    """Ray is needed for scale-out and is not installed."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(
            "telesketch.distributed needs Ray: pip install 'telesketch[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


# ====================================================================== routing (pure numpy)
def flow_route_hashes(batch: PacketBatch, seed: int = ROUTE_SEED) -> np.ndarray:
    """``uint64[n]``: each packet's flow routing hash: ``hash_5tuple`` of its 13-byte key on IPv4
    rows, ``hash_keys`` of its 37-byte key (``src6 dst6 sport dport proto``) on IPv6 rows (of the
    13-byte key where both addresses are v4-mapped: the sketches count that as the IPv4 flow)."""
    hashes = hash_5tuple(batch, seed)
    v6 = batch.ipv6.astype(bool)
    if v6.any():
        keys37 = pack_flow_keys37(batch.src_ip6[v6], batch.dst_ip6[v6], batch.src_port[v6], batch.dst_port[v6],
                                  batch.proto[v6])
        hashes[v6] = _flow_key_hashes(keys37, v4_mapped_rows(keys37), seed)
    return hashes


def _flow_key_hashes(keys37: np.ndarray, v4: np.ndarray, seed: int) -> np.ndarray:
    """``uint64[n]``: routing hashes of 37-byte keys: of the 13-byte key on the ``v4`` rows (equal
    to ``hash_5tuple``), of the 37 bytes on the others."""
    hashes = np.empty(keys37.shape[0], np.uint64)
    hashes[v4] = hash_keys(key13_of(keys37[v4]), seed)
    hashes[~v4] = hash_keys(keys37[~v4], seed)
    return hashes


def source_route_hashes(batch: PacketBatch, seed: int = ROUTE_SEED) -> np.ndarray:
    """``uint64[n]``: each packet's source routing hash: ``hash_u32(src_ip)`` on IPv4 rows,
    ``hash_keys`` of the 16-byte ``src_ip6`` on IPv6 rows."""
    hashes = hash_u32(batch.src_ip, seed)
    v6 = batch.ipv6.astype(bool)
    if v6.any():
        hashes[v6] = hash_keys(batch.src_ip6[v6], seed)
    return hashes


def _shard_of(hashes: np.ndarray, shards: int) -> np.ndarray:
    """``int64[n]``: ``hashes % shards`` (``SketchError`` unless ``shards >= 1``)."""
    if shards < 1:
        raise SketchError(f"shards must be >= 1, got {shards}")
    return (hashes % np.uint64(shards)).astype(np.int64)


def shard_ids(batch: PacketBatch, shards: int, seed: int = ROUTE_SEED) -> np.ndarray:
    """``int64[n]``: the shard of each packet, ``flow_route_hashes(batch, seed) % shards``."""
    return _shard_of(flow_route_hashes(batch, seed), shards)


def key_shard_ids(keys, shards: int, seed: int = ROUTE_SEED) -> np.ndarray:
    """``int64[n]``: the shard owning each flow key, the shard :func:`shard_ids` routes its packets
    to. ``keys``: 13-byte IPv4 keys or 37-byte keys of either family (any form
    :func:`~telesketch.sketches.llmsketch.canonical_flow_keys` takes; a 37-byte key with v4-mapped
    addresses is the IPv4 flow and routes like its 13-byte key)."""
    keys37, v4 = canonical_flow_keys(keys)
    return _shard_of(_flow_key_hashes(keys37, v4, seed), shards)


def split_by_shard(batch: PacketBatch, shards: int, seed: int = ROUTE_SEED) -> list[PacketBatch]:
    """The batch's packets per shard, each in arrival order (the offline reference split)."""
    return _split(batch, shard_ids(batch, shards, seed), shards)


def _split(batch: PacketBatch, ids: np.ndarray, shards: int) -> list[PacketBatch]:
    """Packets grouped by ``ids`` (arrival order kept): one stable sort and one gather of every
    column, then a slice per shard (a boolean mask per shard gathered every column S times)."""
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(shards + 1))
    grouped = batch[order]
    return [grouped[int(bounds[s]):int(bounds[s + 1])] for s in range(shards)]


@kernel
def _counting_order(ids, groups):
    """Stable counting sort of ``ids`` (``int64[n]``, each in ``[0, groups)``): ``(order, bounds)``,
    ``order`` (``int64[n]``) the positions grouped by id, arrival order kept within a group, and
    ``bounds`` (``int64[groups + 1]``) where each group starts in it. Two passes over ``n``; the
    same as ``np.argsort(ids, kind="stable")`` with ``np.searchsorted`` of the group starts, which
    numpy does as an ``O(n log n)`` merge sort of 64-bit ids. An id out of range stops it at once
    with an empty ``bounds`` (the range check rides on the counting pass; no write is out of range)."""
    n = ids.shape[0]
    bounds = np.zeros(groups + 1, np.int64)
    for i in range(n):
        g = ids[i]
        if g < 0 or g >= groups:
            return np.empty(0, np.int64), bounds[:0]
        bounds[g + 1] += 1
    for g in range(groups):
        bounds[g + 1] += bounds[g]
    fill = bounds[:groups].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        g = ids[i]
        order[fill[g]] = i
        fill[g] += 1
    return order, bounds


def group_order(ids: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, bounds)`` of :func:`_counting_order` for shard ids ``ids`` (``int64[n]`` in
    ``[0, groups)``, as :func:`shard_ids` gives them): packets of group ``g`` are
    ``order[bounds[g]:bounds[g + 1]]``, in arrival order. ``SketchError`` on an id out of range
    (found by the kernel's counting pass, so valid ids cost no separate min/max pass)."""
    ids = np.ascontiguousarray(ids, np.int64)
    order, bounds = _counting_order(ids, np.int64(groups))
    if len(bounds) != groups + 1:
        raise SketchError(f"shard ids must lie in [0, {groups}), got {int(ids.min())}..{int(ids.max())}")
    return order, bounds


def routed_by_source(spec: dict[str, Any]) -> bool:
    """Whether a sketch config is routed by source address (Hidden Sketch keyed by ``src_ip``)."""
    kind = _kind(spec)
    return kind is not None and bool(kind.route_key) and spec.get("key", kind.route_key) == kind.route_key


def source_shard_ids(batch: PacketBatch, shards: int, seed: int = ROUTE_SEED) -> np.ndarray:
    """``int64[n]``: the shard of each packet's source address, ``source_route_hashes(batch, seed) % shards``."""
    return _shard_of(source_route_hashes(batch, seed), shards)


def split_by_source(batch: PacketBatch, shards: int, seed: int = ROUTE_SEED) -> list[PacketBatch]:
    """The batch's packets per source shard, each in arrival order."""
    return _split(batch, source_shard_ids(batch, shards, seed), shards)


def route(batch: PacketBatch, shards: int, seed: int, by_source: bool) -> list[tuple[PacketBatch, PacketBatch | None]]:
    """Per shard ``(packets by flow, packets by source or None)``: what each shard applies."""
    flows = split_by_shard(batch, shards, seed)
    sources = split_by_source(batch, shards, seed) if by_source else [None] * shards
    return list(zip(flows, sources))


class ShardPart:
    """Packets on their way to a shard: their count and the batch's columns that are not all zero.

    A column the collector did not send (the 40-byte ``header`` block without a learned estimator,
    TCP fields, ...) decodes as zeros. Routing a full :class:`PacketBatch` gathered, serialised and
    copied every such column to the shards: 150 bytes a packet for a batch split both ways, against
    34 on the wire. ``batch()`` rebuilds the same batch (the absent columns zero again).
    """

    __slots__ = ("n", "columns")

    def __init__(self, n: int, columns: dict[str, np.ndarray]):
        self.n, self.columns = int(n), columns

    def __len__(self) -> int:
        return self.n

    def batch(self) -> PacketBatch:
        fields = {}
        for name, dtype in COLUMN_DTYPES.items():
            fields[name] = self.columns[name] if name in self.columns else np.zeros(self.n, dtype)
        for name, width in BLOCK_COLUMNS.items():
            block = self.columns.get(name)
            fields[name] = block if block is not None else np.zeros((self.n, width), np.uint8)
        return PacketBatch(**fields)


def route_parts(batch: PacketBatch, shards: int, seed: int, by_source: bool) -> list[tuple[ShardPart, ShardPart | None]]:
    """:func:`route` as :class:`ShardPart` pairs: only the columns holding data are gathered and sent."""
    present = {name: col for name, col in batch.columns().items() if col.any()}

    def split(ids: np.ndarray) -> list[ShardPart]:
        order, bounds = group_order(ids, shards)
        bounds = bounds.tolist()
        grouped = {name: col[order] for name, col in present.items()}
        return [ShardPart(bounds[s + 1] - bounds[s], {name: col[bounds[s]:bounds[s + 1]] for name, col in grouped.items()})
                for s in range(shards)]

    flows = split(shard_ids(batch, shards, seed))
    sources = split(source_shard_ids(batch, shards, seed)) if by_source else [None] * shards
    return list(zip(flows, sources))


class PackedParts:
    """One shard's packets of one batch in a single contiguous buffer: its part by flow and (when a
    sketch is routed by source) its part by source, only the columns holding data.

    A :class:`ShardPart` pair is up to 2 x 8 numpy arrays; Ray pickles each as its own out-of-band
    buffer and puts each part as its own object, which cost 4 ms of front-end CPU per put at 8 Ki
    batches (``bench_shard_stages.py``). Here the front end gathers every column straight into one
    ``uint8`` buffer (each column 8-byte aligned) and makes one ``ray.put`` per shard; the actor
    views the columns in place (no copy: Ray hands numpy buffers over zero-copy, read-only).

    ``columns``: ``(part, name, dtype str, width, offset)`` per column, ``part`` 0 (by flow) or 1
    (by source), ``width`` 0 for a 1-D column or the row width of a block column (``uint8[n, w]``).
    """

    __slots__ = ("n_flow", "n_source", "columns", "buffer")

    def __init__(self, n_flow: int, n_source: int | None, columns: tuple, buffer: np.ndarray):
        self.n_flow, self.n_source, self.columns, self.buffer = int(n_flow), n_source, columns, buffer

    def __len__(self) -> int:
        return self.n_flow

    def __reduce__(self):  # a plain tuple: nothing but the one buffer travels out of band
        return (PackedParts, (self.n_flow, self.n_source, self.columns, self.buffer))

    def parts(self) -> tuple[ShardPart, ShardPart | None]:
        """``(by flow, by source or None)`` as :class:`ShardPart` objects whose columns are views
        of the buffer."""
        counts = (self.n_flow, self.n_source)
        columns: tuple[dict, dict] = ({}, {})
        for part, name, dtype, width, offset in self.columns:
            n = counts[part]
            dt = np.dtype(dtype)
            shape = (n, width) if width else (n,)
            size = n * (width or 1) * dt.itemsize
            columns[part][name] = self.buffer[offset:offset + size].view(dt).reshape(shape)
        flow = ShardPart(self.n_flow, columns[0])
        return flow, (ShardPart(self.n_source, columns[1]) if self.n_source is not None else None)


def route_packed(batch: PacketBatch, shards: int, seed: int, by_source: bool,
                 buffers=None) -> list[PackedParts]:
    """:func:`route_parts` with each shard's parts in one :class:`PackedParts` buffer: the columns
    holding data are gathered straight into it (one ``np.take`` per column and part, no
    intermediate grouped copy). ``PackedParts.parts()`` gives exactly ``route_parts``'s pair.
    ``buffers(shard, nbytes)``: where shard ``shard``'s buffer goes (a writable ``uint8[nbytes]``;
    default a new array), e.g. a :class:`SharedRing` slot."""
    present = {name: col for name, col in batch.columns().items() if col.any()}
    groups = [group_order(shard_ids(batch, shards, seed), shards)]
    if by_source:
        groups.append(group_order(source_shard_ids(batch, shards, seed), shards))
    out = []
    for s in range(shards):
        ranges = [(order, int(bounds[s]), int(bounds[s + 1])) for order, bounds in groups]
        columns, offset = [], 0
        for part, (_, lo, hi) in enumerate(ranges):
            for name, col in present.items():
                width = col.shape[1] if col.ndim == 2 else 0
                columns.append((part, name, col.dtype.str, width, offset))
                offset += -(-(hi - lo) * (width or 1) * col.itemsize // 8) * 8
        buffer = np.empty(offset, np.uint8) if buffers is None else buffers(s, offset)
        for (part, name, dtype, width, start) in columns:
            order, lo, hi = ranges[part]
            col = present[name]
            size = (hi - lo) * (width or 1) * col.itemsize
            target = buffer[start:start + size].view(col.dtype).reshape(((hi - lo), width) if width else (hi - lo,))
            np.take(col, order[lo:hi], axis=0, out=target, mode="clip")  # "raise" buffers the output
        n_source = ranges[1][2] - ranges[1][1] if by_source else None
        out.append(PackedParts(ranges[0][2] - ranges[0][1], n_source, tuple(columns), buffer))
    return out


class SharedRing:
    """``slots`` reusable shared-memory buffers that carry one shard's parts from the front end to an
    actor on the same machine, instead of Ray's object store.

    A ``ray.put`` (create, copy, seal, reference-count and free an object through the raylet)
    cost the front end and the raylet more CPU per batch than the routing itself
    (``bench_shard_stages.py``). Here the front end gathers a shard's columns straight into the
    next slot (:meth:`take`) and passes only the slot's path, size and column directory (a few hundred
    bytes, inline in the actor call); the actor reads them into its own memory with one
    ``read`` (:meth:`ShardWorker.update_shared`), so no sketch can hold a view of a slot. A slot
    is written again only after the batch that used it was seen applied: the owner
    (:class:`~telesketch.distributed.service.ShardPool`) keeps at most ``slots - 1`` batches in
    flight.

    A slot is an anonymous memory file (``memfd_create``) that the actor opens as
    ``/proc/<front end pid>/fd/<fd>``: nothing is left behind in ``/dev/shm`` when the front end
    exits, however it exits. :meth:`close` frees them, and so does the ring's collection (a
    ``weakref.finalize``: an owner dropped without ``shutdown()`` must not hold its slots' memory until
    the process ends). An actor that cannot
    open that path (another pid namespace, ``hidepid``, a non-dumpable front end) fails with a
    :class:`SketchError` saying so; ``ShardPool`` checks every actor at start
    (``ShardWorker.read_shared``) and otherwise sends parts through Ray's object store.
    """

    def __init__(self, tag: str, slots: int):
        self.tag = tag
        self.files: list[tuple[int, Any, int] | None] = [None] * slots  # (fd, mmap, capacity)
        self.next = 0
        #: the slot files' descriptors still open: shared with the finalizer, which must not hold the ring
        self._open_fds: set[int] = set()
        weakref.finalize(self, _close_fds, self._open_fds)

    def take(self, nbytes: int) -> tuple[str, np.ndarray]:
        """The next slot: its path and a writable ``uint8[nbytes]`` view of it (grown as needed)."""
        import mmap
        import os

        slot = self.next
        self.next = (slot + 1) % len(self.files)
        current = self.files[slot]
        if current is None or current[2] < nbytes:
            if current is not None:
                self.files[slot] = None
                self._open_fds.discard(current[0])
                os.close(current[0])  # its memory goes once the last view of the old map is dropped
            capacity = max(1 << 20, nbytes + nbytes // 4)
            fd = os.memfd_create(f"telesketch-{self.tag}-{slot}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, capacity)
                mapped = mmap.mmap(fd, capacity)
            except BaseException:
                os.close(fd)
                raise
            self._open_fds.add(fd)
            current = self.files[slot] = (fd, mapped, capacity)
        return f"/proc/{os.getpid()}/fd/{current[0]}", np.frombuffer(current[1], np.uint8, nbytes)

    def close(self) -> None:
        """Close the slots' files (a view still held elsewhere keeps its memory until dropped)."""
        self.files = [None] * len(self.files)
        _close_fds(self._open_fds)


def _close_fds(fds: set[int]) -> None:
    """Close and forget every descriptor in ``fds`` (a :class:`SharedRing`'s open slot files); run by
    ``SharedRing.close`` and, for a ring dropped unclosed, by its finalizer."""
    import os

    while fds:
        os.close(fds.pop())


def shared_memory_usable() -> bool:
    """Whether this machine can carry parts through :class:`SharedRing` (Linux: ``memfd_create``
    and ``/proc/<pid>/fd``)."""
    import os

    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


def _read_slot(path: str, nbytes: int) -> np.ndarray:
    """``uint8[<= nbytes]``: a :class:`SharedRing` slot read into this process's memory; a slot this
    process cannot open is a :class:`SketchError` that says so."""
    try:
        return np.fromfile(path, np.uint8, count=nbytes)
    except OSError as exc:
        raise SketchError(f"shard input {path}: cannot open the front end's shared-memory slot "
                          f"({exc.strerror or exc}); this actor must run on the front end's machine, in "
                          f"its pid namespace, with /proc/<pid>/fd readable") from None


def _as_batch(part):
    return part.batch() if isinstance(part, ShardPart) else part


def shard_specs(specs: dict[str, dict[str, Any]], shards: int) -> dict[str, dict[str, Any]]:
    """The sketch config of one of ``shards`` shards (see the module docstring).

    ResidualSketch / CocoSketch see a prefix's sources spread over the shards, so their promotion
    threshold shrinks with the shard's share of the traffic: ``shard_threshold(T, S)`` (spec §4; the
    front end keeps ``global_threshold = T`` for the report). Sketches routed by their own key
    (flows, or sources for Hidden Sketch) see whole keys and keep their thresholds. Bad parameters
    are a :class:`~telesketch.service.config.ConfigError` naming the sketch.
    """
    out = {}
    for name, spec in specs.items():
        spec = dict(spec)
        kind = _kind(spec)
        if shards > 1 and kind is not None and kind.spread_keys:
            from telesketch.sketches.cocosketch import shard_threshold

            built = _build_for_specs(name, spec)
            T = built.T
            spec = dict(built.shard_params(spec))  # what the kind pins from the whole stream's figures
            for key in ("phi", "expected_packets", "expected_bytes"):  # T now comes as a number, the shard's share of it
                spec.pop(key, None)
            spec["threshold"] = shard_threshold(T, shards)
            spec["global_threshold"] = T
        out[name] = spec
    return out


def shard_spec(specs: dict[str, dict[str, Any]], shard: int) -> dict[str, dict[str, Any]]:
    """What shard ``shard`` builds from :func:`shard_specs`'s output: ResidualSketch / CocoSketch
    draw their coins from their own ``seed + shard`` (spec §4: "each shard uses its own seed"),
    everything else exactly as configured."""
    out = {}
    for name, spec in specs.items():
        spec = {k: v for k, v in spec.items() if k != "global_threshold"}
        kind = _kind(spec)
        if kind is not None and kind.spread_keys:
            spec["seed"] = (int(spec.get("seed", 0)) + shard) % 2**64
        out[name] = spec
    return out


def _build_for_specs(name: str, spec: dict[str, Any]):
    from telesketch.service.config import ConfigError

    kind = ss.KINDS[spec["kind"]]
    params = {k: v for k, v in spec.items() if k not in ("kind", "device")}
    try:
        return getattr(importlib.import_module(kind.module), kind.cls)(**params)
    except (TypeError, ValueError) as exc:  # SketchError is a ValueError
        raise ConfigError(f"sketch {name!r} ({spec['kind']}): bad parameters: {exc}") from None


# ====================================================================== the shard actor
class ShardWorker:
    """One shard: the configured sketches' live states for the open epoch (wrapped by ``ray.remote``).

    :class:`ShardedSketches` runs one epoch (``advance(0)``); the sharded service
    (:mod:`telesketch.distributed.service`) advances, closes, dumps and restores it epoch by epoch.
    """

    #: Numba threads each update runs its parallel kernels on (0: Numba's default, every core).
    #: Shards share the machine's cores with each other and the front end, and one process's
    #: concurrent pipeline also runs each sketch on one thread (the results are the same).
    numba_threads = 1

    def __init__(self, specs: dict[str, dict[str, Any]], shard: int = 0):
        self.sketchset = ss.SketchSet.from_config(shard_spec(specs, shard))
        self.source_routed = {cs.name for cs in self.sketchset.active
                              if routed_by_source({"kind": cs.kind_name, **cs.params})}
        #: sketches that count IPv4 rows only (``Sketch.takes_ipv6``): they get ``family(4)`` of a part,
        #: as in one process; the driver counts the rows withheld (``ShardedSketchSet.update``)
        self.ipv4_only = {cs.name for cs in self.sketchset.active if not cs.cls.takes_ipv6(cs.params)}
        self.states: dict[str, Any] = {}
        self.packets = 0

    def advance(self, epoch: int) -> None:
        """Open ``epoch``: each sketch's next state (fresh, successor, or the live continuous one)."""
        self.states = self.sketchset.new_states(epoch, self.states or None)

    def update(self, by_flow: PacketBatch | ShardPart | PackedParts,
               by_source: PacketBatch | ShardPart | None = None) -> int:
        """Source-routed sketches take ``by_source``, the others ``by_flow``, IPv4-only sketches the
        IPv4 rows of it (``by_flow`` may be a :class:`PackedParts` holding both); returns packets so
        far."""
        if isinstance(by_flow, PackedParts):
            by_flow, by_source = by_flow.parts()
        by_flow, by_source = _as_batch(by_flow), _as_batch(by_source)
        if self.numba_threads:
            import numba

            own = numba.get_num_threads()
            numba.set_num_threads(min(self.numba_threads, numba.config.NUMBA_NUM_THREADS))
            try:
                return self._update(by_flow, by_source)
            finally:
                numba.set_num_threads(own)
        return self._update(by_flow, by_source)

    def _update(self, by_flow: PacketBatch, by_source: PacketBatch | None) -> int:
        ipv4_rows: dict[int, PacketBatch] = {}  # id(part) -> its IPv4 rows, filtered once per part
        for cs in self.sketchset.active:
            part = by_source if cs.name in self.source_routed else by_flow
            if part is not None and cs.name in self.ipv4_only:
                if id(part) not in ipv4_rows:  # not setdefault: that would filter again for every sketch
                    ipv4_rows[id(part)] = part.family(4)
                part = ipv4_rows[id(part)]
            if part is not None and len(part):
                self.states[cs.name].update(part)
        self.packets += len(by_flow)
        return self.packets

    def update_shared(self, path: str, nbytes: int, n_flow: int, n_source: int | None, columns: tuple) -> int:
        """:meth:`update` of the :class:`PackedParts` the front end wrote to ``nbytes`` bytes of the
        shared file ``path`` (a :class:`SharedRing` slot): read into this process's memory first, so
        the slot is free again when this returns."""
        buffer = _read_slot(path, nbytes)
        if len(buffer) != nbytes:
            raise SketchError(f"shard input {path}: {len(buffer)} bytes, {nbytes} expected")
        return self.update(PackedParts(n_flow, n_source, columns, buffer))

    def read_shared(self, path: str, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of the shared file ``path``: the front end's check that this
        actor can open its :class:`SharedRing` slots (else it sends parts through Ray's object store)."""
        return _read_slot(path, nbytes).tobytes()

    def node(self) -> str:
        """The Ray node this shard runs on (the front end uses shared memory with shards on its own)."""
        return _ray().get_runtime_context().get_node_id()

    def count(self) -> int:
        return self.packets

    def close(self) -> dict[str, bytes]:
        """The open epoch's closed representation, serialised per sketch."""
        closed = self.sketchset.close(self.states)
        return {name: self.sketchset.get(name).dump_state(state) for name, state in closed.items()}

    def dump(self, name: str) -> bytes:
        return self.sketchset.get(name).dump_state(self.states[name])

    def load(self, name: str, blob: bytes | None) -> None:
        """Restore one sketch of the open epoch (``None``: start it empty)."""
        cs = self.sketchset.get(name)
        self.states[name] = cs.build() if blob is None else cs.load_state(blob, closed=False)

    def memory(self, name: str) -> int:
        return self.sketchset.get(name).memory(self.states[name])

    def active(self) -> dict[str, str]:
        """``{name: note}`` of every configured sketch this shard could not build ("" if active)."""
        return {cs.name: ("" if cs.active else cs.note) for cs in self.sketchset.sketches}

    def call(self, name: str, method: str, *args, **kwargs):
        """``states[name].method(*args, **kwargs)`` on the shard (answers travel back)."""
        return getattr(self.states[name], method)(*args, **kwargs)


# ====================================================================== the driver
class ShardedSketches:
    """``shards`` Ray actors, each owning one shard's sketches built from ``specs`` (the service's
    ``[sketches]`` table: ``{name: {"kind": ..., params...}}``).

    ``ingest(batch)`` routes by flow key and returns when every shard has applied its part; the
    query methods fan out and combine as the module docstring says. Needs ``ray.init()`` first
    (or pass ``init_kwargs`` to start a local cluster).
    """

    def __init__(self, specs: dict[str, dict[str, Any]], shards: int = 2, route_seed: int = ROUTE_SEED,
                 actor_options: dict | None = None, init_kwargs: dict | None = None):
        ray = _ray()
        if shards < 1:
            raise SketchError(f"shards must be >= 1, got {shards}")
        if not ray.is_initialized():
            ray.init(**(init_kwargs or {}))
        self.shards, self.route_seed = shards, route_seed
        self.specs = shard_specs(specs, shards)
        self.local = ss.SketchSet.from_config(shard_spec(self.specs, 0))
        remote_cls = ray.remote(ShardWorker).options(**(actor_options or {}))
        self.actors = [remote_cls.remote(self.specs, shard) for shard in range(shards)]
        ray.get([a.advance.remote(0) for a in self.actors])
        self.packets = 0

    # ------------------------------------------------------------------ lifecycle
    def ingest(self, batch: PacketBatch) -> None:
        """Send each shard its packets (arrival order kept) and wait until all are applied."""
        ray = _ray()
        by_source = any(routed_by_source(spec) for spec in self.specs.values())
        parts = route_parts(batch, self.shards, self.route_seed, by_source)
        ray.get([a.update.remote(f, s) for a, (f, s) in zip(self.actors, parts) if len(f) or (s is not None and len(s))])
        self.packets += len(batch)

    def shutdown(self) -> None:
        """Kill the shard actors (their state is lost)."""
        ray = _ray()
        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def shard_packets(self) -> list[int]:
        return _ray().get([a.count.remote() for a in self.actors])

    def states(self, name: str) -> list:
        """Copies of each shard's state of sketch ``name`` (via ``to_bytes``), shard order."""
        cs = self._sketch(name)
        return [cs.load(b, live=False) for b in _ray().get([a.dump.remote(name) for a in self.actors])]

    def _sketch(self, name: str) -> ss.ConfiguredSketch:
        try:
            cs = self.local.get(name)
        except KeyError:
            raise NotFound(f"no sketch named {name!r}; configured: {list(self.specs)}") from None
        if not cs.active:
            raise Precondition(f"sketch {name!r} is not active: {cs.note}")
        return cs

    def _owner(self, keys: np.ndarray) -> np.ndarray:
        """``int64[n]``: the shard owning each flow key (13-byte ``uint8[n, 13]`` or 37-byte)."""
        return key_shard_ids(keys, self.shards, self.route_seed)

    def window(self, name: str, query: str) -> Window:
        """Sketch ``name``'s shards combined by its kind's rule (:meth:`Sketch.combine` over shards),
        the same rule the sharded service applies to one epoch. ``QueryError`` if it does not answer
        ``query``."""
        cs = self._sketch(name)
        if query not in cs.kind.queries:
            raise QueryError(f"sketch {name!r} ({cs.kind_name}) does not answer {query}")
        shards = [cs.cls.combine([state], EPOCHS) for state in self.states(name)]
        return cs.cls.combine(shards, over_shards(self._owner, self.specs[name].get("global_threshold", 0.0)))

    # ------------------------------------------------------------------ queries
    def heavy_hitters(self, name: str, phi: float | None = None, threshold: float | None = None) -> list[tuple]:
        """``[(key, count)]`` over all shards (``exact`` or ``hiddensketch``); default threshold: the
        sketch's ``phi`` of every packet ingested."""
        if phi is not None and threshold is not None:
            raise QueryError("give phi or threshold, not both")
        return self.window(name, "heavy_hitters").heavy_hitters(self.packets, phi, threshold).rows

    def hhh(self, name: str, threshold: float | None = None) -> list[tuple[int, int, float]]:
        """``[(prefix, length, discounted)]``: merged exact, or summed layer estimates + one pass at
        the global report threshold (default: the configured ``T``)."""
        return self.window(name, "hhh").hhh(self.packets, None, threshold).rows

    def hhh_rows(self, name: str, threshold: float | None = None) -> list:
        """:meth:`hhh` for both address families: ``[HHHRow]`` (IPv4 rows first), the IPv6 tree's
        layer estimates summed over the shards the same way, one pass per family."""
        return self.window(name, "hhh").hhh_rows(self.packets, None, threshold).rows

    def gap_events(self, name: str) -> np.ndarray:
        """Union of the shards' gap events (structured array), stably ordered by ``ts_ns``."""
        return self.window(name, "gaps").gap_events().rows[0]

    def flow_size(self, name: str, keys: np.ndarray) -> np.ndarray:
        """``int64[n]`` sizes of flow keys ``uint8[n, 13]`` (IPv4) or ``uint8[n, 37]`` (either
        family), each from its owning shard."""
        keys = np.ascontiguousarray(keys, np.uint8)
        if keys.ndim != 2 or keys.shape[1] != FLOW_KEY37_BYTES:
            keys = keys.reshape(-1, FLOW_KEY_BYTES)
        return self.window(name, "flow_size").flow_size(keys).rows

    def top_flows(self, name: str, k: int = 100) -> list[tuple[Any, int]]:
        """The ``k`` largest flows: the shards' top-k lists merged (flows are whole on a shard)."""
        return self.window(name, "top_flows").top_flows(k).rows
