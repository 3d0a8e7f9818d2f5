"""Trees estimators on the capture generator's traffic (``telesketch.traces.generate_batch``: what
``telesketch demo`` / ``generate`` send, and the older shipped trees' training traffic), beside the
issue-#19 paper section, whose G trace is the labelled synthetic generator instead.

Each seed's trace is split by packet index (the first half chooses T per memory point); every model is
recalibrated to T as a service sketch is (``with_pivot``); rows as ``bench_llmsketch.paper_trace``.

    OMP_NUM_THREADS=1 python llmsketch_gencap.py [NAME=DIR ...] [--seeds 21,22]   # the shipped trees always
"""
from __future__ import annotations

import argparse

import bench_llmsketch as bench
from telesketch.estimators import load_estimator
from telesketch.estimators.training import split_trace
from telesketch.traces import generate_batch

CONSTANTS = ("constant(0)", "constant(0.5)", "constant(1)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="NAME=DIR of trained trees directories")
    ap.add_argument("--seeds", default="21,22", help="generate_batch seeds (the shipped trees trained on 11-13)")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=5_000)
    ap.add_argument("--memories-kib", default="16,32,64")
    ap.add_argument("--hh-pivot", default="spare", choices=bench.HH_PIVOT_RULES,
                    help="the heavy-hitter sketch's pivot for the models (bench_llmsketch.hh_pivots)")
    args = ap.parse_args(argv)
    models = {"shipped trees": load_estimator("trees")}
    for spec in args.models:
        name, path = spec.split("=", 1)
        models[name] = load_estimator("trees", path)
    for seed in (int(s) for s in args.seeds.split(",")):
        train, test = split_trace(generate_batch(packets=args.packets, flows=args.flows, seed=seed), 0.5)
        out = bench.paper_trace(f"Gc: capture generator seed {seed}", train, test,
                                [int(float(k) * 1024) for k in args.memories_kib.split(",")], None, extra=models,
                                hh_rule=args.hh_pivot)
        print(f"\nseed {seed} summary: memory (T) | model: AUC, F1, ARE>=T, top100")
        for mem, pivot, _, rows in out:
            best = {m: min(rows[c][m] for c in CONSTANTS) for m in ("ARE>=T", "top100 ARE")}
            bf1 = max(rows[c]["F1"] for c in CONSTANTS)
            print(f"{mem // 1024} KiB (T {pivot}) best const F1 {bf1:.3f} ARE>=T {best['ARE>=T']:.4f} "
                  f"top100 {best['top100 ARE']:.4f}; oracle F1 {rows['oracle']['F1']:.3f}")
            for name in models:
                r = rows[name]
                print(f"   {name}: AUC {r['AUC']:.3f} F1 {r['F1']:.3f} ARE>=T {r['ARE>=T']:.4f} "
                      f"top100 {r['top100 ARE']:.4f} ARE {r['ARE']:.3f} AAE {r['AAE']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
