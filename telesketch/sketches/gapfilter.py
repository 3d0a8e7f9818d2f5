"""GapFilter: per-packet flow-gap detection (spec: ``shared/specs/gapfilter.md``).

Three sketches share one interface:

* :class:`GapFilterSO`  speed-optimised: 4 ``uint16`` lanes per bucket, similarity absorption (§5.3);
* :class:`GapFilterAO`  accuracy-optimised: 8 ``(fp, seq)`` lanes, suspect + civilian lanes (§5.4);
* :class:`GapFilterStraw`  the Straw-man baseline: exact per-flow state in a cuckoo table (§5.2).

``update(batch)`` returns ``bool[n]``: packet ``i`` arrives after a *major gap* of its flow (its SEQ
jumped by ``d`` with ``T1 <= d < T2``). Each report is also recorded in a bounded per-epoch event log
(flow key, jump ``d``, ``ts_ns``) read by :meth:`gap_events` / :meth:`gap_counts`.

Hashing (§3): one seeded 64-bit hash per packet of the 13-byte 5-tuple, ``hashing.hash64_5tuple``
with the sketch ``seed``; ``idx = h mod n_buckets``, ``off = (h >> 32) & 0xFFFF``,
``v = (SEQ + off) & 0xFFFF``, ``fp = (h >> 48) mod 2^fp_bits``. The Straw-man uses three hashes of
the same family with derived seeds (``seed * 1000003 + row``, rows 0/1/2 for ``H_fp, H_1, H_2``;
``H_1``/``H_2`` hash the 4 little-endian bytes of the 32-bit fingerprint) and a splitmix64 PRNG
seeded with ``seed``, carried in the serialised state.

Parallel formulation (§8): SO and AO touch one bucket per packet, so a batch is partitioned by
bucket with a stable, chunked counting sort (CSR segments), buckets are dealt to threads
longest-first (snake order), and each bucket's packets run in arrival order. The result is
bit-identical to the serial loop on any number of threads. By default (``update(parallel=None)``)
the partitioned path runs only for large batches with at least ``PARTITION_MIN_THREADS`` Numba
threads: the serial loop is used otherwise, same results, no sort. The Straw-man is serial.

GapFilter state is order-dependent and not mergeable (§8): :meth:`merge` raises
:class:`~telesketch.sketches.core.NotMergeableError`; shards' outputs are unioned instead.

IPv6 (issue 18; docs/IPV6.md). A gap is a jump in a per-flow sequence, and IPv6 has no IP-ID in
its base header (the Fragment header's identification is per datagram, absent on unfragmented
packets, and not a sequence). So which IPv6 packets are inspected depends on ``seq_field``
(:func:`ipv6_inspection`); IPv4 packets are always inspected, exactly as before:

* ``ip_id`` (the default), ``src_ip``, ``dst_ip``: no IPv6 packet is inspected (skip reasons
  ``no_ip_id`` / ``no_ipv4_address``), so an IPv6 flow never gets a (false) gap;
* ``tcp_seq``, ``tcp_window``, ``tcp_flags``: IPv6 TCP packets are inspected, except non-first
  fragments (no TCP header: both ports 0, reason ``fragment``); other IPv6 packets are skipped
  (``not_tcp``);
* the fields every IPv6 packet has (``ts_ns``, ports, ``proto``, ``length``, ``ttl`` = hop limit,
  ``tos`` = traffic class): every IPv6 packet is inspected.

An inspected IPv6 packet keys on its 37-byte flow tuple: a 64-bit hash of it
(``hash_bytes(key37, derive_seed(seed, IPV6_FOLD_ROW))``, high word, low word) replaces the two
32-bit address columns the kernels hash, so CPU and GPU kernels are unchanged and two IPv6 flows
share state only when their folds collide (probability ``2^-64``). Skipped packets change nothing.
Per epoch the sketch counts ``covered_packets`` (inspected) and ``skipped_packets`` by reason
(:meth:`coverage`), for the report and the metrics. Gap events of IPv6 flows carry their
addresses in ``src_ip6``/``dst_ip6`` (``ipv6`` = 1, ``src_ip``/``dst_ip`` 0, as in the batch).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import ClassVar

import numba as nb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from telesketch.hashing import hash64_5tuple, hash64_u32, hash_keys, mix64
from telesketch.intrinsics import prefetch
from telesketch.jit import kernel, twin
from telesketch.packets import COLUMN_DTYPES, FLOW_KEY_BYTES, PacketBatch, pack_flow_keys37
from telesketch.sketches.core import NotMergeableError, SketchError, pack_state, unpack_state
from telesketch.sketches.core import EPOCHS, Rule, Sketch, Window

__all__ = [
    "GapFilterSO",
    "GapFilterAO",
    "GapFilterStraw",
    "GapFilterSOParams",
    "GapFilterAOParams",
    "GapFilterStrawParams",
    "GAP_EVENT_DTYPE",
    "derive_seed",
    "keys_to_columns",
    "ipv6_inspection",
    "ipv6_fold",
    "SKIP_REASONS",
]

#: One recorded gap as state layout 1 stored it (IPv4 only): the 5-tuple, the jump, the time.
GAP_EVENT_DTYPE_V1 = np.dtype(
    [
        ("src_ip", "<u4"),
        ("dst_ip", "<u4"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("proto", "u1"),
        ("jump", "<i4"),
        ("ts_ns", "<u8"),
    ]
)
#: One recorded gap: the flow's 5-tuple, the SEQ jump ``d`` that was reported, the packet time,
#: then the family (``ipv6`` 0/1) and, for IPv6 flows, the 16-byte addresses (network order;
#: ``src_ip``/``dst_ip`` are then 0). IPv4 events have zero ``src_ip6``/``dst_ip6``.
GAP_EVENT_DTYPE = np.dtype(
    GAP_EVENT_DTYPE_V1.descr + [("ipv6", "u1"), ("src_ip6", "u1", (16,)), ("dst_ip6", "u1", (16,))]
)
_KEY_FIELDS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto")


def event_flow_keys(events: np.ndarray) -> list[bytes]:
    """The flow key of each gap event (``GAP_EVENT_DTYPE`` or layout-1 rows), in order: the 13-byte
    5-tuple of an IPv4 flow, the 37-byte tuple (``src6 dst6 sport dport proto``, as
    ``PacketBatch.flow_keys37``) of an IPv6 flow. For the wire and per-flow counts; text is read
    from the rows' fields (:func:`telesketch.presenter.gap_rows`)."""
    keys13 = np.empty(events.shape[0], [(n, ">u4" if n.endswith("ip") else ">u2" if n.endswith("port") else "u1")
                                        for n in _KEY_FIELDS])
    for name in _KEY_FIELDS:
        keys13[name] = events[name]
    raw13 = keys13.tobytes()
    out = [raw13[i:i + FLOW_KEY_BYTES] for i in range(0, len(raw13), FLOW_KEY_BYTES)]
    if "ipv6" in (events.dtype.names or ()):
        rows6 = np.flatnonzero(events["ipv6"])
        six = events[rows6]
        keys37 = pack_flow_keys37(six["src_ip6"], six["dst_ip6"], six["src_port"], six["dst_port"], six["proto"])
        for row, key in zip(rows6.tolist(), keys37):
            out[row] = key.tobytes()
    return out

#: Batches smaller than this run the serial kernel even with several threads (sort overhead).
PARALLEL_MIN_ITEMS = 1 << 15
#: Fewer Numba threads than this run the serial kernel by default. On a 2-core EPYC the partitioned
#: path took 1.6-6.4x the serial kernel's CPU time per packet (hash, sort, schedule and segment
#: passes against one ordered loop; ``bench_gapfilter_ab.py --paths``, issue 21) and 1.04-6.7x its
#: wall time on 2 threads, so it cannot win below about 6 threads even with perfect scaling. Not
#: measured above 2 cores.
PARTITION_MIN_THREADS = 8

if sys.byteorder != "little":  # GapFilterSO views each 4-lane uint16 row as one uint64
    raise ImportError("telesketch.sketches.gapfilter needs a little-endian host")

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_SEED_STRIDE = 1000003


def derive_seed(seed: int, row: int) -> int:
    """Seed of the ``row``-th independent hash function derived from ``seed`` (mod 2^64)."""
    return (int(seed) * _SEED_STRIDE + int(row)) & _MASK64


