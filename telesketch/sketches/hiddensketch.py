"""Hidden Sketch: heavy hitters and heavy changers with exact key recovery (spec: hiddensketch.md).

Two stages (spec §2):

* **first stage (FS)**: ``fs_rows`` rows of saturating 8- or 16-bit counters; every item updates
  it and its estimate gates the item: only items whose FS estimate exceeds ``thresh`` go on;
* **second stage (SS)**: a reversible Bloom filter (per-block *segment bitmaps* plus
  *partial-key Bloom filters* on a tree of key intervals) and a 3-row ``uint32`` Count-Min.

``decode()`` enumerates candidate keys block by block (Cartesian products of set segment values
pruned by the Bloom filters, capped by ``max_enum``), drops those the FS calls light, and recovers
exact SS counts by peeling the Count-Min over the candidate set. The estimate of a reported key is
``f_SS + thresh`` (one-pass mode, never an under-count) or ``f_SS`` (``mode="two_pass"``, §9).

Key representation. A key is a ``key_bytes``-byte string (4: the source or destination address
big-endian, ``key="src_ip"`` / ``"dst_ip"``; 13: the 5-tuple; 16: an IPv6 address in network
order, ``key="src_ip6"`` / ``"dst_ip6"``, IPv4 rows v4-mapped). Bits are numbered LSB-first within each byte (spec §4), so bit ``i`` of the key is
bit ``i`` of the *little-endian* integer of its bytes. Internally every key (and partial key) is
that little-endian integer carried as two ``uint64`` words ``(lo, hi)``; a partial key ``[s, e)``
is ``(key >> s) & (2**(e-s) - 1)``. Hash input is the zero-padded ``key_bytes``-byte buffer of
that integer (``int.to_bytes(key_bytes, "little")``) through :mod:`telesketch.hashing`, so a full
4-byte key hashes exactly as ``hashing.hash_u32(address)``.

Hash functions (independent, derived from ``seed``; index ``= hash % width``)::

    h_fs[r]  : seed * 1000003 + 100 + r          h_blk : seed * 1000003 + 200
    h_cm[r]  : seed * 1000003 + 300 + r          h_bf[j][r] : seed * 1000003 + 1000 + 64 * j + r

Kernels. The FS gate is order-dependent and runs as one serial pass in arrival order (exact
reference semantics). The SS insert is commutative; it is serial too, with a small per-call cache
of keys already in the RBF so that repeated heavy keys cost only their 3 CM hashes. Both hash a
block of items ahead of their writes in loops LLVM vectorises, with each seed's part of the hash
precomputed and the modulo by a multiply (issue 21, fourth pass: same hashes, same state, 0.34-0.53x
the CPU time of the scalar kernels). ``prange``
kernels were measured 10x slower than serial on the shared 2-core host (OpenMP threads spinning
under load), so the kernels are serial and ``nogil``. Decode runs its blocks, which are independent,
on a thread pool.

IPv6 (docs/IPV6.md). An address sketch (``src_ip`` / ``dst_ip``) splits each batch by family:
IPv4 rows update its 4-byte state exactly as before IPv6 existed (same state, answers and speed),
IPv6 rows a 16-byte companion sketch (:attr:`HiddenSketch.ipv6`, made at the first IPv6 row,
``ipv6_memory_bytes``, default 128 KiB) with the same ``phi``, ``thresh``, CM and seed. Both
report against ``phi * N`` of all traffic; answers hold ``int`` IPv4 keys and 16-byte IPv6 keys
(the presenter's :func:`telesketch.presenter.key_text` prints them, :func:`key_order` sorts them). A 16-byte key costs more second
stage: 11 Bloom filters over a 128-bit interval tree and 12 segment bitmaps of 1-2 Kibit per block
(66,470 B at the default 10 KiB CM) against 3 filters and 4 x 256-bit bitmaps (18,063 B) for
4-byte keys. A ``5tuple`` sketch (13-byte keys cannot hold IPv6 tuples) or ``ipv6_memory_bytes=0``
counts IPv6 rows in ``skipped_ipv6`` and logs once: never a silent loss.

Bytes (issue 17). ``weight="bytes"`` counts each packet's ``length`` column (IPv4 total length,
IPv6 payload length + 40) instead of 1: "top talkers by bytes". The FS then has 32-bit counters
(saturating at 2**32 - 1, ~4.3 GB per counter, and a saturated row drops out of the gate exactly as
an 8-bit one does) and the Count-Min 64-bit counters, so for the same ``memory_bytes`` the FS has a
quarter of the 8-bit counters and the CM half of the buckets (``cm_bytes`` 10 KiB: 426 buckets a row
against 853); the IPv6 companion is byte-weighted the same way. A packet of weight ``w`` adds ``w``
to its FS rows and, once the gate value ``g`` (the minimum over non-saturated incremented rows)
passes ``thresh``, ``min(w, g - thresh)`` to the second stage: exactly the part of the key's bytes
above ``thresh``, so ``f_SS + thresh`` still never under-counts (with ``w = 1`` this is the packet
rule, 1). ``thresh`` and ``phi * N`` are bytes (``N``: the epoch's bytes, :attr:`total_weight`);
the default ``thresh`` takes ``expected_epoch_bytes`` (default ``expected_epoch_items *
MEAN_PACKET_BYTES``). Packet counting (the default) keeps its kernels, state and snapshots byte for
byte. Byte weighting is one-pass only.

Too small for the traffic (issue 20, docs/HIDDENSKETCH_OVERFLOW.md). When the peel cannot finish,
:meth:`HiddenSketch.decode` returns every key it can recover, flagged ``partial``: peeled keys exact,
the others with upper bounds from the residual Count-Min tightened by interval propagation (plain
Count-Min bounds after an enumeration overflow), reported largest bound first up to what the CM can
tell apart; never an under-count. Of the variants measured (``bench_hiddensketch.py --only
overflow_strategies``: orders of the bounded keys, room, tightening rounds) this keeps the most heavy
keys; :attr:`HiddenSketch.load_factor` (1: the decode starts to fail) warns without a decode.

Usage::

    hs = HiddenSketch(memory_bytes=55 * 1024, phi=1e-4)
    hs.update(batch); hs.heavy_hitters()          # [(key, estimate), ...]
    hs.decode()                                   # HHResult with decode_ok / overflow / counts
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Hashable, Iterable, Sequence

import numba as nb
import numpy as np

from telesketch.hashing import GOLDEN, _absorb, _initial_state, fmix64, hash64_5tuple, hash64_u32
from telesketch.intrinsics import mulhi_u64
from telesketch.jit import kernel, twin
from telesketch.packets import PacketBatch
from telesketch.sketches.core import NotMergeableError, SketchError, check_same_params, pack_state, unpack_state
from telesketch.sketches.core import EPOCHS, Rule, Sketch, Window

__all__ = ["HiddenSketch", "HiddenSketchParams", "HHResult", "seed_for"]

ALGORITHM = "hiddensketch"
#: State layout 2 adds the IPv6 companion (array ``ipv6_state``) and ``skipped_ipv6``; layout 1
#: (IPv4 only, written before IPv6) still loads.
STATE_VERSION = 2
_READABLE_VERSIONS = (2, 1)
_log = logging.getLogger(__name__)

_U64 = np.uint64
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
#: "infinite" FS estimate (every row saturated), larger than any threshold.
FS_INFINITE = np.int64(1) << np.int64(62)
_SEED_MUL = 1000003
_SEED_FS, _SEED_BLK, _SEED_CM, _SEED_BF = 100, 200, 300, 1000
_MAX_BF_ROWS = 64
_CM_ROWS = 3
_SKIP_CACHE = 4096  # direct-mapped cache of keys already in the RBF (per update chunk)
_BLOCK = 256  # items an update kernel hashes at once (its index buffers stay in L1)

# 5-tuple configuration (spec §5.4); B, bf_row_bits and M are this implementation's choice.
_TREE_13 = ((0, 104), (0, 56), (56, 104), (0, 33), (33, 56), (56, 80), (80, 104), (0, 22))
_SEGS_13 = (11, 11, 11, 11, 12, 12, 12, 12, 12)
_ROWS_13 = (10, 12, 12, 12, 12, 12, 12, 12)

# 16-byte (IPv6 address) configuration: 12 segments (eight of 11 bits, four of 10) and a tree whose
# leaves join two segments, so no node enumerates more than two segment factors (see docs/IPV6.md).
_SEGS_16 = (11, 11, 11, 11, 11, 11, 11, 11, 10, 10, 10, 10)
_TREE_16 = ((0, 128), (0, 66), (66, 128), (0, 33), (33, 66), (66, 98), (98, 128),
            (0, 22), (33, 55), (66, 88), (98, 118))
_ROWS_16 = (10,) + (12,) * 10
_SS16_FIXED = sum(_ROWS_16) * 2200 // 8 + 8 * sum(1 << b for b in _SEGS_16) // 8  # 16-byte SS less its CM


#: Sketch keys: source address, destination address (4 bytes each, big-endian), the 5-tuple (13
#: bytes), and the IPv6 forms of the addresses (16 bytes, network order; IPv4 rows v4-mapped).
KEYS = ("src_ip", "dst_ip", "5tuple", "src_ip6", "dst_ip6")
#: The 16-byte key that sketches the IPv6 rows of a 4-byte address sketch (the family split).
IPV6_COMPANION = {"src_ip": "src_ip6", "dst_ip": "dst_ip6"}
_KEY_BYTES = {"src_ip": 4, "dst_ip": 4, "5tuple": 13, "src_ip6": 16, "dst_ip6": 16}
_DEFAULT_MEMORY = {4: 55 * 1024, 13: 128 * 1024, 16: 128 * 1024}
#: What a sketch counts: each packet as 1, or its ``length`` in bytes (module docstring).
WEIGHTS = ("packets", "bytes")
#: Bytes per packet assumed for the default byte threshold when ``expected_epoch_bytes`` is not given.
MEAN_PACKET_BYTES = 700


def seed_for(seed: int, family: int, index: int = 0) -> int:
    """Seed of one hash function: ``seed * 1000003 + family + index`` (mod 2**64)."""
    return (int(seed) * _SEED_MUL + family + index) % (1 << 64)


_DECODE_POOLS: dict[int, ThreadPoolExecutor] = {}
_DECODE_POOLS_LOCK = threading.Lock()


def _decode_pool(threads: int) -> ThreadPoolExecutor:
    """One pool of ``threads`` decode threads per process, kept between decodes: starting the
    threads anew each time cost more than the decode of a paper-sized sketch (1.6 ms against
    0.7 ms serial for 16 blocks), and a service decodes on every heavy-hitter query."""
    with _DECODE_POOLS_LOCK:
        pool = _DECODE_POOLS.get(threads)
        if pool is None:
            pool = _DECODE_POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="hiddensketch-decode")
        return pool


# ============================================================================ parameters
@dataclass(frozen=True)
class HiddenSketchParams:
    """Parameters of a Hidden Sketch (spec §3). ``None`` fields take the key type's defaults.

    ``memory_bytes`` is the total; the second stage takes ``ss_bytes`` (spec §5.2) and the first
    stage the rest. ``thresh`` is the FS gate (an explicit count, or
    ``trunc(phi * expected_epoch_items - 10)`` clamped at 0). ``key`` is ``"src_ip"`` (4-byte
    keys: top talkers), ``"dst_ip"`` (4-byte keys: the most-targeted destinations, e.g. a DDoS
    victim whose packets come from many spoofed sources) or ``"5tuple"`` (13-byte keys). ``mode`` is ``"one_pass"`` (reference semantics) or
    ``"two_pass"`` (the mergeable variant of §9). ``weight`` is ``"packets"`` (default) or
    ``"bytes"`` (each packet counts its ``length``; ``thresh``, ``phi * N`` and answers in bytes,
    ``fs_counter_bits`` default 32, 64-bit CM, one-pass only; ``expected_epoch_bytes`` then sets the
    default ``thresh``: see the module docstring).
    """

    memory_bytes: int | None = None
    phi: float = 1e-4
    key: str = "src_ip"
    thresh: int | None = None
    expected_epoch_items: int = 2_500_000
    fs_rows: int = 3
    fs_counter_bits: int | None = None
    blocks: int | None = None
    seg_bits: tuple[int, ...] | None = None
    bf_intervals: tuple[tuple[int, int], ...] | None = None
    bf_rows: tuple[int, ...] | int | None = None
    bf_row_bits: tuple[int, ...] | int | None = None
    cm_bytes: int = 10_240
    max_enum: int = 1 << 24
    seed: int = 0
    mode: str = "one_pass"
    ipv6_memory_bytes: int | None = None
    weight: str = "packets"
    expected_epoch_bytes: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.weight not in WEIGHTS:
            raise SketchError(f"weight must be 'packets' or 'bytes', got {self.weight!r}")
        if self.fs_counter_bits is None:
            set_("fs_counter_bits", 32 if self.weight == "bytes" else 8)
        if self.key not in KEYS:
            raise SketchError(
                f"key must be 'src_ip' or 'dst_ip' (4-byte), '5tuple' (13-byte) or 'src_ip6' or 'dst_ip6' "
                f"(16-byte), got {self.key!r}"
            )
        nbytes = _KEY_BYTES[self.key]
        if self.memory_bytes is None:
            set_("memory_bytes", _DEFAULT_MEMORY[nbytes])
        if self.blocks is None:
            set_("blocks", 16 if nbytes == 4 else 8)
        if self.seg_bits is None:
            set_("seg_bits", {4: (8, 8, 8, 8), 13: _SEGS_13, 16: _SEGS_16}[nbytes])
        if self.bf_intervals is None:
            set_("bf_intervals", {4: ((0, 32), (0, 16), (16, 32)), 13: _TREE_13, 16: _TREE_16}[nbytes])
        set_("seg_bits", tuple(int(b) for b in self.seg_bits))
        set_("bf_intervals", tuple((int(s), int(e)) for s, e in self.bf_intervals))
        n_bf = len(self.bf_intervals)
        if self.bf_rows is None:
            set_("bf_rows", {13: _ROWS_13, 16: _ROWS_16}.get(nbytes, (7,) * n_bf))
        if self.bf_row_bits is None:
            set_("bf_row_bits", 2200)
        for name in ("bf_rows", "bf_row_bits"):
            value = getattr(self, name)
            value = (int(value),) * n_bf if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
            if len(value) != n_bf:
                raise SketchError(f"{name} needs one entry per Bloom filter ({n_bf}), got {len(value)}")
            set_(name, value)
        allowed_bits = (8, 16, 32) if self.weight == "bytes" else (8, 16)
        if self.fs_counter_bits not in allowed_bits:
            raise SketchError(f"fs_counter_bits must be one of {allowed_bits} for weight {self.weight!r}, "
                              f"got {self.fs_counter_bits}")
        if not 0.0 < self.phi < 1.0:
            raise SketchError(f"phi must be in (0, 1), got {self.phi}")
        if self.weight == "bytes" and self.mode != "one_pass":
            raise SketchError("weight='bytes' is one-pass only (mode='one_pass')")
        if self.expected_epoch_bytes is not None and self.weight != "bytes":
            raise SketchError("expected_epoch_bytes needs weight='bytes' (a packet sketch takes expected_epoch_items)")
        if self.thresh is None:
            if self.expected_epoch_items <= 0:
                raise SketchError(f"expected_epoch_items must be positive, got {self.expected_epoch_items}")
            if self.expected_epoch_bytes is not None and self.expected_epoch_bytes <= 0:
                raise SketchError(f"expected_epoch_bytes must be positive, got {self.expected_epoch_bytes}")
            expected = self.expected_epoch_items
            if self.weight == "bytes":
                expected = self.expected_epoch_bytes or self.expected_epoch_items * MEAN_PACKET_BYTES
            set_("thresh", max(0, int(self.phi * expected - 10)))
        set_("thresh", int(self.thresh))
        self._validate()

    def _validate(self) -> None:
        cap = (1 << self.fs_counter_bits) - 1
        if not 0 <= self.thresh < cap:
            raise SketchError(
                f"thresh {self.thresh} must be in [0, {cap}) for {self.fs_counter_bits}-bit FS counters "
                "(use fs_counter_bits=16 or a smaller expected_epoch_items / phi)"
            )
        if self.mode not in ("one_pass", "two_pass"):
            raise SketchError(f"mode must be 'one_pass' or 'two_pass', got {self.mode!r}")
        if not 1 <= self.fs_rows <= 8:
            raise SketchError(f"fs_rows must be in [1, 8], got {self.fs_rows}")
        if not 1 <= self.blocks <= 4096:
            raise SketchError(f"blocks must be in [1, 4096], got {self.blocks}")
        if any(not 1 <= b <= 24 for b in self.seg_bits):
            raise SketchError(f"every segment must have 1..24 bits, got {self.seg_bits}")
        if sum(self.seg_bits) != 8 * self.key_bytes:
            raise SketchError(f"seg_bits {self.seg_bits} must sum to {8 * self.key_bytes} (the key length in bits)")
        if any(not 1 <= r <= _MAX_BF_ROWS for r in self.bf_rows):
            raise SketchError(f"bf_rows must be in [1, {_MAX_BF_ROWS}], got {self.bf_rows}")
        if any(b < 1 for b in self.bf_row_bits):
            raise SketchError(f"bf_row_bits must be positive, got {self.bf_row_bits}")
        if self.cm_bytes < self.cm_counter_bytes * _CM_ROWS:
            raise SketchError(f"cm_bytes must be at least {self.cm_counter_bytes * _CM_ROWS}, got {self.cm_bytes}")
        if self.max_enum < 1:
            raise SketchError(f"max_enum must be positive, got {self.max_enum}")
        if not 0 <= self.seed < 2**32:
            raise SketchError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.ipv6_memory_bytes is not None and self.ipv6_memory_bytes < 0:
            raise SketchError(f"ipv6_memory_bytes must be >= 0 (0: IPv6 rows not sketched), got {self.ipv6_memory_bytes}")
        if self.ipv6_memory_bytes and self.key not in IPV6_COMPANION:
            raise SketchError(f"ipv6_memory_bytes is for key 'src_ip' or 'dst_ip' (key {self.key!r} has no IPv6 companion)")
        build_tree(self.bf_intervals, self.seg_bits, 8 * self.key_bytes)
        if self.fs_bytes <= 0 or self.fs_width < 1:
            raise SketchError(
                f"memory_bytes {self.memory_bytes} leaves no room for the first stage: the second stage "
                f"alone takes {self.ss_bytes} bytes"
            )
        if self.fs_width >= 2**31:
            raise SketchError(f"first stage too wide ({self.fs_width} counters per row)")
        if self.key in IPV6_COMPANION:  # a bad ipv6_memory_bytes fails here, not at the first IPv6 row
            try:
                self.ipv6_companion()
            except SketchError as exc:
                raise SketchError(f"ipv6_memory_bytes {self.ipv6_memory_bytes}: the IPv6 companion: {exc}") from None

    # ------------------------------------------------------------------ derived sizes (spec §5.2)
    @property
    def key_bytes(self) -> int:
        return _KEY_BYTES[self.key]

    def ipv6_companion(self) -> "HiddenSketchParams | None":
        """Parameters of the 16-byte sketch that takes the IPv6 rows of a 4-byte address sketch.

        Same ``phi``, ``thresh``, FS rows and counter width, CM, ``max_enum``, seed and mode (so a
        key's gate and report rule are those of an IPv4 key); the 16-byte default layout; memory
        ``ipv6_memory_bytes``, by default that of a 16-byte sketch (128 KiB) or, if more, the
        16-byte second stage plus this sketch's first stage. ``None`` for other keys or
        ``ipv6_memory_bytes=0`` (IPv6 rows then only counted, in ``skipped_ipv6``).
        """
        if self.key not in IPV6_COMPANION or self.ipv6_memory_bytes == 0:
            return None
        memory = self.ipv6_memory_bytes
        if memory is None:
            memory = max(_DEFAULT_MEMORY[16], self.cm_bytes + _SS16_FIXED + self.fs_bytes)
        return HiddenSketchParams(
            memory_bytes=memory, phi=self.phi, key=IPV6_COMPANION[self.key], thresh=self.thresh,
            expected_epoch_items=self.expected_epoch_items, fs_rows=self.fs_rows,
            fs_counter_bits=self.fs_counter_bits, cm_bytes=self.cm_bytes, max_enum=self.max_enum,
            seed=self.seed, mode=self.mode, weight=self.weight)

    @property
    def ss_bytes(self) -> int:
        """Second-stage bytes: CM + Bloom filters + segment bitmaps."""
        bfs = sum(r * b for r, b in zip(self.bf_rows, self.bf_row_bits)) // 8
        bitmaps = self.blocks * sum(1 << b for b in self.seg_bits) // 8
        return self.cm_bytes + bfs + bitmaps

    @property
    def fs_bytes(self) -> int:
        return self.memory_bytes - self.ss_bytes

    @property
    def fs_width(self) -> int:
        """Counters per FS row: ``fs_bytes * 8 // fs_rows // fs_counter_bits``."""
        return self.fs_bytes * 8 // self.fs_rows // self.fs_counter_bits

    @property
    def cm_counter_bytes(self) -> int:
        """Bytes of one CM counter: 4 (``uint32``) counting packets, 8 (``uint64``) counting bytes."""
        return 8 if self.weight == "bytes" else 4

    @property
    def cm_width(self) -> int:
        """Counters per CM row: ``cm_bytes // 3 // 4`` (``// 8`` byte-weighted)."""
        return self.cm_bytes // _CM_ROWS // self.cm_counter_bytes

    def to_dict(self) -> dict:
        """The parameters as stored in a snapshot; a packet sketch's lack the byte-only keys, so its
        snapshots stay byte-identical to those written before byte weighting."""
        d = asdict(self)
        if self.weight == "packets":
            del d["weight"], d["expected_epoch_bytes"]
        return d

    @property
    def fs_cap(self) -> int:
        return (1 << self.fs_counter_bits) - 1

    @classmethod
    def from_dict(cls, d: dict) -> "HiddenSketchParams":
        d = dict(d)
        for name in ("seg_bits", "bf_rows", "bf_row_bits"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        if d.get("bf_intervals") is not None:
            d["bf_intervals"] = tuple(tuple(iv) for iv in d["bf_intervals"])
        return cls(**d)


# ============================================================================ interval tree (§5.3)
@dataclass
class _Tree:
    parent: list[int]
    children: list[list[int]]
    suffix: list[tuple[int, int]]  # segment index range [lo, hi) covering each node's uncovered suffix
    post_order: list[int]


def build_tree(intervals: Sequence[tuple[int, int]], seg_bits: Sequence[int], key_bits: int) -> _Tree:
    """Interval tree of the partial-key Bloom filters (spec §5.3), validated; raises SketchError."""
    if not intervals:
        raise SketchError("bf_intervals must not be empty")
    if tuple(intervals[0]) != (0, key_bits):
        raise SketchError(f"the first bf interval must be the whole key [0, {key_bits}), got {intervals[0]}")
    bounds = np.concatenate([[0], np.cumsum(seg_bits)]).tolist()
    n = len(intervals)
    parent, children = [-1] * n, [[] for _ in range(n)]
    depth = [0] * n
    for j in range(1, n):
        s, e = intervals[j]
        if not 0 <= s < e <= key_bits:
            raise SketchError(f"bf interval {intervals[j]} is not a non-empty part of [0, {key_bits})")
        holders = [i for i in range(j) if intervals[i][0] <= s and e <= intervals[i][1]]
        if not holders:
            raise SketchError(f"bf interval {intervals[j]} is not inside any earlier interval")
        p = max(holders, key=lambda i: (depth[i], i))
        parent[j], depth[j] = p, depth[p] + 1
        children[p].append(j)
    suffix = []
    for j, (s, e) in enumerate(intervals):
        pos = s
        for c in children[j]:
            if intervals[c][0] != pos:
                raise SketchError(
                    f"children of bf interval {intervals[j]} must be contiguous from its start; "
                    f"{intervals[c]} starts at {intervals[c][0]}, expected {pos}"
                )
            pos = intervals[c][1]
        if pos not in bounds or e not in bounds:
            raise SketchError(
                f"the uncovered part [{pos}, {e}) of bf interval {intervals[j]} must consist of whole "
                f"segments (segment boundaries {bounds})"
            )
        suffix.append((bounds.index(pos), bounds.index(e)))
    post_order: list[int] = []

    def visit(j: int) -> None:
        for c in children[j]:
            visit(c)
        post_order.append(j)

    visit(0)
    return _Tree(parent, children, suffix, post_order)


class _Layout:
    """Numba-ready arrays derived from the parameters: seeds, segment and Bloom-filter layout, tree."""

    def __init__(self, p: HiddenSketchParams):
        self.nbytes = p.key_bytes
        self.fs_seeds = np.array([seed_for(p.seed, _SEED_FS, r) for r in range(p.fs_rows)], np.uint64)
        self.cm_seeds = np.array([seed_for(p.seed, _SEED_CM, r) for r in range(_CM_ROWS)], np.uint64)
        self.blk_seed = np.uint64(seed_for(p.seed, _SEED_BLK))
        starts = np.concatenate([[0], np.cumsum(p.seg_bits)[:-1]])
        words = [max(1, (1 << b) // 64) for b in p.seg_bits]
        # seg_layout[i] = (start bit, bits, first word in a block's row)
        self.seg_layout = np.array(
            [(int(s), b, int(o)) for s, b, o in zip(starts, p.seg_bits, np.concatenate([[0], np.cumsum(words)[:-1]]))],
            np.int64,
        )
        self.seg_words = int(sum(words))
        base = np.concatenate([[0], np.cumsum(p.bf_rows)[:-1]])
        # bf_layout[j] = (start, end, first row, rows, bits per row)
        self.bf_layout = np.array(
            [(s, e, int(b), r, w) for (s, e), b, r, w in zip(p.bf_intervals, base, p.bf_rows, p.bf_row_bits)],
            np.int64,
        )
        self.bf_total_rows = int(sum(p.bf_rows))
        self.bf_words = max((w + 63) // 64 for w in p.bf_row_bits)
        self.bf_seeds = np.array(
            [seed_for(p.seed, _SEED_BF, 64 * j + r) for j, rows in enumerate(p.bf_rows) for r in range(rows)],
            np.uint64,
        )
        tree = build_tree(p.bf_intervals, p.seg_bits, 8 * p.key_bytes)
        self.post_order = np.array(tree.post_order, np.int64)
        ptr = np.concatenate([[0], np.cumsum([len(c) for c in tree.children])])
        self.child_ptr = ptr.astype(np.int64)
        self.child_idx = np.array([c for cs in tree.children for c in cs] or [0], np.int64)
        self.suffix = np.array(tree.suffix, np.int64).reshape(-1, 2)
        # The update kernels' hashing and modulo constants (same hashes, cheaper per item): the
        # seed part of every hash (``_initial_state(seed, key_bytes)``, two of a 4-byte hash's four
        # mixing rounds) and the reciprocal of every table width (``_fastmod_magic``).
        init = lambda seeds: np.array([_initial_state(_U64(x), _U64(self.nbytes)) for x in seeds], np.uint64)  # noqa: E731
        self.fs_init = init(self.fs_seeds)
        self.cm_init = init(self.cm_seeds)
        self.blk_init = init([self.blk_seed])[0]
        self.bf_init = init(self.bf_seeds)
        self.fs_magic = _fastmod_magic(p.fs_width)
        self.cm_magic = _fastmod_magic(p.cm_width)
        self.blk_magic = _fastmod_magic(p.blocks)
        self.bf_magic = np.array([_fastmod_magic(w) for w in p.bf_row_bits], np.uint64)


def _fastmod_magic(width: int) -> np.uint64:
    """``floor((2**64 - 1) / width)``: with it :func:`_fastmod` computes ``h % width`` exactly."""
    if not 1 <= int(width) < 2**63:
        raise SketchError(f"table width must be in [1, 2**63), got {width}")
    return np.uint64(((1 << 64) - 1) // int(width))


# ============================================================================ Numba kernels: keys
@twin(inline=True)
def _bswap32(x):
    x = x & _U64(0xFFFFFFFF)
    return (
        ((x & _U64(0xFF)) << _U64(24))
        | ((x & _U64(0xFF00)) << _U64(8))
        | ((x >> _U64(8)) & _U64(0xFF00))
        | (x >> _U64(24))
    )


@twin(inline=True)
def _bswap64(x):
    return (_bswap32(x) << _U64(32)) | _bswap32(x >> _U64(32))


@twin(nb.uint64(nb.uint64, nb.uint64, nb.uint64))
def hash64_u128(w0, w1, seed):
    """Hash of a 16-byte key given as its two big-endian ``uint64`` words (bytes 0..7, 8..15):
    ``telesketch.hashing.hash_bytes`` of the 16 bytes (an IPv6 address in network order)."""
    h = _initial_state(seed, _U64(16))
    h = _absorb(h, w0)
    h = _absorb(h, w1)
    return fmix64(h)


@twin(inline=True, device_inline=False)
def _hash_key(lo, hi, nbytes, seed):
    """Hash of the ``nbytes``-byte little-endian buffer of the integer ``(hi << 64) | lo``."""
    if nbytes == 4:
        return hash64_u32(np.uint32(_bswap32(lo)), seed)
    w0 = _bswap64(lo)  # bytes 0..7 read big-endian
    w1 = _bswap64(hi)  # bytes 8..12 (13..15 zero), or 8..15 of a 16-byte key
    if nbytes == 16:
        return hash64_u128(w0, w1, seed)
    return hash64_5tuple(
        np.uint32(w0 >> _U64(32)),
        np.uint32(w0 & _U64(0xFFFFFFFF)),
        np.uint16(w1 >> _U64(48)),
        np.uint16((w1 >> _U64(32)) & _U64(0xFFFF)),
        np.uint8((w1 >> _U64(24)) & _U64(0xFF)),
        seed,
    )


@twin(inline=True)
def _shr128(lo, hi, s):
    if s == 0:
        return lo, hi
    if s >= 64:
        return hi >> _U64(s - 64), _ZERO
    return (lo >> _U64(s)) | (hi << _U64(64 - s)), hi >> _U64(s)


@kernel(inline="always")
def _shl128(lo, hi, s):
    if s == 0:
        return lo, hi
    if s >= 64:
        return _ZERO, lo << _U64(s - 64)
    return lo << _U64(s), (hi << _U64(s)) | (lo >> _U64(64 - s))


@twin(inline=True)
def _low_bits128(lo, hi, nbits):
    if nbits >= 128:
        return lo, hi
    if nbits >= 64:
        return lo, hi & ((_ONE << _U64(nbits - 64)) - _ONE)
    return lo & ((_ONE << _U64(nbits)) - _ONE), _ZERO


@twin(inline=True)
def _partial(lo, hi, start, end):
    """Bits ``[start, end)`` of a key moved to positions ``0 .. end-start-1``."""
    a, b = _shr128(lo, hi, start)
    return _low_bits128(a, b, end - start)


@kernel(inline="always")
def _bf_query(bf, bf_layout, j, bf_seeds, lo, hi, nbytes):
    row0, rows, bits = bf_layout[j, 2], bf_layout[j, 3], _U64(bf_layout[j, 4])
    for r in range(rows):
        h = _hash_key(lo, hi, nbytes, bf_seeds[row0 + r]) % bits
        if not (bf[row0 + r, h >> _U64(6)] >> (h & _U64(63))) & _ONE:
            return False
    return True


@kernel(inline="always")
def _fs_query_one(fs, fs_seeds, width, cap, lo, hi, nbytes):
    est = FS_INFINITE
    for r in range(fs_seeds.shape[0]):
        v = np.int64(fs[r, _hash_key(lo, hi, nbytes, fs_seeds[r]) % _U64(width)])
        if v < cap and v < est:
            est = v
    return est


# ============================================================================ Numba kernels: update
# The update kernels below hash with :func:`_hash_pre` and reduce with :func:`_fastmod`: the same
# numbers as ``_hash_key(lo, hi, nbytes, seed) % width``, for half the mixing rounds (the seed's two
# are precomputed in ``_Layout``) and a multiply instead of a 64-bit division (the generated code
# ran one ``divq`` per hash, 28 per second-stage item). Plain ``@kernel`` helpers: LLVM inlines them.
@kernel
def _hash_pre(init, lo, hi, nbytes):
    """``_hash_key(lo, hi, nbytes, seed)`` given ``init = _initial_state(seed, nbytes)``
    (``telesketch.hashing``: ``hash64_u32``, ``hash64_5tuple`` or ``hash64_u128`` of the key)."""
    if nbytes == 4:
        return fmix64(fmix64(init ^ (_bswap32(lo) << _U64(32))) + GOLDEN)
    h = fmix64(init ^ _bswap64(lo)) + GOLDEN
    w1 = _bswap64(hi)
    if nbytes == 13:  # hash64_5tuple takes bytes 8..12 only
        w1 &= _U64(0xFFFFFFFFFF000000)
    return fmix64(fmix64(h ^ w1) + GOLDEN)


@kernel
def _fastmod(h, width, magic):
    """``h % width`` for ``uint64`` ``h`` and ``magic = floor((2**64 - 1) / width)``: the
    quotient estimate ``mulhi(h, magic)`` is ``h // width`` or one less (``magic >= 2**64 / width
    - 1``, so ``h * magic / 2**64 > h / width - 1``), hence one correction."""
    r = h - mulhi_u64(h, magic) * width
    if r >= width:
        r -= width
    return r


@kernel
def _hash_block(fs_init, block_lo, block_hi, nbytes, w, magic, idx):
    """``idx[r, k]``: the Frequency Sketch column of item ``k`` of a block in row ``r`` (``uint64``),
    for the ``len(block_lo)`` items of one block of the gates below."""
    for r in range(fs_init.shape[0]):
        seed, row = fs_init[r], idx[r]
        for k in range(block_lo.shape[0]):  # 1-D views: this indexing vectorises (``idx[r, k]`` ran at half speed)
            row[k] = _fastmod(_hash_pre(seed, block_lo[k], block_hi[k], nbytes), w, magic)


@kernel
def _fs_gate(lo, hi, nbytes, fs, fs_init, width, magic, cap, thresh, gated):
    """Serial FS update (spec §6) in arrival order; writes the indices of gated items, returns count.

    The gate value is the minimum over non-saturated rows of the incremented counters; an item
    whose rows are all saturated has an "infinite" gate value and passes. ``fs_init`` and
    ``magic``: ``_Layout.fs_init`` / ``fs_magic`` (the rows' hash seeds and width, precomputed).

    Blocks of :data:`_BLOCK` items: first every row's counter index of the block (a loop without
    stores to the sketch, which LLVM vectorises), then the counters in arrival order, without
    branches on the saturation or the gate (both are data-dependent coin flips on real traffic).
    """
    w = _U64(width)
    rows = fs_init.shape[0]
    n = lo.shape[0]
    idx = np.empty((rows, _BLOCK), np.uint64)
    n_gated = 0
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        _hash_block(fs_init, lo[start:start + m], hi[start:start + m], nbytes, w, magic, idx)
        for k in range(m):
            g = FS_INFINITE
            for r in range(rows):
                c = idx[r, k]
                v = np.int64(fs[r, c])
                live = v < cap
                v += np.int64(live)
                fs[r, c] = v
                g = min(g, v if live else FS_INFINITE)
            gated[n_gated] = start + k
            n_gated += np.int64(g > thresh)
    return n_gated


@kernel
def _fs_gate_weighted(lo, hi, nbytes, weights, fs, fs_init, width, magic, cap, thresh, gated, passed):
    """:func:`_fs_gate` with a weight per item (bytes): each row adds ``weights[i]`` saturating at
    ``cap``; an item whose gate value ``g`` passes ``thresh`` goes on with ``passed = min(w, g -
    thresh)`` (its weight above the gate; ``w`` when every row is saturated). Zero weights change
    nothing. Returns the count of gated items. Blocks of hashes first, as :func:`_fs_gate`."""
    w = _U64(width)
    rows = fs_init.shape[0]
    n = lo.shape[0]
    idx = np.empty((rows, _BLOCK), np.uint64)
    n_gated = 0
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        _hash_block(fs_init, lo[start:start + m], hi[start:start + m], nbytes, w, magic, idx)
        for k in range(m):
            wt = np.int64(weights[start + k])
            if wt <= 0:
                continue
            g = FS_INFINITE
            for r in range(rows):
                c = idx[r, k]
                v = np.int64(fs[r, c])
                if v < cap:
                    v = min(v + wt, cap)
                    fs[r, c] = v
                    if v < g:
                        g = v
            if g > thresh:
                gated[n_gated] = start + k
                passed[n_gated] = wt if g == FS_INFINITE else min(wt, g - thresh)
                n_gated += 1
    return n_gated


@kernel
def _fs_query_many(lo, hi, nbytes, fs, fs_seeds, width, cap, out):
    for i in range(lo.shape[0]):
        out[i] = _fs_query_one(fs, fs_seeds, width, cap, lo[i], hi[i], nbytes)


#: ``amounts`` of :func:`_ss_insert` for packet counting: every item adds 1
UNIT_AMOUNTS = np.zeros(0, np.int64)


@kernel
def _ss_insert(lo, hi, sel, amounts, nbytes, n_blocks, blk_init, blk_magic, seg_layout, bf_layout, bf_init,
               bf_magic, cm_init, w_cm, cm_magic, seg, bf, cm):
    """``ss_insert(key, amount)`` (spec §6) for the items ``sel[t]`` into the given SEG / BF / CM
    arrays: the CM rows get ``amounts[t]`` (byte weighting), or 1 when ``amounts`` is empty
    (:data:`UNIT_AMOUNTS`, packet counting); the bitmaps and Bloom filters get the key. The hash
    constants (``*_init``, ``*_magic``) are ``_Layout``'s.

    Bitmap and Bloom-filter writes are idempotent, so a key found in a small direct-mapped cache of
    keys already inserted by this call skips them (it still adds to the CM). The insert is
    commutative (additions and ORs), so it runs in blocks of :data:`_BLOCK` items, each stage's
    hashes first over the whole block (vectorised loops), then the writes: the CM of every item,
    then the bitmaps and filters of the keys the cache missed.
    """
    wc = _U64(w_cm)
    nb_ = _U64(n_blocks)
    unit = amounts.shape[0] == 0
    cm_rows = cm_init.shape[0]
    cache_lo = np.zeros(_SKIP_CACHE, np.uint64)
    cache_hi = np.zeros(_SKIP_CACHE, np.uint64)
    cache_ok = np.zeros(_SKIP_CACHE, np.bool_)
    klo = np.empty(_BLOCK, np.uint64)
    khi = np.empty(_BLOCK, np.uint64)
    h0 = np.empty(_BLOCK, np.uint64)
    cidx = np.empty((cm_rows, _BLOCK), np.uint64)
    mlo = np.empty(_BLOCK, np.uint64)
    mhi = np.empty(_BLOCK, np.uint64)
    plo = np.empty(_BLOCK, np.uint64)
    phi_ = np.empty(_BLOCK, np.uint64)
    hbuf = np.empty(_BLOCK, np.uint64)
    n = sel.shape[0]
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        for k in range(m):
            i = sel[start + k]
            klo[k] = lo[i]
            khi[k] = hi[i]
        seed = cm_init[0]
        for k in range(m):
            h0[k] = _hash_pre(seed, klo[k], khi[k], nbytes)
        row = cidx[0]
        for k in range(m):
            row[k] = _fastmod(h0[k], wc, cm_magic)
        for r in range(1, cm_rows):
            seed, row = cm_init[r], cidx[r]
            for k in range(m):
                row[k] = _fastmod(_hash_pre(seed, klo[k], khi[k], nbytes), wc, cm_magic)
        nm = 0
        for k in range(m):
            amount = _ONE if unit else _U64(amounts[start + k])
            for r in range(cm_rows):
                cm[r, cidx[r, k]] += amount
            slot = (h0[k] >> _U64(40)) & _U64(_SKIP_CACHE - 1)
            if cache_ok[slot] and cache_lo[slot] == klo[k] and cache_hi[slot] == khi[k]:
                continue
            cache_ok[slot], cache_lo[slot], cache_hi[slot] = True, klo[k], khi[k]
            mlo[nm] = klo[k]
            mhi[nm] = khi[k]
            nm += 1
        if nm == 0:
            continue
        for k in range(nm):
            hbuf[k] = _fastmod(_hash_pre(blk_init, mlo[k], mhi[k], nbytes), nb_, blk_magic)
        for k in range(nm):
            b = hbuf[k]
            for s in range(seg_layout.shape[0]):
                a, _ = _partial(mlo[k], mhi[k], seg_layout[s, 0], seg_layout[s, 0] + seg_layout[s, 1])
                seg[b, seg_layout[s, 2] + np.int64(a >> _U64(6))] |= _ONE << (a & _U64(63))
        for j in range(bf_layout.shape[0]):
            s0, e0 = bf_layout[j, 0], bf_layout[j, 1]
            for k in range(nm):
                plo[k], phi_[k] = _partial(mlo[k], mhi[k], s0, e0)
            row0, bits, magic = bf_layout[j, 2], _U64(bf_layout[j, 4]), bf_magic[j]
            for r in range(bf_layout[j, 3]):
                seed = bf_init[row0 + r]
                for k in range(nm):
                    hbuf[k] = _fastmod(_hash_pre(seed, plo[k], phi_[k], nbytes), bits, magic)
                for k in range(nm):
                    h = hbuf[k]
                    bf[row0 + r, h >> _U64(6)] |= _ONE << (h & _U64(63))


# ============================================================================ Numba kernels: decode
@kernel
def _append(buf_lo, buf_hi, n, lo, hi):
    if n == buf_lo.shape[0]:
        new_lo = np.empty(2 * n + 16, np.uint64)
        new_hi = np.empty(2 * n + 16, np.uint64)
        new_lo[:n] = buf_lo[:n]
        new_hi[:n] = buf_hi[:n]
        buf_lo, buf_hi = new_lo, new_hi
    buf_lo[n] = lo
    buf_hi[n] = hi
    return buf_lo, buf_hi


@kernel
def _decode_block(b, seg, seg_layout, bf, bf_layout, bf_seeds, blk_seed, n_blocks, nbytes,
                  post_order, child_ptr, child_idx, suffix, max_enum):
    """Candidate enumeration of one block (spec §7.1).

    Returns ``(lo, hi, overflow, enumerated)``: the block's candidate keys (root candidates whose
    block hash is ``b``), whether some node's Cartesian product exceeded ``max_enum`` (then no
    candidates), and the number of combinations tested against the Bloom filters.
    """
    n_nodes = post_order.shape[0]
    cand_lo = [np.empty(0, np.uint64) for _ in range(n_nodes)]
    cand_hi = [np.empty(0, np.uint64) for _ in range(n_nodes)]
    enumerated = 0
    for t in range(n_nodes):
        j = post_order[t]
        start = bf_layout[j, 0]
        n_child = child_ptr[j + 1] - child_ptr[j]
        s_lo, s_hi = suffix[j, 0], suffix[j, 1]
        n_fac = n_child + (s_hi - s_lo)
        sizes = np.zeros(n_fac, np.int64)
        for k in range(n_child):
            sizes[k] = cand_lo[child_idx[child_ptr[j] + k]].shape[0]
        for s in range(s_lo, s_hi):
            cnt = 0
            for w in range(max(1, (1 << seg_layout[s, 1]) // 64)):
                x = seg[b, seg_layout[s, 2] + w]
                while x:
                    x &= x - _ONE
                    cnt += 1
            sizes[n_child + s - s_lo] = cnt
        total = 1
        for k in range(n_fac):
            if sizes[k] == 0:
                total = 0
                break
        if total:
            for k in range(n_fac):
                total *= sizes[k]
                if total > max_enum:
                    return np.empty(0, np.uint64), np.empty(0, np.uint64), True, enumerated
        # factor values, already shifted into place relative to the node's start
        ptr = np.zeros(n_fac + 1, np.int64)
        for k in range(n_fac):
            ptr[k + 1] = ptr[k] + sizes[k]
        f_lo = np.empty(ptr[n_fac], np.uint64)
        f_hi = np.empty(ptr[n_fac], np.uint64)
        for k in range(n_child):
            c = child_idx[child_ptr[j] + k]
            off = bf_layout[c, 0] - start
            for m in range(sizes[k]):
                f_lo[ptr[k] + m], f_hi[ptr[k] + m] = _shl128(cand_lo[c][m], cand_hi[c][m], off)
        for s in range(s_lo, s_hi):
            k = n_child + s - s_lo
            off = seg_layout[s, 0] - start
            m = 0
            for v in range(1 << seg_layout[s, 1]):
                if (seg[b, seg_layout[s, 2] + (v >> 6)] >> _U64(v & 63)) & _ONE:
                    f_lo[ptr[k] + m], f_hi[ptr[k] + m] = _shl128(_U64(v), _ZERO, off)
                    m += 1
        out_lo = np.empty(16, np.uint64)
        out_hi = np.empty(16, np.uint64)
        n_out = 0
        digits = np.zeros(n_fac, np.int64)
        for _ in range(total):
            x_lo, x_hi = _ZERO, _ZERO
            for k in range(n_fac):
                x_lo |= f_lo[ptr[k] + digits[k]]
                x_hi |= f_hi[ptr[k] + digits[k]]
            if _bf_query(bf, bf_layout, j, bf_seeds, x_lo, x_hi, nbytes):
                out_lo, out_hi = _append(out_lo, out_hi, n_out, x_lo, x_hi)
                n_out += 1
            k = n_fac - 1  # last factor varies fastest
            while k >= 0:
                digits[k] += 1
                if digits[k] < sizes[k]:
                    break
                digits[k] = 0
                k -= 1
        enumerated += total
        cand_lo[j] = out_lo[:n_out]
        cand_hi[j] = out_hi[:n_out]
    root = post_order[n_nodes - 1]
    keep = np.zeros(cand_lo[root].shape[0], np.bool_)
    for m in range(keep.shape[0]):
        keep[m] = _hash_key(cand_lo[root][m], cand_hi[root][m], nbytes, blk_seed) % _U64(n_blocks) == _U64(b)
    return cand_lo[root][keep], cand_hi[root][keep], False, enumerated


@kernel
def _peel(lo, hi, nbytes, cm, cm_seeds, w_cm):
    """Peel the CM over the candidate set (spec §7.3), FIFO queue.

    Returns ``(f_ss, all_zero, resolved, residual)``: ``resolved[x]`` is true for candidates the
    peel settled (a count from a pure bucket, or 0 from an empty one); ``residual`` is the CM
    (``int64[rows * w]``, row-major) minus the settled counts, i.e. the sum, per bucket, of what the
    unresolved keys (and keys missing from the candidate set) put there.
    """
    n, rows, w = lo.shape[0], cm.shape[0], cm.shape[1]
    n_buckets = rows * w
    bucket = np.empty((n, rows), np.int64)
    live = np.zeros(n_buckets, np.int64)
    for x in range(n):
        for r in range(rows):
            q = r * w + np.int64(_hash_key(lo[x], hi[x], nbytes, cm_seeds[r]) % _U64(w_cm))
            bucket[x, r] = q
            live[q] += 1
    ptr = np.zeros(n_buckets + 1, np.int64)
    for q in range(n_buckets):
        ptr[q + 1] = ptr[q] + live[q]
    fill = ptr[:-1].copy()
    members = np.empty(n * rows, np.int64)
    for x in range(n):  # members of every bucket in candidate order
        for r in range(rows):
            q = bucket[x, r]
            members[fill[q]] = x
            fill[q] += 1
    counter = cm.astype(np.int64).ravel()
    removed = np.zeros(n, np.bool_)
    f_ss = np.zeros(n, np.int64)
    queue = np.empty(n_buckets + rows * n + 1, np.int64)
    head, tail = 0, 0
    for q in range(n_buckets):
        if live[q] == 1 or (counter[q] == 0 and live[q] > 0):
            queue[tail] = q
            tail += 1
    while head < tail:
        q = queue[head]
        head += 1
        if live[q] == 0:
            continue
        if counter[q] == 0:  # every key here is a false positive
            for m in range(ptr[q], ptr[q + 1]):
                x = members[m]
                if removed[x]:
                    continue
                removed[x] = True
                for r in range(rows):
                    q2 = bucket[x, r]
                    live[q2] -= 1
                    if live[q2] == 1:
                        queue[tail] = q2
                        tail += 1
            continue
        if live[q] != 1:
            continue
        x = -1
        for m in range(ptr[q], ptr[q + 1]):
            if not removed[members[m]]:
                x = members[m]
                break
        f_ss[x] = counter[q]
        removed[x] = True
        for r in range(rows):
            q2 = bucket[x, r]
            counter[q2] -= f_ss[x]
            live[q2] -= 1
            if live[q2] == 1 or (counter[q2] == 0 and live[q2] > 0):
                queue[tail] = q2
                tail += 1
    all_zero = True
    for q in range(n_buckets):
        if counter[q] != 0:
            all_zero = False
            break
    return f_ss, all_zero, removed, counter


@kernel
def _tighten(buckets, residual, upper, unresolved, rounds):
    """Interval propagation over the residual CM of a complete candidate set (``int64`` in place).

    Every bucket's residual is exactly the sum of its unresolved keys' counts, all ``>= 0``. With
    ``lower`` starting at 0 and ``upper`` at a valid upper bound, each round applies, per key ``x``
    and bucket ``q`` of ``x``: ``upper[x] <= R_q - sum(lower of the others in q)`` and
    ``lower[x] >= R_q - sum(upper of the others in q)``. Both stay valid bounds of the true count.
    Only ``unresolved`` keys take part. Returns ``lower``.
    """
    n, rows = buckets.shape
    n_buckets = residual.shape[0]
    lower = np.zeros(n, np.int64)
    sum_lo = np.zeros(n_buckets, np.int64)
    sum_up = np.zeros(n_buckets, np.int64)
    for _ in range(rounds):
        sum_lo[:] = 0
        sum_up[:] = 0
        for x in range(n):
            if unresolved[x]:
                for r in range(rows):
                    sum_lo[buckets[x, r]] += lower[x]
                    sum_up[buckets[x, r]] += upper[x]
        changed = False
        for x in range(n):
            if not unresolved[x]:
                continue
            for r in range(rows):
                q = buckets[x, r]
                up = residual[q] - (sum_lo[q] - lower[x])
                lo_ = residual[q] - (sum_up[q] - upper[x])
                if up < upper[x]:
                    upper[x] = max(up, lower[x])
                    changed = True
                if lo_ > lower[x]:
                    lower[x] = min(lo_, upper[x])
                    changed = True
        if not changed:
            break
    return lower


@kernel
def _cm_buckets(lo, hi, nbytes, cm_seeds, w_cm, out):
    """``out[i, r] = r * w_cm + h_r(key i) % w_cm``: key ``i``'s bucket in the flat (row-major) CM."""
    wc = _U64(w_cm)
    for i in range(lo.shape[0]):
        for r in range(cm_seeds.shape[0]):
            out[i, r] = r * w_cm + np.int64(_hash_key(lo[i], hi[i], nbytes, cm_seeds[r]) % wc)


@kernel
def _cm_min_many(lo, hi, nbytes, cm, cm_seeds, w_cm, out):
    wc = _U64(w_cm)
    for i in range(lo.shape[0]):
        best = np.int64(cm[0, _hash_key(lo[i], hi[i], nbytes, cm_seeds[0]) % wc])
        for r in range(1, cm_seeds.shape[0]):
            best = min(best, np.int64(cm[r, _hash_key(lo[i], hi[i], nbytes, cm_seeds[r]) % wc]))
        out[i] = best


# ============================================================================ key conversion
def keys_to_words(keys, key_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Public keys -> internal ``(lo, hi)`` ``uint64`` words (little-endian integer of the key bytes).

    4-byte keys: numeric addresses (``uint32[n]`` or Python ints). 13- and 16-byte keys:
    ``uint8[n, k]`` rows, ``Vk`` scalars, or a sequence of ``k``-byte ``bytes``.
    """
    if key_bytes == 4:
        arr = np.asarray(keys)
        if arr.dtype != np.uint32:
            if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 0xFFFFFFFF):
                raise SketchError("4-byte keys must be integers in [0, 2**32)")
            arr = arr.astype(np.uint32)
        arr = np.ascontiguousarray(arr).ravel()
        return arr.byteswap().astype(np.uint64), np.zeros(arr.shape[0], np.uint64)
    k = key_bytes
    arr = keys
    if isinstance(keys, (list, tuple)):
        if any(not isinstance(x, (bytes, bytearray)) or len(x) != k for x in keys):
            raise SketchError(f"{k}-byte keys must be {k}-byte bytes objects")
        arr = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, k)
    arr = np.asarray(arr)
    if arr.dtype.kind == "V":
        if arr.dtype.itemsize != k:
            raise SketchError(f"{k}-byte keys expected, got {arr.dtype}")
        arr = np.ascontiguousarray(arr).view(np.uint8).reshape(-1, k)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != k:
        raise SketchError(f"{k}-byte keys must be uint8[n, {k}] rows or V{k} scalars, got {arr.dtype} {arr.shape}")
    padded = np.zeros((arr.shape[0], 16), np.uint8)
    padded[:, :k] = arr
    words = padded.view("<u8")
    return np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(words[:, 1])


def words_to_keys(lo: np.ndarray, hi: np.ndarray, key_bytes: int) -> list[Hashable]:
    """Internal words -> public keys: ``int`` addresses, 13-byte or 16-byte ``bytes``."""
    if key_bytes == 4:
        return np.asarray(lo, np.uint64).astype(np.uint32).byteswap().tolist()
    words = np.stack([np.asarray(lo, "<u8"), np.asarray(hi, "<u8")], axis=1)
    raw = words.view(np.uint8).reshape(-1, 16)
    return [row[:key_bytes].tobytes() for row in raw]


def _batch_words(batch, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The internal words of a PacketBatch's sketch keys, straight from its columns."""
    if key in ("src_ip6", "dst_ip6"):
        return keys_to_words(address16(batch, key[:3]), 16)
    src = np.asarray(batch.src_ip, np.uint32)
    if key in ("src_ip", "dst_ip"):
        address = src if key == "src_ip" else np.asarray(batch.dst_ip, np.uint32)
        return address.byteswap().astype(np.uint64), np.zeros(address.shape[0], np.uint64)
    u64 = lambda a: np.asarray(a).byteswap().astype(np.uint64)  # noqa: E731
    lo = u64(src) | (u64(np.asarray(batch.dst_ip, np.uint32)) << _U64(32))
    hi = (
        u64(np.asarray(batch.src_port, np.uint16))
        | (u64(np.asarray(batch.dst_port, np.uint16)) << _U64(16))
        | (np.asarray(batch.proto, np.uint8).astype(np.uint64) << _U64(32))
    )
    return lo, hi


def address16(batch, side: str) -> np.ndarray:
    """``uint8[n, 16]``: the ``side`` (``"src"`` or ``"dst"``) address of every row in network
    order, IPv6 rows as they are, IPv4 rows v4-mapped (``::ffff:a.b.c.d``)."""
    out = np.array(getattr(batch, side + "_ip6"), np.uint8, copy=True)
    v4 = ~np.asarray(batch.ipv6).astype(bool)
    if v4.any():
        out[v4, 10:12] = 0xFF
        out[v4, 12:16] = np.asarray(getattr(batch, side + "_ip"))[v4].astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def key_order(key) -> tuple[int, int]:
    """A sort key that orders a mix of IPv4 (``int``) and IPv6 (16-byte) keys: IPv4 first."""
    if isinstance(key, (int, np.integer)):
        return (0, int(key))
    return (len(key), int.from_bytes(bytes(key), "big"))


# ============================================================================ results
@dataclass
class HHResult:
    """Decode output of one epoch (spec §7.4).

    ``items``: ``[(key, f_hat)]`` reported (``f_hat > phi * N``), largest first. ``decode_ok``:
    no overflow and every CM counter peeled to zero (then counts are exact and recall is 1).
    ``overflow``: some block's enumeration exceeded ``max_enum``. ``n_candidates``: enumerated
    candidates; ``n_after_fs``: those the FS filter kept; ``n_ss_keys``: keys with ``f_SS > 0``.
    ``ss_counts``: ``{key: f_SS}`` for those keys. ``enumerated``: combinations tested.

    ``partial``: the decode did not finish (``not decode_ok``): keys may be missing and, with the
    default partial decode, the keys in ``bounded`` carry upper bounds (never under-counts) rather
    than peeled counts; ``ss_counts`` then holds ``estimate - thresh`` for every recovered key
    (``estimate`` in two-pass mode) and ``n_ss_keys`` counts the peeled ones.
    """

    items: list[tuple[Hashable, int]]
    decode_ok: bool
    overflow: bool
    n_candidates: int
    n_after_fs: int
    n_ss_keys: int
    enumerated: int
    ss_counts: dict = field(default_factory=dict, repr=False)
    partial: bool = False
    bounded: frozenset = field(default_factory=frozenset, repr=False)


# ============================================================================ the sketch
class HiddenSketch(Sketch):
    """Hidden Sketch over one epoch: heavy hitters, heavy changers and point queries.

    Construct with keyword parameters (see :class:`HiddenSketchParams`) or ``params=``. State:
    ``fs`` (``uint8|uint16[fs_rows, fs_width]``), ``seg`` (``uint64[blocks, words]`` packed
    segment bitmaps), ``bf`` (``uint64[total_bf_rows, words]`` packed Bloom-filter rows), ``cm``
    (``uint32[3, cm_width]``) and ``n_items`` (items of the epoch).

    ``mode="two_pass"`` (spec §9): ``update`` feeds pass 1 (FS only) until
    :meth:`begin_second_pass`, then pass 2 (SS only, gated by the merged FS); ``merge`` works in
    either pass between sketches in the same pass.
    """

    #: the FS gate runs item by item in arrival order and the second stage's adds and bit sets
    #: commute, in either pass and either family: joined batches leave the same state
    #: (``Sketch.batch_invariant``)
    batch_invariant = True

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """IPv6 rows are counted (module docstring: how)."""
        return True

    @classmethod
    def truth_params(cls, params: dict) -> dict:
        """The truth counts the same key (``5tuple`` is the exact kind's ``flow``)."""
        key = HiddenSketchParams(**params).key  # the params alone: no tables allocated
        return {"key": "flow" if key in ("flow", "5tuple") else key}

    def __init__(self, params: HiddenSketchParams | None = None, **kwargs):
        if params is None:
            params = HiddenSketchParams(**kwargs)
        elif kwargs:
            raise SketchError("give either params= or keyword parameters, not both")
        self.params = params
        self._layout = _Layout(params)
        p, lay = params, self._layout
        self.fs = np.zeros((p.fs_rows, p.fs_width), {8: np.uint8, 16: np.uint16, 32: np.uint32}[p.fs_counter_bits])
        self.seg = np.zeros((p.blocks, lay.seg_words), np.uint64)
        self.bf = np.zeros((lay.bf_total_rows, lay.bf_words), np.uint64)
        self.cm = np.zeros((_CM_ROWS, p.cm_width), np.uint64 if p.weight == "bytes" else np.uint32)
        self.n_items = 0
        #: bytes of the epoch (both families) of a byte-weighted sketch; 0 counting packets
        self.total_weight = 0
        self.epoch = 0
        self.phase = "one_pass" if p.mode == "one_pass" else "first"
        self._decoded: HHResult | None = None
        #: the 16-byte sketch of the IPv6 rows (address keys only; made at the first IPv6 row)
        self.ipv6: HiddenSketch | None = None
        #: IPv6 rows not sketched: a 5-tuple sketch (13-byte keys cannot hold them) or
        #: ``ipv6_memory_bytes=0``; logged once per sketch, never silent
        self.skipped_ipv6 = 0

    # ------------------------------------------------------------------ properties
    @property
    def memory_bytes(self) -> int:
        """Bytes of sketch state by the spec's accounting (FS counters + ``ss_bytes``), plus the
        IPv6 companion's once it exists (``ipv6_memory_bytes``, made at the first IPv6 row)."""
        p = self.params
        own = p.fs_rows * p.fs_width * p.fs_counter_bits // 8 + p.ss_bytes
        return own + (self.ipv6.memory_bytes if self.ipv6 is not None else 0)

    @property
    def thresh(self) -> int:
        return self.params.thresh

    @property
    def unit(self) -> str:
        """What counts and thresholds are in: ``"packets"`` or ``"bytes"``."""
        return self.params.weight

    @property
    def volume(self) -> int:
        """``N`` of ``phi * N``: the epoch's packets, or its bytes when byte-weighted."""
        return self.total_weight if self.params.weight == "bytes" else self.n_items

    @property
    def decode_ok(self) -> bool:
        return self.decode().decode_ok

    #: keys per CM bucket above which peeling a 3-row Count-Min fails (the 3-uniform hypergraph
    #: peeling threshold, c*_3 = 0.818), so ``load_factor`` 1 is where decodes start to fail
    PEEL_LIMIT = 0.818
    #: rounds of interval propagation over the residual CM in a partial decode (``_tighten``)
    TIGHTEN_ROUNDS = 8

    @property
    def ss_keys_estimate(self) -> float:
        """Distinct keys in the second stage, estimated from the fill of the whole-key Bloom filter
        (``-m ln(1 - set/m)`` per row, averaged; ``inf`` when a row is full). Cheap: no decode."""
        _, _, row0, rows, bits = self._layout.bf_layout[0].tolist()
        set_bits = np.unpackbits(self.bf[row0:row0 + rows].view(np.uint8), axis=1, bitorder="little")[:, :bits].sum(axis=1)
        fill = set_bits / bits
        if np.any(fill >= 1.0):
            return float("inf")
        return float(np.mean(-bits * np.log1p(-fill)))

    @property
    def load_factor(self) -> float:
        """Second-stage keys over what its Count-Min can peel (``PEEL_LIMIT * 3 * cm_width``).

        Above 1 the decode is expected to stop short (a partial answer): the sketch needs more
        memory for this traffic (``telesketch size`` says how much). Cheap enough for every epoch.
        With an IPv6 companion, the larger of the two families' load factors.
        """
        own = self.ss_keys_estimate / (self.PEEL_LIMIT * _CM_ROWS * self.params.cm_width)
        return own if self.ipv6 is None else max(own, self.ipv6.load_factor)

    @property
    def overflowed(self) -> bool:
        return self.decode().overflow

    # ------------------------------------------------------------------ update
    def update(self, batch) -> None:
        """Add every packet of a :class:`~telesketch.packets.PacketBatch` (key per ``params.key``).

        Address keys (``src_ip``/``dst_ip``) split the batch by family: IPv4 rows go to this
        sketch's 4-byte state exactly as before IPv6 existed, IPv6 rows to the 16-byte companion
        :attr:`ipv6` (both in arrival order; ``n_items`` counts both families, so ``phi * N`` is
        over all traffic). ``src_ip6``/``dst_ip6`` sketches take every row (IPv4 v4-mapped). A
        ``5tuple`` sketch (or ``ipv6_memory_bytes=0``) counts IPv6 rows in ``skipped_ipv6``.
        """
        if not isinstance(batch, PacketBatch):
            raise SketchError(f"update expects a PacketBatch, got {type(batch).__name__}; use update_keys() for arrays")
        key = self.params.key
        lo, hi = _batch_words(batch, key)
        weights = np.asarray(batch.length, np.int64) if self.params.weight == "bytes" else None
        if key in ("src_ip6", "dst_ip6") or not batch.has_ipv6():
            self._ingest(lo, hi, weights)
            return
        v6 = np.asarray(batch.ipv6).astype(bool)
        self._ingest(lo[~v6], hi[~v6], None if weights is None else weights[~v6])
        n6 = int(v6.sum())
        companion = self._ipv6_sketch()
        if companion is None:
            self._skip_ipv6(n6)
            return
        if self.phase != "second":
            self.n_items += n6
            if weights is not None:
                self.total_weight += int(weights[v6].sum())
        self._decoded = None
        companion._ingest(*keys_to_words(address16(batch[v6], key[:3]), 16),
                          None if weights is None else weights[v6])

    def _ipv6_sketch(self) -> "HiddenSketch | None":
        """The IPv6 companion, made (in this sketch's pass) on first use; ``None`` if there is none."""
        if self.ipv6 is None:
            params = self.params.ipv6_companion()
            if params is None:
                return None
            self.ipv6 = type(self)(params)
            self.ipv6.epoch = self.epoch
            if self.phase == "second":
                self.ipv6.begin_second_pass()
        return self.ipv6

    def _skip_ipv6(self, n: int) -> None:
        if self.skipped_ipv6 == 0:
            _log.warning("Hidden Sketch (key %s) does not sketch IPv6 rows: %d skipped so far; "
                         "counted in skipped_ipv6 (use key src_ip/dst_ip with ipv6_memory_bytes > 0)",
                         self.params.key, n)
        self.skipped_ipv6 += n

    def update_keys(self, keys, weights=None) -> None:
        """Add raw keys: ``uint32[n]`` addresses (4-byte) or ``uint8[n, 13]`` / ``V13`` (13-byte);
        ``weights`` (byte-weighted sketches only, required there): ``n`` non-negative integers."""
        lo, hi = keys_to_words(keys, self.params.key_bytes)
        if (weights is None) != (self.params.weight == "packets"):
            raise SketchError("weights are required by (and only by) a weight='bytes' sketch")
        if weights is not None:
            weights = np.asarray(weights)
            if weights.shape != lo.shape or weights.dtype.kind not in "iu" or (weights < 0).any():
                raise SketchError(f"weights must be {lo.shape[0]} non-negative integers, got {weights.dtype} {weights.shape}")
            weights = np.ascontiguousarray(weights, np.int64)
        self._ingest(lo, hi, weights)

    def _ingest(self, lo: np.ndarray, hi: np.ndarray, weights: np.ndarray | None = None) -> None:
        if lo.shape[0] == 0:
            return
        self._decoded = None
        if self.phase == "second":
            self._ss_pass(lo, hi)
            return
        p, lay = self.params, self._layout
        if weights is not None:  # byte weighting; packets keep the weight-1 gate below
            gated = np.empty(lo.shape[0], np.int64)
            passed = np.empty(lo.shape[0], np.int64)
            n_gated = _fs_gate_weighted(lo, hi, lay.nbytes, weights, self.fs, lay.fs_init, p.fs_width,
                                        lay.fs_magic, p.fs_cap, p.thresh, gated, passed)
            self.n_items += int(lo.shape[0])
            self.total_weight += int(weights.sum())
            if n_gated:
                self._ss_insert(lo, hi, gated[:n_gated], passed[:n_gated])
            return
        gated = np.empty(lo.shape[0], np.int64)
        n_gated = _fs_gate(lo, hi, lay.nbytes, self.fs, lay.fs_init, p.fs_width, lay.fs_magic, p.fs_cap, p.thresh,
                           gated)
        self.n_items += int(lo.shape[0])
        if self.phase == "one_pass" and n_gated:
            self._ss_insert(lo, hi, gated[:n_gated])

    def _ss_pass(self, lo: np.ndarray, hi: np.ndarray) -> None:
        p, lay = self.params, self._layout
        est = np.empty(lo.shape[0], np.int64)
        _fs_query_many(lo, hi, lay.nbytes, self.fs, lay.fs_seeds, p.fs_width, p.fs_cap, est)
        gated = np.flatnonzero(est > p.thresh)
        if gated.size:
            self._ss_insert(lo, hi, gated)

    def _ss_insert(self, lo, hi, sel, amounts: np.ndarray = UNIT_AMOUNTS) -> None:
        """Second-stage insert of the items ``sel``, each adding its ``amounts`` entry (``int64``,
        byte weighting) or 1 (the default, packet counting) to the CM."""
        p, lay = self.params, self._layout
        _ss_insert(lo, hi, sel, amounts, lay.nbytes, p.blocks, lay.blk_init, lay.blk_magic, lay.seg_layout,
                   lay.bf_layout, lay.bf_init, lay.bf_magic, lay.cm_init, p.cm_width, lay.cm_magic, self.seg,
                   self.bf, self.cm)

    # ------------------------------------------------------------------ two-pass variant (§9)
    def begin_second_pass(self, merged_first_stage: "HiddenSketch | None" = None) -> None:
        """Switch a ``two_pass`` sketch to pass 2, taking the merged FS (and global ``N``) if given.

        Each shard calls this with the same merged pass-1 sketch, then re-feeds its items with
        ``update``; those whose merged-FS estimate exceeds ``thresh`` enter the second stage.
        """
        if self.params.mode != "two_pass":
            raise SketchError("begin_second_pass is only for mode='two_pass' sketches")
        if self.phase != "first":
            raise SketchError("this sketch is already in its second pass")
        if merged_first_stage is not None:
            check_same_params(self.params, merged_first_stage.params, ALGORITHM)
            if merged_first_stage.phase != "first":
                raise SketchError("the merged first stage must come from pass-1 sketches")
            self.fs = merged_first_stage.fs.copy()
            self.n_items = merged_first_stage.n_items
            if merged_first_stage.ipv6 is not None and self.ipv6 is None:
                self._ipv6_sketch()
        self.phase = "second"
        self._decoded = None
        if self.ipv6 is not None and self.ipv6.phase == "first":
            merged6 = merged_first_stage.ipv6 if merged_first_stage is not None else None
            self.ipv6.begin_second_pass(merged6)

    def merge(self, other: "HiddenSketch") -> None:
        """Merge another shard's ``two_pass`` sketch into this one (spec §9, §12).

        Pass 1: FS saturating add, ``N`` add. Pass 2: the FS must be the same merged FS; SEG and
        BF are OR-ed and the CM added. One-pass sketches are not mergeable.
        """
        if self.params.mode != "two_pass" or other.params.mode != "two_pass":
            raise NotMergeableError(
                "one-pass Hidden Sketches are not mergeable: the FS gate depends on each shard's local "
                "history. Use mode='two_pass', or route shards by a hash of the sketch key, decode "
                "each shard separately and union their reports."
            )
        check_same_params(self.params, other.params, ALGORITHM)
        if self.phase != other.phase:
            raise SketchError(f"cannot merge a {self.phase}-pass sketch with a {other.phase}-pass sketch")
        if self.phase == "first":
            total = self.fs.astype(np.int64) + other.fs
            self.fs = np.minimum(total, self.params.fs_cap).astype(self.fs.dtype)
            self.n_items += other.n_items
        else:
            if not np.array_equal(self.fs, other.fs) or self.n_items != other.n_items:
                raise SketchError("second-pass shards must share the same merged first stage")
            self.seg |= other.seg
            self.bf |= other.bf
            self.cm += other.cm
        if other.ipv6 is not None:
            if self.ipv6 is None and self.phase == "first":
                self._ipv6_sketch()
            if self.ipv6 is None:
                raise SketchError("second-pass shards must share the same merged first stage (IPv6 part)")
            self.ipv6.merge(other.ipv6)
        self.skipped_ipv6 += other.skipped_ipv6
        self._decoded = None

    # ------------------------------------------------------------------ decode (§7)
    def decode(self, threads: int | None = None, partial: bool = True) -> HHResult:
        """Enumerate, FS-filter and peel (cached until the next update or merge).

        ``threads``: blocks decoded on this many threads (default 1). Serial is the default
        because two threads were slower at every size tried on the 2-core host (56 KiB, 1 MiB and
        8 MiB sketches, 16 blocks, 1 M packets: 0.4-0.55 ms against 0.22 ms, even with the pool
        kept between decodes), and a service decodes on every heavy-hitter query while the
        ingest threads want the cores.

        ``partial=True`` (default): when the decode cannot finish (an overflowing block or a peel
        that stops short), the answer still holds every candidate it could recover, flagged
        ``partial``, each with an estimate that never under-counts (see :meth:`_decode`).
        ``partial=False``: the spec's §7 output only (the peeled keys; what the paper reports), not
        cached.
        """
        if not partial:
            return self._decode(threads, partial=False)
        if self._decoded is None:
            self._decoded = self._decode(threads)
        return self._decoded

    def _decode(self, threads: int | None, partial: bool = True) -> HHResult:
        """Decode of both families: this sketch's (:meth:`_decode_family`) and, when it exists, the
        IPv6 companion's, each reporting against ``phi * N`` of all traffic, joined by
        :func:`_join_results` (keys of the two families never collide: ``int`` vs 16 bytes)."""
        result = self._decode_family(threads, partial, self.volume)
        if self.ipv6 is None:
            return result
        return _join_results(result, self.ipv6._decode_family(threads, partial, self.volume))

    def _decode_family(self, threads: int | None, partial: bool, n_total: int) -> HHResult:
        """Decode of spec §7, with the graceful partial answer of issue 20.

        A complete decode (no overflow, every CM counter peeled to zero) reports the peeled keys
        with ``f_SS + thresh`` (``f_SS`` in two-pass mode), as the spec. Otherwise, with
        ``partial``:

        * the peel stopped short, every block enumerated: the candidate set holds every key of
          the second stage, so a peeled count is exact; an unpeeled candidate gets the upper
          bound ``min(FS estimate, thresh + min_r residual_r)``, the residual CM being the CM
          less the peeled counts (only unpeeled keys remain in it, so each residual counter is
          exactly their sum), tightened by interval propagation over it (:func:`_tighten`);
        * some block overflowed: keys of that block are missing from the candidate set, so a
          peeled count may be off either way; every candidate gets ``min(FS estimate, thresh +
          min_r CM_r)`` (the Count-Min bound) instead.

        Both bounds are at least the key's true count (the FS counts every item of a key, a
        non-saturated FS row never under-counts, and the items before a key passes the gate are
        at most ``thresh``), so a recovered key is never under-counted. Bounded keys are reported
        when their bound passes ``phi * N``, so with every block enumerated no heavy hitter is
        missed; precision, not recall, is what a too-small sketch loses. Only when more keys
        pass than the CM can tell apart (``PEEL_LIMIT * 3 * cm_width``) are the largest bounds
        kept (the sketch is then far too small; measured in BENCHMARKS.md).
        """
        p, lay = self.params, self._layout
        threads = threads or 1  # serial by default: see decode()

        def block(b: int):
            return _decode_block(b, self.seg, lay.seg_layout, self.bf, lay.bf_layout, lay.bf_seeds,
                                 lay.blk_seed, p.blocks, lay.nbytes, lay.post_order, lay.child_ptr,
                                 lay.child_idx, lay.suffix, p.max_enum)

        if threads > 1:
            parts = list(_decode_pool(threads).map(block, range(p.blocks)))
        else:
            parts = [block(b) for b in range(p.blocks)]
        lo = np.concatenate([part[0] for part in parts])
        hi = np.concatenate([part[1] for part in parts])
        overflow = any(part[2] for part in parts)
        enumerated = sum(int(part[3]) for part in parts)
        n_candidates = lo.shape[0]
        est = np.empty(n_candidates, np.int64)
        _fs_query_many(lo, hi, lay.nbytes, self.fs, lay.fs_seeds, p.fs_width, p.fs_cap, est)
        keep = est > p.thresh
        lo, hi, fs_est = lo[keep], hi[keep], est[keep]
        order = np.lexsort((lo, hi))  # candidate order: ascending key integer
        lo, hi, fs_est = lo[order], hi[order], fs_est[order]
        f_ss, all_zero, resolved, residual = _peel(lo, hi, lay.nbytes, self.cm, lay.cm_seeds, p.cm_width)
        decode_ok = bool(all_zero and not overflow)
        offset = 0 if p.mode == "two_pass" else p.thresh
        limit = p.phi * n_total
        if decode_ok or not partial:
            positive = f_ss > 0
            keys = words_to_keys(lo[positive], hi[positive], p.key_bytes)
            counts = f_ss[positive].tolist()
            items = [(k, c + offset) for k, c in zip(keys, counts) if c + offset > limit]
            items.sort(key=lambda kv: -kv[1])
            return HHResult(items, decode_ok, overflow, int(n_candidates), int(lo.shape[0]),
                            int(positive.sum()), enumerated, dict(zip(keys, counts)), partial=not decode_ok)
        buckets = np.empty((lo.shape[0], _CM_ROWS), np.int64)
        _cm_buckets(lo, hi, lay.nbytes, lay.cm_seeds, p.cm_width, buckets)
        if overflow:
            remaining = self.cm.astype(np.int64).ravel()
            exact_count = np.zeros(lo.shape[0], np.bool_)
        else:
            remaining = np.maximum(residual, 0)
            exact_count = resolved
        per_row = remaining[buckets]                                    # int64[n, rows]
        bound = per_row.min(axis=1)
        if not overflow:  # complete candidates: the residual is exact, so bounds can be tightened
            bound = np.minimum(bound, fs_est)
            _tighten(buckets, remaining, bound, ~exact_count, self.TIGHTEN_ROUNDS)
        total = np.where(exact_count, f_ss + offset, np.minimum(fs_est, bound + offset))
        # A bounded key is reported when its bound passes the limit: with every block enumerated
        # no true heavy hitter is missed (recall 1). But 3 * cm_width counters cannot tell more
        # than about PEEL_LIMIT * 3 * cm_width keys apart: past that many, only the largest
        # bounds are reported (a heavy key's bound is its count plus noise, a light key's noise).
        present = np.where(exact_count, f_ss, bound) > 0
        keys = words_to_keys(lo[present], hi[present], p.key_bytes)
        totals = total[present].tolist()
        bounded_flags = (~exact_count[present]).tolist()
        sure = [(k, t) for k, t, b in zip(keys, totals, bounded_flags) if t > limit and not b]
        maybe = sorted(((k, t) for k, t, b in zip(keys, totals, bounded_flags) if t > limit and b), key=lambda kv: -kv[1])
        room = max(0, int(self.PEEL_LIMIT * _CM_ROWS * p.cm_width) - len(sure))
        items = sure + maybe[:room]
        items.sort(key=lambda kv: -kv[1])
        bounded = frozenset(k for k, flag in zip(keys, bounded_flags) if flag)
        n_peeled = int((exact_count & (f_ss > 0)).sum())
        return HHResult(items, False, overflow, int(n_candidates), int(lo.shape[0]), n_peeled, enumerated,
                        {k: t - offset for k, t in zip(keys, totals)}, partial=True, bounded=bounded)

    # ------------------------------------------------------------------ queries (§8)
    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        """Epochs: sums of per-epoch estimates; shards: their union (:class:`HiddenWindow`)."""
        from telesketch.sketches.combine import HiddenWindow

        return HiddenWindow(parts, rule)

    def heavy_hitters(self) -> list[tuple[Hashable, int]]:
        """Reported heavy hitters of the epoch: ``[(key, f_hat)]``, largest first."""
        return list(self.decode().items)

    def _fs_estimates(self, lo, hi) -> np.ndarray:
        p, lay = self.params, self._layout
        out = np.empty(lo.shape[0], np.int64)
        _fs_query_many(lo, hi, lay.nbytes, self.fs, lay.fs_seeds, p.fs_width, p.fs_cap, out)
        return out

    def point_estimate(self, keys) -> np.ndarray:
        """``int64`` upper-bound estimates of the keys' counts (spec §8.1).

        ``fs`` if ``fs <= thresh``, else ``min(fs, thresh + min_r CM)`` (``min(fs, min_r CM)`` in
        two-pass mode, where a gated key's items are all in the second stage).
        """
        p, lay = self.params, self._layout
        if p.key in IPV6_COMPANION and isinstance(keys, (list, tuple)) and any(
                isinstance(k, (bytes, bytearray)) for k in keys):
            return self._mixed_estimates(keys)
        lo, hi = keys_to_words(keys, p.key_bytes)
        fs = self._fs_estimates(lo, hi)
        ss = np.empty(lo.shape[0], np.int64)
        _cm_min_many(lo, hi, lay.nbytes, self.cm, lay.cm_seeds, p.cm_width, ss)
        offset = 0 if p.mode == "two_pass" else p.thresh
        return np.where(fs <= p.thresh, fs, np.minimum(fs, ss + offset))

    def _mixed_estimates(self, keys) -> np.ndarray:
        """Point estimates of a list mixing IPv4 (``int``) and IPv6 (16-byte) keys: each family
        from its own sketch; an IPv6 key is 0 while no IPv6 row has been seen."""
        out = np.zeros(len(keys), np.int64)
        is6 = np.array([isinstance(k, (bytes, bytearray)) for k in keys], bool)
        if (~is6).any():
            out[~is6] = self.point_estimate(np.array([k for k, m in zip(keys, is6) if not m], np.int64))
        if self.ipv6 is not None:
            out[is6] = self.ipv6.point_estimate([bytes(k) for k, m in zip(keys, is6) if m])
        return out

    def estimate(self, key) -> int:
        """Point estimate of one key (an ``int`` address, 13-byte or 16-byte ``bytes``)."""
        return int(self.point_estimate([key])[0])

    def heavy_changers(self, previous: "HiddenSketch", hc_threshold: float | None = None) -> list[tuple[Hashable, int]]:
        """Keys whose count changed by more than ``thr_c`` from ``previous`` to this epoch (spec §8.2).

        ``thr_c = phi * max(N_previous, N_this)`` unless ``hc_threshold`` is given. The estimate of
        a key in an epoch is its reported ``f_hat``, else its FS estimate clamped to ``[0, cap]``.
        Returns ``[(key, est_this - est_previous)]``, largest absolute change first.
        """
        if previous.params.key != self.params.key:
            raise SketchError("heavy changers need two sketches over the same key type")
        now, before = dict(self.heavy_hitters()), dict(previous.heavy_hitters())
        if previous.params.weight != self.params.weight:
            raise SketchError("heavy changers need two sketches of the same weight (packets or bytes)")
        thr = self.params.phi * max(self.volume, previous.volume) if hc_threshold is None else hc_threshold
        keys = sorted(now.keys() | before.keys(), key=key_order)
        if not keys:
            return []
        est_now = self._epoch_estimates(keys, now)
        est_before = previous._epoch_estimates(keys, before)
        out = [(k, int(a - b)) for k, a, b in zip(keys, est_now, est_before) if abs(a - b) > thr]
        out.sort(key=lambda kv: -abs(kv[1]))
        return out

    def _epoch_estimates(self, keys, reported: dict) -> list[int]:
        if self.params.key in IPV6_COMPANION and any(isinstance(k, (bytes, bytearray)) for k in keys):
            fs = self._mixed_fs_estimates(keys)
        else:
            lo, hi = keys_to_words(keys, self.params.key_bytes)
            fs = np.minimum(self._fs_estimates(lo, hi), self.params.fs_cap)
        return [reported[k] if k in reported else int(f) for k, f in zip(keys, fs.tolist())]

    def _mixed_fs_estimates(self, keys) -> np.ndarray:
        """FS estimates (clamped to the cap) of IPv4 and IPv6 keys, each from its family's sketch."""
        out = np.zeros(len(keys), np.int64)
        is6 = np.array([isinstance(k, (bytes, bytearray)) for k in keys], bool)
        v4 = [k for k, m in zip(keys, is6) if not m]
        if v4:
            out[~is6] = np.minimum(self._fs_estimates(*keys_to_words(v4, 4)), self.params.fs_cap)
        if self.ipv6 is not None:
            lo, hi = keys_to_words([bytes(k) for k, m in zip(keys, is6) if m], 16)
            out[is6] = np.minimum(self.ipv6._fs_estimates(lo, hi), self.params.fs_cap)
        return out

    # ------------------------------------------------------------------ state
    def unpacked_state(self) -> dict:
        """State as plain arrays for comparisons: ``fs``, ``cm``, ``n_items``,
        ``seg[b][i]`` (``bool[2**seg_bits[i]]``) and ``bf[j][r]`` (``bool[bf_row_bits[j]]``)."""
        p, lay = self.params, self._layout
        bits = lambda words, n: np.unpackbits(words.view(np.uint8), bitorder="little")[:n].astype(bool)  # noqa: E731
        seg = [
            [bits(self.seg[b, o:o + max(1, (1 << w) // 64)].copy(), 1 << w) for _, w, o in lay.seg_layout.tolist()]
            for b in range(p.blocks)
        ]
        bf = [
            [bits(self.bf[row0 + r].copy(), nbits) for r in range(rows)]
            for _, _, row0, rows, nbits in lay.bf_layout.tolist()
        ]
        return {"fs": self.fs.copy(), "cm": self.cm.copy(), "n_items": self.n_items, "seg": seg, "bf": bf}

    def copy(self) -> "HiddenSketch":
        """An independent sketch in the same state: the four arrays copied, the parameters and the
        layout (derived from them, never written after construction) shared. A service copies the
        open epoch's sketch under the ingest lock for every heavy-hitter query, and going through
        :meth:`to_bytes` / :meth:`from_bytes` also rebuilt the layout."""
        if type(self) is not HiddenSketch:  # a subclass may hold more state (the GPU twin overrides this)
            return type(self).from_bytes(self.to_bytes())
        clone = object.__new__(HiddenSketch)
        clone.__dict__.update(self.__dict__)
        for name in ("fs", "seg", "bf", "cm"):
            setattr(clone, name, getattr(self, name).copy())
        clone._decoded = None
        return clone

    def to_bytes(self) -> bytes:
        """Versioned serialised state (parameters, seeds, arrays, epoch, two-pass phase)."""
        arrays = {"fs": self.fs, "seg": self.seg, "bf": self.bf, "cm": self.cm,
                  "n_items": np.array([self.n_items], np.int64)}
        if self.ipv6 is not None:
            arrays["ipv6_state"] = np.frombuffer(self.ipv6.to_bytes(), np.uint8)
        extra = {"phase": self.phase, "skipped_ipv6": self.skipped_ipv6}
        if self.params.weight == "bytes":
            extra["total_weight"] = self.total_weight
        return pack_state(ALGORITHM, STATE_VERSION, self.params.to_dict(), arrays, self.epoch, extra)

    @classmethod
    def from_bytes(cls, data: bytes, params: HiddenSketchParams | None = None) -> "HiddenSketch":
        """Rebuild a sketch from :meth:`to_bytes`; refuses other algorithms, versions, shapes, or
        (when ``params`` is given) different parameters."""
        raw_params, arrays, epoch, extra = _unpack_any_version(data)
        try:
            stored = HiddenSketchParams.from_dict(raw_params)
        except TypeError as exc:
            raise SketchError(f"bad Hidden Sketch parameters in state: {exc}") from None
        if params is not None and params != stored:
            raise SketchError(f"serialised Hidden Sketch has parameters {stored}, expected {params}")
        sketch = cls(stored)
        for name in ("fs", "seg", "bf", "cm"):
            want = getattr(sketch, name)
            got = arrays.get(name)
            if got is None or got.shape != want.shape or got.dtype != want.dtype:
                raise SketchError(f"serialised array {name!r} does not fit these parameters")
            setattr(sketch, name, got)
        sketch.n_items = int(arrays["n_items"][0])
        sketch.epoch = epoch
        phase = extra.get("phase", "one_pass")
        if phase not in (("one_pass",) if stored.mode == "one_pass" else ("first", "second")):
            raise SketchError(f"bad phase {phase!r} for mode {stored.mode!r}")
        sketch.phase = phase
        sketch.skipped_ipv6 = int(extra.get("skipped_ipv6", 0))
        sketch.total_weight = int(extra.get("total_weight", 0))
        if "ipv6_state" in arrays:
            companion = cls.from_bytes(arrays["ipv6_state"].tobytes(), stored.ipv6_companion())
            if companion.phase != ("one_pass" if phase == "one_pass" else companion.phase):
                raise SketchError("the IPv6 part of a serialised Hidden Sketch is in another pass")
            sketch.ipv6 = companion
        return sketch


def _unpack_any_version(data: bytes):
    """:func:`unpack_state` of the current layout, else of an older readable one (layout 1: an
    IPv4-only sketch written before IPv6 support); the error of the current layout otherwise."""
    try:
        return unpack_state(data, ALGORITHM, STATE_VERSION)
    except SketchError as exc:
        first = exc
    for version in _READABLE_VERSIONS[1:]:
        try:
            return unpack_state(data, ALGORITHM, version)
        except SketchError:
            continue
    raise first


def _join_results(v4: HHResult, v6: HHResult) -> HHResult:
    """One answer from the two families' decodes: items merged largest first, flags OR-ed (a
    partial family makes the answer partial), counters summed."""
    items = sorted(v4.items + v6.items, key=lambda kv: -kv[1])
    return HHResult(items, v4.decode_ok and v6.decode_ok, v4.overflow or v6.overflow,
                    v4.n_candidates + v6.n_candidates, v4.n_after_fs + v6.n_after_fs,
                    v4.n_ss_keys + v6.n_ss_keys, v4.enumerated + v6.enumerated,
                    {**v4.ss_counts, **v6.ss_counts}, partial=v4.partial or v6.partial,
                    bounded=v4.bounded | v6.bounded)


def heavy_hitters_union(sketches: Iterable[HiddenSketch], total_items: int | None = None) -> list[tuple[Hashable, int]]:
    """Union of the reports of key-routed one-pass shards (spec §12), filtered by ``phi * N_global``."""
    sketches = list(sketches)
    if not sketches:
        return []
    n = sum(s.volume for s in sketches) if total_items is None else total_items
    limit = sketches[0].params.phi * n
    out = []
    for s in sketches:
        offset = 0 if s.params.mode == "two_pass" else s.params.thresh
        out.extend((k, c + offset) for k, c in s.decode().ss_counts.items() if c + offset > limit)
    out.sort(key=lambda kv: -kv[1])
    return out
