"""Readable pure-Python Hidden Sketch (spec hiddensketch.md §4–§8), the oracle for the Numba code.

Written from the spec's pseudo-code with the same hash family (``hashing.hash_bytes``) and the same
seed derivation as ``telesketch.sketches.hiddensketch`` (documented in its module docstring):

    h_fs[r] = seed*1000003 + 100 + r,  h_blk = +200,  h_cm[r] = +300 + r,  h_bf[j][r] = +1000 + 64*j + r

Keys are byte strings: a 4-byte key is the address big-endian (``addr.to_bytes(4, "big")``), a
13-byte key the 5-tuple bytes, a 16-byte key an IPv6 address in network order. Partial keys are zero-padded ``KEYLEN``-byte buffers. Bits are LSB
first within each byte. Bitmaps and Bloom filters are lists of 0/1. The peel uses a FIFO queue
seeded in (row, column) order and candidates sorted by their little-endian key integer, the order
the Numba decoder uses, so that even a failed decode gives the same output.

Slow: for small test streams only.
"""
from __future__ import annotations

import itertools
from collections import deque

from telesketch.hashing import hash_bytes

INFINITE = float("inf")


def seed_for(seed: int, family: int, index: int = 0) -> int:
    return (seed * 1000003 + family + index) % (1 << 64)


def bit(key: bytes, i: int) -> int:
    return (key[i >> 3] >> (i & 7)) & 1


def partial(key: bytes, start: int, end: int) -> bytes:
    """Bits ``start..end-1`` of ``key`` at positions ``0..end-start-1`` of a zeroed buffer."""
    buf = bytearray(len(key))
    for i in range(end - start):
        if bit(key, start + i):
            buf[i >> 3] |= 1 << (i & 7)
    return bytes(buf)


def mix(k1: bytes, len1: int, k2: bytes, len2: int) -> bytes:
    """Bits ``[0, len1)`` of ``k1`` followed by bits ``[0, len2)`` of ``k2``."""
    buf = bytearray(len(k1))
    for i in range(len1):
        if bit(k1, i):
            buf[i >> 3] |= 1 << (i & 7)
    for i in range(len2):
        if bit(k2, i):
            buf[(len1 + i) >> 3] |= 1 << ((len1 + i) & 7)
    return bytes(buf)


