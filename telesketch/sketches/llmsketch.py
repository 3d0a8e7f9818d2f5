"""LLM-Sketch: a two-tier sketch whose heavy part is steered by a learned flow-size score.

Spec: ``specs/llmsketch.md`` (§2 data structure, §3 estimator contract, §4 packet path).

Structure (spec §2.1). ``NB`` heavy buckets of 8 slots, each slot ``(key, count u32, lock, occ)``;
charged ``NB * 8 * (key_len + 4)`` bytes (lock and occupancy bits are reported separately as
:attr:`LLMSketch.overhead_bytes`). Behind it a light part:

* ``flow_size``: Count-Min, 3 rows of ``W = int(Ml / 3)`` saturating one-byte counters; an evicted
  heavy count is *max-merged* into them;
* ``heavy_hitters``: none (``heavy_ratio = 1``; small packets and evicted counts are dropped);
* ``hhh``: a CocoSketch of 2 rows of ``W = int(Ml / 16)`` cells ``{id u32, count u32, occ}``.

Hashes are MurmurHash3 x86-32 with the spec's seeds (bucket 100, Count-Min rows 0..2, Coco rows
0..1, fingerprint 123123): the spec names this function, so the telesketch hash family is *not*
used here. The HHH light part is implemented in this module's kernels (``cocosketch.py`` follows
the ResidualSketch spec, whose hash and takeover coin differ); only the final discounted HHH pass
is shared with it.

Randomness (the stochastic lock and the Coco takeover) comes from the counter-based
``uniform(seed, n, j)``, ``n`` being the packet's 0-based index in this sketch's stream, so results
do not depend on batch boundaries.

Batch execution (spec §2.4). By default one serial ``nogil`` Numba loop runs the spec's per-packet
insert over the batch in stream order, light-part operation included: that *is* the serial loop,
and on this project's small shared machines it beats the parallel form (no sort, no OpenMP
barriers; ~10 M packets/s). ``parallel=True`` selects the spec's parallel form: packets
stable-sorted by heavy bucket, each bucket's packets in stream order, buckets in parallel
(``prange``), each packet's light operation (``add`` of itself or ``evict`` of the slot it
displaced) recorded at its index and applied serially in index order afterwards (saturating add
and max do not commute, and Coco rows interact). Both give identical state.

Keys inside the kernels are little-endian ``uint32`` words of the stored key bytes (1 word for
4-byte keys, 4 for the 13-byte key, zero-padded), computed straight from the batch's columns;
:attr:`LLMSketch.slot_keys` is a byte view of them, so the state and its serialised form are the
spec's bytes.

Flow names (``keep_keys=True``, flow-size task; not in the spec). The heavy part stores 4-byte
fingerprints, which an operator cannot act on. With ``keep_keys`` every heavy slot also keeps the
flow key of the flow it holds (``slot_names``, ``uint8[NB, 8, 13]``, charged in
:attr:`LLMSketch.memory_bytes`: ``NB * 8 * 13`` bytes, +33 KiB per 100 KiB of heavy part), filled
after each batch for the occupied slots whose key a packet of the batch carries (the last such
packet's 5-tuple: one extra pass over the batch), so :meth:`LLMSketch.top_flows` reports 5-tuples
and the names do not depend on where batches are cut. The counts, hashes and the serialised spec arrays are
unchanged; the names travel as one more array of the state.

IPv6 (issue #18). The flow-size task keys a flow on its *canonical* key: the 13-byte 5-tuple for
an IPv4 flow (unchanged, so IPv4 answers and speed are as before), the 37-byte tuple
``src(16) dst(16) sport(2) dport(2) proto(1)`` for an IPv6 flow (:meth:`PacketBatch.flow_keys37`);
an IPv6 row whose addresses are both v4-mapped (``::ffff:a.b.c.d``) is the IPv4 flow. The stored key
stays the 4-byte fingerprint ``mmh3_32(canonical key, 123123)``, so the heavy part's and Count-Min's
memory per flow do not grow for IPv6. Queries take 13- or 37-byte keys (:func:`canonical_flow_keys`).
Names: ``slot_names`` is 13 bytes wide until the sketch is given its first IPv6 flow, then it widens once to
37 (IPv4 names v4-mapped; ``memory_bytes`` then charges ``NB * 8 * 37``): IPv4-only traffic pays
nothing, and its serialised state keeps layout 1 byte for byte; a state with 37-byte names is layout
2. ``top_flows`` reports 13-byte keys for IPv4 flows and 37-byte keys for IPv6 flows either way.
The ``heavy_hitters`` task stores the 13-byte key itself, so it refuses batches with IPv6 rows
(:func:`check_families`), as does ``hhh`` (IPv4 source addresses; IPv6 prefix hierarchies are
ResidualSketch's). For mixed traffic, ``heavy_hitters37`` stores every flow's 37-byte key (IPv4
v4-mapped; slot 41 B, bucket 328 B, so 2.4 times the memory of ``heavy_hitters`` for the same
slots) and reports IPv4 flows as 13-byte keys, IPv6 flows as 37-byte keys.

Bytes (issue 17). ``weight="bytes"`` (the ``flow_size`` and ``heavy_hitters`` tasks) counts each
packet's ``length`` column instead of 1: heavy counts are ``uint64`` (a slot is ``key_len + 8``
charged bytes) and the Count-Min counters ``uint32`` saturating at 2^32 - 1 (4 charged bytes each, so
``W = int(Ml / 3 / 4)``). A hit adds ``w``; the lock's running mean of the flow's scores is weighted by
bytes, ``q = (lock (c - w) + p w) / c`` (the spec's rule at ``w = 1``); a new or evicting flow starts
at ``w``; a light add carries ``w`` and an eviction max-merges the displaced byte count. A zero-length
packet changes nothing but takes its stream index. ``phi`` is a fraction of the bytes
(:attr:`LLMSketch.total_weight`). Batches run :func:`_update_serial_weighted`; the packet kernels,
state and snapshots are unchanged (a packet sketch's parameters carry no ``weight`` key, so its
snapshots load anywhere they did). The ``hhh`` task counts packets only (byte HHH: ResidualSketch).

Scores: ``update(batch, scores)`` takes one score per packet and is pure: the sketch owns no model.
The scorer lives beside it: :class:`telesketch.estimators.scoring.ScoredLLMSketch` (what
``LLMSketch(estimator=...)`` builds, and what the service's ``llmsketch`` kind builds from its
``estimator`` settings) owns a :class:`~telesketch.estimators.scoring.FlowScorer` (per-flow
scoring, sync or async, spec §4) and its lifecycle, scores each batch and calls this update.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from telesketch.hashing import mix64
from telesketch.intrinsics import prefetch
from telesketch.jit import kernel, twin
from telesketch.packets import FLOW_KEY37_BYTES, FLOW_KEY_BYTES, V4_MAPPED_PREFIX, PacketBatch
from telesketch.sketches.cocosketch import fastmod
from telesketch.sketches.core import NotMergeableError, SketchError, pack_state, unpack_state
from telesketch.sketches.core import EPOCHS, Rule, Sketch, Window
from telesketch.sketches.hierarchy import prefix_mask

ALGORITHM = "llmsketch"
STATE_VERSION = 2  # 2: slot_names may be 37 bytes wide (IPv6 names); 1 is still read
STATE_VERSIONS = (1, 2)
SLOTS = 8
CM_ROWS = 3
COCO_ROWS = 2
COCO_CELL_BYTES = 8
CM_MAX = 255
#: Byte weighting (``weight="bytes"``): heavy counts are ``uint64`` (slot ``key_len + 8`` bytes) and the
#: Count-Min counters ``uint32`` saturating here (4 GiB of one flow's bytes per epoch).
CM_MAX_BYTES = 0xFFFFFFFF
WEIGHTS = ("packets", "bytes")
BUCKET_SEED = 100
FINGERPRINT_SEED = 123123
LARGE = 0.5  # scores >= this are "predicted large"
#: The settings of the scorer beside a sketch (:class:`telesketch.estimators.scoring.ScoredLLMSketch`);
#: giving any of them to :class:`LLMSketch` builds the scored sketch.
SCORER_PARAMS = ("estimator", "estimator_path", "rescore", "cache_flows", "scoring", "provisional", "floor_from",
                 "pivot", "scorer_memory", "scorer_share")

#: task -> (heavy_ratio default, key_len, light part)
TASKS: dict[str, tuple[float, int, str]] = {
    "flow_size": (0.2, 4, "countmin"),
    "heavy_hitters": (1.0, FLOW_KEY_BYTES, "none"),
    "heavy_hitters37": (1.0, FLOW_KEY37_BYTES, "none"),  # both families: 37-byte keys, IPv4 v4-mapped
    "hhh": (0.5, 4, "coco"),
}
LIGHT_KIND = {"none": 0, "countmin": 1, "coco": 2}
OP_NONE, OP_ADD, OP_EVICT = 0, 1, 2

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_C1 = _U64(0xCC9E2D51)
_C2 = _U64(0x1B873593)
_TWO24 = float(1 << 24)


# ---------------------------------------------------------------------------- hash and randomness
@twin(nb.uint64(nb.uint64, nb.uint64), inline=True)
def _rotl32(x, r):
    return ((x << r) | (x >> (_U64(32) - r))) & _M32


@twin(nb.uint64(nb.uint64, nb.uint64), inline=True)
def _fmix32(h, nbytes):
    """MurmurHash3's length mix-in and 32-bit finaliser."""
    h ^= nbytes
    h ^= h >> _U64(16)
    h = (h * _U64(0x85EBCA6B)) & _M32
    h ^= h >> _U64(13)
    h = (h * _U64(0xC2B2AE35)) & _M32
    h ^= h >> _U64(16)
    return h


@kernel
def mmh3_32(data, seed):
    """MurmurHash3 x86 32-bit (unsigned) of the bytes ``data`` (``uint8[k]``); a uint64 < 2^32."""
    h = _U64(seed) & _M32
    n = data.shape[0]
    nblocks = n // 4
    for b in range(nblocks):
        i = b * 4
        k = _U64(data[i]) | (_U64(data[i + 1]) << _U64(8)) | (_U64(data[i + 2]) << _U64(16)) | (
            _U64(data[i + 3]) << _U64(24))
        k = (k * _C1) & _M32
        k = _rotl32(k, _U64(15))
        k = (k * _C2) & _M32
        h ^= k
        h = _rotl32(h, _U64(13))
        h = (h * _U64(5) + _U64(0xE6546B64)) & _M32
    tail = n & 3
    if tail:
        i = nblocks * 4
        k = _U64(0)
        if tail == 3:
            k ^= _U64(data[i + 2]) << _U64(16)
        if tail >= 2:
            k ^= _U64(data[i + 1]) << _U64(8)
        k ^= _U64(data[i])
        k = (k * _C1) & _M32
        k = _rotl32(k, _U64(15))
        k = (k * _C2) & _M32
        h ^= k
    return _fmix32(h, _U64(n))


@kernel
def _mmh3_rows_kernel(keys, seed, out):
    for i in range(keys.shape[0]):
        out[i] = mmh3_32(keys[i], seed)


