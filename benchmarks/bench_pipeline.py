#!/usr/bin/env python3
"""The service's sketch pipeline without gRPC: one batch's sketches one after another against
concurrently on the cores (``SketchSet.concurrency`` 1 against the available cores), in one process.

The sketches are bench_ingest's configuration (c), all four (LLM-Sketch on the constant
estimator). Each run builds fresh states (LLM-Sketch's flow cache warmed by the previous run, as
across epochs) and applies ``--packets`` packets in batches of ``--batch``; runs alternate
serial / concurrent and each figure is the median wall-clock rate over ``--runs`` runs, so the
ratio compares like with like on a shared machine. Per-sketch rates (serial runs) show where the
time goes.

    .venv/bin/python benchmarks/bench_pipeline.py [--packets 2000000] [--batch 65536] [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import ALL  # noqa: E402
from bench_kernels import workload  # noqa: E402
from common import machine  # noqa: E402

from telesketch.service.sketchset import SketchSet  # noqa: E402


def run(sketchset: SketchSet, previous: dict | None, batches) -> tuple[float, dict, dict]:
    states = sketchset.new_states(0, previous)
    sketchset.update_seconds.clear()
    start = time.perf_counter()
    for b in batches:
        sketchset.update(states, b)
    return time.perf_counter() - start, states, dict(sketchset.update_seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    batches = workload(args.packets, args.flows).split(args.batch)
    serial, concurrent = SketchSet.from_config(ALL), SketchSet.from_config(ALL)
    serial.concurrency = 1
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
          f"# sketches {sorted(ALL)}, {args.packets} packets in batches of {args.batch}, "
          f"concurrent = {concurrent.threads} threads, median of {args.runs} alternating runs", flush=True)
    s_prev = c_prev = None
    run(serial, None, batches[:1])  # compile / load caches
    run(concurrent, None, batches[:1])
    times = {"serial": [], "concurrent": []}
    sketch_seconds: dict[str, list[float]] = {}
    for _ in range(args.runs):
        seconds, s_prev, per = run(serial, s_prev, batches)
        times["serial"].append(seconds)
        for name, s in per.items():
            sketch_seconds.setdefault(name, []).append(s)
        seconds, c_prev, _ = run(concurrent, c_prev, batches)
        times["concurrent"].append(seconds)
    concurrent.shutdown_pool()
    rate = {k: args.packets / np.median(v) / 1e6 for k, v in times.items()}
    ratio = float(np.median(np.array(times["serial"]) / np.array(times["concurrent"])))
    print("\n| pipeline | M packets/s |\n|---|---|")
    print(f"| serial (sketch_threads = 1) | {rate['serial']:.2f} |")
    print(f"| concurrent ({concurrent.threads} threads) | {rate['concurrent']:.2f} |")
    print(f"| concurrent / serial (median of per-run ratios) | {ratio:.2f}x |")
    print("\n| sketch (serial runs) | M packets/s alone |\n|---|---|")
    for name, secs in sorted(sketch_seconds.items(), key=lambda kv: np.median(kv[1]), reverse=True):
        print(f"| {name} | {args.packets / np.median(secs) / 1e6:.1f} |")
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}; cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
