"""LLM-Sketch with its heavy part and Count-Min on a GPU (spec ``shared/specs/llmsketch.md`` §2.4).

Same parameters, verbs, queries, serialised state and results as
:class:`telesketch.sketches.llmsketch.LLMSketch`: :class:`LLMSketch` here subclasses it and replaces
only where the state lives and how a batch is run, so a snapshot written by either loads in the
other, and scores (``update(batch, scores)`` or the sketch's :class:`FlowScorer`) are handled on the
host exactly as on the CPU.

Per batch (spec §2.4, "Batch execution"; the GPU port of the CPU ``parallel=True`` path):

1. the stored keys of the batch (``uint32[n, W]`` little-endian words, CPU ``batch_words`` /
   ``bytes_to_words`` on the host: a byte swap, plus the fingerprint hash for the flow-size task)
   and the scores (clipped on the device, as ``float64``) are copied to the device;
2. a kernel with one thread per packet hashes each key to its heavy bucket with the device twin of
   MurmurHash3 over key words (:func:`mmh3_words_device`: the CPU ``_mmh3_words``, same source);
3. the buckets are stably sorted on the device (:func:`~telesketch.gpu.core.stable_argsort`:
   ``cupy.sort`` or the bitonic kernel over composite keys), no host round trip;
4. ONE segment kernel, where the first sorted position of each bucket runs that bucket's packets
   in stream order with a device port of the CPU ``_heavy_insert`` (same ``uniform(seed, n, 0)`` lock coin,
   ``n`` the packet's stream index); it records each packet's light operation at its batch
   position: ``op_type`` (none / add / evict), ``op_val`` (1 or the evicted count) and ``op_key``
   (the packet's own key for an add, the displaced key for an evict);
5. light part, by task:

   * ``flow_size`` (Count-Min) **on the device**: a kernel writes each operation's three target
     counters ``row * W + col`` (at position ``3 n + row``; a sentinel for no operation); they are
     stably sorted on the device by counter, so within a counter the operations stay in index
     order, and a kernel whose head positions (one per touched counter) fold its operations in order
     (saturating add, max-merge; they do not commute, hence the order);
   * ``hhh`` (CocoSketch, rows interact) **on the host**: the operation arrays come back and the
     CPU ``_light_apply`` runs them serially in index order;
   * ``heavy_hitters``: no light part.

State placement: the heavy slots (``_slot_words``, ``counts``, ``lock``, ``occ``) and the Count-Min
``cm`` live on the device between batches; the CocoSketch cells stay on the host. Reading one of the
device-resident attributes (queries, ``to_bytes``, ``state()``, ``from_bytes``) returns a host copy
fetched on demand; since the caller may write into that copy (``from_bytes`` does), it becomes the
authoritative state and is copied back to the device before the next batch. A query between two
batches therefore costs one state download and one upload. Queries themselves run on the host
(the CPU class's code over the fetched arrays).

Backends (:func:`telesketch.gpu.core.backend`): CuPy arrays on a CUDA device when CuPy is
installed, Numba device arrays otherwise, numpy arrays under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported); neither device nor
simulator raises :class:`GpuUnavailableError` at construction.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from telesketch.estimators.scoring import ScoringMixin
from telesketch.gpu.core import DeviceBuffers, GpuUnavailableError, backend, launch, stable_argsort
from telesketch.jit import device, device_twin, gpu_kernel
from telesketch.sketches import llmsketch as _cpu

__all__ = ["LLMSketch", "GpuUnavailableError", "device_mmh3_words", "mmh3_words_device"]

_U64 = np.uint64
_U0 = _U64(0)
_BUCKET_SEED = _U64(_cpu.BUCKET_SEED)
SLOTS = _cpu.SLOTS
CM_ROWS = _cpu.CM_ROWS
CM_MAX = _cpu.CM_MAX
CM_MAX_BYTES = _cpu.CM_MAX_BYTES
LARGE = _cpu.LARGE
OP_NONE, OP_ADD, OP_EVICT = _cpu.OP_NONE, _cpu.OP_ADD, _cpu.OP_EVICT


# ============================================================================ device hash and randomness
# The device functions of the CPU twins (telesketch.jit.device_twin): the same Python source, every
# hash operand uint64 so it wraps mod 2^64 (a signed/unsigned mix would promote to float64 on the device).
#: The CPU ``_mmh3_words``: MurmurHash3 x86-32 of the ``nbytes`` bytes held in ``words``
#: (``uint32[W]`` little-endian, zero-padded); ``seed`` uint64; a uint64 < 2^32.
mmh3_words_device = device_twin(_cpu._mmh3_words)
#: The CPU ``uniform(seed_mix, n, j)`` in [0, 1): ``n``, ``j`` and ``seed_mix`` are uint64.
_uniform = device_twin(_cpu.uniform)


# ============================================================================ device heavy insert
#: The CPU twins of spec §2.2's slot claim and eviction (the same source on both targets).
_claim_slot = device_twin(_cpu._claim_slot)
_evict_least = device_twin(_cpu._evict_least)

@device(inline=True)
def _same_key(slot_words, b, s, keys, i):
    for j in range(keys.shape[1]):
        if slot_words[b, s, j] != keys[i, j]:
            return False
    return True


@device
def _heavy_insert(slot_words, counts, lock, occ, b, keys, i, p, seed_mix, n, op_key):
    """The CPU ``_heavy_insert`` on the device (spec §2.2) for packet ``i`` (stream index ``n``,
    uint64) of bucket ``b``; returns ``(op, value)`` (int64). ``op_key[i]`` receives the key the
    light operation concerns: the packet's own for ``OP_ADD``, the displaced one for ``OP_EVICT``."""
    victim = -1
    for s in range(SLOTS):
        if occ[b, s] != 0 and _same_key(slot_words, b, s, keys, i):
            c = np.int64(counts[b, s]) + 1
            counts[b, s] = c
            q = (float(lock[b, s]) * (float(c) - 1.0) + p) / float(c)
            lock[b, s] = 1 if _uniform(seed_mix, n, _U0) < q else 0
            return OP_NONE, 0
        if occ[b, s] == 0:
            _claim_slot(slot_words, counts, lock, occ, b, s, keys, i, 1, p)
            return OP_NONE, 0
        if lock[b, s] == 0 and (victim < 0 or counts[b, s] < counts[b, victim]):
            victim = s
    if p < LARGE:
        for j in range(keys.shape[1]):
            op_key[i, j] = keys[i, j]
        return OP_ADD, 1
    return OP_EVICT, np.int64(_evict_least(slot_words, counts, lock, b, keys, i, victim, 1, op_key[i]))


