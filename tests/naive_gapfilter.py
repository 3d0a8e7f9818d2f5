"""Slow, readable pure-Python models of GapFilter (spec ``shared/specs/gapfilter.md``).

Written from the spec, line by line, with Python lists and ints; the Numba sketches in
``telesketch.sketches.gapfilter`` must agree with them item for item given the same seed. Keys are
the 13-byte 5-tuple strings; hashes come from ``telesketch.hashing.hash_bytes`` (or are passed in
precomputed, to save time in tests). Each model's ``update(keys, seqs)`` returns a list of
``(report: bool, jump: int)``.
"""
from __future__ import annotations

from telesketch.hashing import hash_bytes

M64 = (1 << 64) - 1


def s16(x: int) -> int:
    """``x mod 2^16`` read as int16."""
    x &= 0xFFFF
    return x - 0x10000 if x >= 0x8000 else x


def sat16(x: int) -> int:
    """Clamp to ``[-32768, 32767]``."""
    return max(-32768, min(32767, x))


def move(lanes: list, m: int, r: int, value) -> None:
    """``move(m -> r)``: remove lane ``m``, insert ``value`` at position ``r``."""
    del lanes[m]
    lanes.insert(r, value)


def derived_fields(h: int, seq: int, n_buckets: int, fp_bits: int) -> tuple[int, int, int]:
    """``(idx, v, fp)`` of §3."""
    idx = h % n_buckets
    off = (h >> 32) & 0xFFFF
    v = (seq + off) & 0xFFFF
    fp = (h >> 48) % (1 << fp_bits)
    return idx, v, fp


class NaiveSO:
    """GapFilter-SO (§5.3): buckets of 4 uint16 values, most recent first."""

    def __init__(self, memory_bytes: int, t1=5, t2=30, seed=0, so_diff="saturating"):
        self.n_buckets = memory_bytes // 8
        self.t1, self.t2, self.seed, self.modular = t1, t2, seed, so_diff == "modular"
        self.buckets = [[0, 0, 0, 0] for _ in range(self.n_buckets)]

    def step(self, h: int, seq: int) -> tuple[bool, int]:
        idx, v, _ = derived_fields(h, seq, self.n_buckets, 0)
        b = self.buckets[idx]
        diffs = [s16(v - x) if self.modular else sat16(s16(v) - s16(x)) for x in b]
        i_star = min(range(4), key=lambda i: (abs(diffs[i]), i))
        md = diffs[i_star]
        if -self.t2 < md < self.t2:
            keep = v if md > 0 else b[i_star]
            move(b, i_star, 0, keep)
            return md >= self.t1, md
        b.insert(0, v)
        b.pop()
        return False, md

    def update(self, keys, seqs, hashes=None):
        hashes = hashes if hashes is not None else [hash_bytes(k, self.seed) for k in keys]
        return [self.step(int(h), int(s)) for h, s in zip(hashes, seqs)]


