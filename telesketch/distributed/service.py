"""The streaming service on Ray shards (``[server] shards = N``, ``telesketch serve --shards N``).

The gRPC front end keeps what makes the service durable and ordered: epochs, the sender sequence
table, the write-ahead log and the snapshots (:mod:`telesketch.service.epochs`, unchanged). What
it hands to Ray is the sketch work: :class:`ShardedSketchSet` stands in for the service's
``SketchSet`` and keeps the *open* epoch's sketches on ``N`` actors, one per shard, each built from
the shard config of :func:`telesketch.distributed.cluster.shard_specs`. Every batch is split by
flow key, and by source address too when a Hidden Sketch is keyed by source
(:func:`~telesketch.distributed.cluster.route`, arrival order kept), and each actor applies its parts; the batch is acknowledged only after every shard has applied it and the
front end has logged it, so a restart (snapshot + log replay through the shards) loses nothing
acknowledged.

Transport and pipelining (issue 21, fourth pass; ``benchmarks/bench_shard_stages.py`` measures
each stage): each shard's parts of a batch travel as one contiguous buffer
(:class:`~telesketch.distributed.cluster.PackedParts`), through a shared-memory ring
(:class:`~telesketch.distributed.cluster.SharedRing`) when every actor runs on this machine and
reads a test slot at start, else as one object through Ray. Once the service runs, up to ``INFLIGHT_BATCHES`` batches per shard are
in flight: the front end routes and sends batch k + 1 while the shards apply batch k. The sketch
worker still answers a batch only after :meth:`ShardPool.wait` of its ticket (every shard applied
it), in admission order; an actor runs one call at a time in submission order, so dumps, closes and
checkpoints see every batch sent before them (they also wait for all in flight first).

States as the epoch manager sees them:

* :class:`OpenShardedState`: a handle to one sketch of the open epoch on the actors. A query
  fetches the shards' serialised states (the actors run one call at a time, so the copy falls
  between two batches); a checkpoint stores them all in one envelope.
* :class:`ShardedState`: a closed epoch's sketch, pulled back from the actors when the epoch
  closes: one local state per shard. Queries combine the shards as
  :mod:`telesketch.service.sketchset` says (state sharded by key is read from its owner or unioned;
  ResidualSketch's layer estimates are summed; ``exact`` is merged, so it answers exactly as one
  process).

Snapshots written with ``N`` shards load only with ``N`` shards (a clear error otherwise): a flow's
shard depends on ``N``.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from telesketch.distributed.cluster import (
    ROUTE_SEED,
    SharedRing,
    ShardWorker,
    _ray,
    key_shard_ids,
    route_packed,
    routed_by_source,
    shard_spec,
    shard_specs,
    shared_memory_usable,
)
from telesketch.packets import PacketBatch
from telesketch.service import sketchset as ss
from telesketch.service.overload import OverloadWatch
from telesketch.errors import Unavailable
from telesketch.sketches.core import EPOCHS, SketchError, Window, envelope_algorithm, over_shards, pack_state, unpack_state

log = logging.getLogger(__name__)

ENVELOPE = ss.SHARDS_ENVELOPE


class ShardLostError(Unavailable):
    """A shard actor died: its part of the open epoch is gone until the service restarts (ingest
    and queries answer ``UNAVAILABLE``; nothing acknowledged is lost, the log replays it)."""


class ShardPool:
    """The ``shards`` actors of one service, and the calls the front end makes on all of them."""

    def __init__(self, specs: dict[str, dict[str, Any]], shards: int, route_seed: int = ROUTE_SEED,
                 address: str = "", actor_options: dict | None = None):
        ray = _ray()
        if not isinstance(shards, int) or shards < 1:
            raise SketchError(f"shards must be a positive integer, got {shards!r}")
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, configure_logging=False)  # actor logs: stderr
            self._started_ray = True
        self.shards, self.route_seed = shards, route_seed
        self.lost = ""  # why the pool is unusable ("" while every actor lives)
        self.by_source = any(routed_by_source(spec) for spec in specs.values())  # a second split needed
        remote_cls = ray.remote(ShardWorker).options(**(actor_options or {}))
        self.actors = [remote_cls.remote(specs, shard) for shard in range(shards)]
        #: batches an ``update`` may leave in flight per shard (1: it returns once the shards applied
        #: the batch). The service's sketch worker raises it (:meth:`pipeline`) and acknowledges a
        #: batch only after :meth:`wait` for its ticket, so an ack still means "applied on every shard"
        self.inflight_limit = 1
        self._inflight: deque = deque()  # (ticket, refs) of updates not yet seen applied, oldest first
        self._tickets = 0  # updates submitted so far; a ticket is that count after the update
        self.applied_ticket = 0  # every update up to this ticket was seen applied on every shard
        self._waiting = threading.Lock()  # one waiter at a time pops the in-flight queue
        #: parts travel through shared memory (:class:`SharedRing`, one per shard) when every actor
        #: runs on this machine and reads a test slot (:meth:`_actors_read_rings`); else as objects through Ray
        self.shared = False
        self._rings: list[SharedRing] | None = None
        if shared_memory_usable():
            here = ray.get_runtime_context().get_node_id()
            self.shared = (all(node == here for node in self._get([a.node.remote() for a in self.actors]))
                           and self._actors_read_rings())

    def _actors_read_rings(self) -> bool:
        """Whether every actor reads what this process writes to a :class:`SharedRing` slot (it opens
        ``/proc/<pid>/fd/<fd>``: another pid namespace, ``hidepid`` or a non-dumpable front end
        forbid that). If not, parts go through Ray's object store, with a warning saying why."""
        ring = SharedRing("probe", 1)
        try:
            path, view = ring.take(64)
            view[:] = np.arange(64, dtype=np.uint8)
            expected = view.tobytes()
            try:
                got = _ray().get([a.read_shared.remote(path, 64) for a in self.actors])
            except Exception as exc:  # noqa: BLE001 - a dead actor shows at the first real call
                log.warning("shard actors cannot read this process's shared memory (%s); "
                            "parts go through Ray's object store", exc)
                return False
            if any(g != expected for g in got):
                log.warning("shard actors read other bytes than this process wrote to shared memory; "
                            "parts go through Ray's object store")
                return False
            return True
        finally:
            ring.close()

    def pipeline(self, batches: int) -> None:
        """Let :meth:`update` leave up to ``batches`` batches in flight per shard (>= 1)."""
        self.drain()
        self._close_rings()  # their slot count follows the limit
        self.inflight_limit = max(1, int(batches))

    def _close_rings(self) -> None:
        if self._rings is not None:
            for ring in self._rings:
                ring.close()
            self._rings = None

    def _all(self, method: str, *args) -> list:
        self.drain()  # a failed update in flight surfaces here, before a dump or close is taken
        return self._get([getattr(a, method).remote(*args) for a in self.actors])

    def _get(self, refs: list) -> list:
        """``ray.get`` of calls on the actors; a dead actor makes the pool unusable (ShardLostError)."""
        ray = _ray()
        if self.lost:
            raise ShardLostError(self.lost)
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as exc:
            self.lost = (f"a shard actor died ({type(exc).__name__}); the open epoch's state on it is gone. Restart "
                         f"the service: it rebuilds every acknowledged batch from its checkpoint and write-ahead log")
            raise ShardLostError(self.lost) from None

    def advance(self, epoch: int) -> None:
        self._all("advance", epoch)

    def update(self, batch: PacketBatch) -> int:
        """Send each shard its packets (one contiguous :class:`~telesketch.distributed.cluster.PackedParts`
        buffer per shard). Returns the batch's ticket for :meth:`wait`; returns only once the shards
        applied it when ``inflight_limit`` is 1, else once at most ``inflight_limit`` batches are in
        flight. Each actor runs its calls one at a time in the order this process submitted them,
        so the shards apply batches in order and any later call (a dump, a close) sees every
        batch submitted before it."""
        if self.lost:
            raise ShardLostError(self.lost)
        refs: list = []
        try:
            if self.shared:
                if self._rings is None:  # a slot is reused only after the batch before it in the ring
                    self._rings = [SharedRing(f"shard{i}", self.inflight_limit + 1)  # was seen applied
                                   for i in range(self.shards)]
                paths = [""] * self.shards

                def slot(shard: int, nbytes: int) -> np.ndarray:
                    paths[shard], view = self._rings[shard].take(nbytes)
                    return view

                packed = route_packed(batch, self.shards, self.route_seed, self.by_source, slot)
                for a, p, path in zip(self.actors, packed, paths):
                    if len(p) or p.n_source:
                        refs.append(a.update_shared.remote(path, len(p.buffer), p.n_flow, p.n_source, p.columns))
            else:
                for a, p in zip(self.actors, route_packed(batch, self.shards, self.route_seed, self.by_source)):
                    if len(p) or p.n_source:
                        refs.append(a.update.remote(p))
        except BaseException:  # a ring slot may have been taken: let whatever was sent finish before any reuse
            self._settle_quietly(refs)
            raise
        self._tickets += 1
        ticket = self._tickets
        self._inflight.append((ticket, refs))
        if self.inflight_limit <= 1:
            self.wait(ticket)
        else:
            self.wait(ticket - self.inflight_limit)
        return ticket

    def _settle_quietly(self, refs: list) -> None:
        """Wait for ``refs`` and everything in flight, ignoring their errors (a failed update's cleanup)."""
        ray = _ray()
        try:
            if refs:
                ray.wait(refs, num_returns=len(refs))
            self.drain()
        except Exception:  # noqa: BLE001 - the original error is the one raised
            pass
        self._close_rings()  # slot positions may no longer match the batches: start the rings afresh

    def latest_ticket(self) -> int:
        """The ticket of the last update submitted (0: none yet)."""
        return self._tickets

    def wait(self, ticket: int) -> None:
        """Return once every update up to ``ticket`` is applied on every shard. A dead actor makes
        the pool unusable (:class:`ShardLostError`); so does an update that failed on a shard while
        it was in flight (its batch and the ones after it are not acknowledged; a restart replays
        them from the log)."""
        with self._waiting:
            while self._inflight and self._inflight[0][0] <= ticket:
                _, refs = self._inflight[0]
                try:
                    self._get(refs)
                except ShardLostError:
                    raise
                except Exception as exc:
                    if self.inflight_limit > 1:  # later batches were applied after it: the state is off
                        self.lost = (f"a shard failed applying a batch ({type(exc).__name__}: {exc}); the open "
                                     f"epoch's state on the shards misses it. Restart the service: it rebuilds "
                                     f"every acknowledged batch from its checkpoint and write-ahead log")
                    self._inflight.popleft()
                    raise
                self.applied_ticket = self._inflight.popleft()[0]
        if self.lost:
            raise ShardLostError(self.lost)

    def drain(self) -> None:
        """Wait for every update in flight (:meth:`wait` of the latest ticket)."""
        if self._inflight or self.lost:
            self.wait(self._tickets)

    def close(self) -> list[dict[str, bytes]]:
        return self._all("close")

    def dump(self, name: str) -> list[bytes]:
        return self._all("dump", name)

    def load(self, name: str, blobs: list[bytes | None]) -> None:
        self._get([a.load.remote(name, b) for a, b in zip(self.actors, blobs)])

    def memory(self, name: str) -> int:
        return int(sum(self._all("memory", name)))

    def owner(self, keys: np.ndarray) -> np.ndarray:
        """``int64[n]``: the shard owning each flow key (13-byte ``uint8[n, 13]`` or 37-byte)."""
        return key_shard_ids(keys, self.shards, self.route_seed)

    def check_active(self, names: list[str]) -> None:
        """Every shard must run the sketches the front end runs (a kind missing on a Ray node would
        fail at the first rotation otherwise): :class:`SketchError` naming the sketch and shard."""
        for shard, notes in enumerate(self._all("active")):
            for name in names:
                if notes.get(name, "not configured"):
                    raise SketchError(f"sketch {name!r} is active on the front end but not on shard {shard}: "
                                      f"{notes.get(name, 'not configured')}")

    def shutdown(self) -> None:
        ray = _ray()
        self._inflight.clear()
        self._close_rings()
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._started_ray:
            ray.shutdown()