def mmh3_rows(keys: np.ndarray, seed: int) -> np.ndarray:
    """``uint32[n]`` MurmurHash3-32 of each row of ``keys`` (``uint8[n, k]``) with ``seed``."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    out = np.empty(keys.shape[0], np.uint64)
    _mmh3_rows_kernel(keys, _U64(seed), out)
    return out.astype(np.uint32)


@twin(nb.float64(nb.uint64, nb.uint64, nb.uint64), inline=True)
def uniform(seed_mix, n, j):
    """``uniform(seed, n, j)`` in [0, 1) given ``seed_mix = mix64(seed)``; j=0 lock, j=1 Coco."""
    return float(mix64(seed_mix ^ (n * _U64(64) + j)) >> _U64(40)) / _TWO24


# ---------------------------------------------------------------------------- keys as words
# Inside the kernels a stored key is ``W`` little-endian uint32 words of its bytes, zero-padded to
# ``4 W`` bytes (W = 1 for the 4-byte keys, 4 for the 13-byte key13): one compare per word, and
# MurmurHash3's 4-byte blocks are exactly these words.
@twin(inline=True, device_inline=False)
def _mmh3_words(words, nbytes, seed):
    """``mmh3_32`` of the ``nbytes`` bytes held in ``words`` (uint32 little-endian, zero-padded)."""
    h = _U64(seed) & _M32
    nblocks = nbytes // 4
    for b in range(nblocks):
        k = (_U64(words[b]) * _C1) & _M32
        k = _rotl32(k, _U64(15))
        k = (k * _C2) & _M32
        h ^= k
        h = _rotl32(h, _U64(13))
        h = (h * _U64(5) + _U64(0xE6546B64)) & _M32
    if nbytes & 3:
        k = (_U64(words[nblocks]) * _C1) & _M32
        k = _rotl32(k, _U64(15))
        k = (k * _C2) & _M32
        h ^= k
    return _fmix32(h, _U64(nbytes))


@kernel(inline="always")
def _bswap32(x):
    x = np.uint32(x)
    return ((x & np.uint32(0xFF)) << np.uint32(24)) | ((x & np.uint32(0xFF00)) << np.uint32(8)) | (
        (x >> np.uint32(8)) & np.uint32(0xFF00)) | (x >> np.uint32(24))


@kernel(inline="always")
def _bswap16(x):
    x = np.uint32(x)
    return ((x & np.uint32(0xFF)) << np.uint32(8)) | (x >> np.uint32(8))


@kernel(inline="always")
def _be_word(block, i, at):
    """The 4 bytes ``block[i, at:at + 4]`` as one big-endian uint32 (an IPv4 address)."""
    return (np.uint32(block[i, at]) << np.uint32(24)) | (np.uint32(block[i, at + 1]) << np.uint32(16)) | (
        np.uint32(block[i, at + 2]) << np.uint32(8)) | np.uint32(block[i, at + 3])


@kernel(inline="always")
def _le_word(block, i, at):
    """The 4 bytes ``block[i, at:at + 4]`` as one little-endian uint32 (a MurmurHash3 block)."""
    return np.uint32(block[i, at]) | (np.uint32(block[i, at + 1]) << np.uint32(8)) | (
        np.uint32(block[i, at + 2]) << np.uint32(16)) | (np.uint32(block[i, at + 3]) << np.uint32(24))


@kernel(inline="always")
def _is_v4_mapped(block, i):
    for j in range(10):
        if block[i, j] != 0:
            return False
    return block[i, 10] == 0xFF and block[i, 11] == 0xFF


@kernel
def _batch_words_kernel(task, src_ip, dst_ip, src_port, dst_port, proto, out):
    """Stored keys of an IPv4-only batch straight from its columns (task 0 flow_size, 1 heavy_hitters,
    2 hhh). Batches with IPv6 rows, and the heavy_hitters37 task, take :func:`_batch_words_mixed_kernel`:
    this loop stays exactly the IPv4 one, so IPv4-only traffic pays no per-packet family test."""
    k13 = np.zeros(4, np.uint32)
    for i in range(src_ip.shape[0]):
        if task == 2:
            out[i, 0] = _bswap32(src_ip[i])
            continue
        k13[0] = _bswap32(src_ip[i])
        k13[1] = _bswap32(dst_ip[i])
        k13[2] = _bswap16(src_port[i]) | (_bswap16(dst_port[i]) << np.uint32(16))
        k13[3] = np.uint32(proto[i])
        if task == 0:
            out[i, 0] = np.uint32(_mmh3_words(k13, 13, _U64(FINGERPRINT_SEED)))
        else:
            out[i, :] = k13


@kernel
def _batch_words_mixed_kernel(task, src_ip, dst_ip, src_port, dst_port, proto, ipv6, src_ip6, dst_ip6, out):
    """:func:`_batch_words_kernel` for batches of both families (and task 3, heavy_hitters37).

    IPv6 rows (``ipv6[i] != 0``) of the flow-size task are fingerprinted over their 37-byte key
    (:func:`canonical_flow_keys`), unless both addresses are v4-mapped: those are the IPv4 flow's
    13-byte key, so one flow has one fingerprint whichever family carried it. The callers refuse
    IPv6 rows for the other tasks before this runs."""
    k13 = np.zeros(4, np.uint32)
    k37 = np.zeros(10, np.uint32)
    mapped = np.uint32(0xFFFF0000)  # bytes 8..11 of a v4-mapped address as a little-endian word
    for i in range(src_ip.shape[0]):
        if task == 2:
            out[i, 0] = _bswap32(src_ip[i])
            continue
        ports = _bswap16(src_port[i]) | (_bswap16(dst_port[i]) << np.uint32(16))
        if task == 3:  # heavy_hitters37: the 37-byte key of every row (PacketBatch.flow_keys37)
            if ipv6[i] != 0:
                for j in range(4):
                    out[i, j] = _le_word(src_ip6, i, 4 * j)
                    out[i, 4 + j] = _le_word(dst_ip6, i, 4 * j)
            else:
                out[i, 0], out[i, 1], out[i, 2], out[i, 3] = 0, 0, mapped, _bswap32(src_ip[i])
                out[i, 4], out[i, 5], out[i, 6], out[i, 7] = 0, 0, mapped, _bswap32(dst_ip[i])
            out[i, 8] = ports
            out[i, 9] = np.uint32(proto[i])
            continue
        if ipv6[i] != 0:
            if not (_is_v4_mapped(src_ip6, i) and _is_v4_mapped(dst_ip6, i)):
                for j in range(4):
                    k37[j] = _le_word(src_ip6, i, 4 * j)
                    k37[4 + j] = _le_word(dst_ip6, i, 4 * j)
                k37[8] = ports
                k37[9] = np.uint32(proto[i])
                out[i, 0] = np.uint32(_mmh3_words(k37, 37, _U64(FINGERPRINT_SEED)))
                continue
            k13[0] = _bswap32(_be_word(src_ip6, i, 12))
            k13[1] = _bswap32(_be_word(dst_ip6, i, 12))
        else:
            k13[0] = _bswap32(src_ip[i])
            k13[1] = _bswap32(dst_ip[i])
        k13[2] = ports
        k13[3] = np.uint32(proto[i])
        if task == 0:
            out[i, 0] = np.uint32(_mmh3_words(k13, 13, _U64(FINGERPRINT_SEED)))
        else:
            out[i, :] = k13


# ---------------------------------------------------------------------------- heavy part
@kernel(inline="always")
def _same_key(slot_words, b, s, keys, i):
    for j in range(keys.shape[1]):
        if slot_words[b, s, j] != keys[i, j]:
            return False
    return True


def _row_pointer(context, builder, arrty, arr, index, lanes, width):
    """Pointer to ``arr[index..., 0]`` (C-contiguous) as ``<lanes x i{width}>*``."""
    ary = context.make_array(arrty)(context, builder, arr)
    zero = ir.Constant(ir.IntType(64), 0)
    first = cgutils.get_item_pointer(context, builder, arrty, ary, list(index) + [zero] * (arrty.ndim - len(index)),
                                     wraparound=False, boundscheck=False)
    return builder.bitcast(first, ir.VectorType(ir.IntType(width), lanes).as_pointer())


def _reduce_umin(builder, vector):
    elem = vector.type.element
    fnty = ir.FunctionType(elem, [vector.type])
    name = f"llvm.vector.reduce.umin.v{vector.type.count}i{elem.width}"
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), [vector])


def _is_c_array(t, ndim, dtype):
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C" and t.dtype == dtype


@intrinsic
def _heavy_scan(typingctx, slot_words, counts, lock, occ, bucket, key):
    """The 8 slots of bucket ``bucket`` for a one-word key, as vectors: ``(stop, unlocked, any)``.

    ``stop``: the first slot that holds ``key`` or is empty (8: none); ``unlocked``: the unlocked
    slot with the smallest count, lowest on ties (-1: all locked); ``any``: the same over all
    slots. These are exactly what :func:`_heavy_insert`'s slot-by-slot loop finds, without its
    data-dependent branches."""
    if not (_is_c_array(slot_words, 3, types.uint32) and _is_c_array(counts, 2, types.uint32)
            and _is_c_array(lock, 2, types.uint8) and _is_c_array(occ, 2, types.uint8)):
        return None
    sig = types.UniTuple(types.int64, 3)(slot_words, counts, lock, occ, types.int64, types.uint32)

    def codegen(context, builder, signature, args):
        words_a, counts_a, lock_a, occ_a, b, k = args
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        v8i32, v8i64 = ir.VectorType(i32, 8), ir.VectorType(i64, 8)
        wt, ct, lt, ot = signature.args[:4]
        slot_keys = builder.load(_row_pointer(context, builder, wt, words_a, [b], 8, 32), align=4)
        slot_counts = builder.load(_row_pointer(context, builder, ct, counts_a, [b], 8, 32), align=4)
        locked = builder.load(_row_pointer(context, builder, lt, lock_a, [b], 8, 8), align=1)
        held = builder.icmp_unsigned("!=", builder.load(_row_pointer(context, builder, ot, occ_a, [b], 8, 8), align=1),
                                     ir.Constant(ir.VectorType(i8, 8), [0] * 8))
        one = builder.insert_element(ir.Constant(v8i32, None), k, ir.Constant(i32, 0))
        splat = builder.shuffle_vector(one, ir.Constant(v8i32, None), ir.Constant(v8i32, [0] * 8))
        same = builder.icmp_unsigned("==", slot_keys, splat)
        stops = builder.or_(builder.and_(held, same), builder.not_(held))
        ids32 = ir.Constant(v8i32, list(range(8)))
        stop = _reduce_umin(builder, builder.select(stops, ids32, ir.Constant(v8i32, [8] * 8)))
        ranked = builder.or_(builder.shl(builder.zext(slot_counts, v8i64), ir.Constant(v8i64, [3] * 8)),
                             ir.Constant(v8i64, list(range(8))))
        any_slot = builder.and_(_reduce_umin(builder, ranked), ir.Constant(i64, 7))
        none = ir.Constant(v8i64, [0xFFFFFFFFFFFFFFFF] * 8)
        unlocked = builder.icmp_unsigned("==", locked, ir.Constant(ir.VectorType(i8, 8), [0] * 8))
        best_unlocked = _reduce_umin(builder, builder.select(unlocked, ranked, none))
        found = builder.icmp_unsigned("!=", best_unlocked, ir.Constant(i64, 0xFFFFFFFFFFFFFFFF))
        victim = builder.select(found, builder.and_(best_unlocked, ir.Constant(i64, 7)), ir.Constant(i64, -1))
        return context.make_tuple(builder, signature.return_type, [builder.zext(stop, i64), victim, any_slot])

    return sig, codegen


@kernel(inline="always")
def _heavy_insert_one_word(slot_words, counts, lock, occ, b, keys, i, p, seed_mix, n, victim_key):
    """:func:`_heavy_insert` for one-word keys (``flow_size``, ``hhh``), the slot scan vectorised."""
    key = keys[i, 0]
    stop, victim, lowest = _heavy_scan(slot_words, counts, lock, occ, b, key)
    if stop < SLOTS:
        s = stop
        if occ[b, s]:
            c = counts[b, s] + np.uint32(1)
            counts[b, s] = c
            q = (float(lock[b, s]) * (float(c) - 1.0) + p) / float(c)
            lock[b, s] = 1 if uniform(seed_mix, n, _U64(0)) < q else 0
            return OP_NONE, np.uint32(0)
        slot_words[b, s, 0] = key
        counts[b, s] = 1
        lock[b, s] = 1 if p >= LARGE else 0
        occ[b, s] = 1
        return OP_NONE, np.uint32(0)
    if p < LARGE:
        return OP_ADD, np.uint32(1)
    if victim < 0:
        victim = lowest
    victim_key[0] = slot_words[b, victim, 0]
    old = counts[b, victim]
    slot_words[b, victim, 0] = key
    counts[b, victim] = 1
    lock[b, victim] = 1
    return OP_EVICT, old


@twin(inline=True)
def _claim_slot(slot_words, counts, lock, occ, b, s, keys, i, start, p):
    """Spec §2.2, an empty slot: slot ``s`` of bucket ``b`` takes packet ``i``'s key with count
    ``start``, locked when its score ``p`` says large. A twin (loops, no slices): the GPU's heavy
    insert runs the same code."""
    for j in range(keys.shape[1]):
        slot_words[b, s, j] = keys[i, j]
    counts[b, s] = start
    lock[b, s] = 1 if p >= LARGE else 0
    occ[b, s] = 1


@twin(inline=True)
def _evict_least(slot_words, counts, lock, b, keys, i, victim, start, victim_key):
    """Spec §2.2, a large flow and a full bucket: it replaces ``victim`` (the least-counted unlocked
    slot), or the least-counted slot when every slot is locked (``victim < 0``). The displaced key
    goes to ``victim_key`` (uint32[W]); the flow starts at ``start``, locked. Returns the displaced
    count."""
    if victim < 0:
        victim = 0
        for s in range(1, SLOTS):
            if counts[b, s] < counts[b, victim]:
                victim = s
    old = counts[b, victim]
    for j in range(keys.shape[1]):
        victim_key[j] = slot_words[b, victim, j]
        slot_words[b, victim, j] = keys[i, j]
    counts[b, victim] = start
    lock[b, victim] = 1
    return old


@kernel(inline="always")
def _heavy_insert(slot_words, counts, lock, occ, b, keys, i, p, seed_mix, n, victim_key):
    """Spec §2.2 for packet ``i`` (stream index ``n``) in bucket ``b``.

    Returns the light-part operation ``(OP_NONE | OP_ADD | OP_EVICT, value)``; for an eviction the
    displaced key is copied to ``victim_key`` (uint32[W]).
    """
    victim = -1
    for s in range(SLOTS):
        if occ[b, s] and _same_key(slot_words, b, s, keys, i):
            c = counts[b, s] + np.uint32(1)
            counts[b, s] = c
            q = (float(lock[b, s]) * (float(c) - 1.0) + p) / float(c)
            lock[b, s] = 1 if uniform(seed_mix, n, _U64(0)) < q else 0
            return OP_NONE, np.uint32(0)
        if not occ[b, s]:
            _claim_slot(slot_words, counts, lock, occ, b, s, keys, i, np.uint32(1), p)
            return OP_NONE, np.uint32(0)
        if not lock[b, s] and (victim < 0 or counts[b, s] < counts[b, victim]):
            victim = s
    if p < LARGE:
        return OP_ADD, np.uint32(1)
    return OP_EVICT, _evict_least(slot_words, counts, lock, b, keys, i, victim, np.uint32(1), victim_key)


# ---------------------------------------------------------------------------- light parts
@kernel(inline="always")
def _countmin_op(cm, key, nbytes, op, val, wmagic):
    """Saturating add (``OP_ADD``) or max-merge (``OP_EVICT``) of ``val`` into every row
    (``wmagic = _mod_magic(width)``)."""
    w = _U64(cm.shape[1])
    v = min(np.int64(val), CM_MAX)
    for r in range(CM_ROWS):
        col = np.int64(fastmod(_mmh3_words(key, nbytes, _U64(r)), wmagic, w))
        c = np.int64(cm[r, col])
        if op == OP_ADD:
            cm[r, col] = min(c + v, CM_MAX)
        elif v > c:
            cm[r, col] = v


@kernel(inline="always")
def _coco_op(ids, ccounts, cocc, key, nbytes, val, n, seed_mix, wmagic):
    """``coco_insert(key, val, uniform(seed, n, 1))`` (spec §2.2); ids are big-endian addresses."""
    w = _U64(ids.shape[1])
    k = _bswap32(key[0])
    v = np.uint32(val)
    c0 = np.int64(fastmod(_mmh3_words(key, nbytes, _U64(0)), wmagic, w))
    c1 = np.int64(fastmod(_mmh3_words(key, nbytes, _U64(1)), wmagic, w))
    if cocc[0, c0] and ids[0, c0] == k:
        ccounts[0, c0] += v
        return
    if cocc[1, c1] and ids[1, c1] == k:
        ccounts[1, c1] += v
        return
    row, col = 0, c0
    if ccounts[1, c1] < ccounts[0, c0]:
        row, col = 1, c1
    c = ccounts[row, col] + v
    ccounts[row, col] = c
    if uniform(seed_mix, n, _U64(1)) < float(v) / float(c):
        ids[row, col] = k
        cocc[row, col] = 1


@kernel(inline="always")
def _light_op(light, cm, ids, ccounts, cocc, key, nbytes, op, val, n, seed_mix, wmagic):
    if light == 1:
        _countmin_op(cm, key, nbytes, op, val, wmagic)
    elif light == 2:
        _coco_op(ids, ccounts, cocc, key, nbytes, val, n, seed_mix, wmagic)


@kernel(inline="always")
def _mod_magic(d):
    """``fastmod``'s multiplier for divisor ``d`` (``2^64 // d + 1`` mod 2^64); 0 for ``d == 0``.

    The kernels' ``h % d`` (32-bit ``h`` and ``d``) is ``fastmod(h, _mod_magic(d), d)``: the
    same value, three multiplies instead of a 64-bit division per hash."""
    if d == 0:
        return _U64(0)
    return _U64(0xFFFFFFFFFFFFFFFF) // _U64(d) + _U64(1)


@kernel
def _light_width(light, cm, ids):
    return _U64(cm.shape[1]) if light == 1 else (_U64(ids.shape[1]) if light == 2 else _U64(0))


@kernel(inline="always")
def _score_of(scores, i):
    p = float(scores[i])
    return 0.0 if p < 0.0 else (1.0 if p > 1.0 else p)


@kernel
def _update_serial(slot_words, counts, lock, occ, cm, ids, ccounts, cocc, light, nbytes, keys, scores, n0,
                   seed_mix):
    """The spec's serial loop over a batch: heavy insert, then that packet's light operation.

    ``keys``: uint32[n, W] stored keys; ``scores``: float[n] (clipped here); ``n0``: the stream
    index of the batch's first packet.
    """
    nb_buckets = _U64(counts.shape[0])
    bmagic = _mod_magic(nb_buckets)
    wmagic = _mod_magic(_light_width(light, cm, ids))
    victim_key = np.zeros(keys.shape[1], np.uint32)
    for i in range(keys.shape[0]):
        n = _U64(n0 + i)
        b = np.int64(fastmod(_mmh3_words(keys[i], nbytes, _U64(BUCKET_SEED)), bmagic, nb_buckets))
        if keys.shape[1] == 1:
            op, val = _heavy_insert_one_word(slot_words, counts, lock, occ, b, keys, i, _score_of(scores, i),
                                             seed_mix, n, victim_key)
        else:
            op, val = _heavy_insert(slot_words, counts, lock, occ, b, keys, i, _score_of(scores, i), seed_mix, n,
                                    victim_key)
        if op == OP_ADD:
            _light_op(light, cm, ids, ccounts, cocc, keys[i], nbytes, op, val, n, seed_mix, wmagic)
        elif op == OP_EVICT:
            _light_op(light, cm, ids, ccounts, cocc, victim_key, nbytes, op, val, n, seed_mix, wmagic)


#: Packets whose heavy buckets :func:`_update_serial_one_word` hashes ahead of its ordered loop.
_HASH_CHUNK = 512


@kernel(inline="always")
def _mmh3_word(k, seed):
    """``_mmh3_words`` of one full 4-byte word ``k`` (``nbytes == 4``): one block, no tail."""
    h = _U64(seed) & _M32
    b = (_U64(k) * _C1) & _M32
    b = ((b << _U64(15)) | (b >> _U64(17))) & _M32
    b = (b * _C2) & _M32
    h ^= b
    h = ((h << _U64(13)) | (h >> _U64(19))) & _M32
    h = (h * _U64(5) + _U64(0xE6546B64)) & _M32
    h ^= _U64(4)
    h ^= h >> _U64(16)
    h = (h * _U64(0x85EBCA6B)) & _M32
    h ^= h >> _U64(13)
    h = (h * _U64(0xC2B2AE35)) & _M32
    h ^= h >> _U64(16)
    return h


#: Batches of ``_WARM_FROM <= n < _WARM_BELOW`` packets first stream the whole sketch into the caches
#: (:func:`_warm`). Measured in one process with the caches emptied between batches (as the service's
#: other sketches and the score cache empty them): 0.71x the kernel's CPU time at 8 Ki packets; at
#: 64 Ki none (0.97-1.03x, the loop's own misses are spread over 8x the packets), so not done there.
_WARM_FROM = 1024
_WARM_BELOW = 32768


@kernel(inline="always")
def _warm(flat, step):
    """Prefetch every cache line of ``flat`` (``step`` elements per 64-byte line), in order: a sweep
    the hardware streams, where the ordered loop's random first touches would each wait on memory."""
    for j in range(0, flat.shape[0], step):
        prefetch(flat, j)