@device
def _heavy_insert_weighted(slot_words, counts, lock, occ, b, keys, i, p, w, seed_mix, n, op_key):
    """The CPU ``_heavy_insert_weighted`` on the device (``weight="bytes"``): :func:`_heavy_insert`
    with a weight ``w`` (uint64, > 0) per packet; ``counts`` is uint64. Returns ``(op, value)``
    (uint64): ``OP_ADD`` carries ``w``, ``OP_EVICT`` the displaced count."""
    victim = -1
    for s in range(SLOTS):
        if occ[b, s] != 0 and _same_key(slot_words, b, s, keys, i):
            c = counts[b, s] + w
            counts[b, s] = c
            q = (float(lock[b, s]) * float(c - w) + p * float(w)) / float(c)
            lock[b, s] = 1 if _uniform(seed_mix, n, _U0) < q else 0
            return OP_NONE, _U0
        if occ[b, s] == 0:
            _claim_slot(slot_words, counts, lock, occ, b, s, keys, i, w, p)
            return OP_NONE, _U0
        if lock[b, s] == 0 and (victim < 0 or counts[b, s] < counts[b, victim]):
            victim = s
    if p < LARGE:
        for j in range(keys.shape[1]):
            op_key[i, j] = keys[i, j]
        return OP_ADD, w
    return OP_EVICT, _evict_least(slot_words, counts, lock, b, keys, i, victim, w, op_key[i])