# ====================================================================== states
class _Sharded:
    """What both state kinds share: the parameters and the envelope (queries combine the shards
    through :meth:`ShardedConfiguredSketch.window`)."""

    cs: "ShardedConfiguredSketch"
    load_factor = None  #: not tracked across shards (the stats' gauge is left out)

    @property
    def params(self):
        """The shards' sketch parameters (all shards share them; no fetch from the actors)."""
        return self.cs.shard_sketch_params()

    def to_bytes(self) -> bytes:
        blobs = self._blobs()
        arrays = {f"shard{i}": np.frombuffer(b, np.uint8) for i, b in enumerate(blobs)}
        return pack_state(ENVELOPE, 1, {"shards": len(blobs), "route_seed": self.cs.pool.route_seed}, arrays)


class ShardedState(_Sharded):
    """A closed epoch's sketch: one local state per shard (shard order)."""

    def __init__(self, cs: "ShardedConfiguredSketch", shards: list):
        self.cs, self.shards = cs, shards

    def shard_states(self) -> list:
        return self.shards

    @property
    def memory_bytes(self) -> int:
        return int(sum(self.cs.base_memory(s) for s in self.shards))

    def _blobs(self) -> list[bytes]:
        return [ss.ConfiguredSketch.dump_state(self.cs, s) for s in self.shards]