@kernel
def _update_serial_one_word(slot_words, counts, lock, occ, cm, ids, ccounts, cocc, light, keys, scores, n0,
                            seed_mix):
    """:func:`_update_serial` for 4-byte keys (``flow_size``, ``hhh``; ``keys``: ``uint32[n]``, the one
    word of each stored key), written out so that it runs at full speed: the same state, bit for bit
    (``tests/test_llmsketch_scan.py`` runs both on the same batches).

    What differs is how, not what: every block of :data:`_HASH_CHUNK` packets has its heavy buckets
    hashed first (unsigned indices, no dependence between packets, so LLVM vectorises it); then the
    ordered loop is :func:`_heavy_insert_one_word` followed by :func:`_countmin_op` or
    :func:`_coco_op` on the packet's (or the evicted) key, written out with scalar keys. Through the
    helpers each light operation took a view of ``keys[i]`` (an NRT reference count increment and
    decrement, atomic, per packet) and Numba's ``inline="always"`` runs such loops at about half
    speed (the CocoSketch kernel's finding, issue 21). A batch of 1-32 Ki packets first prefetches
    the whole sketch in order (:data:`_WARM_FROM`)."""
    n = keys.shape[0]
    nb_buckets = _U64(counts.shape[0])
    bmagic = _mod_magic(nb_buckets)
    w = _light_width(light, cm, ids)
    wmagic = _mod_magic(w)
    buckets = np.empty(_HASH_CHUNK, np.uint32)
    if _WARM_FROM <= n < _WARM_BELOW:
        _warm(slot_words.reshape(-1), 16)
        _warm(counts.reshape(-1), 16)
        _warm(lock.reshape(-1), 64)
        _warm(occ.reshape(-1), 64)
        _warm(cm.reshape(-1), 64)
        _warm(ids.reshape(-1), 16)
        _warm(ccounts.reshape(-1), 16)
        _warm(cocc.reshape(-1), 64)
    start = _U64(0)
    while start < _U64(n):
        m = min(_U64(_HASH_CHUNK), _U64(n) - start)
        for t in range(m):  # m is uint64, so t is: no negative-index code, and the loop vectorises
            buckets[t] = np.uint32(fastmod(_mmh3_word(keys[start + t], _U64(BUCKET_SEED)), bmagic, nb_buckets))
        for t in range(m):
            i = start + t
            b = np.int64(buckets[t])
            key = keys[i]
            p = _score_of(scores, i)
            nn = _U64(n0) + i
            # ---- heavy part: _heavy_insert_one_word
            stop, victim, lowest = _heavy_scan(slot_words, counts, lock, occ, b, key)
            if stop < SLOTS:
                if occ[b, stop]:
                    c = counts[b, stop] + np.uint32(1)
                    counts[b, stop] = c
                    q = (float(lock[b, stop]) * (float(c) - 1.0) + p) / float(c)
                    lock[b, stop] = 1 if uniform(seed_mix, nn, _U64(0)) < q else 0
                else:
                    slot_words[b, stop, 0] = key
                    counts[b, stop] = 1
                    lock[b, stop] = 1 if p >= LARGE else 0
                    occ[b, stop] = 1
                continue
            if p < LARGE:
                op = OP_ADD
                lkey = key
                val = np.uint32(1)
            else:
                op = OP_EVICT
                if victim < 0:
                    victim = lowest
                lkey = slot_words[b, victim, 0]
                val = counts[b, victim]
                slot_words[b, victim, 0] = key
                counts[b, victim] = 1
                lock[b, victim] = 1
            # ---- light part: _countmin_op / _coco_op on the one-word key lkey
            if light == 1:
                v = min(np.int64(val), CM_MAX)
                for r in range(CM_ROWS):
                    col = np.int64(fastmod(_mmh3_word(lkey, _U64(r)), wmagic, w))
                    cc = np.int64(cm[r, col])
                    if op == OP_ADD:
                        cm[r, col] = min(cc + v, CM_MAX)
                    elif v > cc:
                        cm[r, col] = v
            elif light == 2:
                k = _bswap32(lkey)
                v32 = np.uint32(val)
                c0 = np.int64(fastmod(_mmh3_word(lkey, _U64(0)), wmagic, w))
                c1 = np.int64(fastmod(_mmh3_word(lkey, _U64(1)), wmagic, w))
                if cocc[0, c0] and ids[0, c0] == k:
                    ccounts[0, c0] += v32
                    continue
                if cocc[1, c1] and ids[1, c1] == k:
                    ccounts[1, c1] += v32
                    continue
                row, col = 0, c0
                if ccounts[1, c1] < ccounts[0, c0]:
                    row, col = 1, c1
                c = ccounts[row, col] + v32
                ccounts[row, col] = c
                if uniform(seed_mix, nn, _U64(1)) < float(v32) / float(c):
                    ids[row, col] = k
                    cocc[row, col] = 1
        start += m


