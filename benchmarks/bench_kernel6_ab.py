#!/usr/bin/env python3
"""The IPv6 tree's insert loop (``cocosketch.stream_kernel6``) of this tree against another git
revision's, alternating in one process.

Issue 18's closing audit: the IPv4 ``stream_kernel`` ran 1.28-1.55x faster once its block insert was
written out in the loop instead of Numba's ``inline="always"`` call of ``coco_insert`` (BENCHMARKS.md,
issue 21). The IPv6 loop called ``coco_insert6`` that way until ``b5b875d``; this benchmark times the
revision ``--base`` (default ``b5b875d``, the inlined call) against this tree's ``stream_kernel6`` on
the same IPv6 address batches, each into a fresh sketch's IPv6 tree. After every round the two runs'
arrays must be equal. Figure: the median over rounds of (base / this tree) thread CPU seconds.

    .venv/bin/python benchmarks/bench_kernel6_ab.py [--base b5b875d] [--packets 2000000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numba as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import alternate_rounds, machine, module_at_revision  # noqa: E402

from telesketch.sketches import cocosketch as coco  # noqa: E402
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch  # noqa: E402

KIB = 1024


def workload(packets: int, seed: int) -> np.ndarray:
    """``uint8[packets, 16]`` IPv6 sources with an allocation hierarchy: Zipf(1.2) over 50,000 hosts
    in 2,000 /64s under 200 /48s under 20 /32s (the shape of the bench_residualsketch IPv6 trace)."""
    rng = np.random.default_rng(seed)
    hosts = 50_000
    p32 = rng.integers(0, 1 << 16, 20)
    p48 = rng.integers(0, 1 << 16, 200)
    p64 = rng.integers(0, 1 << 16, 2000)
    h48, h64 = rng.integers(0, 20, 200), rng.integers(0, 200, 2000)
    host64 = rng.integers(0, 2000, hosts)
    iid = rng.integers(0, 1 << 63, hosts, dtype=np.int64).astype(np.uint64)
    hi = ((np.uint64(0x2001) << np.uint64(48)) | (p32[h48[h64[host64]]].astype(np.uint64) << np.uint64(32))
          | (p48[h64[host64]].astype(np.uint64) << np.uint64(16)) | p64[host64].astype(np.uint64))
    ranks = np.minimum(rng.zipf(1.2, packets), hosts) - 1
    perm = rng.permutation(hosts)
    out = np.empty((packets, 16), np.uint8)
    out[:, :8] = hi[perm[ranks]].astype(">u8").view(np.uint8).reshape(-1, 8)
    out[:, 8:] = iid[perm[ranks]].astype(">u8").view(np.uint8).reshape(-1, 8)
    return out


ROWS = [("ResidualSketch byte 32 KiB", lambda: ResidualSketch(mode="byte", memory_bytes=32 * KIB, threshold=2000, seed=1)),
        ("ResidualSketch byte 128 KiB", lambda: ResidualSketch(mode="byte", memory_bytes=128 * KIB, threshold=2000, seed=1)),
        ("CocoSketch byte 128 KiB", lambda: CocoSketch(mode="byte", memory_bytes=128 * KIB, threshold=2000, seed=1))]


def run_once(fn, factory, batches) -> tuple[float, bytes]:
    """Thread CPU seconds of ``fn`` over every batch into a fresh sketch's IPv6 tree, and its arrays."""
    sketch = factory()
    T, connection, _ = sketch._tree_rule()
    no_weights = np.zeros(0, np.int64)
    wmagic = coco.fastmod_magic(sketch.width6)
    n = 0
    start = time.thread_time()
    for hi, lo in batches:
        fn(hi, lo, no_weights, sketch.hi6, sketch.lo6, sketch.counts6, sketch.occ6, *sketch._masks6, np.int64(T),
           sketch._seed_mix, np.uint64(n), connection, wmagic)
        n += hi.shape[0]
    took = time.thread_time() - start
    return took, b"".join(a.tobytes() for a in (sketch.hi6, sketch.lo6, sketch.counts6, sketch.occ6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="b5b875d", help="git revision whose stream_kernel6 is the baseline")
    ap.add_argument("--packets", type=int, default=2_000_000, help="IPv6 packets per run")
    ap.add_argument("--batch", type=int, default=65536, help="packets per kernel call")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds per row")
    args = ap.parse_args()
    nb.set_num_threads(1)
    base = module_at_revision(REPO, args.base, "telesketch/sketches/cocosketch.py", tempfile.mkdtemp())
    print("machine:", machine())
    addrs = workload(args.packets, 7)
    hi, lo = coco.as_addresses6(addrs)
    batches = [(hi[s:s + args.batch], lo[s:s + args.batch]) for s in range(0, args.packets, args.batch)]
    print(f"{args.packets:,} IPv6 packets in batches of {args.batch:,}; {args.rounds} alternating rounds; "
          "thread CPU seconds; T = 2000")
    print(f"| row | {args.base} Mpps (best) | this tree Mpps (best) | base / this tree CPU time, median |")
    print("|---|---|---|---|")
    for label, factory in ROWS:
        run_once(base.stream_kernel6, factory, batches[:1])  # compile
        run_once(coco.stream_kernel6, factory, batches[:1])
        old, ours = alternate_rounds(lambda: run_once(base.stream_kernel6, factory, batches),
                                     lambda: run_once(coco.stream_kernel6, factory, batches), args.rounds, label)
        ratio = statistics.median(a / b for a, b in zip(old, ours))
        print(f"| {label} | {args.packets / min(old) / 1e6:.1f} | {args.packets / min(ours) / 1e6:.1f} | "
              f"{ratio:.2f} |", flush=True)
    print("machine after:", machine())


if __name__ == "__main__":
    main()
