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

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numba as nb
import numpy as np

from telesketch.hashing import mix64
from telesketch.jit import kernel, twin
from telesketch.packets import PacketBatch, format_ipv4, format_ipv6
from telesketch.sketches.core import NotMergeableError, SketchError, pack_state, unpack_state
from telesketch.sketches.core import EPOCHS, Rule, Sketch, Window
from telesketch.sketches.hierarchy import IPV6_LAYERS, hhh_from_counts, layers_for, prefix_mask

BUCKET_BYTES = 8  # id (u32) + count (i32); the occupancy flag is not charged (spec §2)
ROWS = 2
ROW_INITS = (181, 5197)  # lookup2 initial values of rows 0 and 1 (spec §2)
DEFAULT_MEMORY = {"byte": 32 * 1024, "bit": 256 * 1024}
BUCKET_DTYPE = np.dtype([("id", "<u4"), ("count", "<i4")])

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


@kernel(inline="always")
def coco_insert(cells, occ, blk, x, w, wmagic, seed_mix, n, T, decrement):
    """Insert key ``x`` (uint64 holding a u32) with weight 1 into block ``blk`` (spec §2).

    ``pos_r(x) = BOB(x, r) mod w`` (``wmagic = fastmod_magic(w)``). Returns the post-update
    count if ``x`` was held ("matched"), else 0. With ``decrement`` a held
    key's count becomes ``max(0, count + 1 - T)``; an unheld key gets a plain +1 insert.
    """
    xid = nb.uint32(x)
    p0 = nb.int64(fastmod(bob_hash(x, _ROW0), wmagic, w))
    if occ[blk, 0, p0] and cells[blk, 0, p0].id == xid:
        return _bump(cells, blk, 0, p0, T, decrement)
    p1 = nb.int64(fastmod(bob_hash(x, _ROW1), wmagic, w))
    if occ[blk, 1, p1] and cells[blk, 1, p1].id == xid:
        return _bump(cells, blk, 1, p1, T, decrement)
    row, pos = 0, p0
    if cells[blk, 1, p1].count < cells[blk, 0, p0].count:  # strict: ties go to row 0
        row, pos = 1, p1
    c = nb.int64(cells[blk, row, pos].count) + 1  # never reset on takeover
    cells[blk, row, pos].count = c
    if nb.uint32(rand32(seed_mix, n, nb.uint64(blk))) % nb.uint32(c) == 0:  # 32-bit division
        cells[blk, row, pos].id = xid
        occ[blk, row, pos] = 1
    return 0


@kernel(inline="always")
def _bump(cells, blk, row, pos, T, decrement):
    if decrement:
        c = max(nb.int64(0), nb.int64(cells[blk, row, pos].count) + 1 - T)
    else:
        c = nb.int64(cells[blk, row, pos].count) + 1
    cells[blk, row, pos].count = c
    return c


@kernel
def stream_kernel(keys, cells, occ, masks, T, seed_mix, n0, connection, wmagic):
    """The sequential update loop of spec §3 over ``keys`` (uint32[n]) for packets ``n0 .. n0+n-1``.

    Block 0 is the full-key block F; block ``j >= 1`` is the Residual Block of prefix mask
    ``masks[j-1]`` (ascending lengths). With no masks this is plain CocoSketch. With
    ``connection`` False (the spec's "noConn" column, as the reference's
    ``HHHKey_without`` runs it) every packet is a plain insert into every block: no bypass, no
    decrement (and the query adds nothing back).
    """
    w = nb.uint64(cells.shape[2])
    m = masks.shape[0]
    for i in range(keys.shape[0]):
        x = nb.uint64(keys[i])
        n = nb.uint64(n0) + nb.uint64(i)
        c = coco_insert(cells, occ, 0, x, w, wmagic, seed_mix, n, T, False)
        decrement = False
        if connection:
            if c > T:
                continue  # confirmed-heavy keys bypass the blocks
            decrement = c == T
        for j in range(m):
            p = x & nb.uint64(masks[j])
            coco_insert(cells, occ, j + 1, p, w, wmagic, seed_mix, n, T, decrement)


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


@kernel(inline="always")
def _bump6(counts6, blk, row, pos, T, decrement):
    c = nb.int64(counts6[blk, row, pos]) + 1
    if decrement:
        c = max(nb.int64(0), c - T)
    counts6[blk, row, pos] = c
    return c


@kernel(inline="always")
def coco_insert6(hi6, lo6, counts6, occ6, blk, xh, xl, w, wmagic, seed_mix, n, T, decrement):
    """:func:`coco_insert` for a 128-bit key ``(xh, xl)`` into IPv6 block ``blk``; same return value."""
    p0 = nb.int64(fastmod(hash6(xh, xl, _ROW6_0), wmagic, w))
    if occ6[blk, 0, p0] and hi6[blk, 0, p0] == xh and lo6[blk, 0, p0] == xl:
        return _bump6(counts6, blk, 0, p0, T, decrement)
    p1 = nb.int64(fastmod(hash6(xh, xl, _ROW6_1), wmagic, w))
    if occ6[blk, 1, p1] and hi6[blk, 1, p1] == xh and lo6[blk, 1, p1] == xl:
        return _bump6(counts6, blk, 1, p1, T, decrement)
    row, pos = 0, p0
    if counts6[blk, 1, p1] < counts6[blk, 0, p0]:  # strict: ties go to row 0
        row, pos = 1, p1
    c = nb.int64(counts6[blk, row, pos]) + 1  # never reset on takeover
    counts6[blk, row, pos] = c
    coin = nb.uint32(rand32(seed_mix, n, nb.uint64(IPV6_COIN_BLOCK + blk)))
    if coin % nb.uint32(c) == 0:
        hi6[blk, row, pos] = xh
        lo6[blk, row, pos] = xl
        occ6[blk, row, pos] = 1
    return 0