@kernel
def _buckets_kernel(keys, nbytes, nb_buckets, out):
    for i in range(keys.shape[0]):
        out[i] = np.int64(_mmh3_words(keys[i], nbytes, _U64(BUCKET_SEED)) % _U64(nb_buckets))


@kernel(parallel=True)
def _heavy_parallel(slot_words, counts, lock, occ, keys, buckets, scores, order, seg_starts, n0, seed_mix,
                    op_type, op_key, op_val):
    """Opt-in parallel heavy part: each bucket segment of ``order`` (packets sorted stably by bucket)
    in stream order, segments in parallel; each packet's light operation is recorded at its index."""
    for g in nb.prange(seg_starts.shape[0] - 1):
        for t in range(seg_starts[g], seg_starts[g + 1]):
            i = order[t]
            op, val = _heavy_insert(slot_words, counts, lock, occ, buckets[i], keys, i, _score_of(scores, i),
                                    seed_mix, _U64(n0 + i), op_key[i])
            op_type[i] = op
            op_val[i] = val


@kernel
def _light_apply(light, cm, ids, ccounts, cocc, nbytes, keys, op_type, op_key, op_val, n0, seed_mix):
    """The recorded light-part operations in stream order (they do not commute)."""
    wmagic = _mod_magic(_light_width(light, cm, ids))
    for i in range(op_type.shape[0]):
        op = op_type[i]
        if op == OP_ADD:
            _light_op(light, cm, ids, ccounts, cocc, keys[i], nbytes, op, op_val[i], _U64(n0 + i), seed_mix, wmagic)
        elif op == OP_EVICT:
            _light_op(light, cm, ids, ccounts, cocc, op_key[i], nbytes, op, op_val[i], _U64(n0 + i), seed_mix,
                      wmagic)


# ---------------------------------------------------------------------------- byte weighting
@kernel(inline="always")
def _heavy_insert_weighted(slot_words, counts, lock, occ, b, keys, i, p, w, seed_mix, n, victim_key):
    """:func:`_heavy_insert` with a weight ``w`` (uint64, > 0) per packet (``weight="bytes"``).

    A hit adds ``w``; the lock's running mean of the flow's scores is weighted by bytes,
    ``q = (lock (c - w) + p w) / c`` with ``c`` the new count (the spec's rule when ``w = 1``); a new
    or evicting flow starts at ``w``. ``counts`` is ``uint64``. Returns ``(op, value)``: ``OP_ADD``
    carries ``w``, ``OP_EVICT`` the displaced count."""
    victim = -1
    for s in range(SLOTS):
        if occ[b, s] and _same_key(slot_words, b, s, keys, i):
            c = counts[b, s] + w
            counts[b, s] = c
            q = (float(lock[b, s]) * float(c - w) + p * float(w)) / float(c)
            lock[b, s] = 1 if uniform(seed_mix, n, _U64(0)) < q else 0
            return OP_NONE, _U64(0)
        if not occ[b, s]:
            _claim_slot(slot_words, counts, lock, occ, b, s, keys, i, w, p)
            return OP_NONE, _U64(0)
        if not lock[b, s] and (victim < 0 or counts[b, s] < counts[b, victim]):
            victim = s
    if p < LARGE:
        return OP_ADD, w
    return OP_EVICT, _U64(_evict_least(slot_words, counts, lock, b, keys, i, victim, w, victim_key))


@kernel(inline="always")
def _countmin_op_weighted(cm, key, nbytes, op, val, wmagic):
    """:func:`_countmin_op` on ``uint32`` counters saturating at :data:`CM_MAX_BYTES`."""
    w = _U64(cm.shape[1])
    v = min(np.int64(val), np.int64(CM_MAX_BYTES))
    for r in range(CM_ROWS):
        col = np.int64(fastmod(_mmh3_words(key, nbytes, _U64(r)), wmagic, w))
        c = np.int64(cm[r, col])
        if op == OP_ADD:
            cm[r, col] = min(c + v, np.int64(CM_MAX_BYTES))
        elif v > c:
            cm[r, col] = v


