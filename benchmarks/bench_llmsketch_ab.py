#!/usr/bin/env python3
"""LLM-Sketch's service path (FlowScorer.scores, then the sketch's update on those scores) of this tree
against another git revision's, alternating in one process.

The other revision's ``telesketch/sketches/llmsketch.py`` and ``telesketch/estimators/scoring.py`` are
written (``git show``) into a temporary directory and imported beside this tree's modules
(``llmsketch_base``, ``scoring_base``). Each round runs, for the base and then for this tree, a fresh
:class:`FlowScorer` (sync mode, the service's default for these estimators, cache of ``2^20`` flows)
and a fresh flow-size sketch of 400 KiB (bench_ingest's configuration (c)) over the same batches of
bench_ingest's traffic (16 distinct batches of Zipf flows, cycled; ``--packets`` per round), as
``ScoredLLMSketch.update`` does: ``scores = scorer.scores(batch)``, then ``LLMSketch.update(batch,
scores)``. Both sides share one estimator object (the constant 0.5, or the shipped trees recalibrated
for the sketch's memory as the service does), so the model's own cost is the same on both.

Timing: thread CPU time of the scorer and of the update, summed over the round, per packet; the
figure is the median over rounds, and the ratio the median of per-round ratios (this tree / base:
below 1 is faster). After every round the two sketches' serialised states (``to_bytes``) and the two
score caches must be equal: a change that is only faster is the only kind this benchmark accepts.

    .venv/bin/python benchmarks/bench_llmsketch_ab.py --base main [--batch-sizes 8192,65536] [--rounds 5]
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

from bench_ingest import make_messages  # noqa: E402
from common import machine, module_at_revision  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.estimators import as_estimator  # noqa: E402
from telesketch.estimators import scoring as current_scoring  # noqa: E402
from telesketch.sketches import llmsketch as current_sketch  # noqa: E402

MEMORY = 400 * 1024
TASK = "flow_size"
CACHE_FLOWS = 1 << 20


def estimator(kind: str):
    """The estimator both sides share: ``constant`` (0.5) or the shipped ``trees`` for this memory."""
    est = as_estimator(kind)
    return current_scoring.calibrated_for(est, "memory", MEMORY, TASK)


def run_once(sketch_mod, scoring_mod, est, batches, order, warm: bool) -> tuple[float, float, bytes, list]:
    """Thread CPU seconds of the scorer and of the update over ``order``; the final state and cache.
    ``warm``: first (not timed) one pass over every distinct batch, so the timed batches find their
    flows in the cache, as in the service's steady state and in bench_ingest_costs."""
    scorer = scoring_mod.FlowScorer(est, cache_flows=CACHE_FLOWS, mode="sync")
    sketch = sketch_mod.LLMSketch(memory_bytes=MEMORY, task=TASK)
    for batch in batches if warm else ():
        sketch.update(batch, scorer.scores(batch))
    t_score = t_update = 0.0
    for i in order:
        batch = batches[i]
        start = time.thread_time()
        scores = scorer.scores(batch)
        mid = time.thread_time()
        sketch.update(batch, scores)
        t_update += time.thread_time() - mid
        t_score += mid - start
    cache = scorer.cache
    arrays = [a.copy() for a in (cache.tags, cache.seen, cache.score, cache.stamp, cache.pending)]
    return t_score, t_update, sketch.to_bytes(), arrays


def same(a: tuple, b: tuple) -> bool:
    return a[2] == b[2] and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a[3], b[3]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision whose llmsketch.py and scoring.py are the baseline")
    ap.add_argument("--batch-sizes", default="8192,65536", help="comma-separated packets per batch")
    ap.add_argument("--estimators", default="constant,trees", help="comma-separated: constant, trees")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets per side per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating base/this-tree rounds per row")
    ap.add_argument("--cold", action="store_true",
                    help="no warm-up pass: the timed rounds start with an empty score cache (every flow new)")
    args = ap.parse_args()
    nb.set_num_threads(1)
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
          f"# median of {args.rounds} alternating rounds of {args.packets} packets, thread CPU ns per packet, "
          f"{'cold (empty score cache)' if args.cold else 'warm (one untimed pass over the batches first)'}\n")
    print(f"| estimator | batch | {args.base}: scorer / update / total | this tree: scorer / update / total "
          f"| this tree / {args.base}, total CPU (scorer, update) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        base_sketch = module_at_revision(REPO, args.base, "telesketch/sketches/llmsketch.py", tmp)
        base_scoring = module_at_revision(REPO, args.base, "telesketch/estimators/scoring.py", tmp)
        for kind in args.estimators.split(","):
            est = estimator(kind)
            for size in (int(s) for s in args.batch_sizes.split(",")):
                batches = [wire.message_to_batch(m) for m in make_messages(size * 16, size)]
                order = [i % len(batches) for i in range(max(1, args.packets // size))]
                n = len(order) * size
                for mods in ((base_sketch, base_scoring), (current_sketch, current_scoring)):  # compile, load caches
                    run_once(*mods, est, batches[:2], order[:2], False)
                base_t, ours_t = [], []
                for _ in range(args.rounds):
                    b = run_once(base_sketch, base_scoring, est, batches, order, not args.cold)
                    o = run_once(current_sketch, current_scoring, est, batches, order, not args.cold)
                    if not same(b, o):
                        sys.exit(f"{kind} {size}: the state or the score cache differs from the baseline's")
                    base_t.append(b[:2])
                    ours_t.append(o[:2])
                bt, ot = np.array(base_t) / n * 1e9, np.array(ours_t) / n * 1e9
                ratio = np.median(ot.sum(axis=1) / bt.sum(axis=1))
                parts = np.median(ot / bt, axis=0)

                def fmt(t):
                    med = np.median(t, axis=0)
                    return f"{med[0]:.1f} / {med[1]:.1f} / {np.median(t.sum(axis=1)):.1f}"

                print(f"| {kind} | {size} | {fmt(bt)} | {fmt(ot)} | {ratio:.2f} ({parts[0]:.2f}, {parts[1]:.2f}) |",
                      flush=True)
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