@kernel
def stream_kernel6(key_hi, key_lo, hi6, lo6, counts6, occ6, mask_hi, mask_lo, T, seed_mix, n0, connection,
                   wmagic):
    """:func:`stream_kernel` over 128-bit keys ``(key_hi[i], key_lo[i])`` (``uint64[n]`` each) for IPv6
    packets ``n0 .. n0+n-1``; block ``j >= 1`` is the Residual Block of mask ``(mask_hi, mask_lo)[j-1]``."""
    w = nb.uint64(counts6.shape[2])
    m = mask_hi.shape[0]
    for i in range(key_hi.shape[0]):
        xh = nb.uint64(key_hi[i])
        xl = nb.uint64(key_lo[i])
        n = nb.uint64(n0) + nb.uint64(i)
        c = coco_insert6(hi6, lo6, counts6, occ6, 0, xh, xl, w, wmagic, seed_mix, n, T, False)
        decrement = False
        if connection:
            if c > T:
                continue  # confirmed-heavy keys bypass the blocks
            decrement = c == T
        for j in range(m):
            coco_insert6(hi6, lo6, counts6, occ6, j + 1, xh & mask_hi[j], xl & mask_lo[j], w, wmagic, seed_mix, n,
                         T, decrement)


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
    :class:`HHHEntry`. :func:`format_prefix` gives ``10.1.0.0/16`` or ``2001:db8::/32``.
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


def format_prefix(family: int, prefix: bytes, length: int) -> str:
    """CIDR text of a prefix: ``10.1.0.0/16`` or RFC 5952 ``2001:db8::/32`` (via ``format_ipv6``)."""
    if family == 4 and len(prefix) == 4:
        return f"{format_ipv4(int.from_bytes(prefix, 'big'))}/{int(length)}"
    if family == 6 and len(prefix) == 16:
        return f"{format_ipv6(prefix)}/{int(length)}"
    raise SketchError(f"not a family-{family} prefix: {bytes(prefix).hex()} ({len(prefix)} bytes)")


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


def buckets_per_row(block_bytes: int, what: str) -> int:
    """``w = block_bytes // (2 * 8)``; at least one bucket."""
    w = int(block_bytes) // (ROWS * BUCKET_BYTES)
    if w < 1:
        raise SketchError(f"{what}: {block_bytes} bytes per block is less than one bucket per row (16 bytes)")
    return w


