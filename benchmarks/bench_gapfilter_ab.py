#!/usr/bin/env python3
"""GapFilter kernels of this tree against another git revision's, alternating in one process.

The other revision's ``telesketch/sketches/gapfilter.py`` is written (``git show``) into a
temporary directory and imported beside this tree's module, so both run in the same process on
the same batches: each round updates a fresh sketch of the base and then of this tree over the
whole workload (``update``, hashing and event log included, one Numba thread), and the figure is
the median over rounds of base time / this tree's time (thread CPU time). After every round the
two sketches' serialised states must be equal (``to_bytes``): a change that is only faster is
the only kind this benchmark accepts.

    .venv/bin/python benchmarks/bench_gapfilter_ab.py --base main [--workload spec --shared ../shared]

``--paths`` compares instead this tree's two SO / AO paths with every Numba thread: the serial
kernel (``update(parallel=False)``) against the bucket-partitioned one (``parallel=True``),
alternating, by wall time and by process CPU time (all threads), states compared likewise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numba as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

import bench_kernels  # noqa: E402
from common import add_ab_options, alternate_rounds, machine, module_at_revision  # noqa: E402

from telesketch.sketches import gapfilter as current  # noqa: E402

KIB = 1024
VARIANTS = ("Straw", "SO", "AO")


def load_base(rev: str, workdir: Path):
    """Import ``telesketch/sketches/gapfilter.py`` as of ``rev`` (a module named ``gapfilter_base``)."""
    return module_at_revision(REPO, rev, "telesketch/sketches/gapfilter.py", workdir)


def run_once(module, variant: str, memory: int, batches) -> tuple[float, bytes]:
    """Thread CPU seconds of one fresh sketch over every batch, and its final state."""
    sketch = getattr(module, f"GapFilter{variant}")(memory_bytes=memory, seed=1)
    start = time.thread_time()
    for batch in batches:
        sketch.update(batch)
    return time.thread_time() - start, sketch.to_bytes()


def run_path(variant: str, memory: int, batches, parallel: bool) -> tuple[float, float, bytes]:
    """Wall and process CPU seconds of one fresh sketch of this tree on one path, and its state."""
    sketch = getattr(current, f"GapFilter{variant}")(memory_bytes=memory, seed=1)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        sketch.update(batch, parallel=parallel)
    return time.perf_counter() - wall, time.process_time() - cpu, sketch.to_bytes()


def compare_paths(variants, memories, batches, rounds: int, packets: int) -> None:
    """Serial kernel against the partitioned path on every Numba thread (module docstring)."""
    print(f"| variant | KiB | serial Mops (wall / CPU) | partitioned, {nb.get_num_threads()} threads, Mops "
          "(wall / CPU) | partitioned wall time / serial |")
    print("|---|---|---|---|---|")
    for variant in variants:
        for kib in memories:
            run_path(variant, 4 * KIB, batches[:1], False)
            run_path(variant, 4 * KIB, batches[:1], True)
            serial, partitioned = [], []
            for _ in range(rounds):
                *serial_s, state_serial = run_path(variant, kib * KIB, batches, False)
                *partitioned_s, state_partitioned = run_path(variant, kib * KIB, batches, True)
                if state_serial != state_partitioned:
                    sys.exit(f"{variant} {kib} KiB: the paths' states differ")
                serial.append(serial_s)
                partitioned.append(partitioned_s)
            s, p = np.array(serial), np.array(partitioned)
            rate = lambda seconds: packets / np.median(seconds) / 1e6  # noqa: E731
            print(f"| {variant} | {kib} | {rate(s[:, 0]):.1f} / {rate(s[:, 1]):.1f} | {rate(p[:, 0]):.1f} / "
                  f"{rate(p[:, 1]):.1f} | {float(np.median(p[:, 0] / s[:, 0])):.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ab_options(ap, REPO, "gapfilter.py", "main")
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants (Straw,SO,AO)")
    ap.add_argument("--memory-kib", default="16,64,210", help="comma-separated memory points in KiB")
    ap.add_argument("--paths", action="store_true",
                    help="compare this tree's serial and partitioned SO / AO paths instead of two revisions")
    args = ap.parse_args()
    if not args.paths:
        nb.set_num_threads(1)
    if args.workload == "spec":
        full = bench_kernels.spec_workloads(args.shared, args.cache, args.packets)["gap"]
    else:
        full = bench_kernels.workload(args.packets, 100_000)
    batches = full.split(args.batch)
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
          f"# {args.workload} workload, {len(full)} packets in batches of {args.batch}; "
          f"median of {args.rounds} alternating rounds "
          f"({'wall and process CPU time' if args.paths else 'thread CPU time'})\n")
    variants = [v for v in args.only.split(",") if v]
    memories = [int(k) for k in args.memory_kib.split(",")]
    if args.paths:
        compare_paths([v for v in variants if v != "Straw"], memories, batches, args.rounds, len(full))
        print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
        return
    print(f"| variant | KiB | {args.base} Mops | this tree Mops | this tree / {args.base} |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        for variant in variants:
            for kib in memories:
                for module in (base, current):  # compile or load caches outside the timed rounds
                    run_once(module, variant, 4 * KIB, batches[:1])
                base_s, ours_s = alternate_rounds(lambda: run_once(base, variant, kib * KIB, batches),
                                                  lambda: run_once(current, variant, kib * KIB, batches),
                                                  args.rounds, f"{variant} {kib} KiB")
                ratio = float(np.median(np.array(base_s) / np.array(ours_s)))
                print(f"| {variant} | {kib} | {len(full) / np.median(base_s) / 1e6:.1f} | "
                      f"{len(full) / np.median(ours_s) / 1e6:.1f} | {ratio:.2f}x |", flush=True)
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
