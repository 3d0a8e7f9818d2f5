"""CocoSketch (d = 2) over IPv4 and IPv6 addresses, and the prefix-hierarchy helpers ResidualSketch shares.

Spec: ``specs/residualsketch.md`` §2 (the block), §3 (per-layer estimates, HHH query), §4 (sharding).

A block is ``2`` rows of ``w`` buckets; a bucket is ``(id: uint32, count: int32, occ: uint8)`` and
is charged 8 bytes (id + count; the occupancy flag is free). State of ``m`` blocks lives in two
arrays of shape ``(m, 2, w)``: ``cells`` (record dtype :data:`BUCKET_DTYPE`, id and count side by
side so one probe touches one cache line, about 1.4x faster than separate arrays) and ``occ``.
Block 0 is the full-key (/32) block.

Row hashes are Bob Jenkins' lookup2 with initial values 181 and 5197 (the spec fixes them, as the
reference does; every block uses the same two), *not* the telesketch seeded family: the spec names
this hash so that bucket placement matches the reference code. The seed drives only the replacement
coins, drawn from the counter-based generator ``rand32(seed, n, j)`` (packet index ``n``, block
``j``), so runs are deterministic and independent of batch boundaries.

Both sketches keep an **IPv6 tree** beside the IPv4 blocks: the same blocks over 128-bit keys
(see "IPv6 tree kernels" below), layers :data:`~telesketch.sketches.hierarchy.IPV6_LAYERS`, answered by
``layer_estimates6`` / ``hhh6_entries`` / ``estimate6`` and, with the IPv4 tree, ``hhh_rows``.

CocoSketch alone answers every layer by aggregating its full keys (``est[L] = Σ prefix(x, L)``);
it is ResidualSketch with no crucial layers. Its raw state is not merged (order-dependent
replacement); shards combine through :func:`sum_layer_estimates` + :func:`hhh_pass`
(:func:`merged_hhh`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numba as nb
import numpy as np

from telesketch.hashing import mix64
from telesketch.jit import kernel, twin
from telesketch.packets import PacketBatch
from telesketch.sketches.core import NotMergeableError, SketchError, pack_state, unpack_state
from telesketch.sketches.core import EPOCHS, Rule, Sketch, Window
from telesketch.sketches.hierarchy import IPV6_LAYERS, hhh_from_counts, layers_for, prefix_mask

BUCKET_BYTES = 8  # id (u32) + count (i32); the occupancy flag is not charged (spec §2)
ROWS = 2
ROW_INITS = (181, 5197)  # lookup2 initial values of rows 0 and 1 (spec §2)
DEFAULT_MEMORY = {"byte": 32 * 1024, "bit": 256 * 1024}
BUCKET_DTYPE = np.dtype([("id", "<u4"), ("count", "<i4")])

#: What a sketch counts (its ``weight`` parameter): ``packets`` (every packet weighs 1, the default and
#: the papers' measure) or ``bytes`` (a packet weighs its ``length`` column: the IPv4 total length, or
#: the IPv6 payload length + 40). Byte sums pass 2^31 after ~1.4 M full-size packets in one bucket, so
#: a byte-weighted sketch keeps **int64** counts: buckets of 12 bytes (IPv4: id u32 + count i64) and 24
#: bytes (IPv6: 16-byte id + count i64) instead of 8 and 20, i.e. 2/3 (IPv4) and 5/6 (IPv6) as many
#: buckets for the same ``memory_bytes``. Thresholds and answers of a byte-weighted sketch are bytes.
WEIGHTS = ("packets", "bytes")
BUCKET_DTYPE_BYTES = np.dtype([("id", "<u4"), ("count", "<i8")])  # packed: 12 bytes
BUCKET_BYTES_WIDE = 12

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_GOLDEN32 = _U64(0x9E3779B9)
_ROW0 = _U64(ROW_INITS[0] + 4)  # + 4: the key length in bytes
_ROW1 = _U64(ROW_INITS[1] + 4)
_S = {k: _U64(k) for k in (3, 5, 8, 10, 12, 13, 15, 16, 32, 64)}
_S3, _S5, _S8, _S10, _S12, _S13, _S15, _S16 = (_S[k] for k in (3, 5, 8, 10, 12, 13, 15, 16))
_S32, _S64 = _S[32], _S[64]


# ---------------------------------------------------------------------------- scalar kernels
@twin(nb.uint64(nb.uint64, nb.uint64), inline=True, device_inline=False)
def bob_hash(x, c):
    """lookup2 of the 4 little-endian bytes of ``x`` with ``c = initval + 4``; uint32 in a uint64."""
    a = (_GOLDEN32 + x) & _M32
    b = _GOLDEN32
    a = (a - b - c) & _M32
    a ^= c >> _S13
    b = (b - c - a) & _M32
    b ^= (a << _S8) & _M32
    c = (c - a - b) & _M32
    c ^= b >> _S13
    a = (a - b - c) & _M32
    a ^= c >> _S12
    b = (b - c - a) & _M32
    b ^= (a << _S16) & _M32
    c = (c - a - b) & _M32
    c ^= b >> _S5
    a = (a - b - c) & _M32
    a ^= c >> _S3
    b = (b - c - a) & _M32
    b ^= (a << _S10) & _M32
    c = (c - a - b) & _M32
    c ^= b >> _S15
    return c


@twin(nb.uint64(nb.uint64, nb.uint64, nb.uint64), inline=True)
def rand32(seed_mix, n, j):
    """``rand32(seed, n, j)`` given ``seed_mix = mix64(seed)``: the replacement coin of block j at packet n."""
    return mix64(seed_mix ^ (n * _S64 + j)) >> _S32


@twin(nb.uint64(nb.uint64, nb.uint64, nb.uint64), inline=True)
def fastmod(a, magic, d):
    """``a mod d`` for 32-bit ``a`` and ``d`` via Lemire's fastmod (``magic = 2^64 // d + 1``, mod 2^64).

    Exact for all 32-bit inputs; three multiplies instead of a ~30-cycle division.
    """
    low = magic * a
    t = (low & _M32) * d
    return ((low >> _S32) * d + (t >> _S32)) >> _S32


def fastmod_magic(d: int) -> np.uint64:
    """The ``magic`` of :func:`fastmod` for divisor ``d`` (1 <= d < 2^32)."""
    return np.uint64(((2**64 - 1) // d + 1) % 2**64)


@twin(nb.boolean(nb.uint64, nb.int64, nb.int64), inline=True)
def takes_over(coin, c, wt):
    """The weighted CocoSketch coin: True with probability ``wt / c`` for a u32 ``coin``.

    ``coin mod c < wt`` while ``c`` fits 32 bits (with ``wt = 1`` exactly the unweighted
    ``coin mod c == 0``, so packet counting is unchanged); beyond that (byte counts)
    ``coin * c < wt * 2^32`` in float64.
    """
    if c <= nb.int64(0xFFFFFFFF):
        return nb.uint32(coin) % nb.uint32(c) < nb.uint32(wt)  # 32-bit division
    return nb.float64(coin) * nb.float64(c) < nb.float64(wt) * 4294967296.0


@kernel(inline="always")
def coco_insert(cells, occ, blk, x, w, wmagic, seed_mix, n, wt, dec, decrement):
    """Insert key ``x`` (uint64 holding a u32) with weight ``wt >= 1`` into block ``blk`` (spec §2).

    ``pos_r(x) = BOB(x, r) mod w`` (``wmagic = fastmod_magic(w)``). Returns the post-update
    count if ``x`` was held ("matched"), else 0. With ``decrement`` a held key's count becomes
    ``max(0, count + wt - dec)``; an unheld key gets a plain ``+wt`` insert and takes the bucket
    with probability ``wt / count`` (:func:`takes_over`).

    The readable form of the step: :func:`stream_kernel` writes the same steps out in its loop over
    blocks (Numba's IR inlining of this function ran that loop about half as fast, issue 21).
    """
    xid = nb.uint32(x)
    p0 = nb.int64(fastmod(bob_hash(x, _ROW0), wmagic, w))
    if occ[blk, 0, p0] and cells[blk, 0, p0].id == xid:
        return _bump(cells, blk, 0, p0, wt, dec, decrement)
    p1 = nb.int64(fastmod(bob_hash(x, _ROW1), wmagic, w))
    if occ[blk, 1, p1] and cells[blk, 1, p1].id == xid:
        return _bump(cells, blk, 1, p1, wt, dec, decrement)
    row, pos = 0, p0
    if cells[blk, 1, p1].count < cells[blk, 0, p0].count:  # strict: ties go to row 0
        row, pos = 1, p1
    c = nb.int64(cells[blk, row, pos].count) + wt  # never reset on takeover
    cells[blk, row, pos].count = c
    if takes_over(rand32(seed_mix, n, nb.uint64(blk)), c, wt):
        cells[blk, row, pos].id = xid
        occ[blk, row, pos] = 1
    return 0


@kernel(inline="always")
def _bump(cells, blk, row, pos, wt, dec, decrement):
    c = nb.int64(cells[blk, row, pos].count) + wt
    if decrement:
        c = max(nb.int64(0), c - dec)
    cells[blk, row, pos].count = c
    return c


@kernel(inline="always")
def connection_rule(c, wt, T, connection):
    """``(bypass, decrement)`` of the Residual Connection for F's answer ``c`` to a packet of weight ``wt``.

    Unit weights: bypass iff ``c > T``, decrement iff ``c == T`` (spec §3). Weighted: bypass iff the key
    was already heavy before this packet (``c - wt >= T``), decrement iff this packet carried it to
    ``T`` or past (``c >= T``); the Residual Blocks then drop the key's whole mass ``c`` (``dec = c``).
    """
    if not connection or c == 0:
        return False, False
    if c - wt >= T:
        return True, False
    return False, c >= T


#: Packets whose bucket positions are hashed ahead of the ordered insert loop (:func:`stream_kernel`):
#: the hash loop over a chunk has no dependence between packets, so it pipelines (and vectorises),
#: while the insert loop, which must run in arrival order, only reads the positions.
_CHUNK = 512


@kernel(inline="always")
def _mask(masks, j):
    """``masks[j]`` as ``uint64`` (``masks`` a tuple or an array; None: plain CocoSketch, never called)."""
    if masks is None:
        return _M32
    return nb.uint64(masks[j])


_U32 = np.uint32
_G32 = _U32(0x9E3779B9)


@kernel(inline="always")
def _lookup2_u32(x, c):
    """:func:`bob_hash` in 32-bit arithmetic (``x``, ``c`` uint32): each step truncated to uint32, so LLVM
    keeps 32-bit lanes (16 to a vector register instead of 8)."""
    a = nb.uint32(_G32 + x)
    b = _G32
    a = nb.uint32(nb.uint32(a - b) - c)
    a = nb.uint32(a ^ nb.uint32(c >> _U32(13)))
    b = nb.uint32(nb.uint32(b - c) - a)
    b = nb.uint32(b ^ nb.uint32(a << _U32(8)))
    c = nb.uint32(nb.uint32(c - a) - b)
    c = nb.uint32(c ^ nb.uint32(b >> _U32(13)))
    a = nb.uint32(nb.uint32(a - b) - c)
    a = nb.uint32(a ^ nb.uint32(c >> _U32(12)))
    b = nb.uint32(nb.uint32(b - c) - a)
    b = nb.uint32(b ^ nb.uint32(a << _U32(16)))
    c = nb.uint32(nb.uint32(c - a) - b)
    c = nb.uint32(c ^ nb.uint32(b >> _U32(5)))
    a = nb.uint32(nb.uint32(a - b) - c)
    a = nb.uint32(a ^ nb.uint32(c >> _U32(3)))
    b = nb.uint32(nb.uint32(b - c) - a)
    b = nb.uint32(b ^ nb.uint32(a << _U32(10)))
    c = nb.uint32(nb.uint32(c - a) - b)
    c = nb.uint32(c ^ nb.uint32(b >> _U32(15)))
    return c


@kernel(inline="always")
def _hash_chunk(keys, start, stop, mask, w, wmagic, pos, base):
    """Row-0 and row-1 positions of ``keys[start:stop] & mask`` in a block of ``w`` buckets, into
    ``pos[base + 2k]`` and ``pos[base + 2k + 1]`` (``k = i - start``; ``uint32``)."""
    for k in range(stop - start):
        x = nb.uint32(keys[nb.uint64(start + k)] & nb.uint32(mask))  # unsigned index: no wraparound code
        pos[nb.uint64(base + 2 * k)] = nb.uint32(fastmod(nb.uint64(_lookup2_u32(x, _U32(_ROW0))), wmagic, w))
        pos[nb.uint64(base + 2 * k + 1)] = nb.uint32(fastmod(nb.uint64(_lookup2_u32(x, _U32(_ROW1))), wmagic, w))


@kernel(inline="always")
def _coin_chunk(n_first, count, seed_mix, blk, coins, base):
    """The replacement coins ``rand32(seed, n, blk)`` of packets ``n_first .. n_first + count - 1`` into
    ``coins[base + k]`` (``uint32``): they depend on the packet index only, so they vectorise ahead of the
    ordered loop, which then waits only on the division of :func:`takes_over` for a coin."""
    for k in range(count):
        coins[nb.uint64(base + k)] = nb.uint32(rand32(seed_mix, n_first + nb.uint64(k), blk))


@kernel
def stream_kernel(keys, weights, cells, occ, masks, T, seed_mix, n0, connection, widths, wmagics):
    """The sequential update loop of spec §3 over ``keys`` (uint32[n]) for packets ``n0 .. n0+n-1``.

    ``weights``: empty (every packet weighs 1: packet counting) or one non-negative integer per key
    (bytes); a zero weight changes nothing (the packet index still advances).

    Block 0 is the full-key block F; block ``j >= 1`` is the Residual Block of prefix mask
    ``masks[j-1]`` (ascending lengths; a tuple of ``uint64``, or a ``uint32`` array). With ``masks``
    None (or empty) this is plain CocoSketch. ``masks`` None compiles a loop for F alone (1.34-1.45x),
    and a tuple one for its length (1.10-1.16x, ResidualSketch): the block loop is then unrolled. With
    ``connection`` False (the spec's "noConn" column, as the reference's
    ``HHHKey_without`` runs it) every packet is a plain insert into every block: no bypass, no
    decrement (and the query adds nothing back).

    ``widths`` / ``wmagics`` (``uint64[1 + m]``): buckets per row of each block and their
    :func:`fastmod_magic`; a block narrower than ``cells.shape[2]`` leaves its tail unused (an
    unequal memory split, ``ResidualSketchParams.split``).

    Each block's step is :func:`coco_insert` (F's answer ``c`` then picks the Residual Connection,
    :func:`connection_rule`), with the same state and answers, written for speed (issue 21):

    * every block's row positions of a chunk of ``_CHUNK`` packets are hashed first
      (:func:`_hash_chunk`: positions do not depend on the state, so that loop pipelines and
      vectorises, in 32-bit lanes), and so are the replacement coins (:func:`_coin_chunk`), then the
      ordered loop inserts packet by packet (prefetching the buckets a few packets ahead, as GapFilter
      does, measured 0.96-1.04x at 128 / 256 KiB and again 0.93-1.08x in issue 20: not done);
    * with F alone (``masks`` None or empty: CocoSketch, ResidualSketch's ``flat``) the step is written
      through selects: both rows are read, the row and the new count are picked without a branch, and
      only a takeover (a 1 / count coin, rarely true) branches. Whether F holds a packet's key is a
      coin flip on real traffic (synth: 30 % row 0, 9 % row 1, 61 % miss), so the branchy form
      mispredicts on most packets; the select form ran 1.24-1.56x faster. With Residual Blocks the
      branchy form is kept: selects there were 0.76-1.29x (faster on the spec generator, slower where
      hits are predictable, e.g. Zipf 1.1), BENCHMARKS.md "16-24 layout speed";
    * the insert is written out in the loop over blocks rather than called: Numba's IR-level
      ``inline="always"`` of ``coco_insert`` ran the loop at about half the speed (measured,
      bench_residual_ab.py);
    * the id is compared before the occupancy flag, so the flag is read only on a match.
    """
    if masks is None:  # plain CocoSketch: a compile-time branch, so the block loop below runs once
        m = 0
        blocks = nb.uint64(1)
    else:
        m = len(masks)  # a tuple: a compile-time length, so LLVM unrolls the block loop
        blocks = nb.uint64(m + 1)
    unit = weights.shape[0] == 0
    n_keys = keys.shape[0]
    pos = np.zeros(2 * _CHUNK * (m + 1), np.uint32)  # [block][packet][row]
    coins = np.zeros(_CHUNK * (m + 1), np.uint32)  # [block][packet]
    for start in range(0, n_keys, _CHUNK):
        stop = min(n_keys, start + _CHUNK)
        _hash_chunk(keys, start, stop, _M32, nb.uint64(widths[0]), nb.uint64(wmagics[0]), pos, 0)
        for j in range(m):
            _hash_chunk(keys, start, stop, _mask(masks, j), nb.uint64(widths[j + 1]), nb.uint64(wmagics[j + 1]),
                        pos, 2 * _CHUNK * (j + 1))
        for b in range(blocks):
            _coin_chunk(nb.uint64(n0) + nb.uint64(start), stop - start, seed_mix, nb.uint64(b), coins, _CHUNK * b)
        for k in range(stop - start):
            i = nb.uint64(start + k)
            wt = nb.int64(1) if unit else nb.int64(weights[i])
            if wt <= 0:
                continue
            x = nb.uint64(keys[i])
            c = nb.int64(0)  # F's answer: its post-update count if x was held, else 0
            decrement = False
            for b in range(blocks):
                xid = nb.uint32(x) if b == 0 else nb.uint32(x & _mask(masks, b - 1))
                at = nb.uint64(2 * _CHUNK * b + 2 * k)
                p0, p1 = nb.uint64(pos[at]), nb.uint64(pos[at + 1])
                if m == 0:  # F alone (CocoSketch, flat): the same step through selects (see the docstring)
                    c0 = nb.int64(cells[b, 0, p0].count)
                    c1 = nb.int64(cells[b, 1, p1].count)
                    hit0 = (cells[b, 0, p0].id == xid) & (occ[b, 0, p0] != 0)
                    hit1 = (cells[b, 1, p1].id == xid) & (occ[b, 1, p1] != 0)
                    hit = hit0 | hit1
                    second = (not hit0) & (hit1 | (c1 < c0))  # a miss: strict, ties go to row 0
                    row = nb.uint64(1) if second else nb.uint64(0)
                    p = p1 if second else p0
                    new = (c1 if second else c0) + wt  # never reset on takeover; >= wt >= 1 (no decrement in F)
                    cells[b, row, p].count = new
                    # max(new, 1) is new; it tells LLVM the divisor is not 0, which drops the zero check:
                    # with the check this step ran no faster than the branchy one (1.44x without, issue 20)
                    take = (not hit) & takes_over(nb.uint64(coins[nb.uint64(_CHUNK * b + k)]), max(new, nb.int64(1)),
                                                  wt)
                    if take:  # rare (a coin of 1 / count), so this branch is predicted
                        cells[b, row, p].id = xid
                        occ[b, row, p] = 1
                else:
                    hit = True
                    if cells[b, 0, p0].id == xid and occ[b, 0, p0]:
                        row, p = nb.uint64(0), p0
                    elif cells[b, 1, p1].id == xid and occ[b, 1, p1]:
                        row, p = nb.uint64(1), p1
                    else:
                        hit = False
                        row, p = nb.uint64(0), p0
                        if cells[b, 1, p1].count < cells[b, 0, p0].count:  # strict: ties go to row 0
                            row, p = nb.uint64(1), p1
                    new = nb.int64(cells[b, row, p].count) + wt  # never reset on takeover
                    if hit and decrement:  # Residual Blocks only: F's count just reached T
                        new = max(nb.int64(0), new - c)
                    cells[b, row, p].count = new
                    if not hit and takes_over(nb.uint64(coins[nb.uint64(_CHUNK * b + k)]), new, wt):
                        cells[b, row, p].id = xid
                        occ[b, row, p] = 1
                if b == 0:
                    c = new if hit else nb.int64(0)
                    bypass, decrement = connection_rule(c, wt, T, connection)
                    if bypass:
                        break  # confirmed-heavy keys bypass the blocks


# ---------------------------------------------------------------------------- IPv6 tree kernels
# An IPv6 key is 128 bits, held as two uint64 halves ``(hi, lo)`` of the network-order address
# (``hi`` = bytes 0..7 read big-endian). Its blocks are separate arrays ``hi6``/``lo6`` (``uint64``),
# ``counts6`` (``int32``) and ``occ6`` (``uint8``) of shape ``(m6, 2, w6)``; a bucket is charged 20
# bytes (16-byte id + count). The spec's lookup2 is defined over 4-byte keys only, so the row hash of
# a 128-bit key is ``mix64(mix64(hi ^ initval) ^ lo) >> 32`` (same row initvals 181 / 5197); the coin
# of IPv6 block ``j`` at IPv6 packet ``n6`` is ``rand32(seed, n6, IPV6_COIN_BLOCK + j)``. Every other
# rule (ties to row 0, takeover with probability 1/count, Residual decrement, bypass) is §2/§3's.
BUCKET6_BYTES = 20
IPV6_COIN_BLOCK = 32
_ROW6_0 = _U64(ROW_INITS[0])
_ROW6_1 = _U64(ROW_INITS[1])


@twin(nb.uint64(nb.uint64, nb.uint64, nb.uint64), inline=True)
def hash6(hi, lo, initval):
    """Row hash of a 128-bit key ``(hi, lo)``: ``mix64(mix64(hi ^ initval) ^ lo) >> 32`` (a u32 in a u64)."""
    return mix64(mix64(hi ^ initval) ^ lo) >> _S32


@twin(inline=True)
def _bump6(counts6, blk, row, pos, wt, dec, decrement):
    c = nb.int64(counts6[blk, row, pos]) + wt
    if decrement:
        c = max(nb.int64(0), c - dec)
    counts6[blk, row, pos] = c
    return c


@twin(inline=True)
def coco_insert6(hi6, lo6, counts6, occ6, blk, xh, xl, w, wmagic, seed_mix, n, wt, dec, decrement):
    """:func:`coco_insert` for a 128-bit key ``(xh, xl)`` into IPv6 block ``blk``; same return value.

    A :func:`~telesketch.jit.twin`: the GPU twin's IPv6 kernels run this same source as a device function
    (its blocks are plain arrays, unlike the IPv4 record array ``cells``)."""
    p0 = nb.int64(fastmod(hash6(xh, xl, _ROW6_0), wmagic, w))
    if occ6[blk, 0, p0] and hi6[blk, 0, p0] == xh and lo6[blk, 0, p0] == xl:
        return _bump6(counts6, blk, 0, p0, wt, dec, decrement)
    p1 = nb.int64(fastmod(hash6(xh, xl, _ROW6_1), wmagic, w))
    if occ6[blk, 1, p1] and hi6[blk, 1, p1] == xh and lo6[blk, 1, p1] == xl:
        return _bump6(counts6, blk, 1, p1, wt, dec, decrement)
    row, pos = 0, p0
    if counts6[blk, 1, p1] < counts6[blk, 0, p0]:  # strict: ties go to row 0
        row, pos = 1, p1
    c = nb.int64(counts6[blk, row, pos]) + wt  # never reset on takeover
    counts6[blk, row, pos] = c
    if takes_over(rand32(seed_mix, n, nb.uint64(IPV6_COIN_BLOCK + blk)), c, wt):
        hi6[blk, row, pos] = xh
        lo6[blk, row, pos] = xl
        occ6[blk, row, pos] = 1
    return 0


@kernel
def stream_kernel6(key_hi, key_lo, weights, hi6, lo6, counts6, occ6, mask_hi, mask_lo, T, seed_mix, n0,
                   connection, wmagic):
    """:func:`stream_kernel` over 128-bit keys ``(key_hi[i], key_lo[i])`` (``uint64[n]`` each) for IPv6
    packets ``n0 .. n0+n-1``; block ``j >= 1`` is the Residual Block of mask ``(mask_hi, mask_lo)[j-1]``;
    ``weights`` as in :func:`stream_kernel`.

    Each block's step is :func:`coco_insert6` (same hashes, ties, coins, decrement and bypass; the GPU
    twin's kernels call that function), written out in the loop over blocks as :func:`stream_kernel`
    does for IPv4: Numba's ``inline="always"`` call of ``coco_insert6`` ran this loop 1.48-1.65x slower
    (``benchmarks/bench_kernel6_ab.py``, issue 18's closing audit; state identical)."""
    w = nb.uint64(counts6.shape[2])
    m = mask_hi.shape[0]
    unit = weights.shape[0] == 0
    for i in range(key_hi.shape[0]):
        wt = nb.int64(1) if unit else nb.int64(weights[i])
        if wt <= 0:
            continue
        kh = nb.uint64(key_hi[i])
        kl = nb.uint64(key_lo[i])
        n = nb.uint64(n0) + nb.uint64(i)
        c = nb.int64(0)  # F's answer: its post-update count if the key was held, else 0
        decrement = False
        for b in range(m + 1):
            if b == 0:
                xh, xl = kh, kl
            else:
                xh, xl = kh & mask_hi[b - 1], kl & mask_lo[b - 1]
            p0 = nb.int64(fastmod(hash6(xh, xl, _ROW6_0), wmagic, w))
            p1 = nb.int64(fastmod(hash6(xh, xl, _ROW6_1), wmagic, w))
            if occ6[b, 0, p0] and hi6[b, 0, p0] == xh and lo6[b, 0, p0] == xl:
                hit, row, pos = True, 0, p0
            elif occ6[b, 1, p1] and hi6[b, 1, p1] == xh and lo6[b, 1, p1] == xl:
                hit, row, pos = True, 1, p1
            else:
                hit, row, pos = False, 0, p0
                if counts6[b, 1, p1] < counts6[b, 0, p0]:  # strict: ties go to row 0
                    row, pos = 1, p1
            new = nb.int64(counts6[b, row, pos]) + wt  # never reset on takeover
            if hit and decrement:  # Residual Blocks only: F's count just reached T
                new = max(nb.int64(0), new - c)
            counts6[b, row, pos] = new
            if not hit and takes_over(rand32(seed_mix, n, nb.uint64(IPV6_COIN_BLOCK + b)), new, wt):
                hi6[b, row, pos] = xh
                lo6[b, row, pos] = xl
                occ6[b, row, pos] = 1
            if b == 0:
                c = new if hit else nb.int64(0)
                bypass, decrement = connection_rule(c, wt, T, connection)
                if bypass:
                    break  # confirmed-heavy keys bypass the blocks


# ---------------------------------------------------------------------------- hierarchy helpers
class HHHEntry(NamedTuple):
    """One reported hierarchical heavy hitter: prefix value, length, estimates (packets)."""

    prefix: int
    length: int
    estimate: int  # unconditioned per-layer estimate est_L(p)
    discounted: int  # conditioned count c(p): est minus the covered mass of reported descendants


LayerEstimates = dict[int, dict[int, int]]  # {length: {prefix value: estimated packets}}


def layers_of(mode: str) -> tuple[int, ...]:
    """Prefix lengths of the hierarchy ``byte`` (0, 8, 16, 24, 32) or ``bit`` (0 .. 32)."""
    try:
        return layers_for(mode)
    except ValueError as exc:
        raise SketchError(str(exc)) from None


def block_contents(ids: np.ndarray, counts: np.ndarray, occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``all(S)`` of one block (arrays of shape ``(2, w)``): sorted distinct ids and Σ count (int64)."""
    held = occ.astype(bool)
    return _reduce_by_key(ids[held].astype(np.uint32), counts[held].astype(np.int64))


def _reduce_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=unique.size).astype(np.int64)


def _aggregate(keys: np.ndarray, values: np.ndarray, length: int) -> dict[int, int]:
    """``{prefix(x, length): Σ v}``: one masked segmented reduction."""
    prefixes, sums = _reduce_by_key(keys & np.uint32(prefix_mask(length)), values)
    return dict(zip(prefixes.tolist(), sums.tolist()))


def block_layer_estimates(
    ids: np.ndarray,
    counts: np.ndarray,
    occ: np.ndarray,
    crucial_layers: Sequence[int],
    layers: Sequence[int],
    threshold: int,
    addback: str | None,
) -> LayerEstimates:
    """Per-layer estimates of spec §3 from block arrays ``(1 + |K|, 2, w)``.

    Layers finer than the finest crucial layer come from all full keys of F; a layer in
    ``(k_{j-1}, k_j]`` comes from block ``k_j`` plus the add-back of F's heavy keys
    (``v > T`` with ``addback="gt"``, ``v >= T`` with ``"ge"``, none with ``None``: noConn).
    """
    full_keys, full_counts = block_contents(ids[0], counts[0], occ[0])
    if addback is None:
        heavy = np.zeros(full_counts.shape, bool)
    else:
        heavy = full_counts >= threshold if addback == "ge" else full_counts > threshold
    blocks = []
    for j, k in enumerate(crucial_layers, start=1):
        keys, values = block_contents(ids[j], counts[j], occ[j])
        keys = np.concatenate([keys, full_keys[heavy] & np.uint32(prefix_mask(k))])
        blocks.append((k, keys, np.concatenate([values, full_counts[heavy]])))
    est: LayerEstimates = {}
    for length in layers:
        source = next(((keys, values) for k, keys, values in blocks if length <= k), None)
        keys, values = source if source is not None else (full_keys, full_counts)
        est[length] = _aggregate(keys, values, length)
    return est


def block_contents6(hi: np.ndarray, lo: np.ndarray, counts: np.ndarray, occ: np.ndarray) -> dict[int, int]:
    """``all(S)`` of one IPv6 block (arrays of shape ``(2, w6)``): ``{128-bit key: Σ count}``."""
    held = occ.astype(bool)
    out: dict[int, int] = {}
    for h, l, c in zip(hi[held].tolist(), lo[held].tolist(), counts[held].tolist()):
        key = (h << 64) | l
        out[key] = out.get(key, 0) + c
    return out


def _aggregate6(content: Mapping[int, int], length: int) -> dict[int, int]:
    mask = prefix_mask(length, 128)
    out: dict[int, int] = {}
    for key, value in content.items():
        out[key & mask] = out.get(key & mask, 0) + value
    return out


def block_layer_estimates6(hi, lo, counts, occ, crucial_layers: Sequence[int], layers: Sequence[int],
                           threshold: int, addback: str | None) -> LayerEstimates:
    """:func:`block_layer_estimates` for the IPv6 blocks ``(1 + |K6|, 2, w6)``; prefixes are 128-bit ints.

    Block contents are at most ``2 * w6`` keys each, so this runs over Python ints (no hot path).
    """
    full = block_contents6(hi[0], lo[0], counts[0], occ[0])
    if addback is None:
        heavy = {}
    else:
        heavy = {x: v for x, v in full.items() if (v >= threshold if addback == "ge" else v > threshold)}
    blocks = []
    for j, k in enumerate(crucial_layers, start=1):
        content = block_contents6(hi[j], lo[j], counts[j], occ[j])
        mask = prefix_mask(k, 128)
        for x, v in heavy.items():
            content[x & mask] = content.get(x & mask, 0) + v
        blocks.append((k, content))
    return {length: _aggregate6(next((c for k, c in blocks if length <= k), full), length) for length in layers}


class HHHRow(NamedTuple):
    """One heavy prefix of either family, exactly identified: what a presenter formats.

    ``family`` is 4 or 6; ``prefix`` the network-order prefix bytes (4 for IPv4, 16 for IPv6, host
    bits zero); ``length`` the prefix length; ``estimate``/``discounted`` packets as in
    :class:`HHHEntry`. :func:`telesketch.presenter.format_prefix` gives ``10.1.0.0/16`` or ``2001:db8::/32``.
    """

    family: int
    prefix: bytes
    length: int
    estimate: int
    discounted: int


def hhh_rows(entries4: Iterable[HHHEntry], entries6: Iterable[HHHEntry] = ()) -> list[HHHRow]:
    """Both families' HHH entries as :class:`HHHRow` (IPv4 rows first, each family finest first)."""
    rows = [HHHRow(4, int(e.prefix).to_bytes(4, "big"), e.length, e.estimate, e.discounted) for e in entries4]
    rows += [HHHRow(6, int(e.prefix).to_bytes(16, "big"), e.length, e.estimate, e.discounted) for e in entries6]
    return rows


def sum_layer_estimates(maps: Iterable[Mapping[int, Mapping[int, int]]]) -> LayerEstimates:
    """Add per-layer estimate maps (shards, epochs): ``est[L][p] = Σ_s est_s[L][p]`` (spec §4)."""
    total: LayerEstimates = {}
    for est in maps:
        for length, layer in est.items():
            acc = total.setdefault(length, {})
            for prefix, value in layer.items():
                acc[prefix] = acc.get(prefix, 0) + value
    return total


def hhh_pass(est: Mapping[int, Mapping[int, int]], threshold: float, width: int = 32) -> list[HHHEntry]:
    """The discounted HHH set of per-layer estimates (spec §3 "HHH query"), as entries.

    The pass itself is :func:`telesketch.sketches.hierarchy.hhh_from_counts` (``p`` at layer ``L`` is
    reported iff ``est > T`` and ``c = est - covered > T``); this adds the unconditioned estimate
    to each entry. ``width`` is 32 (IPv4 tree) or 128 (IPv6 tree, prefixes as 128-bit ints).
    Returns entries finest layer first, ascending prefix within a layer.
    """
    out = [
        HHHEntry(prefix, length, est[length].get(prefix, 0), c)
        for (prefix, length), c in hhh_from_counts(est, threshold, width).items()
    ]
    out.sort(key=lambda e: (-e.length, e.prefix))
    return out


def merged_hhh(sketches: Sequence, threshold: float, family: int = 4) -> list[HHHEntry]:
    """One HHH pass over the summed layer estimates of shard sketches (spec §4 sharding).

    ``sketches`` are ResidualSketch or CocoSketch objects of the same mode and dimension (e.g. one
    per shard, each with its own seed and shard threshold :func:`shard_threshold`). ``threshold``
    is the global report threshold ``T_report`` in packets. ``family`` 4 (default, today's answer)
    combines the IPv4 trees, 6 the IPv6 trees (prefixes as 128-bit ints).
    """
    if not sketches:
        raise SketchError("merged_hhh needs at least one sketch")
    first = sketches[0].params
    for s in sketches[1:]:
        if (s.params.mode, s.params.dimension) != (first.mode, first.dimension):
            raise SketchError(
                f"cannot combine estimates of hierarchies {first.mode}/{first.dimension} and "
                f"{s.params.mode}/{s.params.dimension}"
            )
    if threshold is None or threshold < 0:
        raise SketchError(f"merged_hhh needs the global report threshold (packets >= 0), got {threshold!r}")
    if family == 6:
        return hhh_pass(sum_layer_estimates(s.layer_estimates6() for s in sketches), threshold, width=128)
    if family != 4:
        raise SketchError(f"family must be 4 or 6, got {family!r}")
    return hhh_pass(sum_layer_estimates(s.layer_estimates() for s in sketches), threshold)


def shard_threshold(threshold: int, shards: int) -> int:
    """Promotion threshold of one of ``shards`` shards: ``max(1, floor(T / S))`` (spec §4)."""
    if shards < 1:
        raise SketchError(f"shards must be >= 1, got {shards}")
    return max(1, int(threshold) // int(shards))


# ---------------------------------------------------------------------------- parameter helpers
def normalise_dimension(dimension: str) -> str:
    """``src``/``src_ip`` -> ``src``; ``dst``/``dst_ip`` -> ``dst``."""
    mapping = {"src": "src", "src_ip": "src", "dst": "dst", "dst_ip": "dst"}
    if dimension not in mapping:
        raise SketchError(f"dimension must be 'src' or 'dst' (or 'src_ip'/'dst_ip'), got {dimension!r}")
    return mapping[dimension]


def resolve_threshold(threshold, phi, expected_packets, required: bool) -> int | None:
    """``T`` from ``threshold``, or ``max(1, floor(phi * expected_packets))`` (spec §1)."""
    if threshold is not None and expected_packets is not None:
        raise SketchError("give either threshold or (phi, expected_packets), not both")
    if not 0.0 < float(phi) < 1.0:
        raise SketchError(f"phi must be in (0, 1), got {phi}")
    if threshold is not None:
        if int(threshold) != threshold or threshold < 1:
            raise SketchError(f"threshold must be a positive integer packet count, got {threshold!r}")
        return int(threshold)
    if expected_packets is not None:
        if int(expected_packets) != expected_packets or expected_packets < 1:
            raise SketchError(f"expected_packets must be a positive integer, got {expected_packets!r}")
        return max(1, int(float(phi) * int(expected_packets)))
    if required:
        raise SketchError(
            "the threshold T drives the update rule: give threshold=<packets>, or phi with "
            "expected_packets=<packets per epoch>"
        )
    return None


def buckets_per_row(block_bytes: int, what: str, weight: str = "packets") -> int:
    """``w = block_bytes // (2 * 8)`` (``// (2 * 12)`` byte-weighted: int64 counts); at least one bucket."""
    size = bucket_bytes(weight)
    w = int(block_bytes) // (ROWS * size)
    if w < 1:
        raise SketchError(f"{what}: {block_bytes} bytes per block is less than one bucket per row "
                          f"({ROWS * size} bytes)")
    return w


def buckets6_per_row(block_bytes: int, what: str, weight: str = "packets") -> int:
    """``w6 = block_bytes // (2 * 20)`` (``// (2 * 24)`` byte-weighted) buckets per row of an IPv6 block."""
    size = bucket_bytes(weight, family=6)
    w = int(block_bytes) // (ROWS * size)
    if w < 1:
        raise SketchError(f"{what}: {block_bytes} bytes per block is less than one IPv6 bucket per row "
                          f"({ROWS * size} bytes)")
    return w


def check_weight(weight) -> str:
    """``packets`` or ``bytes`` (see :data:`WEIGHTS`); anything else is refused."""
    if weight not in WEIGHTS:
        raise SketchError(f"weight must be 'packets' or 'bytes', got {weight!r}")
    return weight


def bucket_bytes(weight: str, family: int = 4) -> int:
    """Bytes charged per bucket: IPv4 8 (packets) / 12 (bytes), IPv6 20 / 24 (int64 counts)."""
    wide = check_weight(weight) == "bytes"
    if family == 6:
        return BUCKET6_BYTES + 4 * wide
    return BUCKET_BYTES_WIDE if wide else BUCKET_BYTES


def weight_column(batch: PacketBatch, weight: str) -> np.ndarray | None:
    """The per-packet weights of ``batch``: None for packet counting, its ``length`` column for bytes."""
    return batch.length if weight == "bytes" else None


def as_weights(weights, n: int) -> np.ndarray:
    """``weights`` as a contiguous ``int64[n]`` (non-negative), or an empty array for None (weight 1)."""
    if weights is None:
        return np.zeros(0, np.int64)
    arr = np.asarray(weights)
    if arr.shape != (n,) or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0)):
        raise SketchError(f"weights must be {n} non-negative integers, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def resolve_weighted_threshold(threshold, phi, expected_packets, expected_bytes, weight: str,
                               required: bool) -> int | None:
    """``T`` in the sketch's unit: packets, or bytes (``expected_bytes`` instead of ``expected_packets``)."""
    if weight == "bytes":
        if expected_packets is not None:
            raise SketchError("a byte-weighted sketch's threshold is in bytes: give expected_bytes "
                              "(bytes per epoch) or threshold=<bytes>, not expected_packets")
        return resolve_threshold(threshold, phi, expected_bytes, required)
    if expected_bytes is not None:
        raise SketchError("expected_bytes needs weight = 'bytes' (a packet-counting sketch takes expected_packets)")
    return resolve_threshold(threshold, phi, expected_packets, required)


def as_addresses6(addresses) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)`` ``uint64[n]`` halves of ``uint8[n, 16]`` network-order IPv6 addresses."""
    arr = np.asarray(addresses)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 16:
        raise SketchError(f"IPv6 addresses must be uint8[n, 16] (network order), got {arr.dtype} {arr.shape}")
    halves = np.ascontiguousarray(arr).view(">u8").astype(np.uint64)
    return np.ascontiguousarray(halves[:, 0]), np.ascontiguousarray(halves[:, 1])


def mask6_halves(lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)`` ``uint64`` halves of the 128-bit masks of ``lengths``."""
    masks = [prefix_mask(int(k), 128) for k in lengths]
    return (np.array([m >> 64 for m in masks], np.uint64),
            np.array([m & 0xFFFFFFFFFFFFFFFF for m in masks], np.uint64))


def check_prefix6(prefix, length: int) -> int:
    """A 16-byte (or 128-bit int) IPv6 prefix as a 128-bit int, refusing host bits and bad lengths."""
    if not 0 <= int(length) <= 128:
        raise SketchError(f"IPv6 prefix length must be in [0, 128], got {length}")
    if isinstance(prefix, (bytes, bytearray)):
        if len(prefix) != 16:
            raise SketchError(f"an IPv6 prefix has 16 bytes, got {len(prefix)}")
        prefix = int.from_bytes(prefix, "big")
    prefix = int(prefix)
    if not 0 <= prefix < 1 << 128 or prefix & ~prefix_mask(int(length), 128):
        raise SketchError(f"IPv6 prefix {prefix:#x}/{length} has host bits set (or is not 128-bit)")
    return prefix


def check_memory(memory_bytes) -> int:
    if isinstance(memory_bytes, bool) or int(memory_bytes) != memory_bytes or memory_bytes <= 0:
        raise SketchError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    return int(memory_bytes)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < 2**64:
        raise SketchError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def seed_mix(seed: int) -> np.uint64:
    """``mix64(seed)``, the per-sketch constant of ``rand32``."""
    return np.uint64(mix64(np.uint64(seed)))


def address_column(batch: PacketBatch, dimension: str) -> np.ndarray:
    """The batch's source or destination addresses (``uint32[n]``)."""
    if not isinstance(batch, PacketBatch):
        raise SketchError(f"update() takes a PacketBatch, got {type(batch).__name__}; use update_addresses() for arrays")
    return batch.src_ip if dimension == "src" else batch.dst_ip


def as_addresses(addresses) -> np.ndarray:
    """A contiguous ``uint32[n]`` view/copy of an address array; refuses other shapes and values."""
    arr = np.asarray(addresses)
    if arr.ndim != 1:
        raise SketchError(f"addresses must be a 1-D uint32 array, got shape {arr.shape}")
    if arr.dtype != np.uint32:
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 0xFFFFFFFF):
            raise SketchError(f"addresses must be uint32 values, got dtype {arr.dtype}")
        arr = arr.astype(np.uint32)
    return np.ascontiguousarray(arr)


