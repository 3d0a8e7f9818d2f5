"""Readable pure-Python LLM-Sketch (spec ``specs/llmsketch.md`` §2), the oracle for the Numba one.

One packet at a time, exactly as the spec's pseudo-code; no batching, no numpy in the logic.
"""
from __future__ import annotations

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
SLOTS = 8
TASKS = {"flow_size": (0.2, 4, "countmin"), "heavy_hitters": (1.0, 13, "none"), "hhh": (0.5, 4, "coco"),
         "heavy_hitters37": (1.0, 37, "none")}


def mmh3_32(data: bytes, seed: int) -> int:
    """MurmurHash3 x86 32-bit, unsigned (spec §1)."""

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & M32

    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & M32
    nblocks = len(data) // 4
    for b in range(nblocks):
        k = int.from_bytes(data[4 * b: 4 * b + 4], "little")
        k = rotl((k * c1) & M32, 15)
        h ^= (k * c2) & M32
        h = (rotl(h, 13) * 5 + 0xE6546B64) & M32
    tail = data[4 * nblocks:]
    if tail:
        k = 0
        if len(tail) == 3:
            k ^= tail[2] << 16
        if len(tail) >= 2:
            k ^= tail[1] << 8
        k ^= tail[0]
        k = rotl((k * c1) & M32, 15)
        h ^= (k * c2) & M32
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def uniform(seed: int, n: int, j: int) -> float:
    return (mix64(mix64(seed) ^ ((n * 64 + j) & M64)) >> 40) / 2**24


V4_MAPPED = bytes(10) + b"\xff\xff"


def canonical(key: bytes) -> bytes:
    """A flow's canonical key: a 13-byte IPv4 key as is; a 37-byte key
    ``src(16) dst(16) sport dport proto`` whose two addresses are v4-mapped (``::ffff:a.b.c.d``)
    as that IPv4 flow's 13-byte key; any other 37-byte key (an IPv6 flow) as is."""
    if len(key) == 37 and key[:12] == V4_MAPPED and key[16:28] == V4_MAPPED:
        return key[12:16] + key[28:32] + key[32:37]
    return key


class NaiveLLMSketch:
    """Slot lists and counter lists; ``insert(key, p, w)`` per packet: a flow key (13 or 37 bytes,
    :func:`canonical`) or, for the hhh task, a source address; ``w`` its weight (1 counting packets,
    its length with ``weight="bytes"``: 8-byte heavy counts, 4-byte Count-Min counters saturating at
    2^32 - 1, the lock's mean of scores weighted by bytes)."""

    def __init__(self, memory_bytes: int, task: str = "flow_size", heavy_ratio=None, seed: int = 0,
                 weight: str = "packets"):
        ratio, self.key_len, light = TASKS[task]
        self.ratio = ratio if heavy_ratio is None else heavy_ratio
        self.task, self.seed = task, seed
        self.light = light if self.ratio < 1.0 else "none"
        by_bytes = weight == "bytes"
        self.cm_max = M32 if by_bytes else 255
        mh = int(memory_bytes * self.ratio)
        self.nb = int(mh / 8 / (self.key_len + (8 if by_bytes else 4)))
        ml = memory_bytes - mh
        # each slot: [key, count, lock, occ]
        self.buckets = [[[b"", 0, 0, 0] for _ in range(SLOTS)] for _ in range(self.nb)]
        if self.light == "countmin":
            self.w = int(ml / 3 / (4 if by_bytes else 1))
            self.cm = [[0] * self.w for _ in range(3)]
        elif self.light == "coco":
            self.w = int(ml / 2 / 8)
            self.coco = [[[0, 0, 0] for _ in range(self.w)] for _ in range(2)]  # id, count, occ
        self.n = 0

    def stored(self, key) -> bytes:
        if self.task == "hhh":
            return int(key).to_bytes(4, "big")
        if self.task == "flow_size":
            return mmh3_32(canonical(bytes(key)), 123123).to_bytes(4, "little")
        if self.task == "heavy_hitters37" and len(key) == 13:  # an IPv4 key, v4-mapped
            return V4_MAPPED + key[0:4] + V4_MAPPED + key[4:8] + key[8:13]
        return bytes(key)

    def insert(self, key, p: float, w: int = 1) -> None:
        n = self.n
        self.n += 1
        if w == 0:  # a zero-weight packet only takes its stream index
            return
        p = min(max(float(p), 0.0), 1.0)
        key = self.stored(key)
        bucket = self.buckets[mmh3_32(key, 100) % self.nb]
        victim = None
        for s in bucket:
            if s[3] and s[0] == key:
                s[1] += w
                q = (s[2] * (s[1] - w) + p * w) / s[1]
                s[2] = 1 if uniform(self.seed, n, 0) < q else 0
                return
            if not s[3]:
                s[0], s[1], s[2], s[3] = key, w, 1 if p >= 0.5 else 0, 1
                return
            if not s[2] and (victim is None or s[1] < victim[1]):
                victim = s
        if p < 0.5:
            self.light_op(key, w, n, evict=False)
            return
        if victim is None:
            victim = bucket[0]
            for s in bucket[1:]:
                if s[1] < victim[1]:
                    victim = s
        old_key, old_count = victim[0], victim[1]
        victim[0], victim[1], victim[2] = key, w, 1
        self.light_op(old_key, old_count, n, evict=True)

    def light_op(self, key: bytes, v: int, n: int, evict: bool) -> None:
        if self.light == "countmin":
            for i in range(3):
                j = mmh3_32(key, i) % self.w
                c = self.cm[i][j]
                self.cm[i][j] = max(c, min(v, self.cm_max)) if evict else min(c + v, self.cm_max)
        elif self.light == "coco":
            k = int.from_bytes(key, "big")
            cells = [self.coco[r][mmh3_32(key, r) % self.w] for r in (0, 1)]
            for cell in cells:
                if cell[2] and cell[0] == k:
                    cell[1] += v
                    return
            cell = cells[1] if cells[1][1] < cells[0][1] else cells[0]
            cell[1] += v
            if uniform(self.seed, n, 1) < v / cell[1]:
                cell[0], cell[2] = k, 1

    def query(self, key) -> int:
        key = self.stored(key)
        for s in self.buckets[mmh3_32(key, 100) % self.nb]:
            if s[3] and s[0] == key:
                return s[1]
        if self.light != "countmin":
            return 0
        return min(self.cm[i][mmh3_32(key, i) % self.w] for i in range(3))

    def heavy_hitters(self, threshold) -> dict:
        return {s[0]: s[1] for b in self.buckets for s in b if s[3] and s[1] > threshold}
