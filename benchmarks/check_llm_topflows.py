"""LLM-Sketch on the project's generated traffic: top-flow and all-flow ARE per estimator.

Workload: ``traces.generate_batch(packets=1_000_000, flows=50_000, zipf=1.1, gap_rate=0.01, seed=7)``,
flow-size task at 400 KiB, sync scoring (first packet of each flow unless ``--rescore``; size floor
from packet 512 unless ``--floor-from 0``), batches of 65536.
Also prints, per estimator, the scores of the top-100 flows' first packets against their soft labels
y(s) and the first-packet MSE over all flows (vs the best constant, the mean label).

    .venv/bin/python benchmarks/check_llm_topflows.py [--lm DIR] [--trees DIR] [--only constant:0,constant:1,oracle,...]
        [--floor-from 0|256|...] [--rescore]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from telesketch.estimators import load_estimator
from telesketch.estimators.training import mse, segment_samples
from telesketch.sketches import LLMSketch
from telesketch.traces import generate_batch

WORKLOAD = dict(packets=1_000_000, flows=50_000, zipf=1.1, gap_rate=0.01, seed=7)


def keys13(void_keys) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(void_keys).tobytes(), np.uint8).reshape(-1, 13)


def run(batch, estimator, top, counts, all_keys, floor_from, rescore):
    sketch = LLMSketch(memory_bytes=400 * 1024, task="flow_size", estimator=estimator, scoring="sync",
                       floor_from=floor_from, rescore=rescore)
    start = time.perf_counter()
    for part in batch.split(65536):
        sketch.update(part)
    seconds = time.perf_counter() - start
    est_top, est_all = sketch.flow_size(all_keys[top]), sketch.flow_size(all_keys)
    rel = np.abs(est_all - counts) / counts
    bands = {"64-255": (counts >= 64) & (counts < 256), "256-1023": (counts >= 256) & (counts < 1024),
             ">=1024": counts >= 1024}
    return (seconds, float(np.mean(np.abs(est_top - counts[top]) / counts[top])), float(np.mean(rel)),
            {name: float(rel[m].mean()) for name, m in bands.items()})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", default=None, help="LM adapter directory (default: the shipped one)")
    ap.add_argument("--trees", default=None, help="trees directory (skipped when absent)")
    ap.add_argument("--only", default="constant,oracle,trees,lm")
    ap.add_argument("--floor-from", type=int, default=512, help="size-floor position of the packet path (0: off)")
    ap.add_argument("--rescore", action="store_true", help="re-score at in-flow positions 1, 2, 4, ...")
    args = ap.parse_args(argv)
    batch = generate_batch(**WORKLOAD)
    uniq, counts = np.unique(batch.flow_keys_void(), return_counts=True)
    all_keys = keys13(uniq)
    top = np.argsort(-counts, kind="stable")[:10]
    first = segment_samples(batch, rescore=False)  # first packet per flow, flows in np.unique order
    top100 = np.argsort(-first.size, kind="stable")[:100]
    print(f"workload {WORKLOAD}; flows >= 64 packets: {(counts >= 64).sum()} (64-255: {((counts >= 64) & (counts < 256)).sum()}, "
          f"256-1023: {((counts >= 256) & (counts < 1024)).sum()}, >=1024: {(counts >= 1024).sum()}); "
          f"top-10 sizes {counts[top].tolist()}; floor from {args.floor_from or 'off'}, rescore {args.rescore}")
    for kind in args.only.split(","):
        if kind == "oracle":
            est = load_estimator("oracle", sizes=dict(zip((k.tobytes() for k in uniq), counts.tolist())))
        elif kind == "trees":
            if args.trees is None:
                print("trees: skipped (no --trees DIR)")
                continue
            est = load_estimator("trees", args.trees)
        elif kind == "lm":
            est = load_estimator("lm", args.lm)
        elif kind.startswith("constant"):  # constant or constant:C
            est = load_estimator("constant", c=float(kind.partition(":")[2] or 0.5))
        else:
            raise SystemExit(f"unknown estimator {kind!r}")
        if kind != "oracle":
            p = est.score(first.headers, first.hdr_len)
            print(f"{kind}: first-packet MSE {mse(p, first.y):.4f} (constant {mse(np.full(len(first), first.y.mean()), first.y):.4f}); "
                  f"top-100 flows: mean y {first.y[top100].mean():.3f}, mean p {p[top100].mean():.3f}, "
                  f"p>=0.5 {np.mean(p[top100] >= 0.5):.2f}; flows>=64 p>=0.5 {np.mean(p[first.size >= 64] >= 0.5):.3f}, "
                  f"flows<64 p>=0.5 {np.mean(p[first.size < 64] >= 0.5):.4f}")
        seconds, are_top, are_all, bands = run(batch, est, top, counts, all_keys, args.floor_from, args.rescore)
        by_size = "  ".join(f"{name} {v:.3f}" for name, v in bands.items())
        print(f"{kind}: {seconds:.1f}s  top-10 ARE {are_top:.3f}  all-flow ARE {are_all:.3f}  ARE by size: {by_size}",
              flush=True)


if __name__ == "__main__":
    main()