class OpenShardedState(_Sharded):
    """The open epoch's sketch, living on the shard actors."""

    def __init__(self, cs: "ShardedConfiguredSketch"):
        self.cs = cs

    def shard_states(self) -> list:
        """Copies of the shards' current states (fetched now; for queries, so without an estimator)."""
        return [self.cs.load(b, live=False) for b in self._blobs()]

    @property
    def memory_bytes(self) -> int:
        return self.cs.pool.memory(self.cs.name)

    @property
    def scorer_bytes(self) -> int:
        """Bytes of the shards' per-flow scoring state (LLM-Sketch's flow-score cache, 0 for other
        kinds): each shard allocates the configured cache up front, so ``shards`` times one shard's,
        from the front end's own build (no fetch from the actors)."""
        return self.cs.pool.shards * self.cs.shard_scorer()[0]

    @property
    def scorer_charged(self) -> bool:
        """Whether that scoring state is in :attr:`memory_bytes` (``scorer_memory = "charged"``)."""
        return self.cs.shard_scorer()[1]

    def _blobs(self) -> list[bytes]:
        return self.cs.pool.dump(self.cs.name)


# ====================================================================== the sketch set
class ShardedConfiguredSketch(ss.ConfiguredSketch):
    """A configured sketch whose states are sharded: snapshots hold one envelope of shard states."""

    pool: ShardPool
    global_threshold: float = 0.0

    _shard_params: Any = None
    _shard_scorer: tuple[int, bool] | None = None

    def _build_one_shard(self) -> None:
        built = ss.ConfiguredSketch.build(self)
        self._shard_params = built.params
        self._shard_scorer = (int(getattr(built, "scorer_bytes", 0)), bool(getattr(built, "scorer_charged", False)))

    def shard_sketch_params(self):
        """Parameters of one shard's sketch, from a local build made once. (Not the per-kind hook
        ``Sketch.shard_params(params)``, which ``shard_specs`` asks for the config a shard builds from.)"""
        if self._shard_params is None:
            self._build_one_shard()
        return self._shard_params

    def shard_scorer(self) -> tuple[int, bool]:
        """One shard's ``(scorer_bytes, scorer_charged)`` (``(0, False)`` without a scorer), from the
        same local build as :meth:`shard_sketch_params`; a class without ``scorer_bytes`` has none, unbuilt."""
        if not hasattr(self.cls, "scorer_bytes"):
            return 0, False
        if self._shard_scorer is None:
            self._build_one_shard()
        return self._shard_scorer

    def window(self, states: list) -> Window:
        """Each shard's window over the epochs (the kind's ``combine``), combined over the shards:
        keys owned by their shard, ResidualSketch at the service-wide threshold."""
        per_shard = zip(*(s.shard_states() for s in states))
        windows = [self.cls.combine(list(column), EPOCHS) for column in per_shard]
        return self.cls.combine(windows, over_shards(self.pool.owner, self.global_threshold))

    def base_memory(self, state) -> int:
        """One shard's state: :meth:`ConfiguredSketch.memory` (both address families)."""
        return ss.ConfiguredSketch.memory(self, state)

    def memory(self, state) -> int:
        """A sharded state's bytes: its ``memory_bytes`` already sums :meth:`base_memory` over the shards."""
        return int(state.memory_bytes)

    def dump_state(self, state) -> bytes:
        return state.to_bytes()

    def load_state(self, data: bytes, closed: bool):
        if envelope_algorithm(data) != ENVELOPE:
            raise SketchError(f"sketch {self.name!r}: the data directory was written by a service without shards; "
                              f"start it with shards = 1, or use another data_dir")
        params, arrays, _, _ = unpack_state(data, ENVELOPE, 1)
        if params.get("route_seed") != self.pool.route_seed:
            raise SketchError(f"sketch {self.name!r}: the snapshot routed flows with seed {params.get('route_seed')}, "
                              f"the service with {self.pool.route_seed}; flows would change shards")
        if params.get("shards") != self.pool.shards:
            raise SketchError(f"sketch {self.name!r}: the snapshot holds {params.get('shards')} shards, the "
                              f"service runs {self.pool.shards}; restart with shards = {params.get('shards')}")
        blobs = [arrays[f"shard{i}"].tobytes() for i in range(self.pool.shards)]
        if closed:
            return ShardedState(self, [ss.ConfiguredSketch.load_state(self, b, closed=True) for b in blobs])
        self.pool.load(self.name, blobs)
        return OpenShardedState(self)

    def empty_state(self, closed: bool):
        """An epoch whose snapshot lacks this sketch: empty local shards (closed), or empty states on
        the actors (the open epoch)."""
        if closed:
            return ShardedState(self, [ss.ConfiguredSketch.empty_state(self, True) for _ in range(self.pool.shards)])
        self.pool.load(self.name, [None] * self.pool.shards)
        return OpenShardedState(self)