@kernel
def _update_serial_weighted(slot_words, counts, lock, occ, cm, light, nbytes, keys, scores, weights, n0, seed_mix):
    """:func:`_update_serial` for byte weighting (light part none or Count-Min): packet ``i`` weighs
    ``weights[i]`` (uint64). A zero-weight packet changes nothing but takes its stream index."""
    nb_buckets = _U64(counts.shape[0])
    bmagic = _mod_magic(nb_buckets)
    wmagic = _mod_magic(_U64(cm.shape[1]) if light == 1 else _U64(0))
    victim_key = np.zeros(keys.shape[1], np.uint32)
    for i in range(keys.shape[0]):
        w = _U64(weights[i])
        if w == 0:
            continue
        n = _U64(n0 + i)
        b = np.int64(fastmod(_mmh3_words(keys[i], nbytes, _U64(BUCKET_SEED)), bmagic, nb_buckets))
        op, val = _heavy_insert_weighted(slot_words, counts, lock, occ, b, keys, i, _score_of(scores, i), w,
                                         seed_mix, n, victim_key)
        if light == 1 and op == OP_ADD:
            _countmin_op_weighted(cm, keys[i], nbytes, op, val, wmagic)
        elif light == 1 and op == OP_EVICT:
            _countmin_op_weighted(cm, victim_key, nbytes, op, val, wmagic)


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class LLMSketchParams:
    """LLM-Sketch parameters (spec §2.1); ``heavy_ratio=None`` takes the task's default.

    ``memory_bytes``: charged bytes (heavy slots + light counters). ``task``: ``flow_size``,
    ``heavy_hitters`` or ``hhh``. ``seed``: the lock / Coco random stream. ``weight``: ``"packets"``
    (default) or ``"bytes"`` (each packet adds its ``length``; ``uint64`` heavy counts, so a slot is
    ``key_len + 8`` bytes, and ``uint32`` Count-Min counters, a quarter as many for the same memory;
    not for the ``hhh`` task, whose byte HHH ResidualSketch answers).
    """

    memory_bytes: int = 400 * 1024
    task: str = "flow_size"
    heavy_ratio: float | None = None
    seed: int = 0
    weight: str = "packets"

    def __post_init__(self):
        if self.task not in TASKS:
            raise SketchError(f"unknown LLM-Sketch task {self.task!r}; use one of {sorted(TASKS)}")
        if self.weight not in WEIGHTS:
            raise SketchError(f"weight must be 'packets' or 'bytes', got {self.weight!r}")
        if self.weight == "bytes" and self.task == "hhh":
            raise SketchError("weight='bytes' is for the flow_size and heavy_hitters tasks; the hhh task counts "
                              "packets (byte-weighted HHH: the residualsketch kind)")
        if self.heavy_ratio is None:
            object.__setattr__(self, "heavy_ratio", TASKS[self.task][0])
        if not isinstance(self.memory_bytes, (int, np.integer)) or self.memory_bytes <= 0:
            raise SketchError(f"memory_bytes must be a positive integer, got {self.memory_bytes!r}")
        if not 0.0 < float(self.heavy_ratio) <= 1.0:
            raise SketchError(f"heavy_ratio must be in (0, 1], got {self.heavy_ratio}")
        if not 0 <= int(self.seed) < 2**63:
            raise SketchError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.buckets < 1:
            raise SketchError(
                f"memory_bytes={self.memory_bytes} with heavy_ratio={self.heavy_ratio} leaves no heavy bucket "
                f"(one bucket is {SLOTS * (self.key_len + self.count_bytes)} bytes)")
        if self.light != "none" and self.light_width < 1:
            raise SketchError(f"memory_bytes={self.memory_bytes} leaves no light-part counter; "
                              f"give more memory or heavy_ratio=1")

    @property
    def key_len(self) -> int:
        return TASKS[self.task][1]

    @property
    def light(self) -> str:
        return TASKS[self.task][2] if self.heavy_ratio < 1.0 else "none"

    @property
    def heavy_memory(self) -> int:
        return int(self.memory_bytes * self.heavy_ratio)

    @property
    def count_bytes(self) -> int:
        """Bytes of a heavy slot's count: 4 (``uint32``) counting packets, 8 (``uint64``) bytes."""
        return 8 if self.weight == "bytes" else 4

    @property
    def cm_counter_bytes(self) -> int:
        """Bytes of a Count-Min counter: 1 (saturating at 255) counting packets, 4 (at 2^32 - 1) bytes."""
        return 4 if self.weight == "bytes" else 1

    @property
    def buckets(self) -> int:
        return int(self.heavy_memory / SLOTS / (self.key_len + self.count_bytes))

    @property
    def light_width(self) -> int:
        ml = self.memory_bytes - self.heavy_memory
        if self.light == "countmin":
            return int(ml / CM_ROWS / self.cm_counter_bytes)
        if self.light == "coco":
            return int(ml / COCO_ROWS / COCO_CELL_BYTES)
        return 0

    def charged_bytes(self, name_bytes: int = 0) -> int:
        """What :attr:`LLMSketch.memory_bytes` charges for these parameters: heavy slots, light
        counters, and ``name_bytes`` per heavy slot (``keep_keys``: 13, or 37 once IPv6 flows are
        named; 0 without names). Computed from the parameters alone, no arrays built."""
        heavy = self.buckets * SLOTS * (self.key_len + self.count_bytes)
        width = max(self.light_width, 0)
        light = {"countmin": CM_ROWS * width * self.cm_counter_bytes, "coco": COCO_ROWS * width * COCO_CELL_BYTES,
                 "none": 0}[self.light]
        return heavy + light + self.buckets * SLOTS * int(name_bytes)

    def to_dict(self) -> dict:
        """The parameters as stored in a snapshot; a packet sketch's lack ``weight``, so its
        snapshots stay byte-identical to those written before byte weighting (and load as packets)."""
        d = asdict(self)
        if self.weight == "packets":
            del d["weight"]
        return d


# ---------------------------------------------------------------------------- key preparation
def stored_keys(batch_or_keys, task: str) -> np.ndarray:
    """The stored key bytes (``uint8[n, key_len]``) of a batch or of query keys (spec §1).

    Query keys: ``flow_size`` / ``heavy_hitters`` take flow keys as in :func:`canonical_flow_keys`
    (13-byte 5-tuples, 37-byte IPv6-capable keys, or a mix of both in a list); ``hhh`` takes numeric
    source addresses (``uint32[n]``). The flow-size task fingerprints a flow's canonical key (the
    13-byte key of an IPv4 flow, however it is written; the 37-byte key of an IPv6 flow). The
    ``heavy_hitters`` and ``hhh`` tasks store IPv4 keys only and refuse IPv6 keys.
    """
    if isinstance(batch_or_keys, PacketBatch):
        if task == "hhh":
            raw = batch_or_keys.src_ip
        else:
            return batch_words(batch_or_keys, task).view(np.uint8)[:, : TASKS[task][1]]
    else:
        raw = batch_or_keys
    if task == "hhh":
        addr = np.asarray(raw, dtype=np.uint32).reshape(-1)
        return addr.astype(">u4").view(np.uint8).reshape(-1, 4)
    keys37, v4 = canonical_flow_keys(raw)
    if task == "flow_size":
        return flow_fingerprints(keys37, v4)
    if task == "heavy_hitters37":
        return np.ascontiguousarray(keys37)
    if not v4.all():
        raise SketchError("the heavy_hitters task stores 13-byte IPv4 keys: an IPv6 flow key cannot be asked "
                          "(heavy_hitters37 and flow_size key IPv6 flows on their 37-byte tuple)")
    return key13_of(keys37)


def key37_of(keys13: np.ndarray) -> np.ndarray:
    """13-byte IPv4 keys (``uint8[n, 13]``) as 37-byte keys with v4-mapped addresses (``uint8[n, 37]``)."""
    keys13 = np.asarray(keys13, np.uint8).reshape(-1, FLOW_KEY_BYTES)
    out = np.zeros((keys13.shape[0], FLOW_KEY37_BYTES), np.uint8)
    out[:, 10:12] = out[:, 26:28] = 0xFF
    out[:, 12:16] = keys13[:, 0:4]
    out[:, 28:32] = keys13[:, 4:8]
    out[:, 32:37] = keys13[:, 8:13]
    return out


def key13_of(keys37: np.ndarray) -> np.ndarray:
    """The 13-byte keys of 37-byte keys whose addresses are v4-mapped (``uint8[n, 13]``)."""
    keys37 = np.asarray(keys37, np.uint8).reshape(-1, FLOW_KEY37_BYTES)
    return np.ascontiguousarray(np.concatenate([keys37[:, 12:16], keys37[:, 28:32], keys37[:, 32:37]], axis=1))


def _has_ipv6_flow(batch: PacketBatch) -> bool:
    """Whether ``batch`` holds an IPv6 row whose source or destination is not v4-mapped (an IPv6
    flow), read from the address columns (no 37-byte keys built)."""
    prefix = np.frombuffer(V4_MAPPED_PREFIX, np.uint8)
    v6 = batch.ipv6.astype(bool)
    mapped = (batch.src_ip6[v6, 0:12] == prefix).all(axis=1) & (batch.dst_ip6[v6, 0:12] == prefix).all(axis=1)
    return not bool(mapped.all())


def v4_mapped_rows(keys37: np.ndarray) -> np.ndarray:
    """``bool[n]``: rows of ``uint8[n, 37]`` whose source and destination are both v4-mapped (IPv4 flows)."""
    prefix = np.frombuffer(V4_MAPPED_PREFIX, np.uint8)
    keys37 = np.asarray(keys37, np.uint8).reshape(-1, FLOW_KEY37_BYTES)
    return (keys37[:, 0:12] == prefix).all(axis=1) & (keys37[:, 16:28] == prefix).all(axis=1)


def canonical_flow_keys(raw) -> tuple[np.ndarray, np.ndarray]:
    """Query flow keys as ``(uint8[n, 37], bool[n] is-IPv4)``.

    Accepts ``uint8[n, 13]`` / ``V13`` / flat bytes (13-byte IPv4 5-tuples), ``uint8[n, 37]`` /
    ``V37`` (``src(16) dst(16) sport dport proto``, :meth:`PacketBatch.flow_keys37`), or a list of
    ``bytes`` of either length. A 37-byte key with both addresses v4-mapped is the IPv4 flow."""
    if isinstance(raw, (list, tuple)):
        rows = [bytes(k) for k in raw]
        bad = [len(k) for k in rows if len(k) not in (FLOW_KEY_BYTES, FLOW_KEY37_BYTES)]
        if bad:
            raise SketchError(f"a flow key has {FLOW_KEY_BYTES} or {FLOW_KEY37_BYTES} bytes, got {bad[0]}")
        keys37 = np.zeros((len(rows), FLOW_KEY37_BYTES), np.uint8)
        short = np.array([len(k) == FLOW_KEY_BYTES for k in rows], bool)
        if short.any():
            keys37[short] = key37_of(np.frombuffer(b"".join(k for k in rows if len(k) == FLOW_KEY_BYTES), np.uint8))
        if (~short).any():
            keys37[~short] = np.frombuffer(b"".join(k for k in rows if len(k) != FLOW_KEY_BYTES),
                                           np.uint8).reshape(-1, FLOW_KEY37_BYTES)
    else:
        arr = np.asarray(raw)
        if arr.dtype.kind == "V":
            arr = np.ascontiguousarray(arr).view(np.uint8).reshape(-1, arr.dtype.itemsize)
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        if arr.ndim == 2 and arr.shape[1] == FLOW_KEY37_BYTES:
            keys37 = arr
        elif arr.size % FLOW_KEY_BYTES == 0 and (arr.ndim == 1 or arr.shape[-1] == FLOW_KEY_BYTES):
            keys37 = key37_of(arr.reshape(-1, FLOW_KEY_BYTES))
        else:
            raise SketchError(f"flow keys must be uint8[n, {FLOW_KEY_BYTES}] or uint8[n, {FLOW_KEY37_BYTES}], "
                              f"got shape {arr.shape}")
    return keys37, v4_mapped_rows(keys37)


def flow_key_parts(key: bytes) -> tuple[str, str, int, int, int]:
    """``(src, dst, src_port, dst_port, proto)`` of a reported flow key, addresses as text (dotted
    quad for a 13-byte key or a v4-mapped 37-byte one, RFC 5952 for IPv6): for the presenter, which
    formats every answer; not for hot paths."""
    from telesketch.packets import format_ipv4, format_ipv6

    key = bytes(key)
    if len(key) == FLOW_KEY37_BYTES:
        keys37 = np.frombuffer(key, np.uint8).reshape(1, -1)
        if not v4_mapped_rows(keys37)[0]:
            return (format_ipv6(key[0:16]), format_ipv6(key[16:32]), int.from_bytes(key[32:34], "big"),
                    int.from_bytes(key[34:36], "big"), key[36])
        key = key13_of(keys37)[0].tobytes()
    if len(key) != FLOW_KEY_BYTES:
        raise SketchError(f"a flow key has {FLOW_KEY_BYTES} or {FLOW_KEY37_BYTES} bytes, got {len(key)}")
    return (format_ipv4(int.from_bytes(key[0:4], "big")), format_ipv4(int.from_bytes(key[4:8], "big")),
            int.from_bytes(key[8:10], "big"), int.from_bytes(key[10:12], "big"), key[12])