# ============================================================================ IPv6 (module docstring)
#: ``derive_seed(seed, IPV6_FOLD_ROW)`` seeds the fold of an IPv6 row's 37-byte flow key.
IPV6_FOLD_ROW = 6
#: Why an IPv6 packet was not inspected (the keys of :meth:`_GapFilterBase.coverage`'s ``skipped``).
SKIP_REASONS = ("no_ip_id", "no_ipv4_address", "not_tcp", "fragment")
_IPV6_NO_SEQUENCE = {"ip_id": "no_ip_id", "src_ip": "no_ipv4_address", "dst_ip": "no_ipv4_address"}
_TCP_SEQUENCES = ("tcp_seq", "tcp_window", "tcp_flags")


def ipv6_inspection(batch: PacketBatch, seq_field: str) -> tuple[np.ndarray, dict[str, int]]:
    """``(inspect, skipped)``: ``bool[n]``, the packets gap detection inspects for this
    ``seq_field`` (every IPv4 packet; IPv6 packets per the module docstring), and the number of
    IPv6 packets skipped per reason (only reasons that occurred)."""
    v6 = np.asarray(batch.ipv6).astype(bool)
    if seq_field in _IPV6_NO_SEQUENCE:
        n6 = int(v6.sum())
        return ~v6, ({_IPV6_NO_SEQUENCE[seq_field]: n6} if n6 else {})
    if seq_field not in _TCP_SEQUENCES:
        return np.ones(v6.shape[0], np.bool_), {}
    tcp = np.asarray(batch.proto) == 6
    fragment = tcp & (np.asarray(batch.src_port) == 0) & (np.asarray(batch.dst_port) == 0)
    counts = {"not_tcp": int((v6 & ~tcp).sum()), "fragment": int((v6 & fragment).sum())}
    return ~v6 | (tcp & ~fragment), {k: c for k, c in counts.items() if c}