# ============================================================================ kernels
@gpu_kernel
def _buckets_kernel(keys, nbytes, n_buckets, out):
    """``out[i] = mmh3_32(key i, 100) mod n_buckets`` (int64; ``n_buckets`` uint64), one thread each."""
    i = cuda.grid(1)
    if i < keys.shape[0]:
        out[i] = mmh3_words_device(keys[i], nbytes, _BUCKET_SEED) % n_buckets


@gpu_kernel
def _hash_rows_kernel(keys, nbytes, seed, out):
    """``out[i] = mmh3_32(key i, seed)`` (uint64), one thread per key (exposed for the tests)."""
    i = cuda.grid(1)
    if i < keys.shape[0]:
        out[i] = mmh3_words_device(keys[i], nbytes, seed)


@gpu_kernel
def _heavy_segments_kernel(slot_words, counts, lock, occ, keys, scores, buckets, order, n0, seed_mix,
                           op_type, op_key, op_val):
    """Grid-stride over sorted positions ``j`` (``order`` stably sorts ``buckets``, ``int64``): the
    first position of each bucket runs that bucket's packets in stream order (packet at position
    ``i`` has stream index ``n0 + i``), recording each packet's light operation at its position.
    Scores are clipped to [0, 1] here, as the CPU ``_score_of``."""
    m = order.shape[0]
    for head in range(cuda.grid(1), m, cuda.gridsize(1)):
        b = buckets[order[head]]
        if head > 0 and buckets[order[head - 1]] == b:
            continue
        t = head
        while t < m and buckets[order[t]] == b:
            i = order[t]
            p = min(max(scores[i], 0.0), 1.0)
            op, val = _heavy_insert(slot_words, counts, lock, occ, b, keys, i, p, seed_mix, _U64(n0 + i), op_key)
            op_type[i] = op
            op_val[i] = val
            t += 1


@gpu_kernel
def _heavy_segments_weighted_kernel(slot_words, counts, lock, occ, keys, scores, weights, buckets, order, n0,
                                    seed_mix, op_type, op_key, op_val):
    """:func:`_heavy_segments_kernel` for byte weighting: packet ``i`` weighs ``weights[i]`` (uint64);
    a zero-weight packet records no operation and changes nothing (CPU ``_update_serial_weighted``)."""
    m = order.shape[0]
    for head in range(cuda.grid(1), m, cuda.gridsize(1)):
        b = buckets[order[head]]
        if head > 0 and buckets[order[head - 1]] == b:
            continue
        t = head
        while t < m and buckets[order[t]] == b:
            i = order[t]
            w = weights[i]
            if w != 0:
                p = min(max(scores[i], 0.0), 1.0)
                op, val = _heavy_insert_weighted(slot_words, counts, lock, occ, b, keys, i, p, w, seed_mix,
                                                 _U64(n0 + i), op_key)
                op_type[i] = op
                op_val[i] = val
            t += 1


@gpu_kernel
def _cm_targets_kernel(op_type, op_key, nbytes, width, none_target, targets):
    """Per packet ``i`` (one thread each): ``targets[3 i + r] = r * W + h_r(op_key[i]) mod W`` for the
    Count-Min rows ``r``, or ``none_target`` (``3 W``, sorts last) when ``i`` has no light operation.
    ``width`` is uint64, ``none_target`` int64."""
    i = cuda.grid(1)
    if i >= op_type.shape[0]:
        return
    for r in range(CM_ROWS):
        if op_type[i] == OP_NONE:
            targets[i * CM_ROWS + r] = none_target
        else:
            col = np.int64(mmh3_words_device(op_key[i], nbytes, _U64(r)) % width)
            targets[i * CM_ROWS + r] = r * np.int64(width) + col