def flow_fingerprints(keys37: np.ndarray, v4: np.ndarray) -> np.ndarray:
    """Flow-size stored keys ``uint8[n, 4]``: :func:`fingerprint` of the 13-byte key of IPv4 rows
    (``v4``), of the 37-byte key of the others (what ``_batch_words_kernel`` computes per packet)."""
    out = np.empty((keys37.shape[0], 4), np.uint8)
    if v4.any():
        out[v4] = fingerprint(key13_of(keys37[v4]))
    if (~v4).any():
        out[~v4] = fingerprint(keys37[~v4])
    return out


TASK_CODE = {"flow_size": 0, "heavy_hitters": 1, "hhh": 2, "heavy_hitters37": 3}


def key_words(key_len: int) -> int:
    """uint32 words per stored key inside the kernels (1 for 4-byte keys, 4 for key13)."""
    return (key_len + 3) // 4


def bytes_to_words(keys: np.ndarray) -> np.ndarray:
    """Stored keys ``uint8[n, key_len]`` as ``uint32[n, W]`` (little-endian words, zero-padded)."""
    keys = np.asarray(keys, dtype=np.uint8)
    n, key_len = keys.shape
    padded = np.zeros((n, 4 * key_words(key_len)), np.uint8)
    padded[:, :key_len] = keys
    return padded.view("<u4").astype(np.uint32, copy=False)


def batch_words(batch: PacketBatch, task: str) -> np.ndarray:
    """Stored keys of a batch as ``uint32[n, W]``, computed from the columns in one kernel pass."""
    check_families(batch, task)
    out = np.empty((len(batch), key_words(TASKS[task][1])), np.uint32)
    if task == "heavy_hitters37" or batch.has_ipv6():
        _batch_words_mixed_kernel(TASK_CODE[task], batch.src_ip, batch.dst_ip, batch.src_port, batch.dst_port,
                                  batch.proto, batch.ipv6, batch.src_ip6, batch.dst_ip6, out)
    else:
        _batch_words_kernel(TASK_CODE[task], batch.src_ip, batch.dst_ip, batch.src_port, batch.dst_port, batch.proto,
                            out)
    return out


def check_families(batch: PacketBatch, task: str) -> None:
    """Refuse IPv6 rows for the tasks that store IPv4 keys (``heavy_hitters``: 13-byte keys; ``hhh``:
    source addresses), with :class:`SketchError` and before anything changes. IPv6 rows whose
    addresses are both v4-mapped are IPv4 flows and pass."""
    if task in ("flow_size", "heavy_hitters37") or not batch.has_ipv6():
        return
    if _has_ipv6_flow(batch):  # from the address columns: no 37-byte keys built
        raise SketchError(f"the LLM-Sketch {task} task keys IPv4 flows only; this batch has "
                          f"{int(np.count_nonzero(batch.ipv6))} IPv6 packets (the flow_size task keys IPv6 flows "
                          f"on their 37-byte tuple)")


def fingerprint(keys: np.ndarray) -> np.ndarray:
    """``fp(k) = mmh3_32(k, 123123).to_bytes(4, 'little')`` of every row (13- or 37-byte keys): ``uint8[n, 4]``."""
    return mmh3_rows(keys, FINGERPRINT_SEED).astype("<u4").view(np.uint8).reshape(-1, 4)


