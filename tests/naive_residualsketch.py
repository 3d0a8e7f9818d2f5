"""Pure-Python models of CocoSketch (d = 2) and ResidualSketch, written from specs/residualsketch.md.

Readable and slow: plain lists and ints, one packet at a time. Same row hash (lookup2, §2), same
counter-based coins ``rand32(seed, n, j)``, so for a fixed seed the Numba sketches must reproduce
the state (ids, counts, occupancy) and every answer exactly.

The IPv6 tree (:class:`NaiveResidualSketch6`) is the same model over 128-bit int keys with the
hierarchy /0 /16 /32 /48 /56 /64 /128, the row hash ``mix64(mix64(hi ^ initval) ^ lo) >> 32``,
20-byte buckets and coins ``rand32(seed, n6, 32 + j)``.

Weights (``weight="bytes"``): a packet of weight ``wt`` adds ``wt``; a new key takes the bucket with
probability ``wt / count`` (``u mod count < wt``; ``u * count < wt * 2^32`` once count passes 32
bits); the Residual Connection bypasses a key already at ``T`` before the packet and decrements
(``count + wt - c``) when the packet carries F's count ``c`` to ``T`` or past; buckets are 12 / 24 bytes.
"""
from __future__ import annotations

import itertools

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
ROW_INITS = (181, 5197)
BYTE_LAYERS = (0, 8, 16, 24, 32)
BIT_LAYERS = tuple(range(33))
IPV6_LAYERS = (0, 16, 32, 48, 56, 64, 128)
M128 = (1 << 128) - 1


def mask(length: int, width: int = 32) -> int:
    full = (1 << width) - 1
    return 0 if length == 0 else (full << (width - length)) & full


def prefix(x: int, length: int, width: int = 32) -> int:
    return x & mask(length, width)


def bob(x: int, row: int) -> int:
    """Bob Jenkins' lookup2 over the 4 little-endian bytes of x, initval ROW_INITS[row]."""
    a = b = 0x9E3779B9
    c = (ROW_INITS[row] + 4) & M32
    a = (a + x) & M32
    for sa, sb, sc in ((13, 8, 13), (12, 16, 5), (3, 10, 15)):
        a = (a - b - c) & M32
        a ^= c >> sa
        b = (b - c - a) & M32
        b ^= (a << sb) & M32
        c = (c - a - b) & M32
        c ^= b >> sc
    return c


