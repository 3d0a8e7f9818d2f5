#!/usr/bin/env python3
"""GPU twins against the CPU sketches: packets per second per sketch and for all four together.

Reproduce (on a machine with a CUDA device and ``pip install -e '.[gpu]'``; ``make gpu-check``
runs the GPU tests, then this with ``--quick``):

    .venv/bin/python benchmarks/bench_gpu.py                 # batches of 64 Ki, 256 Ki, 1 Mi, 4 Mi packets
    .venv/bin/python benchmarks/bench_gpu.py --quick         # 64 Ki and 1 Mi only, fewer repeats
    .venv/bin/python benchmarks/bench_gpu.py --sizes 65536,4194304 --repeats 5

Without a CUDA device (or under the simulator) it prints why and exits 0: there is nothing to time.

Each sketch (the service's default four: GapFilter-AO 16 KiB, Hidden Sketch 55 KiB, ResidualSketch
byte mode 32 KiB, LLM-Sketch flow size 400 KiB with given scores, so no estimator runs) is timed on
the same generated batch on the CPU backend and on the GPU, in this one run: ``update(batch)``
wall time, transfers included (the GPU time ends with a device synchronise), one warm-up batch
first (compilation), median of ``--repeats`` batches. "all four" is the batch's packets over the
sum of the four sketches' times. Printed: the machine (CPU, load average), the GPU, and a
Markdown table with the GPU / CPU ratio.

``residualsketch_batched`` (issue 22b) is the GPU ResidualSketch with ``gpu_update="batched"`` (spec §5,
approximate, 16 Ki-packet chunks by default) against the same exact CPU ResidualSketch; the row "all 4 (batched)"
sums the four with it in place of the exact GPU ResidualSketch. Its accuracy is in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from common import machine

SIZES = (1 << 16, 1 << 18, 1 << 20, 1 << 22)
QUICK_SIZES = (1 << 16, 1 << 20)
SKETCHES = ("gapfilter_ao", "hiddensketch", "residualsketch", "llmsketch", "residualsketch_batched")
#: The service's default four (the "all 4" row); ``residualsketch_batched`` is the ResidualSketch alternative.
FOUR = SKETCHES[:4]


def no_device_reason() -> str:
    """Why there is no real GPU to time here ("" when there is one)."""
    try:
        from telesketch.gpu.core import GpuUnavailableError, backend
    except ImportError as exc:
        return f"the GPU support does not import ({exc}); pip install 'telesketch[gpu]'"
    try:
        be = backend()
    except GpuUnavailableError as exc:
        return str(exc)
    if be.name == "simulator":
        return "NUMBA_ENABLE_CUDASIM=1: the CUDA simulator is no device to time"
    return ""


def make(kind: str, device: str, packets: int):
    """A fresh sketch of ``kind`` on ``device`` (``cpu`` or ``gpu``) sized as the default config."""
    if device == "cpu":
        from telesketch import sketches as mod
    else:
        from telesketch import gpu as mod
    if kind == "gapfilter_ao":
        return mod.GapFilterAO(memory_bytes=16 * 1024)
    if kind == "hiddensketch":
        return mod.HiddenSketch(memory_bytes=56320, phi=1e-4)
    if kind in ("residualsketch", "residualsketch_batched"):
        update = {"gpu_update": "batched"} if kind == "residualsketch_batched" and device == "gpu" else {}
        return mod.ResidualSketch(mode="byte", memory_bytes=32 * 1024, phi=1e-3, expected_packets=packets, **update)
    return mod.LLMSketch(memory_bytes=400 * 1024, task="flow_size")


def time_updates(kind: str, device: str, batch, scores, repeats: int, sync) -> float:
    """Median seconds of ``update(batch)`` over ``repeats`` batches, after one warm-up batch."""
    sketch = make(kind, device, len(batch))
    args = (batch, scores) if kind == "llmsketch" else (batch,)
    sketch.update(*args)  # warm-up: compilation, buffer allocation
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sketch.update(*args)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="comma-separated batch sizes in packets (default 64Ki,256Ki,1Mi,4Mi)")
    ap.add_argument("--quick", action="store_true", help="64 Ki and 1 Mi batches, 3 repeats (make gpu-check)")
    ap.add_argument("--repeats", type=int, default=None, help="timed batches per cell (default 5, quick 3)")
    ap.add_argument("--flows", type=int, default=100_000, help="distinct flows in the generated batch")
    ap.add_argument("--sketches", default=",".join(SKETCHES), help=f"subset of {','.join(SKETCHES)}")
    ap.add_argument("--allow-simulator", action="store_true",
                    help="run under NUMBA_ENABLE_CUDASIM=1 too (a smoke test of this script: the figures mean nothing)")
    args = ap.parse_args(argv)
    why = no_device_reason()
    if args.allow_simulator and why.startswith("NUMBA_ENABLE_CUDASIM"):
        why = ""
    if why:
        print(f"bench_gpu: no CUDA device to benchmark, nothing timed: {why}")
        return 0
    from telesketch.gpu.core import backend
    from telesketch.traces import generate_batch

    be = backend()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    repeats = args.repeats or (3 if args.quick else 5)
    kinds = [k for k in args.sketches.split(",") if k]
    print(f"# bench_gpu: {machine()}")
    print(f"# GPU: {be.device_name()} (backend {be.name}); repeats {repeats}, flows {args.flows}")
    print("| sketch | batch (packets) | CPU packets/s | GPU packets/s | GPU / CPU |")
    print("|---|---:|---:|---:|---:|")
    for n in sizes:
        batch = generate_batch(n, args.flows, seed=1, duration_s=1.0)
        scores = np.random.default_rng(1).uniform(0, 1, n)
        cpu_s, gpu_s = {}, {}
        for kind in kinds:
            cpu = cpu_s.get("residualsketch") if kind == "residualsketch_batched" else None
            cpu = cpu or time_updates(kind, "cpu", batch, scores, repeats, lambda: None)  # the same CPU sketch
            dev = time_updates(kind, "gpu", batch, scores, repeats, be.synchronize)
            cpu_s[kind], gpu_s[kind] = cpu, dev
            print(f"| {kind} | {n:,} | {n / cpu:,.0f} | {n / dev:,.0f} | {cpu / dev:.1f}x |", flush=True)
        for label, residual in (("all 4", "residualsketch"), ("all 4 (batched)", "residualsketch_batched")):
            parts = [residual if k == "residualsketch" else k for k in FOUR]
            if len([k for k in kinds if k in FOUR]) > 1 and all(k in cpu_s for k in parts):
                cpu, dev = sum(cpu_s[k] for k in parts), sum(gpu_s[k] for k in parts)
                print(f"| {label} | {n:,} | {n / cpu:,.0f} | {n / dev:,.0f} | {cpu / dev:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