# ---------------------------------------------------------------------------- the sketch
class LLMSketch(Sketch):
    """Two-tier LLM-Sketch (spec §2); :meth:`update` takes the packets' scores (spec §3, §4).

    ``LLMSketch(memory_bytes=400*1024, task="flow_size")``; ``parallel`` selects the
    bucket-parallel kernel (same results). The convenience ``LLMSketch(..., estimator="tiny")``
    (or any of :data:`~telesketch.estimators.scoring.SCORER_PARAMS`) builds this class's
    :attr:`scored_class` instead: the same sketch with a
    :class:`~telesketch.estimators.scoring.FlowScorer` beside it, so ``update(batch)`` scores the
    batch first (see :class:`telesketch.estimators.scoring.ScoredLLMSketch` for those settings).
    """

    #: ``"module:Class"`` of this class with a scorer attached (what a scorer setting builds).
    scored_class = "telesketch.estimators.scoring:ScoredLLMSketch"
    #: what updates write (``copy`` duplicates these; the GPU twin keeps some on the device)
    COPY_ARRAYS = ("slot_names", "_slot_words", "counts", "lock", "occ", "cm", "coco_ids", "coco_counts", "coco_occ")
    COPY_EXACT = ("telesketch.sketches.llmsketch:LLMSketch", "telesketch.estimators.scoring:ScoredLLMSketch")

    #: joined batches leave the same state (``Sketch.batch_invariant``): packets are inserted in
    #: stream order with coins drawn by stream index, and ``keep_keys`` names do not depend on the
    #: cuts (:meth:`_name_slots`). The scored sketch (a property there) also asks its scorer.
    batch_invariant = True

    def __new__(cls, *args, **kwargs):
        """Build :attr:`scored_class` when a scorer setting is given (the third positional
        argument is ``estimator``), else this pure class."""
        if cls.scored_class and (len(args) > 2 or any(k in kwargs for k in SCORER_PARAMS)):
            module, name = cls.scored_class.split(":")
            cls = getattr(importlib.import_module(module), name)
        return super().__new__(cls)

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """The flow-size tasks key IPv6 flows on their 37-byte tuple; ``heavy_hitters`` and ``hhh``
        store IPv4 keys and refuse IPv6 rows, so the service withholds those from them."""
        return params.get("task", "flow_size") in ("flow_size", "heavy_hitters37")

    def __init__(self, memory_bytes: int = 400 * 1024, task: str = "flow_size", *, heavy_ratio: float | None = None,
                 seed: int = 0, parallel: bool = False, params: LLMSketchParams | None = None,
                 keep_keys: bool = False, weight: str = "packets"):
        self.params = params or LLMSketchParams(memory_bytes, task, heavy_ratio, seed, weight)
        p = self.params
        if keep_keys and p.task != "flow_size":
            raise SketchError(f"keep_keys is for the flow_size task (the {p.task} task stores full keys already)")
        self.keep_keys = bool(keep_keys)
        #: 5-tuple of each heavy slot's flow (``keep_keys``); all zero: not known
        self.slot_names = np.zeros((p.buckets, SLOTS, FLOW_KEY_BYTES) if keep_keys else (0, SLOTS, FLOW_KEY_BYTES),
                                   np.uint8)
        self._seed_mix = _U64(mix64(_U64(p.seed)))  # a uint64 scalar: an int64 would promote to float
        self._slot_words = np.zeros((p.buckets, SLOTS, key_words(p.key_len)), np.uint32)
        self.counts = np.zeros((p.buckets, SLOTS), np.uint64 if p.weight == "bytes" else np.uint32)
        self.lock = np.zeros((p.buckets, SLOTS), np.uint8)
        self.occ = np.zeros((p.buckets, SLOTS), np.uint8)
        w = max(p.light_width, 0)
        self.cm = np.zeros((CM_ROWS, w if p.light == "countmin" else 0), np.uint32 if p.weight == "bytes" else np.uint8)
        cw = w if p.light == "coco" else 0
        self.coco_ids = np.zeros((COCO_ROWS, cw), np.uint32)
        self.coco_counts = np.zeros((COCO_ROWS, cw), np.uint32)
        self.coco_occ = np.zeros((COCO_ROWS, cw), np.uint8)
        self.packets = 0  # stream index of the next packet
        #: bytes inserted (``weight="bytes"``; 0 counting packets): the ``N`` of ``phi * N``
        self.total_weight = 0
        self.epoch = 0
        self.parallel = bool(parallel)

    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        """Epochs: sums of per-epoch estimates; shards: each flow from its owner (:class:`FlowWindow`)."""
        from telesketch.sketches.combine import FlowWindow

        return FlowWindow(parts, rule)

    def successor(self) -> "LLMSketch":
        """An empty sketch with the same parameters (the next epoch's; a scored sketch's successor
        also shares its scorer, see :class:`~telesketch.estimators.scoring.ScoredLLMSketch`)."""
        return type(self)(params=self.params, parallel=self.parallel, keep_keys=self.keep_keys)

    @property
    def slot_keys(self) -> np.ndarray:
        """Heavy-slot keys ``uint8[NB, 8, key_len]`` (a view of the kernels' uint32 words)."""
        p = self.params
        return self._slot_words.view(np.uint8).reshape(p.buckets, SLOTS, -1)[..., : p.key_len]

    # ------------------------------------------------------------------ sizes
    @property
    def memory_bytes(self) -> int:
        """Charged bytes (spec §2.1): heavy slots (key + u32 count, u64 byte-weighted) and light
        counters (1 byte each, 4 byte-weighted), plus the slots' 5-tuples with ``keep_keys``."""
        names = self.slot_names.shape[-1] if self.slot_names.size else 0  # 0 without keep_keys
        return self.params.charged_bytes(names)

    @property
    def overhead_bytes(self) -> int:
        """Uncharged bookkeeping (lock + occupancy bit per slot and occupancy bit per Coco cell)."""
        bits = self.occ.size * 2 + self.coco_occ.size
        return (bits + 7) // 8

    @property
    def scorer_bytes(self) -> int:
        """Bytes of per-flow scoring state outside :attr:`memory_bytes`: 0, a pure sketch has no
        scorer (:class:`~telesketch.estimators.scoring.ScoredLLMSketch` reports its cache)."""
        return 0

    # ------------------------------------------------------------------ update
    def update(self, batch: PacketBatch, scores: np.ndarray | None = None) -> None:
        """Insert every packet of ``batch`` with its score ``p`` (``float[n]`` or ``uint8[n]``-like,
        one per packet, clipped to [0, 1]). Pure: no model runs here; ``SketchError`` without scores
        (``LLMSketch(estimator=...)`` builds the scored sketch that supplies them)."""
        if not isinstance(batch, PacketBatch):
            raise SketchError(f"update expects a PacketBatch, got {type(batch).__name__}; use update_keys() for arrays")
        n = len(batch)
        check_families(batch, self.params.task)
        if scores is None:
            raise SketchError("update() without scores needs an estimator (LLMSketch(estimator=...))")
        words = batch_words(batch, self.params.task)
        weights = np.ascontiguousarray(batch.length, np.uint64) if self.params.weight == "bytes" else None
        self._insert(words, self._checked_scores(scores, n), weights)
        if self.keep_keys:
            self._name_slots(batch, words)

    def _name_slots(self, batch: PacketBatch, words: np.ndarray) -> None:
        """Name every occupied heavy slot whose key (fingerprint) a packet of this batch carries:
        the 5-tuple of the last such packet.

        So a slot's name is that of the last packet of the stream with its key, wherever the
        batches were cut (``Sketch.batch_invariant``): naming only the slots whose key the batch
        changed would name a slot after the last packet of the batch that took it, and two flows
        sharing a 32-bit fingerprint (they share the slot) would then be named by where the cut
        fell. Likewise the names widen to 37 bytes at the first IPv6 flow the sketch is given,
        named or not (a flow that took a slot and lost it within one batch leaves no name)."""
        if self.slot_names.shape[-1] == FLOW_KEY_BYTES and batch.has_ipv6() and _has_ipv6_flow(batch):
            self._widen_names()
        occupied = np.flatnonzero(self.occ.reshape(-1))
        if not occupied.size:
            return
        found = np.full(occupied.shape[0], -1, np.int64)
        _slot_packets_kernel(self._slot_words.reshape(-1)[occupied], words[:, 0], found)
        hit = found >= 0
        if not hit.any():
            return
        if self.slot_names.shape[-1] == FLOW_KEY_BYTES and not batch.has_ipv6():  # the common case: no gather
            _name_slots13_kernel(self.slot_names, occupied[hit], found[hit], batch.src_ip, batch.dst_ip,
                                 batch.src_port, batch.dst_port, batch.proto)
            return
        rows = batch[found[hit]]
        if self.slot_names.shape[-1] == FLOW_KEY37_BYTES:
            named = rows.flow_keys37()
        elif rows.has_ipv6():  # v4-mapped IPv6 rows only (an IPv6 flow widened the names above)
            named = key13_of(rows.flow_keys37())
        else:
            named = rows.flow_keys()  # IPv4 rows, 13-byte names: as before IPv6
        bucket, slot = np.divmod(occupied[hit], SLOTS)
        self.slot_names[bucket, slot] = named

    def _widen_names(self) -> None:
        """Hold 37-byte names from now on (the first IPv6 flow named): the IPv4 names become their
        v4-mapped 37-byte keys, unknown names stay all zero."""
        wide = np.zeros(self.slot_names.shape[:-1] + (FLOW_KEY37_BYTES,), np.uint8)
        named = self.slot_names.any(axis=-1)
        wide[named] = key37_of(self.slot_names[named])
        self.slot_names = wide

    def update_keys(self, keys: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Insert stored keys (``uint8[n, key_len]``, see :func:`stored_keys`) with scores ``float[n]``;
        ``weights`` (``n`` non-negative integers) is required by, and only by, a byte-weighted sketch."""
        keys = np.asarray(keys, dtype=np.uint8)
        if keys.ndim != 2 or keys.shape[1] != self.params.key_len:
            raise SketchError(f"stored keys must be uint8[n, {self.params.key_len}], got {keys.shape}")
        if (weights is None) != (self.params.weight == "packets"):
            raise SketchError("weights are required by (and only by) a weight='bytes' sketch")
        if weights is not None:
            weights = np.asarray(weights)
            if weights.shape != (keys.shape[0],) or weights.dtype.kind not in "iu" or (weights < 0).any():
                raise SketchError(f"weights must be {keys.shape[0]} non-negative integers, got {weights.dtype} "
                                  f"{weights.shape}")
            weights = np.ascontiguousarray(weights, np.uint64)
        before = self._slot_words.copy() if self.keep_keys else None
        self._insert(bytes_to_words(keys), self._checked_scores(scores, keys.shape[0]), weights)
        if before is not None:  # no 5-tuples here: the changed slots' names are unknown
            self.slot_names[self.occ.astype(bool) & (self._slot_words != before).any(axis=-1)] = 0

    @staticmethod
    def _checked_scores(scores, n: int) -> np.ndarray:
        scores = np.asarray(scores)
        if scores.dtype not in (np.float32, np.float64):
            scores = scores.astype(np.float64)
        scores = scores.reshape(-1)
        if scores.shape[0] != n:
            raise SketchError(f"got {scores.shape[0]} scores for {n} packets")
        if np.isnan(scores).any():
            raise SketchError("scores contain NaN")
        return scores

    def _insert(self, words: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Run the kernels over stored-key words ``uint32[n, W]`` and checked scores; ``weights``
        (``uint64[n]``) for a byte-weighted sketch, whose batch always runs the serial loop (the
        state is the parallel form's anyway)."""
        n = words.shape[0]
        if n == 0:
            return
        p = self.params
        light = LIGHT_KIND[p.light]
        if weights is not None:
            _update_serial_weighted(self._slot_words, self.counts, self.lock, self.occ, self.cm, light, p.key_len,
                                    words, scores, weights, np.int64(self.packets), self._seed_mix)
            self.total_weight += int(weights.sum())
        elif not self.parallel and words.shape[1] == 1 and p.key_len == 4:
            _update_serial_one_word(self._slot_words, self.counts, self.lock, self.occ, self.cm, self.coco_ids,
                                    self.coco_counts, self.coco_occ, light, words.reshape(-1), scores,
                                    np.int64(self.packets), self._seed_mix)
        elif not self.parallel:
            _update_serial(self._slot_words, self.counts, self.lock, self.occ, self.cm, self.coco_ids,
                           self.coco_counts, self.coco_occ, light, p.key_len, words, scores,
                           np.int64(self.packets), self._seed_mix)
        else:
            buckets = np.empty(n, np.int64)
            _buckets_kernel(words, p.key_len, np.int64(p.buckets), buckets)
            order = np.argsort(buckets, kind="stable")
            seg_starts = np.concatenate(([0], np.flatnonzero(np.diff(buckets[order])) + 1, [n])).astype(np.int64)
            op_type = np.zeros(n, np.int8)
            op_key = np.zeros_like(words)
            op_val = np.zeros(n, np.uint32)
            _heavy_parallel(self._slot_words, self.counts, self.lock, self.occ, words, buckets, scores, order,
                            seg_starts, np.int64(self.packets), self._seed_mix, op_type, op_key, op_val)
            _light_apply(light, self.cm, self.coco_ids, self.coco_counts, self.coco_occ, p.key_len, words,
                         op_type, op_key, op_val, np.int64(self.packets), self._seed_mix)
        self.packets += n

    # ------------------------------------------------------------------ queries
    def query_stored(self, keys: np.ndarray) -> np.ndarray:
        """Estimated packet counts (``int64[n]``) of stored keys (spec §2.3 ``query``)."""
        keys = np.asarray(keys, dtype=np.uint8).reshape(-1, self.params.key_len)
        return _query_kernel(self._slot_words, self.counts, self.occ, self.cm, bytes_to_words(keys),
                             self.params.key_len)

    def flow_size(self, keys) -> np.ndarray:
        """Estimated packet count (bytes, byte-weighted) of each key (``int64[n]``); keys as in
        :func:`stored_keys`."""
        return self.query_stored(stored_keys(keys, self.params.task))

    def _heavy_entries(self) -> tuple[np.ndarray, np.ndarray]:
        mask = self.occ.astype(bool)
        return self.slot_keys[mask], self.counts[mask].astype(np.int64)

    def _heavy_names(self, rows: np.ndarray | None = None) -> list[bytes | None] | None:
        """The flow key of each occupied slot (13 bytes for an IPv4 flow, 37 for an IPv6 one; None:
        unknown), or None without ``keep_keys``; ``rows``: only those occupied slots (positions
        in :meth:`_heavy_entries` order), in that order."""
        if not self.keep_keys:
            return None
        names = self.slot_names[self.occ.astype(bool)]
        if rows is not None:
            names = names[rows]
        known = names.any(axis=1)
        if names.shape[1] == FLOW_KEY37_BYTES:
            v4 = v4_mapped_rows(names)
            return [None if not k else (n[12:16].tobytes() + n[28:37].tobytes() if f else n.tobytes())
                    for n, k, f in zip(names, known, v4)]
        return [n.tobytes() if k else None for n, k in zip(names, known)]

    def _decode(self, key: np.ndarray):
        if self.params.task == "heavy_hitters":
            return key.tobytes()
        if self.params.task == "heavy_hitters37":  # an IPv4 flow as its 13-byte key, as everywhere
            return key13_of(key)[0].tobytes() if v4_mapped_rows(key)[0] else key.tobytes()
        if self.params.task == "hhh":
            return int.from_bytes(key.tobytes(), "big")
        return int.from_bytes(key.tobytes(), "little")  # the flow-size fingerprint

    def _decode_rows(self, keys: np.ndarray) -> list:
        """:meth:`_decode` of each row of ``uint8[n, key_len]`` keys: the integer keys (fingerprints,
        HHH addresses) of 4-byte keys read as one array, any other form row by row."""
        if self.params.task in ("flow_size", "hhh") and self.params.key_len == 4:
            order = "<u4" if self.params.task == "flow_size" else ">u4"
            return np.ascontiguousarray(keys).view(order).reshape(-1).tolist()
        return [self._decode(key) for key in keys]

    def _encode(self, key) -> bytes:
        """Inverse of :meth:`_decode`: a key as :meth:`top_flows` reports it -> its stored bytes."""
        if self.params.task == "heavy_hitters":
            return bytes(key)
        if self.params.task == "heavy_hitters37":
            return canonical_flow_keys([key])[0][0].tobytes()
        if isinstance(key, (bytes, bytearray)) and len(key) in (FLOW_KEY_BYTES, FLOW_KEY37_BYTES):  # keep_keys name
            return flow_fingerprints(*canonical_flow_keys([key]))[0].tobytes()
        return int(key).to_bytes(self.params.key_len, "big" if self.params.task == "hhh" else "little")

    def estimate_reported(self, keys) -> np.ndarray:
        """Estimates (``int64[n]``) of keys in the form :meth:`top_flows` reports them.

        Lets a window of several epochs sum each epoch's estimate of a flow that some epoch
        reported, including epochs where it was not among the top ``k``.
        """
        if not len(keys):
            return np.zeros(0, np.int64)
        raw = np.frombuffer(b"".join(self._encode(k) for k in keys), np.uint8)
        return self.query_stored(raw.reshape(-1, self.params.key_len))

    def top_flows(self, k: int = 100) -> list[tuple[Any, int]]:
        """The ``k`` largest heavy-part entries as ``(key, count)``, count descending.

        Keys are 13-byte ``bytes`` (heavy-hitter task), the numeric source address (HHH task) or
        the 32-bit fingerprint ``mmh3_32(key, 123123)`` (flow-size task, which stores no full key;
        see :func:`fingerprint` and :func:`flow_fingerprints`); with ``keep_keys`` the flow-size
        task's flow keys: 13-byte 5-tuples for IPv4 flows, 37-byte keys for IPv6 flows (the
        fingerprint where a slot's name is not known).
        """
        keys, counts = self._heavy_entries()
        order = np.lexsort((np.arange(counts.shape[0]), -counts))[: max(int(k), 0)]
        decoded = self._decode_rows(keys[order])  # only the k reported rows, integer keys in one call
        names = self._heavy_names(order)
        if names is not None:
            decoded = [name if name is not None else key for name, key in zip(names, decoded)]
        return list(zip(decoded, counts[order].tolist()))

    def heavy_hitters(self, threshold: float | None = None, phi: float | None = None) -> list[tuple[Any, int]]:
        """Heavy-part entries with count ``> threshold`` (or ``> int(phi * N)``, ``N`` the packets, or
        the bytes of a byte-weighted sketch), largest first.

        The light part is never enumerated (spec §2.3). Default ``phi = 1e-4`` (spec §5).
        """
        threshold = self._threshold(threshold, phi)
        return [(key, c) for key, c in self.top_flows(self.occ.size) if c > threshold]

    def _threshold(self, threshold, phi) -> float:
        if threshold is not None and phi is not None:
            raise SketchError("give threshold or phi, not both")
        if threshold is None:
            phi = 1e-4 if phi is None else phi
            if not 0 < phi < 1:
                raise SketchError(f"phi must be in (0, 1), got {phi}")
            threshold = int(phi * self.volume)
        return threshold

    @property
    def unit(self) -> str:
        """What the counts are: ``"packets"`` or ``"bytes"`` (the ``weight`` parameter)."""
        return self.params.weight

    @property
    def volume(self) -> int:
        """``N`` of ``phi * N``: the packets inserted, or their bytes when byte-weighted."""
        return self.total_weight if self.params.weight == "bytes" else self.packets

    def full_key_counts(self) -> dict[int, int]:
        """HHH task: ``{address: estimate}`` over heavy slots plus occupied Coco cells, summed."""
        if self.params.task != "hhh":
            raise SketchError("full_key_counts() is for the hhh task")
        keys, counts = self._heavy_entries()
        addr = keys.astype(np.uint32) if keys.size else np.empty((0, 4), np.uint32)
        addr = (addr[:, 0] << 24) | (addr[:, 1] << 16) | (addr[:, 2] << 8) | addr[:, 3]
        occ = self.coco_occ.astype(bool)
        allk = np.concatenate([addr, self.coco_ids[occ]]).astype(np.uint32)
        allv = np.concatenate([counts, self.coco_counts[occ].astype(np.int64)])
        uniq, inv = np.unique(allk, return_inverse=True)
        sums = np.bincount(inv, weights=allv, minlength=uniq.shape[0]).astype(np.int64)
        return dict(zip(uniq.tolist(), sums.tolist()))

    def hhh_layers(self) -> dict[int, dict[int, int]]:
        """Per-layer estimates ``{L: {prefix: est}}`` for ``L = 0..32`` (real CIDR masks, spec §2.3)."""
        full = self.full_key_counts()
        keys = np.fromiter(full.keys(), np.uint64, len(full))
        vals = np.fromiter(full.values(), np.int64, len(full))
        est = {}
        for length in range(33):
            prefixes = keys & np.uint64(prefix_mask(length))
            uniq, inv = np.unique(prefixes, return_inverse=True)
            sums = np.bincount(inv, weights=vals, minlength=uniq.shape[0]).astype(np.int64)
            est[length] = dict(zip(uniq.tolist(), sums.tolist()))
        return est

    def hhh(self, threshold: float | None = None, phi: float | None = None) -> list[tuple[int, int, int]]:
        """Discounted HHH ``[(prefix, length, discounted_estimate)]`` (ResidualSketch's pass)."""
        from telesketch.sketches.cocosketch import hhh_pass

        threshold = self._threshold(threshold, phi)
        return [(e.prefix, e.length, int(e.discounted)) for e in hhh_pass(self.hhh_layers(), threshold)]

    # ------------------------------------------------------------------ contract
    def merge(self, other) -> None:
        """Not supported: the heavy part depends on arrival order (spec §2.4); shard by flow key."""
        raise NotMergeableError(
            "LLM-Sketch cannot merge: its heavy part (eviction, stochastic lock) depends on arrival "
            "order; shard by flow key instead and union/sum the per-shard answers")

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"slot_keys": self.slot_keys, "counts": self.counts, "lock": self.lock, "occ": self.occ,
                "cm": self.cm, "coco_ids": self.coco_ids, "coco_counts": self.coco_counts,
                "coco_occ": self.coco_occ}

    def to_bytes(self) -> bytes:
        """The sketch state (not the estimator or its score cache) in the versioned envelope
        (with ``keep_keys``, one more array: ``slot_names``)."""
        arrays = self._arrays()
        if self.keep_keys:
            arrays["slot_names"] = self.slot_names
        # layout 1 unless 37-byte names are held: IPv4-only states stay byte-identical to layout 1
        version = 2 if self.slot_names.shape[-1] == FLOW_KEY37_BYTES else 1
        extra = {"packets": int(self.packets)}
        if self.params.weight == "bytes":
            extra["total_weight"] = int(self.total_weight)
        return pack_state(ALGORITHM, version, self.params.to_dict(), arrays, self.epoch, extra=extra)

    @classmethod
    def from_bytes(cls, data: bytes, **kwargs) -> "LLMSketch":
        """Rebuild a sketch from :meth:`to_bytes`; refuses other algorithms, versions and shapes.
        ``kwargs``: ``parallel``, ``keep_keys``, or scorer settings (then a scored sketch)."""
        params, arrays, epoch, extra = unpack_state(data, ALGORITHM, _state_version(data))
        kwargs.setdefault("keep_keys", "slot_names" in arrays)
        try:
            sketch = cls(params=LLMSketchParams(**params), **kwargs)
        except TypeError as exc:
            raise SketchError(f"bad LLM-Sketch parameters in state: {exc}") from None
        for name, ref in sketch._arrays().items():
            got = arrays.get(name)
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                raise SketchError(f"LLM-Sketch state array {name!r} does not match the parameters")
            ref[...] = got
        if sketch.keep_keys and "slot_names" in arrays:
            names = arrays["slot_names"]
            widths = (FLOW_KEY_BYTES, FLOW_KEY37_BYTES)
            if names.shape[:-1] != sketch.slot_names.shape[:-1] or names.shape[-1] not in widths or names.dtype != np.uint8:
                raise SketchError("LLM-Sketch state array 'slot_names' does not match the parameters")
            sketch.slot_names = names
        sketch.packets = int(extra.get("packets", 0))
        sketch.total_weight = int(extra.get("total_weight", 0))
        sketch.epoch = epoch
        return sketch

    def state(self) -> dict[str, Any]:
        """Plain-Python copy of the whole state, for comparison with the naive model."""
        return {name: arr.copy() for name, arr in self._arrays().items()} | {"packets": self.packets,
                                                                              "total_weight": self.total_weight}