def mix64(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rand32(seed: int, n: int, j: int) -> int:
    return mix64(mix64(seed) ^ ((n * 64 + j) & M64)) >> 32


def hash6(x: int, row: int) -> int:
    """Row hash of a 128-bit key: mix64(mix64(hi ^ initval) ^ lo) >> 32."""
    return mix64(mix64((x >> 64) ^ ROW_INITS[row]) ^ (x & M64)) >> 32


class NaiveCoco:
    """One 2-row CocoSketch block: lists ``ids[r][i]``, ``count[r][i]``, ``occ[r][i]``."""

    def __init__(self, w: int, hash_fn=bob):
        self.w = w
        self.hash = hash_fn
        self.ids = [[0] * w for _ in range(2)]
        self.count = [[0] * w for _ in range(2)]
        self.occ = [[0] * w for _ in range(2)]

    def insert(self, x: int, u: int, T: int = 0, decrement: bool = False, wt: int = 1) -> int:
        """Add ``wt`` for key ``x`` (coin ``u``); with ``decrement`` a held key's count drops by ``T``."""
        best = None
        for r in (0, 1):
            i = self.hash(x, r) % self.w
            if self.occ[r][i] and self.ids[r][i] == x:
                if decrement:
                    self.count[r][i] = max(0, self.count[r][i] + wt - T)
                else:
                    self.count[r][i] += wt
                return self.count[r][i]
            if best is None or self.count[r][i] < self.count[best[0]][best[1]]:
                best = (r, i)
        r, i = best
        self.count[r][i] += wt
        c = self.count[r][i]
        if (u % c < wt) if c <= M32 else (u * c < wt << 32):
            self.ids[r][i] = x
            self.occ[r][i] = 1
        return 0

    def all(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in (0, 1):
            for i in range(self.w):
                if self.occ[r][i]:
                    out[self.ids[r][i]] = out.get(self.ids[r][i], 0) + self.count[r][i]
        return out


def layer_estimates(full: dict[int, int], blocks: dict[int, dict[int, int]], layers, T: int, ge: bool,
                    addback: bool = True, width: int = 32):
    """Spec §3 per-layer estimates from all(F) and {k: all(R_k)} (no add-back for noConn)."""
    E = {}
    for k, content in blocks.items():
        e = dict(content)
        for x, v in full.items():
            if addback and ((v >= T) if ge else (v > T)):
                e[prefix(x, k, width)] = e.get(prefix(x, k, width), 0) + v
        E[k] = e
    ks = sorted(blocks)
    est = {}
    for L in layers:
        source = full
        for k in ks:
            if L <= k:
                source = E[k]
                break
        layer: dict[int, int] = {}
        for q, v in source.items():
            layer[prefix(q, L, width)] = layer.get(prefix(q, L, width), 0) + v
        est[L] = layer
    return est


def hhh(est, layers, T_report, width: int = 32):
    """Spec §3 query: list of (L, p, est, conditioned)."""
    out, carry = [], {}
    for L in sorted(layers, reverse=True):
        cov: dict[int, int] = {}
        for q, u in carry.items():
            cov[prefix(q, L, width)] = cov.get(prefix(q, L, width), 0) + u
        carry = {}
        for p in set(est[L]) | set(cov):
            e = est[L].get(p, 0)
            c = e - cov.get(p, 0)
            if e > T_report and c > T_report:
                out.append((L, p, e, c))
                carry[p] = e
            elif cov.get(p, 0) > 0:
                carry[p] = cov[p]
    return out


def _residual_insert(block: NaiveCoco, p: int, u: int, c: int, wt: int, T: int, connection: bool) -> None:
    """One Residual Block's part of a packet: F answered ``c`` (0: not held) for weight ``wt``."""
    if not connection or c == 0 or c < T:  # noConn: every packet, plain insert
        block.insert(p, u, wt=wt)
    elif c - wt < T:  # this packet carried the key to T or past: drop its whole mass c
        block.insert(p, u, c, decrement=True, wt=wt)
    # else: already heavy before this packet, bypass


class NaiveResidualSketch:
    """ResidualSketch of spec §3: F plus one block per crucial layer; ``crucial=()`` is CocoSketch."""

    width = 32  #: key bits
    coin_base = 0  #: a packet's coins are ``rand32(seed, n, coin_base + j)``, j = 0 for F

    def __init__(self, memory_bytes: int, T: int, crucial=(16,), mode="byte", seed=0,
                 addback="gt", connection=True, weight="packets", shares=None):
        """``shares``: fraction of ``memory_bytes`` per block, F first (default: equal, spec §3)."""
        self.crucial = tuple(sorted(crucial))
        bucket_pair = 24 if weight == "bytes" else 16  # two rows of one bucket
        if shares is None:
            shares = [1 / (len(self.crucial) + 1)] * (len(self.crucial) + 1)
            widths = [(memory_bytes // (len(self.crucial) + 1)) // bucket_pair] * len(shares)
        else:
            widths = [int(memory_bytes * s) // bucket_pair for s in shares]
        self.w = widths[0]
        self.T, self.seed, self.ge, self.connection = T, seed, addback == "ge", connection
        self.layers = BYTE_LAYERS if mode == "byte" else BIT_LAYERS
        self.F = NaiveCoco(widths[0])
        self.R = {k: NaiveCoco(w) for k, w in zip(self.crucial, widths[1:])}
        self.n = 0

    def insert(self, x: int, wt: int = 1) -> None:
        n = self.n
        self.n += 1
        if wt == 0:
            return
        c = self.F.insert(x, rand32(self.seed, n, self.coin_base), wt=wt)
        for j, k in enumerate(self.crucial, start=1):
            _residual_insert(self.R[k], prefix(x, k, self.width), rand32(self.seed, n, self.coin_base + j), c, wt,
                             self.T, self.connection)

    @staticmethod
    def key(x) -> int:
        """An address as the model's int key."""
        return int(x)

    def update(self, addresses, weights=None) -> None:
        """``addresses``: one key each (:meth:`key`); ``weights``: one int each (default 1)."""
        weights = itertools.repeat(1) if weights is None else weights
        for x, wt in zip(addresses, weights):
            self.insert(self.key(x), int(wt))

    def layer_estimates(self):
        return layer_estimates(self.F.all(), {k: b.all() for k, b in self.R.items()},
                               self.layers, self.T, self.ge, self.connection, width=self.width)

    def hhh(self, T_report=None):
        return hhh(self.layer_estimates(), self.layers, self.T if T_report is None else T_report, width=self.width)

    def state(self):
        """(ids, counts, occ) as nested lists [block][row][bucket]; block 0 is F."""
        blocks = [self.F] + [self.R[k] for k in self.crucial]
        return ([b.ids for b in blocks], [b.count for b in blocks], [b.occ for b in blocks])


class NaiveResidualSketch6(NaiveResidualSketch):
    """The IPv6 tree: ResidualSketch over 128-bit int keys (``crucial=()`` is CocoSketch's IPv6 tree)."""

    width = 128
    coin_base = 32

    def __init__(self, memory_bytes: int, T: int, crucial=(64,), seed=0, addback="gt", connection=True,
                 weight="packets"):
        self.crucial = tuple(sorted(crucial))
        self.w = (memory_bytes // (len(self.crucial) + 1)) // (48 if weight == "bytes" else 40)  # 2 rows
        self.T, self.seed, self.ge, self.connection = T, seed, addback == "ge", connection
        self.layers = IPV6_LAYERS
        self.F = NaiveCoco(self.w, hash6)
        self.R = {k: NaiveCoco(self.w, hash6) for k in self.crucial}
        self.n = 0

    @staticmethod
    def key(x) -> int:
        """A 16-byte string or a 128-bit int as the model's int key."""
        return int.from_bytes(x, "big") if isinstance(x, (bytes, bytearray)) else int(x)

    def state(self):
        """(hi, lo, counts, occ) as nested lists [block][row][bucket]; block 0 is F."""
        blocks = [self.F] + [self.R[k] for k in self.crucial]
        return ([[[x >> 64 for x in row] for row in b.ids] for b in blocks],
                [[[x & M64 for x in row] for row in b.ids] for b in blocks],
                [b.count for b in blocks], [b.occ for b in blocks])
