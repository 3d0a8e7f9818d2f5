"""Cost of LLM-Sketch ``keep_keys`` (heavy slots keep their 5-tuples; issue 17): update time with
and without it, same batches and scores, alternated, best of N (a ratio within one run).

    .venv/bin/python benchmarks/bench_llm_keep_keys.py [--packets 1000000] [--flows 5000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine

from telesketch.sketches.llmsketch import LLMSketch
from telesketch.traces import generate_batch


def run(batches, scores, keep_keys: bool) -> tuple[float, LLMSketch]:
    sketch = LLMSketch(400 * 1024, "flow_size", keep_keys=keep_keys)
    start = time.perf_counter()
    for batch, score in zip(batches, scores):
        sketch.update(batch, score)
    return time.perf_counter() - start, sketch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    whole = generate_batch(args.packets, args.flows, seed=7, duration_s=20.0)
    batches = whole.split(args.batch)
    rng = np.random.default_rng(1)
    scores = [rng.random(len(b)) for b in batches]
    run(batches[:1], scores[:1], True)  # compile
    best = {False: float("inf"), True: float("inf")}
    for _ in range(args.repeat):
        for keep in (False, True):
            seconds, sketch = run(batches, scores, keep)
            best[keep] = min(best[keep], seconds)
    mpps = {k: args.packets / v / 1e6 for k, v in best.items()}
    print(f"{args.packets:,} packets, {args.flows:,} flows, batches of {args.batch:,}, best of {args.repeat}")
    print(f"keep_keys off: {mpps[False]:.2f} Mpps; on: {mpps[True]:.2f} Mpps; "
          f"time ratio on/off {best[True] / best[False]:.2f}; memory {LLMSketch(400 * 1024).memory_bytes:,} B -> "
          f"{sketch.memory_bytes:,} B")


if __name__ == "__main__":
    main()