class NaiveHiddenSketch:
    """One-pass Hidden Sketch over byte-string keys; ``params`` is a ``HiddenSketchParams``."""

    def __init__(self, params):
        p = self.p = params
        self.keylen = p.key_bytes  # 4 (address), 13 (5-tuple) or 16 (IPv6 address)
        self.cap = (1 << p.fs_counter_bits) - 1
        ss_bytes = (p.cm_bytes + sum(r * w for r, w in zip(p.bf_rows, p.bf_row_bits)) // 8
                    + p.blocks * sum(1 << b for b in p.seg_bits) // 8)
        self.w_fs = (p.memory_bytes - ss_bytes) * 8 // p.fs_rows // p.fs_counter_bits
        self.w_cm = p.cm_bytes // 3 // (8 if p.weight == "bytes" else 4)
        self.seg_iv = []
        pos = 0
        for b in p.seg_bits:
            self.seg_iv.append((pos, pos + b))
            pos += b
        self.FS = [[0] * self.w_fs for _ in range(p.fs_rows)]
        self.SEG = [[[0] * (1 << b) for b in p.seg_bits] for _ in range(p.blocks)]
        self.BF = [[[0] * w for _ in range(rows)] for rows, w in zip(p.bf_rows, p.bf_row_bits)]
        self.CM = [[0] * self.w_cm for _ in range(3)]
        self.N = 0
        self._build_tree()

    # ------------------------------------------------------------------ hashing
    def h(self, family: int, index: int, buf: bytes) -> int:
        return hash_bytes(buf, seed_for(self.p.seed, family, index))

    def key_bytes(self, key) -> bytes:
        return key.to_bytes(4, "big") if self.keylen == 4 else bytes(key)

    def public_key(self, key: bytes):
        return int.from_bytes(key, "big") if self.keylen == 4 else key

    # ------------------------------------------------------------------ update (§6)
    def update(self, keys, weights=None) -> None:
        """``weights`` (byte weighting): one per key; ``None``: every key weighs 1."""
        for key, w in zip(keys, weights if weights is not None else itertools.repeat(1)):
            self.insert(self.key_bytes(key), int(w))

    def insert(self, key: bytes, w: int = 1) -> None:
        """Weight ``w``: each row adds ``w`` (saturating at the cap); past the gate the second stage
        gets the part of ``w`` above ``thresh``, ``min(w, g - thresh)`` (``w`` = 1: the spec's 1)."""
        self.N += w
        if w == 0:
            return
        g = INFINITE
        for r in range(self.p.fs_rows):
            pos = self.h(100, r, key) % self.w_fs
            if self.FS[r][pos] < self.cap:
                self.FS[r][pos] = min(self.FS[r][pos] + w, self.cap)
                g = min(g, self.FS[r][pos])
        if g > self.p.thresh:
            self.ss_insert(key, w if g == INFINITE else min(w, g - self.p.thresh))

    def ss_insert(self, key: bytes, c: int) -> None:
        b = self.h(200, 0, key) % self.p.blocks
        for i, (s, e) in enumerate(self.seg_iv):
            self.SEG[b][i][int.from_bytes(partial(key, s, e), "little")] = 1
        for j, (s, e) in enumerate(self.p.bf_intervals):
            x = partial(key, s, e)
            for r in range(self.p.bf_rows[j]):
                self.BF[j][r][self.h(1000, 64 * j + r, x) % self.p.bf_row_bits[j]] = 1
        for r in range(3):
            self.CM[r][self.h(300, r, key) % self.w_cm] += c

    # ------------------------------------------------------------------ decode (§7)
    def _build_tree(self) -> None:
        ivs = self.p.bf_intervals
        self.children = [[] for _ in ivs]
        depth = [0] * len(ivs)
        for j in range(1, len(ivs)):
            s, e = ivs[j]
            holders = [i for i in range(j) if ivs[i][0] <= s and e <= ivs[i][1]]
            parent = max(holders, key=lambda i: (depth[i], i))
            depth[j] = depth[parent] + 1
            self.children[parent].append(j)

    def bf_query(self, j: int, x: bytes) -> bool:
        return all(self.BF[j][r][self.h(1000, 64 * j + r, x) % self.p.bf_row_bits[j]] for r in range(self.p.bf_rows[j]))

    def extend(self, j: int, b: int, cands: dict) -> None:
        """Candidates of node ``j`` in block ``b`` (post-order); raises OverflowError."""
        start, end_node = self.p.bf_intervals[j]
        for c in self.children[j]:
            self.extend(c, b, cands)
        factors = []  # (list of partial keys, bit length)
        for c in self.children[j]:
            cs, ce = self.p.bf_intervals[c]
            factors.append((cands[c], ce - cs))
        end = self.p.bf_intervals[self.children[j][-1]][1] if self.children[j] else start
        for i, (s, e) in enumerate(self.seg_iv):
            if end <= s and e <= end_node:
                values = [v.to_bytes(self.keylen, "little") for v, on in enumerate(self.SEG[b][i]) if on]
                factors.append((values, e - s))
        size = 1
        for values, _ in factors:
            size *= len(values)
        if size > self.p.max_enum:
            raise OverflowError(b)
        self.enumerated += size
        out = []
        for combo in itertools.product(*[values for values, _ in factors]):
            x, length = bytes(self.keylen), 0
            for value, (_, n_bits) in zip(combo, factors):
                x = mix(x, length, value, n_bits)
                length += n_bits
            if self.bf_query(j, x):
                out.append(x)
        cands[j] = out

    def fs_query(self, key: bytes):
        est = INFINITE
        for r in range(self.p.fs_rows):
            v = self.FS[r][self.h(100, r, key) % self.w_fs]
            if v < self.cap:
                est = min(est, v)
        return est

    def candidates(self) -> tuple[list[bytes], bool, int]:
        """``(candidates, overflow, n_candidates)``: the enumerated keys the FS calls heavy, sorted by
        their little-endian integer; whether some block overflowed; how many were enumerated."""
        self.enumerated = 0
        overflow = False
        candidates = []
        for b in range(self.p.blocks):
            cands = {}
            try:
                self.extend(0, b, cands)
            except OverflowError:
                overflow = True
                continue
            candidates += [x for x in cands[0] if self.h(200, 0, x) % self.p.blocks == b]
        n_candidates = len(candidates)
        candidates = [x for x in candidates if self.fs_query(x) > self.p.thresh]
        candidates.sort(key=lambda x: int.from_bytes(x, "little"))
        return candidates, overflow, n_candidates

    def decode(self) -> dict:
        """``{"items", "decode_ok", "overflow", "n_candidates", "n_after_fs", "ss_counts", "enumerated"}``."""
        candidates, overflow, n_candidates = self.candidates()
        f_ss, all_zero = self.peel(candidates)
        offset = 0 if self.p.mode == "two_pass" else self.p.thresh
        items = [(self.public_key(x), f + offset) for x, f in zip(candidates, f_ss)
                 if f > 0 and f + offset > self.p.phi * self.N]
        items.sort(key=lambda kv: -kv[1])
        return {
            "items": items,
            "decode_ok": all_zero and not overflow,
            "overflow": overflow,
            "n_candidates": n_candidates,
            "n_after_fs": len(candidates),
            "ss_counts": {self.public_key(x): f for x, f in zip(candidates, f_ss) if f > 0},
            "enumerated": self.enumerated,
        }

    def peel(self, cands: list[bytes]) -> tuple[list[int], bool]:
        """Peeling of §7.3 over candidate indices, FIFO queue: ``(f_ss, all counters zero)``."""
        f_ss, all_zero, _, _ = self.peel_full(cands)
        return f_ss, all_zero

    def peel_full(self, cands: list[bytes]) -> tuple[list[int], bool, list[bool], list[list[int]]]:
        """:meth:`peel`, plus which candidates it settled (peeled, or dropped by an empty bucket) and
        the residual CM (the CM less the peeled counts)."""
        w = self.w_cm
        pos = [[self.h(300, r, x) % w for r in range(3)] for x in cands]
        L = [[[] for _ in range(w)] for _ in range(3)]
        for idx in range(len(cands)):
            for r in range(3):
                L[r][pos[idx][r]].append(idx)
        C = [row[:] for row in self.CM]
        f_ss = [0] * len(cands)
        settled = [False] * len(cands)
        queue = deque((r, j) for r in range(3) for j in range(w) if len(L[r][j]) == 1 or (C[r][j] == 0 and L[r][j]))
        while queue:
            r, j = queue.popleft()
            if not L[r][j]:
                continue
            if C[r][j] == 0:
                for x in list(L[r][j]):
                    settled[x] = True
                    for r2 in range(3):
                        L[r2][pos[x][r2]].remove(x)
                        if len(L[r2][pos[x][r2]]) == 1:
                            queue.append((r2, pos[x][r2]))
                continue
            if len(L[r][j]) != 1:
                continue
            x = L[r][j][0]
            f_ss[x] = C[r][j]
            settled[x] = True
            for r2 in range(3):
                j2 = pos[x][r2]
                C[r2][j2] -= f_ss[x]
                L[r2][j2].remove(x)
                if len(L[r2][j2]) == 1 or (C[r2][j2] == 0 and L[r2][j2]):
                    queue.append((r2, j2))
        return f_ss, all(v == 0 for row in C for v in row), settled, C

    # ------------------------------------------------------------------ partial decode (issue 20)
    #: keys per CM bucket a 3-row Count-Min can peel (the 3-uniform hypergraph threshold)
    PEEL_LIMIT = 0.818
    #: rounds of interval propagation over the residual CM
    TIGHTEN_ROUNDS = 8

    def decode_partial(self) -> dict:
        """The default decode of ``HiddenSketch`` (its ``_decode_family`` docstring): :meth:`decode`
        when it finishes; otherwise every recovered key with an estimate that never under-counts.

        With every block enumerated a peeled key keeps ``f_SS + thresh``; an unpeeled candidate
        gets ``min(FS, thresh + upper)``, ``upper`` starting at ``min(FS, min_r residual_r)`` and
        tightened by :meth:`tighten`. After an overflow nothing peeled is trusted: every candidate
        gets ``min(FS, thresh + min_r CM_r)``. Keys above ``phi * N`` are reported, peeled ones
        all, bounded ones largest first up to ``PEEL_LIMIT * 3 * w_cm`` keys in all. Returns
        :meth:`decode`'s dict plus ``"partial"`` and ``"bounded"`` (the set of bounded keys)."""
        candidates, overflow, n_candidates = self.candidates()
        f_ss, all_zero, settled, residual = self.peel_full(candidates)
        if all_zero and not overflow:
            return {**self.decode(), "partial": False, "bounded": set()}
        offset = 0 if self.p.mode == "two_pass" else self.p.thresh
        limit = self.p.phi * self.N
        pos = [[self.h(300, r, x) % self.w_cm for r in range(3)] for x in candidates]
        fs = [self.fs_query(x) for x in candidates]
        if overflow:
            remaining, exact = self.CM, [False] * len(candidates)
        else:
            remaining, exact = [[max(v, 0) for v in row] for row in residual], settled
        upper = [min(remaining[r][pos[i][r]] for r in range(3)) for i in range(len(candidates))]
        if not overflow:
            upper = [min(u, f) for u, f in zip(upper, fs)]
            self.tighten(pos, remaining, upper, [not e for e in exact])
        sure, maybe, ss_counts, bounded = [], [], {}, set()
        for i, x in enumerate(candidates):
            if (f_ss[i] if exact[i] else upper[i]) <= 0:
                continue
            key = self.public_key(x)
            total = f_ss[i] + offset if exact[i] else min(fs[i], upper[i] + offset)
            ss_counts[key] = total - offset
            if not exact[i]:
                bounded.add(key)
            if total > limit:
                (sure if exact[i] else maybe).append((key, total))
        maybe.sort(key=lambda kv: -kv[1])
        room = max(0, int(self.PEEL_LIMIT * 3 * self.w_cm) - len(sure))
        items = sure + maybe[:room]
        items.sort(key=lambda kv: -kv[1])
        return {"items": items, "decode_ok": False, "overflow": overflow, "n_candidates": n_candidates,
                "n_after_fs": len(candidates), "ss_counts": ss_counts, "enumerated": self.enumerated,
                "partial": True, "bounded": bounded}

    def tighten(self, pos: list[list[int]], residual: list[list[int]], upper: list[int], unresolved: list[bool]) -> None:
        """Interval propagation (in place on ``upper``): each residual counter is exactly the sum of
        its unresolved keys' counts, so per key ``x`` and row ``r``, ``upper[x] <= R - (sum of the
        others' lower bounds)`` and ``lower[x] >= R - (sum of the others' upper bounds)``. The sums
        are taken once per round (a key's own new bounds are used at once), as the Numba code."""
        lower = [0] * len(pos)
        for _ in range(self.TIGHTEN_ROUNDS):
            sum_lo = [[0] * self.w_cm for _ in range(3)]
            sum_up = [[0] * self.w_cm for _ in range(3)]
            for x in range(len(pos)):
                if unresolved[x]:
                    for r in range(3):
                        sum_lo[r][pos[x][r]] += lower[x]
                        sum_up[r][pos[x][r]] += upper[x]
            changed = False
            for x in range(len(pos)):
                if not unresolved[x]:
                    continue
                for r in range(3):
                    j = pos[x][r]
                    up = residual[r][j] - (sum_lo[r][j] - lower[x])
                    lo = residual[r][j] - (sum_up[r][j] - upper[x])
                    if up < upper[x]:
                        upper[x] = max(up, lower[x])
                        changed = True
                    if lo > lower[x]:
                        lower[x] = min(lo, upper[x])
                        changed = True
            if not changed:
                break

    # ------------------------------------------------------------------ point query (§8.1)
    def query(self, key) -> int:
        key = self.key_bytes(key)
        fs = self.fs_query(key)
        if fs <= self.p.thresh:
            return fs
        ss = min(self.CM[r][self.h(300, r, key) % self.w_cm] for r in range(3))
        return min(fs, self.p.thresh + ss)
