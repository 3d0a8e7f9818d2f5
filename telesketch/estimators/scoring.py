"""The packet path's per-flow scoring (spec §4): one model call per flow, never per packet.

:class:`FlowScorer` keeps a bounded cache ``flow -> (packets seen, latest model score)`` in numpy
arrays driven by Numba kernels: no Python object per flow or per packet. A flow is identified by
the 64-bit telesketch hash of its 5-tuple (``hashing.hash_5tuple``, seed :data:`FLOW_HASH_SEED`;
an IPv6 flow: ``hashing.hash_keys`` of its 37-byte key);
two flows colliding on all 64 bits would share an entry (probability ~ flows^2 / 2^65, ignored).
The cache is 8-way set-associative with LRU replacement inside each set (an exact LRU when
``cache_flows <= 8``); its capacity is ``cache_flows`` rounded up to a multiple of the ways. A
flow evicted from the cache counts as new.

A packet is a *scoring point* when its 1-based position in its flow is 1 (and, with ``rescore``,
2, 4, 8, ...). Each packet gets the score of the latest scoring point of its flow at or before it.

**Size floor** (``floor_from``, default 512; 0 turns it off). A flow that has reached position
``k`` has at least ``k`` packets, so its soft label is at least ``y(k)``: that is known, not
predicted. At positions ``k = floor_from, 2 floor_from, 4 floor_from, ...`` the flow's score is
raised to ``y(k)`` if lower (no model call; ``y(512) = 0.999``). Why: the light part's one-byte
Count-Min counters saturate at 255, so a large flow the model missed would otherwise be reported
as at most 255 packets forever; raised to ``p >= 0.5`` it takes a heavy slot at its next packet
that finds its bucket full and is counted from there (it does not inherit its light count, so it
is under-counted by about ``k`` packets instead of capped at 255), and it stays locked. Admitting
at ``k`` beats staying in the light part when the flow ends above about ``k + 255`` packets.
Measured (``benchmarks/check_llm_topflows.py`` and BENCHMARKS.md, "LLM-Sketch"): 512 gave the
lowest ARE over flows of 256+ packets on both generated traffic and the nDPI capture, against
256, 1024 and no floor; 256 admits too many 256-510-packet flows that the light part counted better.

* ``mode="sync"`` (evaluation, tests; deterministic): a batch's scoring points are scored in one
  estimator call before the batch goes to the sketch. Equivalent to the offline two-phase replay.
* ``mode="async"`` (service): ingest never waits on the model. A packet whose flow has no model
  score yet gets a provisional one (the ``provisional`` estimator, e.g. trees, if given, else 0.5).
  Scoring points, and unscored flows not already queued, go to a bounded queue (``queue_batches``
  items; when it is full they are not queued and retried on the flow's next packet); one daemon
  worker thread scores it in batches of ``batch_size`` and fills the cache, so an arriving score
  changes only later packets. The worker exits when the scorer is garbage-collected or closed.
* ``mode="auto"``: ``async`` for the model estimators (``lm``, ``tiny``), ``sync`` otherwise.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref

import numpy as np

from telesketch.estimators import LABEL_PIVOT_LOG2, LABEL_SLOPE, as_estimator
from telesketch.hashing import hash_5tuple, hash_keys
from telesketch.intrinsics import prefetch
from telesketch.jit import kernel
from telesketch.packets import PacketBatch
from telesketch.sketches.cocosketch import fastmod
from telesketch.sketches.core import SketchError
from telesketch.sketches.llmsketch import LLMSketch, LLMSketchParams

PROVISIONAL = 0.5
FLOOR_FROM = 512  # see "Size floor" in the module doc
WAYS = 8
DEFAULT_CACHE_FLOWS = 1 << 20  #: ``cache_flows`` when not given and the cache is not charged
FLOW_HASH_SEED = 0x5C0E
MODES = ("sync", "async", "auto")
_U64 = np.uint64
_PREFETCH_AHEAD = 12  # packets between prefetching a cache set and using it
SLOW_KINDS = ("lm", "tiny")  # what "auto" scores asynchronously


# ---------------------------------------------------------------------------- kernels
@kernel
def _lookup_kernel(flow_hash, tags, seen, score, stamp, pending, tick0, rescore, queue_unscored,
                   slot_out, point_out, prev_out, cached_out, enqueue_out, pos_out):
    """The readable two-pass form's first pass (:func:`_score_batch_kernel` is what
    :meth:`FlowScorer.scores` runs; a test ties the two), on contiguous ``[sets, ways]`` arrays.

    Find or insert every packet's flow, in arrival order; per packet record its cache slot
    (flat index), whether it is a scoring point, the index of the previous packet of the same
    cache entry in this batch (-1: none), the entry's score before the batch (NaN: none), whether
    to queue it for the async worker and its in-flow position. ``stamp`` (last use, ``tick0 + i``)
    drives LRU.

    Speed: every packet's set is computed first (``slot_out`` holds it until overwritten), so the
    set of the packet ``_PREFETCH_AHEAD`` places on is prefetched: the table is far bigger than
    the caches, and its loads for successive packets then overlap instead of waiting in turn."""
    nsets, ways = tags.shape
    n = flow_hash.shape[0]
    for i in range(n):
        slot_out[i] = np.int64((flow_hash[i] >> np.uint64(32)) % np.uint64(nsets))
    tags_flat, stamp_flat, seen_flat, score_flat = tags.reshape(-1), stamp.reshape(-1), seen.reshape(-1), score.reshape(-1)
    for i in range(n):
        if i + _PREFETCH_AHEAD < n:
            ahead = slot_out[i + _PREFETCH_AHEAD] * ways
            prefetch(tags_flat, ahead)
            prefetch(stamp_flat, ahead)
            prefetch(seen_flat, ahead)
            prefetch(score_flat, ahead)
        h = flow_hash[i]
        tag = h if h != 0 else np.uint64(1)  # 0 marks an empty way
        row = slot_out[i]
        way = -1
        for w in range(ways):
            if tags[row, w] == tag:
                way = w
                break
        if way >= 0:
            last = stamp[row, way]
            prev_out[i] = last - tick0 if last >= tick0 else -1
        else:
            way = 0
            for w in range(ways):  # an empty way, else the least recently used
                if tags[row, w] == 0:
                    way = w
                    break
                if stamp[row, w] < stamp[row, way]:
                    way = w
            tags[row, way] = tag
            seen[row, way] = 0
            score[row, way] = np.nan
            pending[row, way] = 0
            prev_out[i] = -1
        stamp[row, way] = tick0 + i
        seen[row, way] += 1
        pos = seen[row, way]
        point = pos == 1 or (rescore and (pos & (pos - 1)) == 0)
        slot_out[i] = row * ways + way
        point_out[i] = point
        pos_out[i] = pos
        cached_out[i] = score[row, way]
        unscored = score[row, way] != score[row, way]
        enqueue_out[i] = queue_unscored and (point or (unscored and pending[row, way] == 0))
        if enqueue_out[i]:
            pending[row, way] = 1


@kernel
def _size_floor(pos, floor_from):
    """``y(k)`` for the largest floor position ``k <= pos`` (``floor_from * 2^j``); -1 when none."""
    if floor_from <= 0 or pos < floor_from:
        return -1.0
    k = floor_from
    while k * 2 <= pos:
        k *= 2
    return 1.0 / (1.0 + np.exp(-LABEL_SLOPE * (np.log2(np.float64(k)) - LABEL_PIVOT_LOG2)))


@kernel
def _fill_kernel(point, prev, cached, fresh, use_fresh, slots, score_flat, pos, floor_from, out):
    """Per packet the latest score of its flow (NaN: none yet), written back to the cache (the
    two-pass form's second pass, after :func:`_lookup_kernel`; see :func:`_score_batch_kernel`).

    ``fresh``: model scores of this batch's scoring points (sync mode; ``use_fresh``). At a floor
    position (``floor_from * 2^j``) the score is raised to the size floor ``y(position)``."""
    n = point.shape[0]
    for i in range(n):
        if i + _PREFETCH_AHEAD < n:
            prefetch(score_flat, slots[i + _PREFETCH_AHEAD])
        if use_fresh and point[i]:
            m = fresh[i]
        elif prev[i] >= 0:
            m = out[prev[i]]
        else:
            m = cached[i]
        p = pos[i]
        if floor_from > 0 and p >= floor_from and (p & (p - 1)) == 0:
            f = _size_floor(p, floor_from)
            if m != m or m < f:
                m = f
        out[i] = m
        score_flat[slots[i]] = m


@kernel
def _score_batch_kernel(cells, tags, seen, score, stamp, pending, flow_hash, tick0, rescore, queue_unscored, use_fresh,
                        floor_from, slot_out, point_out, prev_out, cached_out, enqueue_out, pos_out, defer_out, out):
    """:func:`_lookup_kernel` and :func:`_fill_kernel` in one pass over the cache (the same outputs,
    scores and cache state; ``tests/test_scoring_cache.py`` runs both on the same batches).

    The two-pass form touches every packet's cache set twice, and the table is far bigger than the
    caches, so the fill pass missed again on most packets. Here a packet's score is filled as soon
    as its set is looked up, unless it depends on a model score not known yet (``use_fresh``, sync
    mode: a scoring point, or a later use of a cache slot whose earlier use in this batch was
    deferred). Those packets get ``defer_out[i] = True`` and :func:`_fill_deferred_kernel` fills them
    in order once the model has scored the batch's points; the return value is how many there are.
    A slot's deferred uses are all after its filled ones, so the slot ends with its last use's
    score, as in the two-pass form. Reading a score the fill already updated, where the two-pass
    form read the old one, changes nothing: only a first use in the batch reads its score as
    ``cached``, and only an entry whose first use in the batch found it unscored and not queued can
    be queued as unscored (that use queues it and marks it pending).

    ``cells`` is :attr:`ScoreCache.cells` and ``tags``, ``seen``, ``score``, ``stamp`` its views
    (each set's four rows side by side). Sets are ``(hash >> 32) mod sets`` computed with
    :func:`fastmod` (the same value, no 64-bit division per packet), all of them first so the cache
    set ``_PREFETCH_AHEAD`` packets on is prefetched (its four rows and ``pending``)."""
    nsets, ways = tags.shape
    n = flow_hash.shape[0]
    smagic = _U64(0xFFFFFFFFFFFFFFFF) // _U64(nsets) + _U64(1)
    for i in range(n):
        slot_out[i] = np.int64(fastmod(flow_hash[i] >> _U64(32), smagic, _U64(nsets)))
    cells_flat, pending_flat = cells.reshape(-1), pending.reshape(-1)
    deferred = 0
    for i in range(n):
        if i + _PREFETCH_AHEAD < n:
            ahead = slot_out[i + _PREFETCH_AHEAD]
            first = ahead * 4 * ways
            prefetch(cells_flat, first)
            prefetch(cells_flat, first + ways)
            prefetch(cells_flat, first + 2 * ways)
            prefetch(cells_flat, first + 3 * ways)
            prefetch(pending_flat, ahead * ways)
        h = flow_hash[i]
        tag = h if h != 0 else _U64(1)  # 0 marks an empty way
        row = slot_out[i]
        way = -1
        for w in range(ways):
            if tags[row, w] == tag:
                way = w
                break
        if way >= 0:
            last = stamp[row, way]
            prev = last - tick0 if last >= tick0 else -1
            before = prev  # the slot's previous use in this batch
        else:
            way = 0
            for w in range(ways):  # an empty way, else the least recently used
                if tags[row, w] == 0:
                    way = w
                    break
                if stamp[row, w] < stamp[row, way]:
                    way = w
            last = stamp[row, way]
            before = last - tick0 if last >= tick0 else -1
            tags[row, way] = tag
            seen[row, way] = 0
            score[row, way] = np.nan
            pending[row, way] = 0
            prev = -1
        prev_out[i] = prev
        stamp[row, way] = tick0 + i
        seen[row, way] += 1
        pos = seen[row, way]
        point = pos == 1 or (rescore and (pos & (pos - 1)) == 0)
        slot_out[i] = row * ways + way
        point_out[i] = point
        pos_out[i] = pos
        cached = score[row, way]
        cached_out[i] = cached
        unscored = cached != cached
        enqueue = queue_unscored and (point or (unscored and pending[row, way] == 0))
        enqueue_out[i] = enqueue
        if enqueue:
            pending[row, way] = 1
        defer = (use_fresh and point) or (before >= 0 and defer_out[before])
        defer_out[i] = defer
        if defer:
            deferred += 1
            continue
        m = out[prev] if prev >= 0 else cached
        if floor_from > 0 and pos >= floor_from and (pos & (pos - 1)) == 0:
            f = _size_floor(pos, floor_from)
            if m != m or m < f:
                m = f
        out[i] = m
        score[row, way] = m
    return deferred


@kernel
def _fill_deferred_kernel(defer, point, prev, cached, fresh, use_fresh, slots, score, pos, floor_from, out):
    """:func:`_fill_kernel` for the packets :func:`_score_batch_kernel` deferred (``defer``), in order
    (``score``: the cache's ``[sets, ways]`` view; ``slots``: flat indices ``set * ways + way``)."""
    ways = score.shape[1]
    for i in range(defer.shape[0]):
        if not defer[i]:
            continue
        if use_fresh and point[i]:
            m = fresh[i]
        elif prev[i] >= 0:
            m = out[prev[i]]
        else:
            m = cached[i]
        p = pos[i]
        if floor_from > 0 and p >= floor_from and (p & (p - 1)) == 0:
            f = _size_floor(p, floor_from)
            if m != m or m < f:
                m = f
        out[i] = m
        score[slots[i] // ways, slots[i] % ways] = m


@kernel
def _store_kernel(flow_hash, scores, tags, score, pending, seen, floor_from):
    """Async worker: store model scores of flows still in the cache (matched by tag), never below
    the size floor the flow has reached meanwhile."""
    nsets, ways = tags.shape
    for i in range(flow_hash.shape[0]):
        h = flow_hash[i]
        tag = h if h != 0 else np.uint64(1)
        row = np.int64((h >> np.uint64(32)) % np.uint64(nsets))
        for w in range(ways):
            if tags[row, w] == tag:
                score[row, w] = max(scores[i], _size_floor(seen[row, w], floor_from))
                pending[row, w] = 0
                break


# ---------------------------------------------------------------------------- the cache
class ScoreCache:
    """The flow table: ``uint64`` tags, packets seen, latest score (NaN: none), last use, queued flag.

    All arrays are ``[sets, ways]``; ``lock`` serialises the packet path and the async worker.
    """

    def __init__(self, cache_flows: int):
        ways = min(WAYS, int(cache_flows))
        sets = -(-int(cache_flows) // ways)
        #: ``uint64[sets, 4, ways]``: each set's tags, seen, score and stamp rows side by side (256
        #: bytes at 8 ways), so a packet's lookup touches four adjacent cache lines of this table,
        #: which is far bigger than the caches, instead of one line in each of four tables (issue 21,
        #: fourth pass: an isolated lookup loop ran ~21 instead of ~32 ns/packet). The named arrays
        #: are views of it (strided ``[sets, ways]``).
        self.cells = np.zeros((sets, 4, ways), np.uint64)
        self.tags = self.cells[:, 0, :]
        self.seen = self.cells[:, 1, :].view(np.int64)
        self.score = self.cells[:, 2, :].view(np.float64)
        self.stamp = self.cells[:, 3, :].view(np.int64)
        self.score[...] = np.nan
        self.stamp[...] = -1
        self.pending = np.zeros((sets, ways), np.uint8)
        self.tick = 0
        self.lock = threading.Lock()
        self.model_calls = 0  # packets sent to the estimator

    @property
    def capacity(self) -> int:
        return int(self.tags.size)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.tags))


class _Worker:
    """The async scoring thread's state; it holds no reference to the :class:`FlowScorer`."""

    def __init__(self, estimator, cache: ScoreCache, batch_size: int, queue_batches: int, floor_from: int):
        self.estimator, self.cache, self.batch_size = estimator, cache, batch_size
        self.floor_from = floor_from
        self.queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="llmsketch-scorer", daemon=True)
        _LIVE_WORKERS.add(self)
        self.thread.start()

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if not self.stopping:
                    self.score(*item)
            finally:
                self.queue.task_done()

    def score(self, flow_hash, headers, hdr_len) -> None:
        cache = self.cache
        for start in range(0, flow_hash.shape[0], self.batch_size):
            if self.stopping:
                return
            sl = slice(start, start + self.batch_size)
            s = np.asarray(self.estimator.score(headers[sl], hdr_len[sl]), np.float64)
            with cache.lock:
                cache.model_calls += s.shape[0]
                _store_kernel(flow_hash[sl], s, cache.tags, cache.score, cache.pending, cache.seen,
                              np.int64(self.floor_from))

    def stop(self, discard: bool, timeout: float | None = None) -> None:
        """End the thread: after the queued work, or (``discard``) after the model call in flight."""
        self.stopping = discard
        while discard:
            try:
                self.queue.get_nowait()
                self.queue.task_done()
            except queue.Empty:
                break
        self.queue.put(None)
        self.thread.join(timeout)
        _LIVE_WORKERS.discard(self)


#: Workers whose thread may still run. At interpreter exit each is stopped and joined, because a
#: thread left inside an onnxruntime call while the interpreter finalises aborts the process
#: ("terminate called without an active exception").
_LIVE_WORKERS: "weakref.WeakSet[_Worker]" = weakref.WeakSet()


@atexit.register
def _stop_live_workers() -> None:
    for worker in list(_LIVE_WORKERS):
        worker.stop(discard=True, timeout=30)


def _stop_worker(q: queue.Queue) -> None:
    """A dropped scorer's finaliser: ask its worker to end once the queue drains."""
    try:
        q.put_nowait(None)
    except queue.Full:  # the worker drains the queue, then finds no scorer to serve: let it be
        pass


# ---------------------------------------------------------------------------- the scorer
class FlowScorer:
    """Scores for every packet of a batch from per-flow estimator calls (see the module doc).

    ``estimator``: an estimator object, a kind (``"trees"`` needs ``path``) or a float constant.
    ``floor_from``: first size-floor position (a power of two; 0: no floor).
    """

    def __init__(self, estimator, path=None, rescore: bool = False, cache_flows: int = DEFAULT_CACHE_FLOWS,
                 mode: str = "auto", provisional=None, batch_size: int = 256, queue_batches: int = 64,
                 floor_from: int = FLOOR_FROM):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(floor_from, bool) or not isinstance(floor_from, (int, np.integer)) or floor_from < 0 \
                or (floor_from & (floor_from - 1)) != 0:
            raise ValueError(f"floor_from must be 0 (off) or a power of two, got {floor_from!r}")
        self.floor_from = int(floor_from)
        if int(cache_flows) < 1:
            raise ValueError(f"cache_flows must be positive, got {cache_flows}")
        self.estimator = as_estimator(estimator, path)
        if mode == "auto":
            mode = "async" if getattr(self.estimator, "kind", "") in SLOW_KINDS else "sync"
        self.provisional = None if provisional is None else as_estimator(provisional)
        self.rescore, self.mode = bool(rescore), mode
        self.batch_size, self.queue_batches = int(batch_size), int(queue_batches)
        self.cache = ScoreCache(cache_flows)
        self._worker: _Worker | None = None  # started on the first queued flow

    @property
    def model_calls(self) -> int:
        """Packets sent to the estimator so far."""
        return self.cache.model_calls

    # ------------------------------------------------------------------ per batch
    def scores(self, batch) -> np.ndarray:
        """``float64[n]`` score of every packet of ``batch`` (and the cache updated)."""
        n = len(batch)
        if n == 0:
            return np.zeros(0)
        flow_hash = hash_5tuple(batch, FLOW_HASH_SEED)
        if batch.has_ipv6():  # IPv6 rows have src_ip = dst_ip = 0: they are told apart by their 37-byte key
            six = batch.ipv6.astype(bool)
            flow_hash[six] = hash_keys(np.ascontiguousarray(batch[six].flow_keys37()), FLOW_HASH_SEED)
        slots, prev = np.empty(n, np.int64), np.empty(n, np.int64)
        point, enqueue, defer = np.empty(n, np.bool_), np.empty(n, np.bool_), np.empty(n, np.bool_)
        cached, model, pos = np.empty(n), np.empty(n), np.empty(n, np.int64)
        cache, is_async = self.cache, self.mode == "async"
        with cache.lock:
            # one pass: lookup and fill (_lookup_kernel then _fill_kernel, the readable two-pass form)
            deferred = _score_batch_kernel(cache.cells, cache.tags, cache.seen, cache.score, cache.stamp,
                                           cache.pending, flow_hash, np.int64(cache.tick), self.rescore, is_async, not is_async,
                                           np.int64(self.floor_from), slots, point, prev, cached, enqueue, pos,
                                           defer, model)
            cache.tick += n
            if deferred:  # sync mode: packets waiting on this batch's model scores
                fresh = np.full(n, np.nan)
                idx = np.flatnonzero(point)
                fresh[idx] = self.estimator.score_packets(batch, idx)
                cache.model_calls += idx.size
                _fill_deferred_kernel(defer, point, prev, cached, fresh, True, slots, cache.score, pos,
                                      np.int64(self.floor_from), model)
            if is_async:
                self._enqueue(batch, flow_hash, np.flatnonzero(enqueue), slots)
        missing = np.isnan(model)
        if missing.any():
            model[missing] = self._provisional(batch, np.flatnonzero(missing))
        return model

    def _provisional(self, batch, rows) -> np.ndarray:
        if self.provisional is None:
            return np.full(rows.shape[0], PROVISIONAL)
        return np.asarray(self.provisional.score_packets(batch, rows), np.float64)

    # ------------------------------------------------------------------ async worker
    def _enqueue(self, batch, flow_hash, idx, slots) -> None:
        """Queue packets ``idx`` (caller holds the cache lock); when full, unmark them for a retry."""
        if not idx.size:
            return
        if self._worker is None:
            self._worker = _Worker(self.estimator, self.cache, self.batch_size, self.queue_batches, self.floor_from)
            weakref.finalize(self, _stop_worker, self._worker.queue)
        try:
            self._worker.queue.put_nowait((flow_hash[idx], batch.header[idx], batch.hdr_len[idx]))
        except queue.Full:
            self.cache.pending.reshape(-1)[slots[idx]] = 0

    def flush(self) -> None:
        """Async mode: wait until every queued flow has been scored."""
        if self._worker is not None:
            self._worker.queue.join()

    def close(self) -> None:
        """Stop the async worker (queued work is finished first)."""
        if self._worker is not None:
            self._worker.stop(discard=False)
            self._worker = None


# ---------------------------------------------------------------------------- a sketch with its scorer
PIVOT_CHOICES = ("memory", "model")
#: ``scorer_memory``: the score cache beside ``memory_bytes`` (reported as ``scorer_bytes``), or carved
#: out of it (``memory_bytes`` is then the total of sketch and cache; issue #19 row 7)
SCORER_MEMORY = ("separate", "charged")
#: ``scorer_memory = "charged"`` without ``cache_flows``: the score cache's share of ``memory_bytes``
#: (of 0.1, 0.25 and 0.5, 0.1 lost the least accuracy at equal total memory: BENCHMARKS.md, "Issue #19 row 7")
DEFAULT_SCORER_SHARE = 0.1
#: bytes of one score-cache entry: tag, packets seen, score, last use (8 bytes each) and a queued flag
CACHE_ENTRY_BYTES = 33
#: the smallest charged cache: one full set of :data:`WAYS` entries (264 bytes)
MIN_CHARGED_CACHE_FLOWS = WAYS
#: ``keep_keys`` names are charged at their widest when the cache is charged (a flow-size sketch names
#: IPv6 flows with 37-byte keys and then widens every slot's name), so the total can never grow past
#: ``memory_bytes``; IPv4-only traffic leaves 24 of those bytes per heavy slot unused
CHARGED_NAME_BYTES = 37


def cache_capacity(cache_flows: int) -> int:
    """Entries a :class:`ScoreCache` of ``cache_flows`` holds: rounded up to a multiple of the ways."""
    ways = min(WAYS, int(cache_flows))
    return ways * -(-int(cache_flows) // ways)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def charged_split(memory_bytes: int, task: str = "flow_size", *, cache_flows: int | None = None,
                  scorer_share: float | None = None, keep_keys: bool = False, heavy_ratio: float | None = None,
                  seed: int = 0, weight: str = "packets") -> tuple[LLMSketchParams, int]:
    """Split ``memory_bytes`` (bytes, the total) between the score cache and the sketch
    (``scorer_memory = "charged"``): ``(the sketch part's parameters, cache_flows)``.

    The cache takes ``cache_flows`` entries if given, else ``scorer_share`` (default
    :data:`DEFAULT_SCORER_SHARE`) of ``memory_bytes``, as whole sets of :data:`WAYS` entries of
    :data:`CACHE_ENTRY_BYTES` (rounded down); the sketch gets the largest ``memory_bytes`` parameter
    whose charged bytes (heavy slots, light counters, ``keep_keys`` names at
    :data:`CHARGED_NAME_BYTES` per slot) fit in the rest. So ``sketch memory + cache bytes <=
    memory_bytes`` always. ``SketchError`` (a ``ValueError``) names what does not fit: both settings
    given, a share outside (0, 1), a cache under :data:`MIN_CHARGED_CACHE_FLOWS` entries, a cache
    that leaves the sketch nothing, or a sketch part too small for one heavy bucket and light counter.
    """
    if not _is_int(memory_bytes) or memory_bytes <= 0:
        raise SketchError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    memory_bytes = int(memory_bytes)
    if cache_flows is not None and scorer_share is not None:
        raise SketchError("scorer_memory = 'charged' sizes the score cache by cache_flows or by scorer_share, "
                          "not both")
    if cache_flows is not None:
        if not _is_int(cache_flows) or cache_flows < MIN_CHARGED_CACHE_FLOWS:
            raise SketchError(f"cache_flows must be an integer >= {MIN_CHARGED_CACHE_FLOWS} (one cache set) when the "
                              f"score cache is charged, got {cache_flows!r}")
        flows = cache_capacity(cache_flows)
        how = f"cache_flows={cache_flows}"
    else:
        share = DEFAULT_SCORER_SHARE if scorer_share is None else scorer_share
        if isinstance(share, bool) or not isinstance(share, (int, float, np.floating, np.integer)) \
                or not 0.0 < float(share) < 1.0:
            raise SketchError(f"scorer_share must be a fraction in (0, 1) of memory_bytes (the score cache's "
                              f"share; the sketch gets the rest), got {share!r}")
        flows = int(memory_bytes * float(share)) // CACHE_ENTRY_BYTES // WAYS * WAYS
        how = f"scorer_share={share:g} of memory_bytes={memory_bytes}"
        if flows < MIN_CHARGED_CACHE_FLOWS:
            raise SketchError(f"{how} is {int(memory_bytes * float(share))} bytes: under the smallest score cache, "
                              f"{MIN_CHARGED_CACHE_FLOWS} flows of {CACHE_ENTRY_BYTES} bytes "
                              f"({MIN_CHARGED_CACHE_FLOWS * CACHE_ENTRY_BYTES} bytes); give a larger share or memory")
    cache = flows * CACHE_ENTRY_BYTES
    budget = memory_bytes - cache
    where = (f"memory_bytes={memory_bytes} with the score cache charged ({how}: {flows} flows x "
             f"{CACHE_ENTRY_BYTES} B = {cache} bytes)")
    if budget <= 0:
        raise SketchError(f"{where} leaves nothing for the sketch; give fewer cache_flows or more memory_bytes")
    names = CHARGED_NAME_BYTES if keep_keys else 0

    def charged(m: int) -> int:  # the sketch's charged bytes at memory_bytes = m (0: no sketch there)
        try:
            return LLMSketchParams(m, task, heavy_ratio, seed, weight).charged_bytes(names)
        except SketchError:
            return 0

    lo, hi = 1, budget  # the largest m whose charged bytes fit (heavy + light <= m, so m = budget fits without names)
    if charged(hi) > budget:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if charged(mid) <= budget else (lo, mid - 1)
    try:
        params = LLMSketchParams(hi, task, heavy_ratio, seed, weight)
    except SketchError as exc:
        try:  # a bad task, weight, heavy_ratio or seed fails at any size: its own error, not the split's
            LLMSketchParams(1 << 62, task, heavy_ratio, seed, weight)
        except SketchError:
            raise exc from None
        raise SketchError(f"{where} leaves {budget} bytes for the sketch, too few: {exc}") from None
    return params, flows


def calibrated_for(estimator, pivot, memory_bytes: int, task: str, *, heavy_ratio: float | None = None,
                   weight: str = "packets"):
    """``estimator`` recalibrated for the sketch's pivot (see ``pivot`` in :class:`ScoringMixin`);
    ``heavy_ratio`` and ``weight`` are the sketch's, which set how many heavy slots the pivot budgets.

    Estimators without ``for_memory`` / ``with_pivot`` come back unchanged; a bad ``pivot`` is
    refused (``ValueError``) whatever the estimator."""
    if isinstance(pivot, str):
        if pivot not in PIVOT_CHOICES:
            raise ValueError(f"pivot must be an int >= 2 or one of {PIVOT_CHOICES}, got {pivot!r}")
    elif isinstance(pivot, bool) or not isinstance(pivot, (int, np.integer)) or pivot < 2:
        raise ValueError(f"pivot must be an int >= 2 or one of {PIVOT_CHOICES}, got {pivot!r}")
    if pivot == "model" or not hasattr(estimator, "with_pivot"):
        return estimator
    if pivot == "memory":
        if not hasattr(estimator, "for_memory"):
            return estimator
        return estimator.for_memory(memory_bytes, task, heavy_ratio=heavy_ratio, weight=weight)
    return estimator.with_pivot(int(pivot))


class ScoringMixin:
    """Owns the :class:`FlowScorer` beside a pure LLM-Sketch (CPU or GPU twin) and its lifecycle.

    ``update(batch)`` scores the batch (spec §4) and calls the pure ``update(batch, scores)``;
    ``update(batch, scores)`` passes given scores through. Settings (``SCORER_PARAMS``):
    ``estimator`` -- a kind for :func:`telesketch.estimators.load_estimator` (``"lm"``, ``"tiny"``,
    ``"trees"``, ``"constant"``), an estimator object, or ``None`` (no scorer: updates need scores);
    ``estimator_path`` -- a trained model directory; ``rescore`` -- re-score at in-flow positions
    1, 2, 4, 8, ...; ``cache_flows`` -- bound of the per-flow score cache (LRU); ``scoring`` -- the
    :class:`FlowScorer` mode (``"auto"``: async for ``lm`` / ``tiny``, so the packet path never
    waits on the model, else ``"sync"``; ``"sync"`` for deterministic replays); ``provisional`` --
    the score of flows the async worker has not reached (default 0.5); ``floor_from`` -- the size
    floor position (default 512, 0: off); ``pivot`` -- the size ``T`` (packets) a score of 0.5 stands
    for, for estimators that can be recalibrated (the trees: ``for_memory`` / ``with_pivot``):
    ``"memory"`` (default) chooses it from this sketch's memory and the model's training traffic so
    that flows of ``>= T`` packets fill about half the heavy slots (issue #19: with one fixed ``T``
    a small sketch locks more "large" flows than it has slots and they evict each other), an int
    sets it, ``"model"`` keeps the one saved with the model; other estimators ignore it.
    The sketch state (``to_bytes``) holds no scorer state.

    ``scorer_memory`` -- where the score cache is charged (issue #19 row 7): ``"separate"`` (default)
    keeps it beside the sketch, ``cache_flows`` entries (default 2^20, 33 MiB), reported as
    :attr:`scorer_bytes` and not in :attr:`memory_bytes`; ``"charged"`` makes ``memory_bytes`` the
    total of sketch and cache: the cache takes ``cache_flows`` entries if given, else
    ``scorer_share`` of ``memory_bytes`` (default :data:`DEFAULT_SCORER_SHARE`), the sketch the rest
    (:func:`charged_split`), and :attr:`memory_bytes` reports both (:attr:`sketch_memory_bytes`: the
    sketch part). The pivot is chosen from the sketch part's memory. A smaller cache forgets flows
    sooner: a flow evicted from it and seen again is scored again as new (a model call, on a later
    packet's header) and counts its in-flow position from 1 again, so the size floor
    (``floor_from``) reaches it later or never; the sketch's state does not change. Loading a
    charged sketch's state (``from_bytes``) takes the same settings and the configured
    ``memory_bytes`` (the state holds the sketch part's parameters only).
    """

    scored_class = ""  #: already scored: ``LLMSketch.__new__`` builds this class as asked
    scorer_charged = False  #: the score cache is part of :attr:`memory_bytes` (``scorer_memory = "charged"``)
    charged_memory_bytes: int | None = None  #: the configured total when charged (bytes), else None

    def __init__(self, memory_bytes: int | None = None, task: str = "flow_size", estimator=None, *,
                 estimator_path=None, rescore: bool = False, cache_flows: int | None = None, scoring: str = "auto",
                 provisional=None, floor_from: int | None = None, pivot="memory", scorer_memory: str = "separate",
                 scorer_share: float | None = None, **sketch_kwargs):
        if scorer_memory not in SCORER_MEMORY:
            raise SketchError(f"scorer_memory must be one of {SCORER_MEMORY}, got {scorer_memory!r}")
        charged = scorer_memory == "charged"
        if charged:
            if estimator is None:
                raise SketchError("scorer_memory = 'charged' needs an estimator: without a scorer there is no cache "
                                  "to charge")
            if memory_bytes is None:
                raise SketchError("scorer_memory = 'charged' needs memory_bytes, the total of sketch and score cache "
                                  "(also when loading a state: its parameters are the sketch part's)")
            shape = {"heavy_ratio": sketch_kwargs.pop("heavy_ratio", None), "seed": sketch_kwargs.pop("seed", 0),
                     "weight": sketch_kwargs.pop("weight", "packets")}
            state_params = sketch_kwargs.get("params")
            split_task = task
            if state_params is not None:  # a state's (from_bytes, successor): split for its task and shape
                split_task = state_params.task
                shape = {"heavy_ratio": state_params.heavy_ratio, "seed": state_params.seed,
                         "weight": state_params.weight}
            split, cache_flows = charged_split(
                memory_bytes, split_task, cache_flows=cache_flows, scorer_share=scorer_share,
                keep_keys=bool(sketch_kwargs.get("keep_keys", False)), **shape)
            # a state's own parameters win (its arrays have that shape); memory_bytes reports what is held
            if state_params is None:
                sketch_kwargs["params"] = split
        elif scorer_share is not None:
            raise SketchError(f"scorer_share={scorer_share!r} sizes a charged score cache: it needs "
                              f"scorer_memory = 'charged' (the default 'separate' sizes it by cache_flows)")
        elif cache_flows is None:
            cache_flows = DEFAULT_CACHE_FLOWS
        super().__init__(400 * 1024 if memory_bytes is None else memory_bytes, task, **sketch_kwargs)
        self.scorer_charged = charged
        self.charged_memory_bytes = int(memory_bytes) if charged else None
        self.scorer: FlowScorer | None = None
        if estimator is not None:
            floor = {} if floor_from is None else {"floor_from": floor_from}
            self.scorer = FlowScorer(estimator, path=estimator_path, rescore=rescore, cache_flows=cache_flows,
                                     mode=scoring, provisional=provisional, **floor)
            # the sketch's own parameters: from_bytes and successor pass them, not memory_bytes and task
            self.scorer.estimator = calibrated_for(self.scorer.estimator, pivot, self.params.memory_bytes,
                                                   self.params.task, heavy_ratio=self.params.heavy_ratio,
                                                   weight=self.params.weight)

    @property
    def batch_invariant(self) -> bool:
        """Joined batches leave the same state (``Sketch.batch_invariant``) only when the scores do
        not depend on the cuts either: no scorer (scores are given), or a ``sync`` scorer (the cache
        walks packets in order, a flow's scoring points are its in-flow positions) whose estimator
        scores each row on its own (``Estimator.row_independent``). An ``async`` scorer's scores
        depend on when its worker catches up, so its sketch never has its batches joined."""
        if self.scorer is None:
            return super().batch_invariant
        return (super().batch_invariant and self.scorer.mode == "sync"
                and bool(getattr(self.scorer.estimator, "row_independent", False)))

    @property
    def pivot(self) -> int | None:
        """The pivot ``T`` (packets) of the scorer's estimator; None when it has none (LM, constant)."""
        est = self.scorer.estimator if self.scorer is not None else None
        return getattr(est, "pivot", None) if hasattr(est, "with_pivot") else None

    def update(self, batch, scores: np.ndarray | None = None) -> None:
        """Insert ``batch``: with ``scores`` as given, else with this sketch's scorer's (spec §4)."""
        if scores is None and self.scorer is not None and isinstance(batch, PacketBatch):
            scores = self.scorer.scores(batch)
        super().update(batch, scores)

    def copy(self):
        """The sketch state without the scorer (what a copy through ``to_bytes`` gives: the state
        holds no scorer state), so updating the copy cannot touch this sketch's score cache."""
        clone = super().copy()
        clone.scorer = None
        return clone

    def successor(self):
        """An empty sketch with the same parameters that shares this one's :class:`FlowScorer`.

        The service opens one sketch per epoch; sharing the scorer keeps its per-flow cache (scores
        and in-flow positions) and its async worker, so a flow that continues into the next epoch
        is not scored again as if it were new. The state itself starts empty."""
        nxt = super().successor()
        nxt.scorer = self.scorer
        nxt.scorer_charged, nxt.charged_memory_bytes = self.scorer_charged, self.charged_memory_bytes
        return nxt

    @property
    def scorer_bytes(self) -> int:
        """Bytes of per-flow scoring state (0 without an estimator, e.g. a copy).

        The :class:`FlowScorer` cache keeps, per entry, a 64-bit tag, packets seen, the latest
        score, the last use and a queued flag (33 bytes); it is capped by ``cache_flows`` (LRU) and
        allocated up front, so this is its full size. With ``scorer_memory = "separate"`` it is not
        in :attr:`memory_bytes` (report it next to it, issue #19); ``"charged"``: it is."""
        if self.scorer is None:
            return 0
        cache = self.scorer.cache
        return int(cache.cells.nbytes + cache.pending.nbytes)  # tags, seen, score and stamp are views of cells

    @property
    def sketch_memory_bytes(self) -> int:
        """The sketch part's charged bytes (the pure sketch's ``memory_bytes``), without the cache."""
        return super().memory_bytes

    @property
    def memory_bytes(self) -> int:
        """Charged bytes: the sketch's, plus the score cache's (:attr:`scorer_bytes`) when it is
        charged (``scorer_memory = "charged"``: then at most the configured ``memory_bytes``)."""
        own = super().memory_bytes
        return own + self.scorer_bytes if self.scorer_charged else own


class ScoredLLMSketch(ScoringMixin, LLMSketch):
    """The CPU LLM-Sketch with its scorer (:class:`ScoringMixin`): what ``LLMSketch(estimator=...)``
    and the service's ``llmsketch`` kind build."""