def ipv6_fold(keys37: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` ``uint32[n]`` stand-ins for the address columns of IPv6 rows: the high and low
    words of ``hash_bytes(key37, derive_seed(seed, IPV6_FOLD_ROW))`` of their 37-byte flow keys."""
    h = hash_keys(keys37, derive_seed(seed, IPV6_FOLD_ROW))
    return (h >> _U64(32)).astype(np.uint32), (h & _U64(0xFFFFFFFF)).astype(np.uint32)


# ============================================================================ parameters
_SEQ_FIELDS = tuple(n for n, dt in COLUMN_DTYPES.items() if n not in ("hdr_len", "ipv6", "flow_label") and dt.kind == "u")


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SketchError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise SketchError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class _CommonParams:
    """Parameters every GapFilter variant shares (spec §2)."""

    memory_bytes: int = 16 * 1024
    t1: int = 5
    t2: int = 30
    seed: int = 0
    seq_field: str = "ip_id"
    event_capacity: int = 1 << 16

    def _validate_common(self) -> None:
        for f in dataclasses.fields(self):  # numpy integers -> int (JSON-serialisable, hashable)
            value = getattr(self, f.name)
            if isinstance(value, np.integer):
                object.__setattr__(self, f.name, int(value))
        _check_int("memory_bytes", self.memory_bytes, 1, 1 << 40)
        _check_int("t1", self.t1, 1, (1 << 15) - 1)
        _check_int("t2", self.t2, 1, (1 << 15) - 1)
        if not 0 < self.t1 < self.t2 < 2**15:
            raise SketchError(f"need 0 < t1 < t2 < 32768, got t1={self.t1}, t2={self.t2}")
        _check_int("seed", self.seed, 0, _MASK64)
        if self.seq_field not in _SEQ_FIELDS:
            raise SketchError(f"seq_field must be one of {list(_SEQ_FIELDS)}, got {self.seq_field!r}")
        _check_int("event_capacity", self.event_capacity, 0, 1 << 40)

    def _check_buckets(self, n: int, minimum: int) -> None:
        if n < 1:
            raise SketchError(
                f"memory_bytes={self.memory_bytes} is too small for {type(self).__name__[:-6]}: "
                f"need at least {minimum} bytes"
            )


@dataclass(frozen=True)
class GapFilterSOParams(_CommonParams):
    """GapFilter-SO: ``n_buckets = memory_bytes // 8`` buckets of 4 ``uint16`` lanes.

    ``so_diff``: ``saturating`` (reference, default) or ``modular`` distance arithmetic (§7.5).
    """

    so_diff: str = "saturating"

    def __post_init__(self) -> None:
        self._validate_common()
        if self.so_diff not in ("saturating", "modular"):
            raise SketchError(f"so_diff must be 'saturating' or 'modular', got {self.so_diff!r}")
        self._check_buckets(self.n_buckets, 8)

    @property
    def n_buckets(self) -> int:
        return self.memory_bytes // 8

    @property
    def accounted_bytes(self) -> int:
        return self.n_buckets * 8


@dataclass(frozen=True)
class GapFilterAOParams(_CommonParams):
    """GapFilter-AO: buckets of 8 ``(fp, seq)`` lanes, lanes ``[0, suspects)`` are suspects.

    A lane costs ``2 + ceil(fp_bits / 8)`` bytes (``fp_accounting='floor'`` reproduces the
    reference's ``fp_bits // 8`` for its fingerprint sweep, §4). ``ao_new_flow_pos``:
    ``last_suspect`` (reference, default) or ``civilian_front`` (§7.3).
    """

    fp_bits: int = 8
    suspects: int = 2
    ao_new_flow_pos: str = "last_suspect"
    fp_accounting: str = "ceil"

    def __post_init__(self) -> None:
        self._validate_common()
        _check_int("fp_bits", self.fp_bits, 0, 16)
        _check_int("suspects", self.suspects, 0, 8)
        if self.ao_new_flow_pos not in ("last_suspect", "civilian_front"):
            raise SketchError(
                f"ao_new_flow_pos must be 'last_suspect' or 'civilian_front', got {self.ao_new_flow_pos!r}"
            )
        if self.fp_accounting not in ("ceil", "floor"):
            raise SketchError(f"fp_accounting must be 'ceil' or 'floor', got {self.fp_accounting!r}")
        self._check_buckets(self.n_buckets, 8 * self.lane_bytes)

    @property
    def lane_bytes(self) -> int:
        fp_bytes = -(-self.fp_bits // 8) if self.fp_accounting == "ceil" else self.fp_bits // 8
        return 2 + fp_bytes

    @property
    def n_buckets(self) -> int:
        return self.memory_bytes // (8 * self.lane_bytes)

    @property
    def accounted_bytes(self) -> int:
        return self.n_buckets * 8 * self.lane_bytes


@dataclass(frozen=True)
class GapFilterStrawParams(_CommonParams):
    """Straw-man: ``nb = (memory_bytes // 6) // 4`` buckets of 4 ``(fp u32, seq u16)`` cells in two
    halves of ``bb = nb // 2``; ``straw_reset`` is the wrap-reset threshold (§5.2, default 100)."""

    straw_reset: int = 100

    def __post_init__(self) -> None:
        self._validate_common()
        _check_int("straw_reset", self.straw_reset, 1, 1 << 16)
        self._check_buckets(self.half_buckets, 48)

    @property
    def n_buckets(self) -> int:
        return (self.memory_bytes // 6) // 4

    @property
    def half_buckets(self) -> int:
        return self.n_buckets // 2

    @property
    def accounted_bytes(self) -> int:
        return 2 * self.half_buckets * 4 * 6


# ============================================================================ scalar helpers
@twin(nb.int64(nb.int64), inline=True)
def _s16(x):
    """``x mod 2^16`` read as a signed 16-bit value."""
    return ((x + 32768) & 0xFFFF) - 32768


@twin(nb.int64(nb.int64, nb.int64), inline=True)
def _sat_diff(a, b):
    """``sat16(s16(a) - s16(b))``: the reference's saturating int16 subtraction."""
    d = _s16(a) - _s16(b)
    if d > 32767:
        return 32767
    if d < -32768:
        return -32768
    return d


@intrinsic
def _mulhi64(typingctx, a, b):
    """High 64 bits of the 128-bit product ``a * b`` (one ``mul`` instruction)."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return sig, codegen


def mod_magic(divisor: int) -> np.uint64:
    """Reciprocal ``floor((2^64 - 1) / divisor)`` for :func:`_fastmod`."""
    return np.uint64(_MASK64 // int(divisor))


@kernel(inline="always")
def _fastmod(h, divisor, magic):
    """Exactly ``h % divisor`` (``uint64``) via a multiply-high estimate and at most a few
    two corrections: a 64-bit division costs tens of cycles and dominated the per-item cost."""
    r = h - _mulhi64(h, magic) * divisor  # the estimate is low by at most 2 (magic >= 2^64/d - 1)
    r = r - divisor if r >= divisor else r  # branch-free corrections (selects, not jumps)
    return r - divisor if r >= divisor else r


@kernel(inline="always")
def _rotated_item(h, seq, n_buckets, magic, fp_mask):
    """``(idx, v | fp << 16)`` of an item from its 64-bit hash and raw SEQ (§3)."""
    idx = np.int64(_fastmod(h, _U64(n_buckets), magic))
    off = np.int64((h >> _U64(32)) & _U64(0xFFFF))
    fp = np.int64((h >> _U64(48)) & _U64(fp_mask))
    v = (np.int64(seq) + off) & 0xFFFF
    return idx, v | (fp << 16)


# ============================================================================ SO step (§5.3)
def _vector_intrinsic(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


@intrinsic
def _so_nearest(typingctx, w, v, modular):
    """``(lane, d)`` of the lane of bucket word ``w`` nearest to ``v``: ``d`` is
    ``s16(v - x)`` (``modular``) or ``sat16(s16(v) - s16(x))`` for each lane ``x``; the lane with
    the smallest ``|d|`` wins, the lowest on ties.

    All four lanes at once, as one ``<4 x i16>`` vector: a (saturating) subtraction, ``abs``
    and an unsigned-minimum reduction over ``|d| << 2 | lane``. Written lane by lane, LLVM
    turned the saturation into branches that the CPU mispredicts on new flows."""
    sig = types.UniTuple(types.int64, 2)(types.uint64, types.int64, types.boolean)

    def codegen(context, builder, signature, args):
        word, value, is_modular = args
        i1, i16, i32, i64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v4i16, v4i32 = ir.VectorType(i16, 4), ir.VectorType(i32, 4)
        lanes = builder.bitcast(word, v4i16)  # lane i = bits 16i..16i+15 (little-endian host)
        one = builder.insert_element(ir.Constant(v4i16, None), builder.trunc(value, i16), ir.Constant(i32, 0))
        splat = builder.shuffle_vector(one, ir.Constant(v4i16, None), ir.Constant(v4i32, [0, 0, 0, 0]))
        saturated = _vector_intrinsic(builder, "llvm.ssub.sat.v4i16", v4i16, [splat, lanes])
        wrapped = builder.sub(splat, lanes)
        flag = context.cast(builder, is_modular, types.boolean, types.boolean)
        diff = builder.select(builder.trunc(flag, i1) if flag.type != i1 else flag, wrapped, saturated)
        magnitude = _vector_intrinsic(builder, "llvm.abs.v4i16", v4i16, [diff, ir.Constant(i1, 0)])
        keys = builder.or_(builder.shl(builder.zext(magnitude, v4i32), ir.Constant(v4i32, [2] * 4)),
                           ir.Constant(v4i32, [0, 1, 2, 3]))
        best_key = _vector_intrinsic(builder, "llvm.vector.reduce.umin.v4i32", i32, [keys])
        lane = builder.and_(best_key, ir.Constant(i32, 3))
        # d = lane ``lane`` of diff, by a shift of the 64-bit word (extractelement at a variable
        # lane went through a stack store and reload)
        shift = builder.zext(builder.shl(lane, ir.Constant(i32, 4)), i64)
        d = builder.sext(builder.trunc(builder.lshr(builder.bitcast(diff, i64), shift), i16), i64)
        return context.make_tuple(builder, signature.return_type, [builder.zext(lane, i64), d])

    return sig, codegen


@kernel(inline="always")
def _so_step(w, v, t1, t2, modular):
    """One SO item into a bucket word; returns ``(new_word, report, md)``.

    A bucket (a row of the ``uint16[nb, 4]`` table) is handled as one little-endian ``uint64``
    (lane ``i`` in bits ``16i..16i+15``), so the nearest-lane search (:func:`_so_nearest`, one
    vector) and the move-to-front are a few branch-free word operations, and a run of one
    bucket's items stays in a register.
    """
    best, md = _so_nearest(w, v, modular)
    absorbed = (md > -t2) & (md < t2)
    # selects as masks (all ones / zero): LLVM kept "x if absorbed else y" as a mispredicted branch
    absorbed_mask = _U64(0) - _U64(absorbed)
    keep_mask = _U64(0) - _U64(absorbed & (md <= 0))
    x = (w >> _U64(16 * best)) & _U64(0xFFFF)
    keep = (x & keep_mask) | (_U64(v) & ~keep_mask)  # absorbed: keep the max; new flow: push v
    shift = (_U64(16 * best) & absorbed_mask) | (_U64(48) & ~absorbed_mask)  # new flow: lane 3 is evicted
    below = w & ((_U64(1) << shift) - _U64(1))
    above = w & ~((_U64(2) << (shift + _U64(15))) - _U64(1))  # 2 << 63 == 0 for lane 3
    return above | (below << _U64(16)) | keep, absorbed & (md >= t1), md


# ============================================================================ AO step (§5.4)
_NO_MATCH = 1 << 40


def _bucket_vector(context, builder, arrty, arr, bucket):
    """Pointer to row ``bucket`` of a C-contiguous ``uint32[nb, 8]`` array, as ``<8 x i32>*``."""
    ary = context.make_array(arrty)(context, builder, arr)
    first = cgutils.get_item_pointer(context, builder, arrty, ary, [bucket, ir.Constant(ir.IntType(64), 0)],
                                     wraparound=False, boundscheck=False)
    return builder.bitcast(first, ir.VectorType(ir.IntType(32), 8).as_pointer())


def _lane_ids(n_lanes, width=32):
    return ir.Constant(ir.VectorType(ir.IntType(width), n_lanes), list(range(n_lanes)))


def _splat(builder, value, n_lanes):
    vec = ir.VectorType(value.type, n_lanes)
    one = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, None), ir.Constant(ir.VectorType(ir.IntType(32), n_lanes),
                                                                           [0] * n_lanes))


@intrinsic
def _ao_scan(typingctx, cells, bucket, v, fp):
    """``(lane, matched, empty)`` of bucket ``bucket``: among lanes whose fingerprint is ``fp``,
    the one with the smallest ``|sat16(s16(v) - s16(seq))|`` (lowest lane on ties; lane 0 and
    ``matched`` 0 when none), and the lowest lane holding 0 (8: none). All 8 lanes as one vector
    (compare, saturating subtract, abs, two unsigned-minimum reductions): lane-by-lane code
    compiled to branches that new flows mispredict."""
    if not (isinstance(cells, types.Array) and cells.ndim == 2 and cells.layout == "C"
            and cells.dtype == types.uint32):
        return None
    sig = types.UniTuple(types.int64, 3)(cells, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        arr, b, value, fingerprint = args
        i1, i16, i32, i64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v8i32 = ir.VectorType(i32, 8)
        lanes = builder.load(_bucket_vector(context, builder, signature.args[0], arr, b), align=4)
        seqs = builder.trunc(lanes, ir.VectorType(i16, 8))
        same_fp = builder.icmp_unsigned("==", builder.lshr(lanes, ir.Constant(v8i32, [16] * 8)),
                                        _splat(builder, builder.trunc(fingerprint, i32), 8))
        diff = _vector_intrinsic(builder, "llvm.ssub.sat.v8i16", ir.VectorType(i16, 8),
                                 [_splat(builder, builder.trunc(value, i16), 8), seqs])
        magnitude = _vector_intrinsic(builder, "llvm.abs.v8i16", ir.VectorType(i16, 8), [diff, ir.Constant(i1, 0)])
        keys = builder.or_(builder.shl(builder.zext(magnitude, v8i32), ir.Constant(v8i32, [3] * 8)), _lane_ids(8))
        keys = builder.select(same_fp, keys, ir.Constant(v8i32, [0xFFFFFFFF] * 8))
        best = _vector_intrinsic(builder, "llvm.vector.reduce.umin.v8i32", i32, [keys])
        matched = builder.icmp_unsigned("!=", best, ir.Constant(i32, 0xFFFFFFFF))
        lane = builder.select(matched, builder.and_(best, ir.Constant(i32, 7)), ir.Constant(i32, 0))
        is_empty = builder.icmp_unsigned("==", lanes, ir.Constant(v8i32, [0] * 8))
        empties = builder.select(is_empty, _lane_ids(8), ir.Constant(v8i32, [8] * 8))
        empty = _vector_intrinsic(builder, "llvm.vector.reduce.umin.v8i32", i32, [empties])
        return context.make_tuple(builder, signature.return_type,
                                  [builder.zext(lane, i64), builder.zext(matched, i64), builder.zext(empty, i64)])

    return sig, codegen


@intrinsic
def _ao_move(typingctx, cells, bucket, m, r, value):
    """``move(m -> r)`` in bucket ``bucket``: lanes ``r+1..m`` take the old lanes ``r..m-1`` and
    lane ``r`` takes ``value``; the other lanes keep theirs. One vector shuffle and two selects."""
    if not (isinstance(cells, types.Array) and cells.ndim == 2 and cells.layout == "C"
            and cells.dtype == types.uint32):
        return None
    sig = types.void(cells, types.int64, types.int64, types.int64, types.uint32)

    def codegen(context, builder, signature, args):
        arr, b, last, first, new_value = args
        i32 = ir.IntType(32)
        v8i32 = ir.VectorType(i32, 8)
        ptr = _bucket_vector(context, builder, signature.args[0], arr, b)
        lanes = builder.load(ptr, align=4)
        shifted = builder.shuffle_vector(lanes, ir.Constant(v8i32, None),
                                         ir.Constant(v8i32, [0, 0, 1, 2, 3, 4, 5, 6]))
        ids = _lane_ids(8)
        r_vec = _splat(builder, builder.trunc(first, i32), 8)
        m_vec = _splat(builder, builder.trunc(last, i32), 8)
        moving = builder.and_(builder.icmp_signed(">", ids, r_vec), builder.icmp_signed("<=", ids, m_vec))
        out = builder.select(moving, shifted, lanes)
        out = builder.select(builder.icmp_signed("==", ids, r_vec), _splat(builder, new_value, 8), out)
        builder.store(out, ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@kernel(inline="always")
def _ao_step(cells, b, item, sz, t1, t2, civilian_front):
    """One AO item (``v | fp << 16``) into bucket ``b`` of ``cells`` (``uint32[nb, 8]``, lane =
    ``seq | fp << 16``, 0 = empty); returns ``(report, md)``. Project-default semantics (fixes A+B).

    Every outcome of §5.4 is one ``move(m -> r)`` with ``m >= r`` that writes ``value`` at lane
    ``r`` (no move: ``m == r``); the step picks ``(m, r, value)`` and rewrites the 8 lanes once.
    """
    v = item & 0xFFFF
    fp = item >> 16
    new_cell = np.uint32(item)
    # nearest lane of the same fingerprint by unsigned distance (fix A), lowest lane on ties
    lane, found, empty = _ao_scan(cells, b, v, fp)
    matched = found != 0
    md = _s16(v - (np.int64(cells[b, lane]) & 0xFFFF)) * found
    report = matched & (md >= t1) & (md < t2)  # major gap: promote to suspect head (m=lane, r=0)
    absorb = matched & (md > -t2) & (md < t1)  # neglect / in order / minor gap (m=lane, r<=sz)
    hit = absorb | report
    # new flow: a free suspect slot, else evict (last_suspect: lane 7 -> max(sz-1, 0);
    # civilian_front: first empty lane or 7 -> min(sz, 7))
    free = empty < sz
    new_m = empty if free else (min(empty, 7) if civilian_front else 7)
    new_r = empty if free else (min(sz, 7) if civilian_front else max(sz - 1, 0))
    # selects by arithmetic: as conditional expressions LLVM compiled them to branches that
    # mispredict between hits and new flows
    hit_i, keep_i = np.int64(hit), np.int64(absorb & (md <= 0))
    m = new_m + (lane - new_m) * hit_i
    r = new_r + (min(lane, sz) * np.int64(absorb) - new_r) * hit_i  # civilian hit -> civilian front
    old = np.int64(cells[b, lane])
    value = np.uint32(np.int64(new_cell) + (old - np.int64(new_cell)) * keep_i)  # modular compare (fix B)
    _ao_move(cells, b, m, r, value)
    return report, md


# ============================================================================ serial kernels
_BLOCK = 1024  # items hashed ahead of the ordered step loop (keeps the hash pipeline full)
#: Items between prefetching a bucket and stepping into it (SO / AO: tables past the L1 cache)
_PREFETCH_AHEAD = 8


@kernel(inline="always")
def _hash_block(src, dst, sport, dport, proto, seq, start, stop, seed, n_buckets, magic, fp_mask, idx, items):
    """Bucket and packed item of items ``[start, stop)`` into ``idx[k]``, ``items[k]`` (``k = i - start``)."""
    for k in range(stop - start):
        i = _U64(start + k)  # unsigned index: no negative-index wraparound code
        h = hash64_5tuple(src[i], dst[i], sport[i], dport[i], proto[i], seed)
        idx[k], items[k] = _rotated_item(h, seq[i], n_buckets, magic, fp_mask)


@kernel
def _so_serial(words, src, dst, sport, dport, proto, seq, seed, magic, t1, t2, modular, flags, jumps, hits):
    """Serial SO loop in arrival order (hashing a block ahead, prefetching the bucket of the item
    ``_PREFETCH_AHEAD`` places on; the wrapped index past a block's end names a bucket already
    visited, harmless); ``flags`` must be zeroed. Returns the number of reports, whose positions
    it writes to ``hits[:count]`` in arrival order (the event log reads them without a pass over
    ``flags``)."""
    idx = np.zeros(_BLOCK, np.int64)
    items = np.empty(_BLOCK, np.int64)
    count = 0
    n_buckets = words.shape[0]
    for start in range(0, src.shape[0], _BLOCK):
        stop = min(src.shape[0], start + _BLOCK)
        _hash_block(src, dst, sport, dport, proto, seq, start, stop, seed, n_buckets, magic, 0, idx, items)
        for k in range(stop - start):
            i = _U64(start + k)
            prefetch(words, idx[(k + _PREFETCH_AHEAD) & (_BLOCK - 1)])
            b = _U64(idx[k])  # in [0, n_buckets): fastmod
            words[b], rep, md = _so_step(words[b], items[k], t1, t2, modular)
            if rep:
                flags[i] = True
                jumps[i] = md
                hits[count] = i
                count += 1
    return count


@kernel
def _ao_serial(cells, src, dst, sport, dport, proto, seq, seed, magic, fp_mask, sz, t1, t2, civ, flags, jumps,
               hits):
    """Serial AO loop in arrival order (hashing a block ahead and prefetching, as
    :func:`_so_serial`); ``flags`` must be zeroed. Returns the report count (``hits``: as
    :func:`_so_serial`)."""
    idx = np.zeros(_BLOCK, np.int64)
    items = np.empty(_BLOCK, np.int64)
    count = 0
    n_buckets = cells.shape[0]
    flat = cells.reshape(cells.size)
    for start in range(0, src.shape[0], _BLOCK):
        stop = min(src.shape[0], start + _BLOCK)
        _hash_block(src, dst, sport, dport, proto, seq, start, stop, seed, n_buckets, magic, fp_mask, idx, items)
        for k in range(stop - start):
            i = _U64(start + k)
            prefetch(flat, idx[(k + _PREFETCH_AHEAD) & (_BLOCK - 1)] * 8)
            rep, md = _ao_step(cells, idx[k], items[k], sz, t1, t2, civ)
            if rep:
                flags[i] = True
                jumps[i] = md
                hits[count] = i
                count += 1
    return count


# ============================================================================ parallel kernels
@kernel(parallel=True)
def _hash_stage(src, dst, sport, dport, proto, seq, seed, n_buckets, magic, fp_mask, idx, items):
    """Per item: bucket ``idx`` (``int32``) and packed ``v | fp << 16`` (``uint32``), in parallel."""
    for i in prange(src.shape[0]):
        h = hash64_5tuple(src[i], dst[i], sport[i], dport[i], proto[i], seed)
        b, item = _rotated_item(h, seq[i], n_buckets, magic, fp_mask)
        idx[i] = b
        items[i] = item


@kernel(parallel=True)
def _partition_by_bucket(idx, items, n_buckets, n_chunks):
    """Stable counting sort by bucket, chunked for threads.

    Returns ``order`` (``int32[n]``: item positions grouped by bucket, arrival order inside a
    bucket), the items in that order, and CSR ``starts`` (``int64[n_buckets + 1]``).
    """
    n = idx.shape[0]
    chunk = (n + n_chunks - 1) // n_chunks
    counts = np.zeros((n_chunks, n_buckets), np.int64)
    for c in prange(n_chunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            counts[c, idx[i]] += 1
    starts = np.empty(n_buckets + 1, np.int64)
    run = 0
    for b in range(n_buckets):
        starts[b] = run
        for c in range(n_chunks):
            k = counts[c, b]
            counts[c, b] = run
            run += k
    starts[n_buckets] = run
    order = np.empty(n, np.int32)
    sorted_items = np.empty(n, np.uint32)
    for c in prange(n_chunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            b = idx[i]
            k = counts[c, b]
            order[k] = i
            sorted_items[k] = items[i]
            counts[c, b] = k + 1
    return order, sorted_items, starts


@kernel
def _schedule(starts, n_workers):
    """Deal non-empty buckets to workers longest-first in snake order (a cheap LPT schedule).

    Returns ``(buckets, worker_starts)``: worker ``w`` owns ``buckets[worker_starts[w]:worker_starts[w+1]]``.
    """
    lengths = starts[1:] - starts[:-1]
    by_length = np.argsort(-lengths, kind="mergesort")
    n_busy = 0
    for b in range(lengths.shape[0]):
        if lengths[b] > 0:
            n_busy += 1
    owner = np.empty(n_busy, np.int64)
    per_worker = np.zeros(n_workers + 1, np.int64)
    for k in range(n_busy):
        r, w = k // n_workers, k % n_workers
        if r % 2 == 1:
            w = n_workers - 1 - w
        owner[k] = w
        per_worker[w + 1] += 1
    for w in range(n_workers):
        per_worker[w + 1] += per_worker[w]
    fill = per_worker[:-1].copy()
    buckets = np.empty(n_busy, np.int64)
    for k in range(n_busy):
        buckets[fill[owner[k]]] = by_length[k]
        fill[owner[k]] += 1
    return buckets, per_worker


@kernel(parallel=True)
def _so_segments(words, order, sorted_items, starts, buckets, worker_starts, t1, t2, modular, flags, jumps):
    """Run each bucket's items in arrival order; workers (threads) own disjoint buckets."""
    for worker in prange(worker_starts.shape[0] - 1):
        for k in range(worker_starts[worker], worker_starts[worker + 1]):
            b = buckets[k]
            w = words[b]
            for j in range(starts[b], starts[b + 1]):
                w, rep, md = _so_step(w, np.int64(sorted_items[j]), t1, t2, modular)
                if rep:
                    flags[order[j]] = True
                    jumps[order[j]] = md
            words[b] = w


@kernel(parallel=True)
def _ao_segments(cells, order, sorted_items, starts, buckets, worker_starts, sz, t1, t2, civ, flags, jumps):
    """AO counterpart of :func:`_so_segments`."""
    for worker in prange(worker_starts.shape[0] - 1):
        for k in range(worker_starts[worker], worker_starts[worker + 1]):
            b = buckets[k]
            for j in range(starts[b], starts[b + 1]):
                rep, md = _ao_step(cells, b, np.int64(sorted_items[j]), sz, t1, t2, civ)
                if rep:
                    flags[order[j]] = True
                    jumps[order[j]] = md


# ============================================================================ Straw-man (§5.2)
@kernel(inline="always")
def _splitmix64(state):
    """splitmix64: returns ``(output, new_state)``."""
    state = state + _U64(0x9E3779B97F4A7C15)
    return mix64(state), state


@kernel(inline="always")
def _fp_hash(fp, seed):
    """Hash of the fingerprint's 4 little-endian bytes (``hash_bytes(fp.to_bytes(4, 'little'))``)."""
    swapped = ((fp & 0xFF) << 24) | ((fp & 0xFF00) << 8) | ((fp >> 8) & 0xFF00) | ((fp >> 24) & 0xFF)
    return hash64_u32(nb.uint32(swapped), seed)


@kernel(inline="always")
def _straw_alt(k, fp, bb, magic, seed1, seed2):
    if k < bb:
        return np.int64(_fastmod(_fp_hash(fp, seed2), _U64(bb), magic)) + bb
    return np.int64(_fastmod(_fp_hash(fp, seed1), _U64(bb), magic))


@intrinsic
def _lanes_equal4(typingctx, table, row, value):
    """Bit ``j`` set where ``table[row, j] == value``, for a C-contiguous ``uint32[rows, 4]``
    table: one ``<4 x i32>`` compare (a movemask), not four data-dependent branches."""
    if not (isinstance(table, types.Array) and table.ndim == 2 and table.layout == "C"
            and table.dtype == types.uint32):
        return None
    sig = types.int64(table, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        arr, r, needle = args
        i32, v4i32 = ir.IntType(32), ir.VectorType(ir.IntType(32), 4)
        ary = context.make_array(signature.args[0])(context, builder, arr)
        first = cgutils.get_item_pointer(context, builder, signature.args[0], ary,
                                         [r, ir.Constant(ir.IntType(64), 0)], wraparound=False, boundscheck=False)
        lanes = builder.load(builder.bitcast(first, v4i32.as_pointer()), align=4)
        equal = builder.icmp_unsigned("==", lanes, _splat(builder, builder.trunc(needle, i32), 4))
        return builder.zext(builder.bitcast(equal, ir.IntType(4)), ir.IntType(64))

    return sig, codegen


@intrinsic
def _lowest_bit(typingctx, mask):
    """Index of the lowest set bit of a non-zero ``int64`` (``cttz``; 64 for 0)."""
    if not isinstance(mask, types.Integer):
        return None
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        value = context.cast(builder, args[0], signature.args[0], types.int64)
        return _vector_intrinsic(builder, "llvm.cttz.i64", i64, [value, ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


@kernel(inline="always")
def _straw_place_empty(fps, seqs, k, fp, s):
    """Put ``(fp, s)`` in the first empty cell (``fp == 0``) of bucket ``k``; False if it is full."""
    empty = _lanes_equal4(fps, k, 0)
    if empty == 0:
        return False
    j = _lowest_bit(empty)
    fps[k, j] = fp
    seqs[k, j] = s
    return True


@kernel(inline="always")
def _straw_hash_block(src, dst, sport, dport, proto, start, stop, seeds, bb, magic, fp_out, i1_out, i2_out):
    """Fingerprint and both candidate buckets of items ``[start, stop)`` (three hashes each),
    ahead of the ordered loop: no branch between them, so consecutive items' hashes overlap."""
    seed_fp, seed1, seed2 = seeds[0], seeds[1], seeds[2]
    for k in range(stop - start):
        i = _U64(start + k)  # unsigned index: no negative-index wraparound code
        h = hash64_5tuple(src[i], dst[i], sport[i], dport[i], proto[i], seed_fp)
        fp = np.int64(h & _U64(0xFFFFFFFF))
        fp += np.int64(fp == 0)  # fingerprint 0 marks an empty cell
        fp_out[k] = fp
        i1_out[k] = np.int64(_fastmod(_fp_hash(fp, seed1), _U64(bb), magic))
        i2_out[k] = np.int64(_fastmod(_fp_hash(fp, seed2), _U64(bb), magic)) + bb


@kernel(inline="always")
def _straw_kick(fps, seqs, state, i1, i2, fp, s, bb, magic, seed1, seed2):
    """Both buckets full: evict along the cuckoo path (at most 8 kicks); returns the PRNG state."""
    r, state = _splitmix64(state)
    k = i2 if r % _U64(2) == 0 else i1
    cur_fp, cur_s = fp, s
    for _ in range(8):
        r, state = _splitmix64(state)
        j = np.int64(r % _U64(4))
        vic_fp, vic_s = np.int64(fps[k, j]), np.int64(seqs[k, j])
        fps[k, j] = cur_fp
        seqs[k, j] = cur_s
        cur_fp, cur_s = vic_fp, vic_s
        k = _straw_alt(k, cur_fp, bb, magic, seed1, seed2)
        if _straw_place_empty(fps, seqs, k, cur_fp, cur_s):
            break
    return state


@kernel
def _straw_serial(fps, seqs, rng, src, dst, sport, dport, proto, seq, seeds, t1, t2, reset, flags, jumps, hits):
    """Serial Straw-man loop (lookup, insert, up to 8 cuckoo kicks); ``rng[0]`` is the PRNG state.
    Returns the report count (``hits``: as :func:`_so_serial`).

    Hashes a block ahead (:func:`_straw_hash_block`); the lookup tests the 4 cells of both
    buckets as two vector compares, and the first match (bucket ``i1`` first, lowest cell) is the
    lowest set bit of ``m1 | m2 << 4``, the same cell the spec's cell-by-cell scan finds."""
    bb = fps.shape[0] // 2
    magic = _U64(0xFFFFFFFFFFFFFFFF) // _U64(bb)
    seed1, seed2 = seeds[1], seeds[2]
    state = rng[0]
    fpb = np.empty(_BLOCK, np.int64)
    b1 = np.empty(_BLOCK, np.int64)
    b2 = np.empty(_BLOCK, np.int64)
    count = 0
    for start in range(0, src.shape[0], _BLOCK):
        stop = min(src.shape[0], start + _BLOCK)
        _straw_hash_block(src, dst, sport, dport, proto, start, stop, seeds, bb, magic, fpb, b1, b2)
        for k in range(stop - start):
            i = _U64(start + k)
            fp, i1, i2, s = fpb[k], b1[k], b2[k], np.int64(seq[i])
            match = _lanes_equal4(fps, i1, fp) | (_lanes_equal4(fps, i2, fp) << 4)
            if match != 0:
                j = _lowest_bit(match)
                bk = i1 + (i2 - i1) * (j >> 2)
                j &= 3
                old = np.int64(seqs[bk, j])
                d = (s - old) & 0xFFFF
                if t1 <= d < t2:
                    flags[i] = True
                    jumps[i] = d
                    hits[count] = i
                    count += 1
                if s > old or old - s >= reset:
                    seqs[bk, j] = s
                continue
            empty = _lanes_equal4(fps, i1, 0) | (_lanes_equal4(fps, i2, 0) << 4)
            if empty != 0:
                j = _lowest_bit(empty)
                bk = i1 + (i2 - i1) * (j >> 2)
                fps[bk, j & 3] = fp
                seqs[bk, j & 3] = s
                continue
            state = _straw_kick(fps, seqs, state, i1, i2, fp, s, bb, magic, seed1, seed2)
    rng[0] = state
    return count


# ============================================================================ input helpers
def keys_to_columns(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Split ``uint8[n, 13]`` 5-tuple keys into the batch's numeric key columns (big-endian fields)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    if keys.ndim != 2 or keys.shape[1] != FLOW_KEY_BYTES:
        raise SketchError(f"keys must be uint8[n, {FLOW_KEY_BYTES}], got shape {keys.shape}")

    def field(a: int, b: int, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(keys[:, a:b]).view(dtype).ravel().astype("<" + dtype[1:])

    return {
        "src_ip": field(0, 4, ">u4"),
        "dst_ip": field(4, 8, ">u4"),
        "src_port": field(8, 10, ">u2"),
        "dst_port": field(10, 12, ">u2"),
        "proto": keys[:, 12].copy(),
    }


def _seq_column(batch: PacketBatch, field: str) -> np.ndarray:
    col = getattr(batch, field)
    if col.dtype == np.uint16:
        return col
    return (col & 0xFFFF).astype(np.uint16)


# ============================================================================ event log
class _EventLog:
    """Bounded per-epoch log of gap reports: keeps the first ``capacity``, counts the rest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: list[np.ndarray] = []
        self.count = 0
        self.dropped = 0

    def add(self, events: np.ndarray) -> None:
        room = self.capacity - self.count
        if events.shape[0] > room:
            self.dropped += events.shape[0] - room
            events = events[:room]
        if events.shape[0]:
            self._chunks.append(events)
            self.count += events.shape[0]

    def events(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, GAP_EVENT_DTYPE)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0].copy()

    def clear(self) -> None:
        self._chunks, self.count, self.dropped = [], 0, 0

    def copy(self) -> "_EventLog":
        """An independent log with the same events (chunks are never written in place: shared)."""
        twin = _EventLog(self.capacity)
        twin._chunks, twin.count, twin.dropped = list(self._chunks), self.count, self.dropped
        return twin


# ============================================================================ the sketches
class _GapFilterBase(Sketch):
    """Shared plumbing: parameters, event log, epochs, serialisation, the public verbs."""

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """IPv6 rows are counted (module docstring: how)."""
        return True

    #: every packet is processed in arrival order (serial and bucket-partitioned kernels give the
    #: same state), the event log keeps the first ``event_capacity`` reports and counts the rest, the
    #: coverage counters add up: joined batches leave the same state (``Sketch.batch_invariant``)
    batch_invariant = True

    ALGORITHM: ClassVar[str]
    PARAMS: ClassVar[type]
    #: layout 2: events with the IPv6 fields, coverage counters; layout 1 (IPv4 events) still loads
    STATE_VERSION: ClassVar[int] = 2

    @classmethod
    def truth_params(cls, params: dict) -> dict:
        """The truth reports the same gaps: jumps in ``[t1, t2)``."""
        p = cls.PARAMS(**params)  # the params alone: no event log allocated
        return {"gap_t1": p.t1, "gap_t2": p.t2}

    def __init__(self, memory_bytes: int | None = None, *, params=None, **kwargs) -> None:
        """Build from a params object, or from keyword parameters (see the params dataclass)."""
        if params is not None:
            if memory_bytes is not None or kwargs:
                raise SketchError("give either params= or keyword parameters, not both")
            if not isinstance(params, self.PARAMS):
                raise SketchError(f"params must be {self.PARAMS.__name__}, got {type(params).__name__}")
        else:
            if memory_bytes is not None:
                kwargs["memory_bytes"] = memory_bytes
            names = {f.name for f in dataclasses.fields(self.PARAMS)}
            unknown = set(kwargs) - names
            if unknown:
                raise SketchError(f"unknown {type(self).__name__} parameter(s) {sorted(unknown)}; known: {sorted(names)}")
            params = self.PARAMS(**kwargs)
        self.params = params
        self.epoch = 0
        self.items_seen = 0
        #: this epoch's packets gap detection inspected, and IPv6 packets it skipped, by reason
        self.covered_packets = 0
        self.skipped_packets: dict[str, int] = {}
        self._log = _EventLog(params.event_capacity)
        self._init_state()

    # ---------------------------------------------------------------- subclass hooks
    def _init_state(self) -> None:
        raise NotImplementedError

    def _state_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _kernel(self, cols: dict[str, np.ndarray], seq: np.ndarray, flags, jumps, parallel) -> np.ndarray | None:
        """Run the detection kernel: set ``flags[i]`` and ``jumps[i]`` for each report; return the
        report positions in arrival order (``int64``), or None to have them read from ``flags``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- properties
    @property
    def memory_bytes(self) -> int:
        """Accounted structure size in bytes (spec §4), at most the requested ``memory_bytes``."""
        return self.params.accounted_bytes

    @property
    def dropped_events(self) -> int:
        """Reports this epoch that did not fit in the event log (``event_capacity``)."""
        return self._log.dropped

    def coverage(self) -> dict:
        """This epoch's coverage: ``{"covered_packets": n, "skipped_packets": {reason: n}}`` (reasons
        in ``SKIP_REASONS``; only IPv6 packets are ever skipped, see the module docstring)."""
        return {"covered_packets": self.covered_packets, "skipped_packets": dict(self.skipped_packets)}

    # ---------------------------------------------------------------- updates
    def update(self, batch: PacketBatch, parallel: bool | None = None) -> np.ndarray:
        """Process a batch in arrival order; returns ``bool[n]`` (packet opened a major gap).

        ``parallel``: ``None`` picks the bucket-partitioned path for batches of at least
        ``PARALLEL_MIN_ITEMS`` when Numba has at least ``PARTITION_MIN_THREADS`` threads (the serial
        kernel otherwise); ``True``/``False`` force it. Results are identical either way.
        """
        if not isinstance(batch, PacketBatch):
            raise SketchError(f"update expects a PacketBatch, got {type(batch).__name__}")
        cols = {name: getattr(batch, name) for name in _KEY_FIELDS}
        seq = _seq_column(batch, self.params.seq_field)
        if batch.has_ipv6():
            return self._update_mixed(batch, cols, seq, parallel)
        self.covered_packets += len(batch)
        return self._update(cols, seq, batch.ts_ns, parallel)

    def _update_mixed(self, batch: PacketBatch, cols, seq, parallel) -> np.ndarray:
        """A batch with IPv6 rows: inspect the rows :func:`ipv6_inspection` allows (in arrival
        order), IPv6 ones keyed by the fold of their 37-byte key; count the skipped ones."""
        inspect, skipped = ipv6_inspection(batch, self.params.seq_field)
        for reason, count in skipped.items():
            self.skipped_packets[reason] = self.skipped_packets.get(reason, 0) + count
        rows = np.flatnonzero(inspect)
        self.covered_packets += int(rows.size)
        record = {name: col[rows] for name, col in cols.items()}
        v6 = np.asarray(batch.ipv6)[rows].astype(bool)
        kernel_cols = dict(record)
        if v6.any():
            src, dst = ipv6_fold(batch[rows[v6]].flow_keys37(), self.params.seed)
            kernel_cols["src_ip"], kernel_cols["dst_ip"] = record["src_ip"].copy(), record["dst_ip"].copy()
            kernel_cols["src_ip"][v6], kernel_cols["dst_ip"][v6] = src, dst
        family = {"ipv6": v6.astype(np.uint8), "src_ip6": batch.src_ip6[rows], "dst_ip6": batch.dst_ip6[rows]}
        flags = np.zeros(len(batch), np.bool_)
        flags[rows] = self._update(kernel_cols, seq[rows], batch.ts_ns[rows], parallel, record, family)
        return flags

    def update_keys(self, keys: np.ndarray, seq: np.ndarray, ts_ns: np.ndarray | None = None,
                    parallel: bool | None = None) -> np.ndarray:
        """Raw entry point: ``uint8[n, 13]`` 5-tuple keys and ``uint16[n]`` SEQ (e.g. a text trace)."""
        cols = keys_to_columns(keys)
        seq = np.asarray(seq)
        if seq.shape != (cols["src_ip"].shape[0],):
            raise SketchError(f"seq must have shape ({cols['src_ip'].shape[0]},), got {seq.shape}")
        seq = np.ascontiguousarray(seq & 0xFFFF, dtype=np.uint16) if seq.dtype != np.uint16 else seq
        if ts_ns is None:
            ts_ns = np.zeros(seq.shape[0], np.uint64)
        self.covered_packets += int(seq.shape[0])
        return self._update(cols, seq, np.asarray(ts_ns, np.uint64), parallel)

    def _update(self, cols, seq, ts_ns, parallel, record=None, family=None) -> np.ndarray:
        """Run the kernel on ``cols`` (the key columns it hashes) and log the reports with the
        columns of ``record`` (default ``cols``) and the IPv6 fields of ``family`` (default IPv4)."""
        n = seq.shape[0]
        flags = np.zeros(n, np.bool_)
        jumps = np.empty(n, np.int32)  # written (and read) only where flags is True
        if n:
            if parallel is None:
                parallel = n >= PARALLEL_MIN_ITEMS and nb.get_num_threads() >= PARTITION_MIN_THREADS
            hits = self._kernel(cols, seq, flags, jumps, bool(parallel))
            if hits is None:
                hits = np.flatnonzero(flags)
            self._record(cols if record is None else record, ts_ns, hits, jumps, family)
            self.items_seen += n
        return flags

    def _record(self, cols, ts_ns, hits, jumps, family=None) -> None:
        """Log the reports at positions ``hits`` (arrival order) with their key, jump and time."""
        if hits.size and self._log.count >= self._log.capacity:
            self._log.dropped += hits.size  # log full: count only, build nothing
            return
        if hits.size:
            events = np.zeros(hits.size, GAP_EVENT_DTYPE)
            for name in _KEY_FIELDS:
                events[name] = cols[name][hits]
            events["jump"] = jumps[hits]
            events["ts_ns"] = ts_ns[hits]
            if family is not None:
                for name, col in family.items():
                    events[name] = col[hits]
            self._log.add(events)

    # ---------------------------------------------------------------- queries and epochs
    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        """Epochs: the union of their gap events; shards: one stream again, by time (:class:`GapWindow`)."""
        from telesketch.sketches.combine import GapWindow

        return GapWindow(parts, rule)

    def gap_events(self) -> np.ndarray:
        """This epoch's recorded reports as a ``GAP_EVENT_DTYPE`` structured array, arrival order."""
        return self._log.events()

    def gap_counts(self) -> dict[bytes, int]:
        """This epoch's gap events aggregated per flow: ``{key: n_reported_items}``, the key being
        the 13-byte 5-tuple of an IPv4 flow, the 37-byte tuple (``PacketBatch.flow_keys37``) of an
        IPv6 flow (:func:`event_flow_keys`)."""
        keys, counts = np.unique(np.array(event_flow_keys(self._log.events()), object), return_counts=True)
        return {bytes(k): int(c) for k, c in zip(keys.tolist(), counts.tolist())}

    def reset_events(self) -> None:
        """Forget the recorded events (and the dropped count); detection state is kept."""
        self._log.clear()

    def copy(self):
        """An independent sketch in the same state: detection arrays (``COPY_ARRAYS``), event log
        and coverage counters copied; parameters and seeds shared (never written)."""
        clone = super().copy()
        if clone._log is self._log:  # the shallow clone (a copy through bytes has its own log)
            clone._log = self._log.copy()
            clone.skipped_packets = dict(self.skipped_packets)
        return clone

    def start_epoch(self, epoch: int) -> None:
        """Begin epoch ``epoch``: clears the event log; detection state carries over (flows persist)."""
        _check_int("epoch", epoch, 0, 1 << 62)
        self.epoch = int(epoch)
        self._log.clear()
        self.covered_packets, self.skipped_packets = 0, {}

    # ---------------------------------------------------------------- contract verbs
    def merge(self, other) -> None:
        """Always raises: GapFilter state is order-dependent and cannot be merged (spec §8)."""
        raise NotMergeableError(
            f"{type(self).__name__} state is not mergeable (order-dependent buckets, spec §8); "
            "shard by flow key and union the shards' gap reports instead"
        )

    def to_bytes(self) -> bytes:
        """Serialise parameters, detection state, PRNG state, epoch and event log."""
        arrays = dict(self._state_arrays())
        arrays["events"] = self._log.events().view(np.uint8).reshape(-1)
        extra = {"dropped": self._log.dropped, "items_seen": self.items_seen,
                 "covered_packets": self.covered_packets, "skipped_packets": dict(self.skipped_packets)}
        return pack_state(self.ALGORITHM, self.STATE_VERSION, self.params, arrays, self.epoch, extra)

    @classmethod
    def from_bytes(cls, data: bytes):
        """Restore a sketch written by :meth:`to_bytes`; it continues exactly where it stopped."""
        try:
            params_dict, arrays, epoch, extra = unpack_state(data, cls.ALGORITHM, cls.STATE_VERSION)
            event_dtype = GAP_EVENT_DTYPE
        except SketchError as current:
            try:  # layout 1: written before IPv6, events without the IPv6 fields
                params_dict, arrays, epoch, extra = unpack_state(data, cls.ALGORITHM, 1)
            except SketchError:
                raise current from None
            event_dtype = GAP_EVENT_DTYPE_V1
        try:
            params = cls.PARAMS(**params_dict)
        except TypeError as exc:
            raise SketchError(f"{cls.ALGORITHM} state has unexpected parameters: {exc}") from None
        sketch = cls(params=params)
        events = arrays.pop("events", None)
        if events is None or events.dtype != np.uint8 or events.size % event_dtype.itemsize:
            raise SketchError(f"{cls.ALGORITHM} state has a malformed event log")
        sketch._load_state(arrays)
        sketch.epoch = int(epoch)
        sketch.items_seen = int(extra.get("items_seen", 0))
        sketch.covered_packets = int(extra.get("covered_packets", 0))
        sketch.skipped_packets = {str(k): int(v) for k, v in extra.get("skipped_packets", {}).items()}
        if events.size:
            stored = events.view(event_dtype)
            upgraded = np.zeros(stored.shape[0], GAP_EVENT_DTYPE)
            for name in event_dtype.names:
                upgraded[name] = stored[name]
            sketch._log.add(upgraded)
        sketch._log.dropped = int(extra.get("dropped", 0))
        return sketch

    def _check_arrays(self, arrays: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
        for name, ref in expected.items():
            got = arrays.get(name)
            if got is None or got.dtype != ref.dtype or got.shape != ref.shape:
                raise SketchError(
                    f"{self.ALGORITHM} state array {name!r} does not fit these parameters "
                    f"(expected {ref.dtype}{list(ref.shape)}, got "
                    f"{'nothing' if got is None else f'{got.dtype}{list(got.shape)}'})"
                )
        extra = set(arrays) - set(expected)
        if extra:
            raise SketchError(f"{self.ALGORITHM} state has unexpected arrays {sorted(extra)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params}, epoch={self.epoch}, items_seen={self.items_seen})"


def _key_args(cols):
    return cols["src_ip"], cols["dst_ip"], cols["src_port"], cols["dst_port"], cols["proto"]


def _partitioned(cols, seq, seed, n_buckets, fp_mask):
    """Hash in parallel, partition by bucket and schedule: the inputs of the segment kernels."""
    n = seq.shape[0]
    idx = np.empty(n, np.int32)
    items = np.empty(n, np.uint32)
    _hash_stage(*_key_args(cols), seq, _U64(seed), n_buckets, mod_magic(n_buckets), fp_mask, idx, items)
    workers = nb.get_num_threads()
    order, sorted_items, starts = _partition_by_bucket(idx, items, n_buckets, workers)
    buckets, worker_starts = _schedule(starts, workers)
    return order, sorted_items, starts, buckets, worker_starts


class GapFilterSO(_GapFilterBase):
    """GapFilter-SO (speed-optimised, §5.3). ``table``: ``uint16[n_buckets, 4]``, lane 0 = most recent
    (the kernels view each row as one little-endian ``uint64``).

    >>> from telesketch.traces.generate import generate_batch
    >>> gf = GapFilterSO(memory_bytes=16 * 1024, seed=1)
    >>> flags = gf.update(generate_batch(20_000, 2_000, seed=1))   # bool[n]: opened a major gap
    >>> flags.shape, int(flags.sum()), len(gf.gap_events())
    ((20000,), 65, 65)
    """

    ALGORITHM = "gapfilter-so"
    PARAMS = GapFilterSOParams

    COPY_ARRAYS = ("table",)
    COPY_EXACT = ("telesketch.sketches.gapfilter:GapFilterSO",)

    def _init_state(self) -> None:
        self.table = np.zeros((self.params.n_buckets, 4), np.uint16)

    def _state_arrays(self):
        return {"table": self.table}

    def _load_state(self, arrays):
        self._check_arrays(arrays, self._state_arrays())
        self.table = arrays["table"]

    def _kernel(self, cols, seq, flags, jumps, parallel):
        p = self.params
        modular = p.so_diff == "modular"
        words = self.table.view(np.uint64).reshape(-1)  # 4 lanes per word (little-endian host)
        if not parallel:
            hits = np.empty(seq.shape[0], np.int64)
            count = _so_serial(words, *_key_args(cols), seq, _U64(p.seed), mod_magic(p.n_buckets), p.t1, p.t2,
                               modular, flags, jumps, hits)
            return hits[:count]
        order, items, starts, buckets, wstarts = _partitioned(cols, seq, p.seed, p.n_buckets, 0)
        _so_segments(words, order, items, starts, buckets, wstarts, p.t1, p.t2, modular, flags, jumps)
        return None


class GapFilterAO(_GapFilterBase):
    """GapFilter-AO (accuracy-optimised, §5.4). ``cells``: ``uint32[n_buckets, 8]``, each lane
    ``seq | fp << 16`` (0 = empty); lanes ``[0, suspects)`` are suspects, the rest civilians (LRU).

    >>> from telesketch.traces.generate import generate_batch
    >>> gf = GapFilterAO(memory_bytes=16 * 1024, seed=1)
    >>> flags = gf.update(generate_batch(20_000, 2_000, seed=1))   # bool[n]: opened a major gap
    >>> flags.shape, int(flags.sum()), len(gf.gap_events())
    ((20000,), 64, 64)
    """

    ALGORITHM = "gapfilter-ao"
    PARAMS = GapFilterAOParams

    COPY_ARRAYS = ("cells",)
    COPY_EXACT = ("telesketch.sketches.gapfilter:GapFilterAO",)

    def _init_state(self) -> None:
        self.cells = np.zeros((self.params.n_buckets, 8), np.uint32)

    @property
    def seq_lanes(self) -> np.ndarray:
        """``uint16[n_buckets, 8]``: stored (rotated) SEQ values."""
        return (self.cells & 0xFFFF).astype(np.uint16)

    @property
    def fp_lanes(self) -> np.ndarray:
        """``uint16[n_buckets, 8]``: stored fingerprints."""
        return (self.cells >> 16).astype(np.uint16)

    def _state_arrays(self):
        return {"seq": self.seq_lanes, "fp": self.fp_lanes}

    def _load_state(self, arrays):
        self._check_arrays(arrays, self._state_arrays())
        if int(arrays["fp"].max(initial=0)) >= 1 << self.params.fp_bits:
            raise SketchError(f"{self.ALGORITHM} state holds fingerprints wider than fp_bits={self.params.fp_bits}")
        self.cells = arrays["seq"].astype(np.uint32) | (arrays["fp"].astype(np.uint32) << 16)

    def _kernel(self, cols, seq, flags, jumps, parallel):
        p = self.params
        fp_mask = (1 << p.fp_bits) - 1
        civ = p.ao_new_flow_pos == "civilian_front"
        if not parallel:
            hits = np.empty(seq.shape[0], np.int64)
            count = _ao_serial(self.cells, *_key_args(cols), seq, _U64(p.seed), mod_magic(p.n_buckets), fp_mask,
                               p.suspects, p.t1, p.t2, civ, flags, jumps, hits)
            return hits[:count]
        order, items, starts, buckets, wstarts = _partitioned(cols, seq, p.seed, p.n_buckets, fp_mask)
        _ao_segments(self.cells, order, items, starts, buckets, wstarts, p.suspects, p.t1, p.t2, civ,
                     flags, jumps)
        return None


class GapFilterStraw(_GapFilterBase):
    """Straw-man baseline (§5.2): per-flow ``(fp u32, seq u16)`` in a 2-choice, 4-way cuckoo table.

    Serial only (kicks cross buckets and consume one PRNG stream); ``parallel`` is ignored.
    """

    ALGORITHM = "gapfilter-straw"
    PARAMS = GapFilterStrawParams

    COPY_ARRAYS = ("fps", "seqs", "rng")
    COPY_EXACT = ("telesketch.sketches.gapfilter:GapFilterStraw",)

    def _init_state(self) -> None:
        rows = 2 * self.params.half_buckets
        self.fps = np.zeros((rows, 4), np.uint32)
        self.seqs = np.zeros((rows, 4), np.uint16)
        self.rng = np.array([self.params.seed], np.uint64)
        self.seeds = np.array([derive_seed(self.params.seed, r) for r in range(3)], np.uint64)

    def _state_arrays(self):
        return {"fps": self.fps, "seqs": self.seqs, "rng": self.rng}

    def _load_state(self, arrays):
        self._check_arrays(arrays, self._state_arrays())
        self.fps, self.seqs, self.rng = arrays["fps"], arrays["seqs"], arrays["rng"]

    def _kernel(self, cols, seq, flags, jumps, parallel):
        p = self.params
        hits = np.empty(seq.shape[0], np.int64)
        count = _straw_serial(self.fps, self.seqs, self.rng, *_key_args(cols), seq, self.seeds,
                              p.t1, p.t2, p.straw_reset, flags, jumps, hits)
        return hits[:count]