@kernel
def _name_slots13_kernel(names, slots, rows, src_ip, dst_ip, src_port, dst_port, proto):
    """``names[slot // SLOTS, slot % SLOTS]`` (``uint8[NB, SLOTS, 13]``) = the 13-byte 5-tuple of packet ``rows[j]``
    for each ``slots[j]`` (int64 flat slot indices): :meth:`PacketBatch.flow_keys`' bytes (addresses
    and ports big-endian) written from the columns, without gathering the rows first."""
    for j in range(slots.shape[0]):
        b, s, i = slots[j] // SLOTS, slots[j] % SLOTS, rows[j]
        a, d = src_ip[i], dst_ip[i]
        for k in range(4):
            names[b, s, k] = (a >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)
            names[b, s, 4 + k] = (d >> np.uint32(24 - 8 * k)) & np.uint32(0xFF)
        names[b, s, 8] = src_port[i] >> np.uint16(8)
        names[b, s, 9] = src_port[i] & np.uint16(0xFF)
        names[b, s, 10] = dst_port[i] >> np.uint16(8)
        names[b, s, 11] = dst_port[i] & np.uint16(0xFF)
        names[b, s, 12] = proto[i]


@kernel
def _slot_packets_kernel(slot_keys, packet_keys, index):
    """``index[j]``: the last packet ``i`` with ``packet_keys[i] == slot_keys[j]`` (-1 stays where
    none is). Keys are 32-bit fingerprints (flow-size task), distinct among the slots, so they index
    an open-addressing table directly: one probe per packet, no hashing."""
    size = 1
    while size < 2 * slot_keys.shape[0]:
        size *= 2
    mask = np.uint32(size - 1)
    table = np.full(size, -1, np.int64)
    for j in range(slot_keys.shape[0]):
        h = slot_keys[j] & mask
        while table[h] != -1:
            h = (h + np.uint32(1)) & mask
        table[h] = j
    for i in range(packet_keys.shape[0]):
        k = packet_keys[i]
        h = k & mask
        while table[h] != -1:
            j = table[h]
            if slot_keys[j] == k:
                index[j] = i
                break
            h = (h + np.uint32(1)) & mask


@kernel
def _query_kernel(slot_words, counts, occ, cm, keys, nbytes):
    out = np.zeros(keys.shape[0], np.int64)
    w = _U64(cm.shape[1])
    nb_buckets = _U64(counts.shape[0])
    for i in range(keys.shape[0]):
        b = np.int64(_mmh3_words(keys[i], nbytes, _U64(BUCKET_SEED)) % nb_buckets)
        found = False
        for s in range(SLOTS):
            if occ[b, s] and _same_key(slot_words, b, s, keys, i):
                out[i] = counts[b, s]
                found = True
                break
        if found or w == 0:
            continue
        best = np.int64(0x7FFFFFFFFFFFFFFF)  # every counter is below it (255, or 2^32 - 1 byte-weighted)
        for r in range(CM_ROWS):
            best = min(best, np.int64(cm[r, np.int64(_mmh3_words(keys[i], nbytes, _U64(r)) % w)]))
        out[i] = best
    return out


def _state_version(data: bytes) -> int:
    """The layout version in a state envelope's header if it is one this module reads, else
    :data:`STATE_VERSION` (so ``unpack_state`` names what is wrong)."""
    import json
    import struct

    try:
        (hlen,) = struct.unpack_from("<I", data, 4)
        version = json.loads(bytes(data[8: 8 + hlen])).get("version")
    except (struct.error, ValueError, AttributeError):
        return STATE_VERSION
    return version if version in STATE_VERSIONS else STATE_VERSION


class CountMinBaseline:
    """A plain Count-Min of the same memory, the benchmark baseline: 3 rows of ``W =
    int(memory_bytes / 3 / 4)`` 4-byte counters over the 13-byte key, rows hashed with mmh3 seeds 0..2."""

    def __init__(self, memory_bytes: int):
        self.width = int(memory_bytes / CM_ROWS / 4)
        if self.width < 1:
            raise SketchError(f"memory_bytes={memory_bytes} is too small for a Count-Min")
        self.table = np.zeros((CM_ROWS, self.width), np.int64)

    def _cols(self, keys37: np.ndarray, v4: np.ndarray) -> np.ndarray:
        """Counter columns ``int64[3, n]``: IPv4 flows hashed over their 13-byte key, IPv6 over 37."""
        cols = np.empty((CM_ROWS, keys37.shape[0]), np.int64)
        for r in range(CM_ROWS):
            if v4.any():
                cols[r, v4] = mmh3_rows(key13_of(keys37[v4]), r).astype(np.int64) % self.width
            if (~v4).any():
                cols[r, ~v4] = mmh3_rows(keys37[~v4], r).astype(np.int64) % self.width
        return cols

    def update(self, batch: PacketBatch) -> None:
        if batch.has_ipv6():
            keys37 = batch.flow_keys37()
            cols = self._cols(keys37, v4_mapped_rows(keys37))
        else:
            keys13 = batch.flow_keys()
            cols = np.stack([mmh3_rows(keys13, r).astype(np.int64) % self.width for r in range(CM_ROWS)])
        for r in range(CM_ROWS):
            np.add.at(self.table[r], cols[r], 1)

    def flow_size(self, keys) -> np.ndarray:
        cols = self._cols(*canonical_flow_keys(keys))
        return np.min(np.stack([self.table[r][cols[r]] for r in range(CM_ROWS)]), axis=0)