class ShardedSketchSet(ss.SketchSet):
    """``SketchSet`` whose open epoch lives on Ray shard actors (see the module docstring)."""

    pool: ShardPool | None = None

    @classmethod
    def from_config(cls, specs: dict[str, dict[str, Any]], shards: int = 2, route_seed: int = ROUTE_SEED,
                    address: str = "", actor_options: dict | None = None) -> "ShardedSketchSet":
        sharded = shard_specs(specs, shards)  # bad parameters: ConfigError before anything starts
        configured = ss.configure(shard_spec(sharded, 0))
        pool = ShardPool(sharded, shards, route_seed, address, actor_options)
        try:
            pool.check_active([cs.name for cs in configured if cs.active])
        except BaseException:
            pool.shutdown()
            raise
        out = cls()
        out.pool = pool
        for cs in configured:
            wrapped = ShardedConfiguredSketch(cs.name, cs.kind_name, cs.params, cs.kind, cs.cls, cs.active, cs.note)
            wrapped.pool = pool
            wrapped.global_threshold = sharded[cs.name].get("global_threshold", 0.0)
            if wrapped.active:  # one shard's cache size now, not at the first stats call (under the manager's lock)
                wrapped.shard_scorer()
            out.sketches.append(wrapped)
        return out

    def new_states(self, epoch: int, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        self.pool.advance(epoch)
        return {cs.name: OpenShardedState(cs) for cs in self.active}

    def update(self, states: dict[str, Any], batch: PacketBatch) -> None:
        """Route ``batch`` to the shards; the IPv6 rows each shard withholds from an IPv4-only
        sketch (``ShardWorker.update``) are counted here, once, as one process counts them."""
        self.pool.update(batch)
        withheld = batch.ipv6_count()
        for cs in self.active:
            if not cs.cls.takes_ipv6(cs.params):
                self.count_withheld(cs.name, withheld)

    @property
    def batch_invariant(self) -> bool:
        """``False``: the sharded set is not given joined batches. Each batch is routed to the shards
        with its own ticket (:meth:`applied_marker`) and the worker already pipelines them, so the
        service applies its batches one by one, as before (joining them there is not measured)."""
        return False

    def pipeline(self, batches: int) -> None:
        """Let :meth:`update` return with up to ``batches`` batches still being applied per shard
        (:meth:`ShardPool.pipeline`); whoever acknowledges a batch must first :meth:`wait_applied`
        for the :meth:`applied_marker` taken right after its update."""
        self.pool.pipeline(batches)

    def applied_marker(self) -> int | None:
        """The ticket of the last batch handed to the shards (``None`` while updates wait for the
        shards themselves): :meth:`wait_applied` of it returns once that batch and all before it are
        applied on every shard."""
        return self.pool.latest_ticket() if self.pool.inflight_limit > 1 else None

    def applied_through(self) -> int:
        """The latest marker already seen applied on every shard (:meth:`wait_applied` of it or of an
        older one returns at once)."""
        return self.pool.applied_ticket

    def wait_applied(self, marker: int) -> None:
        """Block until every batch up to ``marker`` is applied on every shard (raises as
        :meth:`ShardPool.wait`)."""
        self.pool.wait(marker)

    def close(self, states: dict[str, Any], epoch: int | None = None) -> dict[str, Any]:
        """The shards' closed states of epoch ``epoch``; the largest shard load factor of each sketch
        goes to ``watch`` as one process's would (a warning once per epoch at 1 or more)."""
        per_shard = self.pool.close()
        closed = {name: ShardedState(self.get(name), [ss.ConfiguredSketch.load_state(self.get(name), blobs[name],
                                                                                      closed=True)
                                                      for blobs in per_shard])
                  for name in states}
        watch = self.watch or OverloadWatch()
        for name, state in closed.items():
            loads = [s.load_factor for s in state.shards if s.load_factor is not None]
            if loads:
                watch.epoch_closed(name, epoch, max(loads), state.memory_bytes)
        return closed

    def shutdown(self) -> None:
        self.shutdown_pool()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