@gpu_kernel
def _cm_fold_kernel(cm, targets, order, none_target, op_type, op_val, cm_max):
    """Grid-stride over sorted positions ``j`` (``order`` stably sorts ``targets``, the counters
    ``row * W + col`` of entry ``3 i + row``): the first position of each counter folds the
    operations on it in ascending ``i``, saturating add for ``OP_ADD`` and max-merge for
    ``OP_EVICT``, values capped at ``cm_max`` (int64: 255, or 2^32 - 1 byte-weighted; CPU
    ``_countmin_op``); ``none_target`` entries are skipped."""
    m = order.shape[0]
    width = cm.shape[1]
    for head in range(cuda.grid(1), m, cuda.gridsize(1)):
        target = targets[order[head]]
        if target == none_target or (head > 0 and targets[order[head - 1]] == target):
            continue
        row = target // width
        col = target - row * width
        c = np.int64(cm[row, col])
        t = head
        while t < m and targets[order[t]] == target:
            i = order[t] // CM_ROWS
            v = min(np.int64(op_val[i]), cm_max)
            if op_type[i] == OP_ADD:
                c = min(c + v, cm_max)
            elif v > c:
                c = v
            t += 1
        cm[row, col] = c


def device_mmh3_words(words: np.ndarray, nbytes: int, seed: int) -> np.ndarray:
    """``uint32[n]`` MurmurHash3-32 of key words (``uint32[n, W]``) computed by the device kernel
    (host result); equal to the CPU ``mmh3_rows`` of the key bytes."""
    be = backend()
    words = np.ascontiguousarray(words, dtype=np.uint32)
    out = be.zeros(words.shape[0], np.uint64)
    if words.shape[0]:
        with be.launching():
            launch(_hash_rows_kernel, words.shape[0], be.to_device(words), np.int64(nbytes),
                                                                         _U64(seed), out)
    return be.to_host(out).astype(np.uint32)