class NaiveAO:
    """GapFilter-AO (§5.4), project default semantics (fixes A and B); lanes are ``[seq, fp]``."""

    def __init__(self, memory_bytes: int, fp_bits=8, suspects=2, t1=5, t2=30, seed=0,
                 ao_new_flow_pos="last_suspect"):
        lane_bytes = 2 + -(-fp_bits // 8)
        self.n_buckets = memory_bytes // (8 * lane_bytes)
        self.fp_bits, self.sz, self.t1, self.t2, self.seed = fp_bits, suspects, t1, t2, seed
        self.civilian_front = ao_new_flow_pos == "civilian_front"
        self.buckets = [[(0, 0)] * 8 for _ in range(self.n_buckets)]

    def step(self, h: int, seq: int) -> tuple[bool, int]:
        idx, v, fp = derived_fields(h, seq, self.n_buckets, self.fp_bits)
        lanes = self.buckets[idx]
        match, best = None, None
        for i, (s, f) in enumerate(lanes):
            if f == fp:
                dist = abs(sat16(s16(v) - s16(s)))
                if best is None or dist < best:
                    match, best = i, dist
        md = 0
        if match is not None:
            md = s16(v - lanes[match][0])
            if -self.t2 < md < self.t1:
                cell = (v, fp) if md > 0 else lanes[match]
                lanes[match] = cell
                if match >= self.sz:
                    move(lanes, match, self.sz, cell)
                return False, md
            if self.t1 <= md < self.t2:
                move(lanes, match, 0, (v, fp))
                return True, md
        empty = next((i for i, c in enumerate(lanes) if c == (0, 0)), 8)
        if empty < self.sz:
            lanes[empty] = (v, fp)
        elif self.civilian_front:
            move(lanes, min(empty, 7), min(self.sz, 7), (v, fp))
        else:
            lanes[7] = (v, fp)
            move(lanes, 7, max(self.sz - 1, 0), (v, fp))
        return False, md

    def update(self, keys, seqs, hashes=None):
        hashes = hashes if hashes is not None else [hash_bytes(k, self.seed) for k in keys]
        return [self.step(int(h), int(s)) for h, s in zip(hashes, seqs)]


class SplitMix64:
    """The Straw-man's PRNG: splitmix64 seeded with the sketch seed."""

    def __init__(self, state: int):
        self.state = state & M64

    def __call__(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def derive_seed(seed: int, row: int) -> int:
    return (seed * 1000003 + row) & M64


class NaiveStraw:
    """Straw-man (§5.2): 2-choice cuckoo table of ``[fp, seq]`` cells, 4 per bucket, 8 kicks."""

    def __init__(self, memory_bytes: int, t1=5, t2=30, seed=0, straw_reset=100):
        self.bb = ((memory_bytes // 6) // 4) // 2
        self.F = [[0] * 4 for _ in range(2 * self.bb)]
        self.S = [[0] * 4 for _ in range(2 * self.bb)]
        self.t1, self.t2, self.reset = t1, t2, straw_reset
        self.seed_fp, self.seed1, self.seed2 = (derive_seed(seed, r) for r in range(3))
        self.prng = SplitMix64(seed)

    def h1(self, fp: int) -> int:
        return hash_bytes(fp.to_bytes(4, "little"), self.seed1) % self.bb

    def h2(self, fp: int) -> int:
        return hash_bytes(fp.to_bytes(4, "little"), self.seed2) % self.bb + self.bb

    def alt(self, k: int, fp: int) -> int:
        return self.h2(fp) if k < self.bb else self.h1(fp)

    def step(self, h_fp: int, seq: int) -> tuple[bool, int]:
        fp = h_fp & 0xFFFFFFFF or 1
        i1, i2 = self.h1(fp), self.h2(fp)
        for B in (i1, i2):
            if fp in self.F[B]:
                j = self.F[B].index(fp)
                old = self.S[B][j]
                d = (seq - old) & 0xFFFF
                if seq > old or old - seq >= self.reset:
                    self.S[B][j] = seq
                return self.t1 <= d < self.t2, d
        for B in (i1, i2):
            if 0 in self.F[B]:
                j = self.F[B].index(0)
                self.F[B][j], self.S[B][j] = fp, seq
                return False, 0
        k = i2 if self.prng() % 2 == 0 else i1
        cur = (fp, seq)
        for _ in range(8):
            j = self.prng() % 4
            victim = (self.F[k][j], self.S[k][j])
            self.F[k][j], self.S[k][j] = cur
            cur = victim
            k = self.alt(k, cur[0])
            if 0 in self.F[k]:
                j = self.F[k].index(0)
                self.F[k][j], self.S[k][j] = cur
                return False, 0
        return False, 0

    def update(self, keys, seqs, hashes=None):
        hashes = hashes if hashes is not None else [hash_bytes(k, self.seed_fp) for k in keys]
        return [self.step(int(h), int(s)) for h, s in zip(hashes, seqs)]


def gap_labels(keys, seqs, t1=5, t2=30, reset=10000) -> list[bool]:
    """Ground truth of §5.1: exact per-flow running maximum, reset on wrap."""
    last, labels = {}, []
    for key, seq in zip(keys, seqs):
        seq = int(seq)
        if key not in last:
            last[key] = seq
            labels.append(False)
            continue
        old = last[key]
        labels.append(t1 <= (seq - old) % 65536 < t2)
        if seq > old or old - seq >= reset:
            last[key] = seq
    return labels


# ---------------------------------------------------------------------------- IPv6 (issue 18b)
#: ``derive_seed(seed, IPV6_FOLD_ROW)`` seeds the fold of an IPv6 flow's 37-byte key.
IPV6_FOLD_ROW = 6


def ipv6_key13(key37: bytes, seed: int) -> bytes:
    """The 13-byte key the sketch hashes for an inspected IPv6 packet: the 64-bit hash of its
    37-byte flow key (high word, low word) in place of the two IPv4 addresses, then ports, proto."""
    fold = hash_bytes(key37, derive_seed(seed, IPV6_FOLD_ROW))
    return fold.to_bytes(8, "big") + key37[32:37]


def inspected(is_ipv6: bool, proto: int, src_port: int, dst_port: int, seq_field: str) -> tuple[bool, str]:
    """``(inspect, skip reason)`` of one packet: every IPv4 packet; an IPv6 packet only when its
    sequence field exists (never IP-ID or the IPv4 addresses; TCP fields only on TCP packets that
    carry a TCP header, i.e. not non-first fragments, which have no ports)."""
    if not is_ipv6:
        return True, ""
    if seq_field == "ip_id":
        return False, "no_ip_id"
    if seq_field in ("src_ip", "dst_ip"):
        return False, "no_ipv4_address"
    if seq_field in ("tcp_seq", "tcp_window", "tcp_flags"):
        if proto != 6:
            return False, "not_tcp"
        if src_port == 0 and dst_port == 0:
            return False, "fragment"
    return True, ""