def prefix_estimate(est: Mapping[int, Mapping[int, int]], prefix: int, length: int) -> int:
    """Look up ``est[length][prefix]`` after checking the prefix is well formed."""
    if not 0 <= int(length) <= 32:
        raise SketchError(f"prefix length must be in [0, 32], got {length}")
    if not 0 <= int(prefix) <= 0xFFFFFFFF or int(prefix) & ~prefix_mask(length) & 0xFFFFFFFF:
        raise SketchError(f"prefix {prefix:#x}/{length} has host bits set (or is not a u32)")
    return int(est[length].get(int(prefix), 0))


# ---------------------------------------------------------------------------- CocoSketch
@dataclass(frozen=True)
class CocoSketchParams:
    """CocoSketch parameters (spec §2, §8 baseline).

    ``memory_bytes`` buys ``w = memory_bytes // 16`` buckets per row for IPv4 keys;
    ``ipv6_memory_bytes`` (default: ``memory_bytes``) buys ``w6 = ipv6_memory_bytes // 40`` buckets
    per row of the IPv6 tree (20 bytes a bucket). ``threshold`` (or ``phi`` with
    ``expected_packets``) only sets the default report threshold of :meth:`CocoSketch.hhh` (both trees).
    ``weight``: ``packets`` (default) or ``bytes`` (:data:`WEIGHTS`: int64 counts, 12/24-byte buckets;
    ``threshold`` in bytes, ``expected_bytes`` instead of ``expected_packets``).
    """

    mode: str = "byte"
    dimension: str = "src"
    memory_bytes: int | None = None
    threshold: int | None = None
    phi: float = 1e-3
    expected_packets: int | None = None
    seed: int = 0
    ipv6_memory_bytes: int | None = None
    weight: str = "packets"
    expected_bytes: int | None = None

    def __post_init__(self):
        layers_of(self.mode)
        check_weight(self.weight)
        object.__setattr__(self, "dimension", normalise_dimension(self.dimension))
        memory = DEFAULT_MEMORY[self.mode] if self.memory_bytes is None else check_memory(self.memory_bytes)
        object.__setattr__(self, "memory_bytes", memory)
        memory6 = memory if self.ipv6_memory_bytes is None else check_memory(self.ipv6_memory_bytes)
        object.__setattr__(self, "ipv6_memory_bytes", memory6)
        buckets6_per_row(memory6, "CocoSketch IPv6 tree", self.weight)
        object.__setattr__(self, "seed", check_seed(self.seed))
        buckets_per_row(memory, "CocoSketch", self.weight)
        resolve_weighted_threshold(self.threshold, self.phi, self.expected_packets, self.expected_bytes,
                                   self.weight, required=False)