def buckets6_per_row(block_bytes: int, what: str) -> int:
    """``w6 = block_bytes // (2 * 20)`` buckets per row of an IPv6 block; at least one bucket."""
    w = int(block_bytes) // (ROWS * BUCKET6_BYTES)
    if w < 1:
        raise SketchError(f"{what}: {block_bytes} bytes per block is less than one IPv6 bucket per row (40 bytes)")
    return w


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
    """

    mode: str = "byte"
    dimension: str = "src"
    memory_bytes: int | None = None
    threshold: int | None = None
    phi: float = 1e-3
    expected_packets: int | None = None
    seed: int = 0
    ipv6_memory_bytes: int | None = None

    def __post_init__(self):
        layers_of(self.mode)
        object.__setattr__(self, "dimension", normalise_dimension(self.dimension))
        memory = DEFAULT_MEMORY[self.mode] if self.memory_bytes is None else check_memory(self.memory_bytes)
        object.__setattr__(self, "memory_bytes", memory)
        memory6 = memory if self.ipv6_memory_bytes is None else check_memory(self.ipv6_memory_bytes)
        object.__setattr__(self, "ipv6_memory_bytes", memory6)
        buckets6_per_row(memory6, "CocoSketch IPv6 tree")
        object.__setattr__(self, "seed", check_seed(self.seed))
        buckets_per_row(memory, "CocoSketch")
        resolve_threshold(self.threshold, self.phi, self.expected_packets, required=False)


class BlockSketchVerbs(Sketch):
    """The verbs CocoSketch and ResidualSketch share: HHH queries over ``layer_estimates()`` and
    the serialised form (parameters, ``ids``/``counts``/``occ`` blocks, packet index).

    A subclass sets ``ALGORITHM``, ``VERSION``, ``PARAMS`` (its parameter dataclass) and provides
    ``layer_estimates()`` and ``report_threshold(threshold)``.
    """

    @classmethod
    def takes_ipv6(cls, params: dict) -> bool:
        """IPv6 rows are counted (module docstring: how)."""
        return True

    ALGORITHM: str
    VERSION: int
    PARAMS: type

    @classmethod
    def combine(cls, parts: list, rule: Rule = EPOCHS) -> Window:
        """Epochs and shards alike: summed layer estimates, one HHH pass (:class:`HHHWindow`)."""
        from telesketch.sketches.combine import HHHWindow

        return HHHWindow(parts, rule)

    # ------------------------------------------------------------------ IPv6 tree
    def _init_ipv6(self, memory_bytes: int, crucial: tuple[int, ...], what: str) -> None:
        """Allocate the IPv6 tree: ``1 + |K6|`` blocks of ``w6`` buckets per row, zero packets."""
        self.ipv6_layers = IPV6_LAYERS
        self.ipv6_crucial_layers = tuple(crucial)
        self.width6 = buckets6_per_row(memory_bytes // (1 + len(crucial)), what)
        shape = (1 + len(crucial), ROWS, self.width6)
        self.hi6 = np.zeros(shape, np.uint64)
        self.lo6 = np.zeros(shape, np.uint64)
        self.counts6 = np.zeros(shape, np.int32)
        self.occ6 = np.zeros(shape, np.uint8)
        self.packets6 = 0  # stream index of the next IPv6 packet
        self._masks6 = mask6_halves(crucial)

    def _tree_rule(self) -> tuple[int, bool, str | None]:
        """``(T, connection, addback)`` of the update and query rules (plain CocoSketch: no connection)."""
        return 0, True, None

    @property
    def ipv6_memory_bytes(self) -> int:
        """Bucket memory charged to the IPv6 tree: ``(|K6| + 1) * 2 * w6 * 20`` bytes."""
        return self.counts6.shape[0] * ROWS * self.width6 * BUCKET6_BYTES

    def update(self, batch: PacketBatch) -> None:
        """Count every packet of ``batch`` (weight 1) under its source (or destination) address.

        IPv4 rows go to the IPv4 tree, IPv6 rows (``ipv6 == 1``) to the IPv6 tree, each tree in
        batch order with its own packet index, so a tree's state depends only on its family's
        packets (an IPv4-only stream gives exactly today's state and answers).
        """
        column = address_column(batch, self.params.dimension)
        if not batch.has_ipv6():
            self.update_addresses(column)
            return
        v6 = batch.ipv6.astype(bool)
        self.update_addresses(column[~v6])
        self.update_addresses6((batch.src_ip6 if self.params.dimension == "src" else batch.dst_ip6)[v6])

    def update_addresses6(self, addresses) -> None:
        """Process IPv6 addresses ``uint8[n, 16]`` (network order) in order into the IPv6 tree."""
        hi, lo = as_addresses6(addresses)
        if hi.shape[0]:
            self._stream6(hi, lo)
            self.packets6 += hi.shape[0]

    def _stream6(self, hi: np.ndarray, lo: np.ndarray) -> None:
        T, connection, _ = self._tree_rule()
        stream_kernel6(hi, lo, self.hi6, self.lo6, self.counts6, self.occ6, *self._masks6, np.int64(T),
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
        estimates), IPv4 rows first; format each with :func:`format_prefix`."""
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
        return pack_state(self.ALGORITHM, self.VERSION, self.params,
                          {"ids": self.ids, "counts": self.counts, "occ": self.occ, "hi6": self.hi6,
                           "lo6": self.lo6, "counts6": self.counts6, "occ6": self.occ6},
                          extra={"packets": self.packets, "packets6": self.packets6})

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
        self._T = resolve_threshold(self.params.threshold, self.params.phi, self.params.expected_packets, False)
        self.width = buckets_per_row(self.params.memory_bytes, "CocoSketch")
        shape = (1, ROWS, self.width)
        self.cells = np.zeros(shape, BUCKET_DTYPE)
        self.occ = np.zeros(shape, np.uint8)
        self.packets = 0
        self._seed_mix = seed_mix(self.params.seed)
        self.layers = layers_of(self.params.mode)
        self._init_ipv6(self.params.ipv6_memory_bytes, (), "CocoSketch IPv6 tree")

    @property
    def memory_bytes(self) -> int:
        """Bucket memory charged: ``2 * w * 8`` bytes."""
        return ROWS * self.width * BUCKET_BYTES

    ids = property(lambda self: self.cells["id"], doc="Bucket ids, ``uint32[1, 2, w]`` (a view).")
    counts = property(lambda self: self.cells["count"], doc="Bucket counts, ``int32[1, 2, w]`` (a view).")

    def update_addresses(self, addresses) -> None:
        """Count a raw ``uint32[n]`` address array (the benchmark entry point; hashing included)."""
        keys = as_addresses(addresses)
        stream_kernel(keys, self.cells, self.occ, np.zeros(0, np.uint32), 0,
                      self._seed_mix, np.uint64(self.packets), True, fastmod_magic(self.width))
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
    for name, dtype in (("hi6", np.uint64), ("lo6", np.uint64), ("counts6", np.int32), ("occ6", np.uint8)):
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
    for name, dtype in (("ids", np.uint32), ("counts", np.int32), ("occ", np.uint8)):
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