# ============================================================================ state placement
class _DeviceResident:
    """A state array kept on the device between batches; reading it yields the host copy (fetched
    on demand), which then counts as authoritative until the next batch uploads it again."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj._host_array(self.name)

    def __set__(self, obj, value):
        obj._host[self.name] = np.ascontiguousarray(value)
        obj._dev[self.name] = None


class LLMSketch(_cpu.LLMSketch):
    """GPU LLM-Sketch: the CPU class's constructor, verbs, queries and state format.

    ``_slot_words`` (``uint32[NB, 8, W]``), ``counts`` (``uint32[NB, 8]``; ``uint64`` byte-weighted),
    ``lock``, ``occ`` (``uint8[NB, 8]``) and ``cm`` (``uint8[3, W]``; ``uint32`` byte-weighted) live on the device; ``coco_*`` stay on the host.
    ``parallel`` is accepted and ignored: a batch always runs as the bucket-segment kernel, which
    gives the serial loop's state exactly. Reading a device-resident attribute gives a host copy
    that is current until the next ``update`` (keep no reference across batches; on the CPU class
    such a reference would stay live).
    """

    caller_thread_only = True  #: kernels launch from the calling thread only (one device queue)
    scored_class = "telesketch.gpu.llmsketch:ScoredLLMSketch"  #: built when a scorer setting is given

    _slot_words = _DeviceResident()
    counts = _DeviceResident()
    lock = _DeviceResident()
    occ = _DeviceResident()
    cm = _DeviceResident()

    def __init__(self, *args, **kwargs):
        self._backend = backend()  # before anything else: GpuUnavailableError without device or simulator
        self._buffers = DeviceBuffers(self._backend)  # a batch's scores, buckets, sort keys: reused
        self._host: dict[str, np.ndarray | None] = {}
        self._dev: dict[str, object] = {}
        super().__init__(*args, **kwargs)

    @property
    def device_backend(self) -> str:
        """``cupy``, ``numba`` or ``simulator``: where the heavy part and Count-Min live."""
        return self._backend.name

    # ------------------------------------------------------------------ placement
    def _host_array(self, name: str) -> np.ndarray:
        host = self._host.get(name)
        if host is None:
            host = self._backend.to_host(self._dev[name])
            self._host[name] = host
        self._dev[name] = None  # the caller may write into the host copy: it is now the state
        return host

    def _device_array(self, name: str, written: bool = True):
        """The device array of ``name`` (uploaded from the host copy if that is authoritative);
        ``written``: the kernel about to run writes it, so the host copy goes stale."""
        dev = self._dev.get(name)
        if dev is None:
            dev = self._backend.to_device(self._host[name])
            self._dev[name] = dev
        if written:
            self._host[name] = None
        return dev

    # ------------------------------------------------------------------ batch
    def _insert(self, words: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Run one batch of stored-key words ``uint32[n, W]`` with checked scores ``float[n]`` (and
        ``weights``, ``uint64[n]``, for a byte-weighted sketch: uint64 counts and operation values)."""
        n = words.shape[0]
        if n == 0:
            return
        p, be, buf = self.params, self._backend, self._buffers
        nbytes = np.int64(p.key_len)
        d_words = buf.put("words", np.ascontiguousarray(words, dtype=np.uint32))
        d_scores = buf.put("scores", np.asarray(scores, dtype=np.float64))  # float32 -> float64 is exact
        d_buckets = buf.get("buckets", n, np.int64)
        # The operation arrays are reused from batch to batch: only op_type must start at OP_NONE
        # (a packet without an operation writes nothing); op_val / op_key are read where op_type says.
        d_op_type = buf.get("op_type", n, np.int8)
        d_op_val = buf.get("op_val", n, np.uint32 if weights is None else np.uint64)
        d_op_key = buf.get("op_key", n, np.uint32, words.shape[1:])
        n0 = np.int64(self.packets)
        with be.launching():
            be.fill(d_op_type, np.int8(OP_NONE))
            launch(_buckets_kernel, n, d_words, nbytes, _U64(p.buckets), d_buckets)
            d_order = stable_argsort(be, buf, d_buckets, p.buckets)  # on the device
            state = [self._device_array(name) for name in ("_slot_words", "counts", "lock", "occ")]
            if weights is None:
                launch(_heavy_segments_kernel, n, *state, d_words, d_scores, d_buckets, d_order, n0, self._seed_mix,
                       d_op_type, d_op_key, d_op_val, grid_stride=True)
            else:
                d_weights = buf.put("weights", np.ascontiguousarray(weights, dtype=np.uint64))
                launch(_heavy_segments_weighted_kernel, n, *state, d_words, d_scores, d_weights, d_buckets, d_order,
                       n0, self._seed_mix, d_op_type, d_op_key, d_op_val, grid_stride=True)
            if p.light == "countmin":
                self._countmin_on_device(d_op_type, d_op_key, d_op_val, n)
            elif p.light == "coco":
                op_key = be.to_host(d_op_key)
                _cpu._light_apply(_cpu.LIGHT_KIND["coco"], self.cm, self.coco_ids, self.coco_counts, self.coco_occ,
                                  p.key_len, op_key, be.to_host(d_op_type), op_key, be.to_host(d_op_val), n0,
                                  self._seed_mix)
        self.packets += n
        if weights is not None:
            self.total_weight += int(weights.sum())

    def _countmin_on_device(self, d_op_type, d_op_key, d_op_val, n: int) -> None:
        """Segmented ordered fold of the batch's Count-Min operations, one thread per touched counter."""
        be, buf = self._backend, self._buffers
        width = self.params.light_width
        none_target = CM_ROWS * width
        d_targets = buf.get("targets", n * CM_ROWS, np.int64)
        launch(_cm_targets_kernel, n, d_op_type, d_op_key, np.int64(self.params.key_len),
                                                          _U64(width), np.int64(none_target), d_targets)
        d_order = stable_argsort(be, buf, d_targets, none_target + 1)  # on the device
        cm_max = CM_MAX_BYTES if self.params.weight == "bytes" else CM_MAX
        launch(_cm_fold_kernel, n * CM_ROWS, self._device_array("cm"), d_targets, d_order, np.int64(none_target),
               d_op_type, d_op_val, np.int64(cm_max), grid_stride=True)


class ScoredLLMSketch(ScoringMixin, LLMSketch):
    """The GPU LLM-Sketch with its scorer (:class:`~telesketch.estimators.scoring.ScoringMixin`):
    scores on the host, the pure ``update(batch, scores)`` on the device."""