class BlockSketchVerbs(Sketch):
    """The verbs CocoSketch and ResidualSketch share: HHH queries over ``layer_estimates()`` and
    the serialised form (parameters, ``ids``/``counts``/``occ`` blocks, packet index).

    A subclass sets ``ALGORITHM``, ``VERSION``, ``PARAMS`` (its parameter dataclass) and provides
    ``layer_estimates()`` and ``report_threshold(threshold)``.
    """

    #: each tree streams its family's packets in order with the packet's stream index as its coin
    #: (``packets`` / ``packets6``): joined batches leave the same state (``Sketch.batch_invariant``)
    batch_invariant = True

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """IPv6 rows are counted (module docstring: how)."""
        return True

    ALGORITHM: str
    VERSION: int
    PARAMS: type
    #: both trees' buckets: what updates write (``copy`` duplicates these, shares the geometry)
    COPY_ARRAYS = ("cells", "occ", "hi6", "lo6", "counts6", "occ6")
    COPY_EXACT = ("telesketch.sketches.cocosketch:CocoSketch", "telesketch.sketches.residualsketch:ResidualSketch")

    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        """Epochs and shards alike: summed layer estimates, one HHH pass (:class:`HHHWindow`)."""
        from telesketch.sketches.combine import HHHWindow

        return HHHWindow(parts, rule)

    # ------------------------------------------------------------------ IPv6 tree
    @property
    def unit(self) -> str:
        """What counts, thresholds and answers are in: ``packets`` or ``bytes`` (the ``weight`` parameter)."""
        return self.params.weight

    def _count_dtype(self):
        """``int32`` counts for packets (today's state), ``int64`` for byte sums."""
        return np.int64 if self.params.weight == "bytes" else np.int32

    def _alloc_ipv4(self, blocks: int, what: str, shares: Sequence[float] | None = None) -> None:
        """Allocate ``blocks`` IPv4 blocks (8- or 12-byte buckets by weight): ``w`` buckets per row each
        (``memory_bytes // blocks``), or with ``shares`` (one fraction of ``memory_bytes`` per block)
        ``widths[j]`` buckets per row for block ``j``, stored in arrays as wide as the widest block.

        Sets ``widths`` (tuple of int, one per block), ``width`` (the widest) and ``_geometry`` (the
        ``widths`` / ``wmagics`` arrays :func:`stream_kernel` takes).
        """
        if shares is None:
            widths = (buckets_per_row(self.params.memory_bytes // blocks, what, self.params.weight),) * blocks
        else:
            widths = tuple(buckets_per_row(int(self.params.memory_bytes * s), what, self.params.weight) for s in shares)
        self.widths = widths
        self.width = max(widths)
        shape = (blocks, ROWS, self.width)
        self.cells = np.zeros(shape, BUCKET_DTYPE_BYTES if self.params.weight == "bytes" else BUCKET_DTYPE)
        self.occ = np.zeros(shape, np.uint8)
        self._geometry = (np.array(widths, np.uint64), np.array([fastmod_magic(w) for w in widths], np.uint64))

    def _init_ipv6(self, memory_bytes: int, crucial: tuple[int, ...], what: str) -> None:
        """Allocate the IPv6 tree: ``1 + |K6|`` blocks of ``w6`` buckets per row, zero packets."""
        self.ipv6_layers = IPV6_LAYERS
        self.ipv6_crucial_layers = tuple(crucial)
        self.width6 = buckets6_per_row(memory_bytes // (1 + len(crucial)), what, self.params.weight)
        shape = (1 + len(crucial), ROWS, self.width6)
        self.hi6 = np.zeros(shape, np.uint64)
        self.lo6 = np.zeros(shape, np.uint64)
        self.counts6 = np.zeros(shape, self._count_dtype())
        self.occ6 = np.zeros(shape, np.uint8)
        self.packets6 = 0  # stream index of the next IPv6 packet
        self.bytes_counted = 0  # byte-weighted: sum of the weights counted (both trees)
        self._masks6 = mask6_halves(crucial)

    def _tree_rule(self) -> tuple[int, bool, str | None]:
        """``(T, connection, addback)`` of the update and query rules (plain CocoSketch: no connection)."""
        return 0, True, None

    @property
    def ipv6_memory_bytes(self) -> int:
        """Bucket memory charged to the IPv6 tree: ``(|K6| + 1) * 2 * w6 * 20`` bytes (24 byte-weighted)."""
        return self.counts6.shape[0] * ROWS * self.width6 * bucket_bytes(self.params.weight, family=6)

    def update(self, batch: PacketBatch) -> None:
        """Count every packet of ``batch`` under its source (or destination) address, by its weight
        (1, or its ``length`` column with ``weight = "bytes"``).

        IPv4 rows go to the IPv4 tree, IPv6 rows (``ipv6 == 1``) to the IPv6 tree, each tree in
        batch order with its own packet index, so a tree's state depends only on its family's
        packets (an IPv4-only stream gives exactly today's state and answers).
        """
        column = address_column(batch, self.params.dimension)
        weights = weight_column(batch, self.params.weight)
        if not batch.has_ipv6():
            self.update_addresses(column, weights)
            return
        v6 = batch.ipv6.astype(bool)
        self.update_addresses(column[~v6], None if weights is None else weights[~v6])
        self.update_addresses6((batch.src_ip6 if self.params.dimension == "src" else batch.dst_ip6)[v6],
                               None if weights is None else weights[v6])

    def _take_weights(self, weights, n: int) -> np.ndarray:
        """``as_weights`` of ``n`` packets about to be counted, added to :attr:`bytes_counted`; weights
        given to a packet-counting sketch are refused (it would ignore them)."""
        if weights is not None and self.params.weight != "bytes":
            raise SketchError("this sketch counts packets (weight = 'packets'); construct it with "
                              "weight='bytes' to count per-packet weights")
        arr = as_weights(weights, n)
        self.bytes_counted += int(arr.sum())
        return arr

    @property
    def total_weight(self) -> int:
        """Everything counted so far, in :attr:`unit`: packets (both trees), or bytes. What a
        query's ``phi`` is a fraction of."""
        return self.bytes_counted if self.params.weight == "bytes" else self.packets + self.packets6

    def update_addresses6(self, addresses, weights=None) -> None:
        """Process IPv6 addresses ``uint8[n, 16]`` (network order) in order into the IPv6 tree;
        ``weights`` (byte-weighted sketches): ``n`` non-negative integers."""
        hi, lo = as_addresses6(addresses)
        weights = self._take_weights(weights, hi.shape[0])
        if hi.shape[0]:
            self._stream6(hi, lo, weights)
            self.packets6 += hi.shape[0]

    def _stream6(self, hi: np.ndarray, lo: np.ndarray, weights: np.ndarray) -> None:
        T, connection, _ = self._tree_rule()
        stream_kernel6(hi, lo, weights, self.hi6, self.lo6, self.counts6, self.occ6, *self._masks6, np.int64(T),
                       self._seed_mix, np.uint64(self.packets6), connection, fastmod_magic(self.width6))

    def layer_estimates6(self) -> LayerEstimates:
        """``{length: {prefix (128-bit int): estimated packets}}`` of the IPv6 tree, every layer of
        :data:`~telesketch.sketches.hierarchy.IPV6_LAYERS` (additive across shards like the IPv4 maps)."""
        T, _, addback = self._tree_rule()
        return block_layer_estimates6(self.hi6, self.lo6, self.counts6, self.occ6, self.ipv6_crucial_layers,
                                      IPV6_LAYERS, T, addback)

    def estimate6(self, prefix, length: int) -> int:
        """Estimated packets of an IPv6 prefix (16 bytes or a 128-bit int, host bits zero), any length 0..128."""
        value = check_prefix6(prefix, length)
        T, _, addback = self._tree_rule()
        est = block_layer_estimates6(self.hi6, self.lo6, self.counts6, self.occ6, self.ipv6_crucial_layers,
                                     (int(length),), T, addback)
        return int(est[int(length)].get(value, 0))

    def hhh6_entries(self, threshold: float | None = None) -> list[HHHEntry]:
        """IPv6 HHH entries (prefixes as 128-bit ints), finest layer first, at ``T_report``."""
        return hhh_pass(self.layer_estimates6(), self.report_threshold(threshold), width=128)

    def hhh_rows(self, threshold: float | None = None) -> list[HHHRow]:
        """Both trees' heavy prefixes in one answer (:class:`HHHRow`: family, prefix bytes, length,
        estimates), IPv4 rows first; the presenter formats each (:func:`telesketch.presenter.format_prefix`)."""
        return hhh_rows(self.hhh_entries(threshold), self.hhh6_entries(threshold))

    # ------------------------------------------------------------------ IPv4 queries and state
    def hhh_entries(self, threshold: float | None = None) -> list[HHHEntry]:
        """HHH entries ``(prefix, length, estimate, discounted)``, finest layer first."""
        return hhh_pass(self.layer_estimates(), self.report_threshold(threshold))

    def hhh(self, threshold: float | None = None) -> list[tuple[int, int, int]]:
        """``[(prefix, length, discounted_estimate), ...]``: the discounted HHH set at ``T_report``."""
        return [(e.prefix, e.length, e.discounted) for e in self.hhh_entries(threshold)]

    def to_bytes(self) -> bytes:
        """Parameters, seed, both trees' raw blocks and packet indices (restores bit-identically).

        Layout version 2 adds the IPv6 tree (``hi6``/``lo6``/``counts6``/``occ6``, ``packets6``);
        :meth:`from_bytes` still reads version 1 (IPv4 only: the IPv6 tree starts empty).
        """
        params = dataclasses.asdict(self.params)
        for name in ("weight", "expected_bytes"):  # packet-counting snapshots stay byte-identical to before
            if params[name] == CocoSketchParams.__dataclass_fields__[name].default:
                del params[name]
        if params.get("split", 0) is None:  # ResidualSketch's equal (paper) split: today's layout, byte for byte
            del params["split"]
        return pack_state(self.ALGORITHM, self.VERSION, params,
                          {"ids": self.ids, "counts": self.counts, "occ": self.occ, "hi6": self.hi6,
                           "lo6": self.lo6, "counts6": self.counts6, "occ6": self.occ6},
                          extra={"packets": self.packets, "packets6": self.packets6,
                                 **({"bytes": self.bytes_counted} if self.params.weight == "bytes" else {})})

    @classmethod
    def from_bytes(cls, data: bytes):
        version, (params, arrays, _, extra) = _unpack_any_version(data, cls.ALGORITHM, (cls.VERSION, 1))
        try:
            sketch = cls(cls.PARAMS(**params))
        except TypeError as exc:
            raise SketchError(f"serialised {cls.__name__} parameters do not fit: {exc}") from None
        _restore(sketch, arrays, extra)
        if version >= 2:
            _restore6(sketch, arrays, extra)
        if sketch.params.weight == "bytes":
            counted = extra.get("bytes")
            if not isinstance(counted, int) or counted < 0:
                raise SketchError(f"serialised byte total of a byte-weighted sketch is missing or invalid: {counted!r}")
            sketch.bytes_counted = counted
        return sketch


class CocoSketch(BlockSketchVerbs):
    """CocoSketch with d = 2 over full keys; every HHH layer aggregated from the full keys.

    Two trees side by side: one block of IPv4 keys (``u32``) and one of IPv6 keys (128-bit), each
    fed its family's rows of a batch; ``hhh()`` answers IPv4 as before, ``hhh6_entries()`` IPv6,
    ``hhh_rows()`` both.

    >>> from telesketch.traces.generate import generate_batch
    >>> cs = CocoSketch(memory_bytes=32 * 1024, threshold=1000)
    >>> cs.update(generate_batch(20_000, 2_000, seed=1))
    >>> cs.hhh()[:3]                    # [(prefix, length, discounted_estimate), ...]
    [(875026394, 32, 3019), (887566926, 32, 1369), (874643456, 16, 1137)]
    """

    ALGORITHM = "cocosketch"
    VERSION = 2  # 2: the IPv6 tree; version 1 (IPv4 only) still loads
    PARAMS = CocoSketchParams

    def __init__(self, params: CocoSketchParams | None = None, **kwargs):
        if params is not None and kwargs:
            raise SketchError("give either a CocoSketchParams or keyword parameters, not both")
        self.params = params if params is not None else CocoSketchParams(**kwargs)
        p = self.params
        self._T = resolve_weighted_threshold(p.threshold, p.phi, p.expected_packets, p.expected_bytes, p.weight,
                                             False)
        self._alloc_ipv4(1, "CocoSketch")
        self.packets = 0
        self._seed_mix = seed_mix(self.params.seed)
        self.layers = layers_of(self.params.mode)
        self._init_ipv6(self.params.ipv6_memory_bytes, (), "CocoSketch IPv6 tree")

    @property
    def memory_bytes(self) -> int:
        """Bucket memory charged: ``2 * w * 8`` bytes (``2 * w * 12`` byte-weighted)."""
        return ROWS * self.width * bucket_bytes(self.params.weight)

    ids = property(lambda self: self.cells["id"], doc="Bucket ids, ``uint32[1, 2, w]`` (a view).")
    counts = property(lambda self: self.cells["count"],
                      doc="Bucket counts, ``int32[1, 2, w]`` (``int64`` byte-weighted; a view).")

    def update_addresses(self, addresses, weights=None) -> None:
        """Count a raw ``uint32[n]`` address array (the benchmark entry point; hashing included);
        ``weights`` (byte-weighted sketches): ``n`` non-negative integers."""
        keys = as_addresses(addresses)
        stream_kernel(keys, self._take_weights(weights, keys.shape[0]), self.cells, self.occ, None, 0,
                      self._seed_mix, np.uint64(self.packets), True, *self._geometry)
        self.packets += keys.shape[0]

    def full_keys(self) -> dict[int, int]:
        """``all(F)``: ``{address: estimated packets}`` of every held key."""
        keys, values = block_contents(self.ids[0], self.counts[0], self.occ[0])
        return dict(zip(keys.tolist(), values.tolist()))

    def layer_estimates(self) -> LayerEstimates:
        """``{length: {prefix: estimate}}`` for every layer of the mode (additive across shards)."""
        return block_layer_estimates(self.ids, self.counts, self.occ, (), self.layers, 0, None)

    def estimate(self, prefix: int, length: int) -> int:
        """Estimated packets of ``prefix/length`` (any length 0..32): Σ over held keys under it."""
        if not 0 <= int(length) <= 32:
            raise SketchError(f"prefix length must be in [0, 32], got {length}")
        keys, values = block_contents(self.ids[0], self.counts[0], self.occ[0])
        return prefix_estimate({length: _aggregate(keys, values, length)}, prefix, length)

    def report_threshold(self, threshold: float | None) -> float:
        if threshold is not None:
            if threshold < 0:
                raise SketchError(f"report threshold must be non-negative, got {threshold}")
            return threshold
        if self._T is None:
            raise SketchError("no threshold: construct with threshold (or phi + expected_packets) or pass one")
        return self._T

    def merge(self, other) -> None:
        raise NotMergeableError(
            "CocoSketch state is order-dependent and only approximately mergeable (spec §4); "
            "combine shards with telesketch.sketches.cocosketch.merged_hhh or sum_layer_estimates"
        )


def _unpack_any_version(data: bytes, algorithm: str, versions: Sequence[int]):
    """``(version, unpack_state(...))`` for the first of ``versions`` the envelope carries."""
    for version in versions:
        try:
            return version, unpack_state(data, algorithm, version)
        except SketchError as exc:
            if "layout version" not in str(exc) or version == versions[-1]:
                raise


def _restore6(sketch, arrays: dict, extra: dict) -> None:
    """Load the IPv6 tree (``hi6``/``lo6``/``counts6``/``occ6``, ``packets6``) of a version-2 state."""
    shape = sketch.occ6.shape
    for name, dtype in (("hi6", np.uint64), ("lo6", np.uint64), ("counts6", sketch.counts6.dtype),
                        ("occ6", np.uint8)):
        arr = arrays.get(name)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            raise SketchError(f"serialised {name!r} does not fit these parameters (expected {shape} {np.dtype(dtype)})")
        getattr(sketch, name)[...] = arr
    packets6 = extra.get("packets6")
    if not isinstance(packets6, int) or packets6 < 0:
        raise SketchError(f"serialised IPv6 packet index is missing or invalid: {packets6!r}")
    sketch.packets6 = packets6


def _restore(sketch, arrays: dict, extra: dict) -> None:
    """Load ``ids``/``counts``/``occ`` and the packet index into a fresh sketch, checking shapes."""
    shape = sketch.occ.shape
    for name, dtype in (("ids", np.uint32), ("counts", sketch.counts.dtype), ("occ", np.uint8)):
        arr = arrays.get(name)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            raise SketchError(f"serialised {name!r} does not fit these parameters (expected {shape} {np.dtype(dtype)})")
    sketch.cells["id"] = arrays["ids"]
    sketch.cells["count"] = arrays["counts"]
    sketch.occ[...] = arrays["occ"]
    packets = extra.get("packets")
    if not isinstance(packets, int) or packets < 0:
        raise SketchError(f"serialised packet index is missing or invalid: {packets!r}")
    sketch.packets = packets
