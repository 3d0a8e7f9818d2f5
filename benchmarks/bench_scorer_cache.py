"""What the LLM-Sketch score cache's size costs the packet path, in one process (issue #19 row 7).

bench_ingest's traffic (Zipf 1.1 over 200 k flow ids, 16 distinct batches cycled, no header: what
``bench_ingest.py`` sends) through ``LLMSketch(estimator="trees")`` with the default sync scoring:
(1) 400 KiB in all, the cache separate (2^20 flows) or charged at several ``scorer_share`` values;
(2) a 400 KiB sketch part with the charged cache swept by ``cache_flows``. Per row: model calls per
packet (a flow found evicted is scored again as new) and M packets per CPU-second of ``update``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scorer_cache.py [--batch 65536] [--packets 4000000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ingest  # noqa: E402
from common import machine  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.estimators.scoring import CACHE_ENTRY_BYTES, cache_capacity  # noqa: E402
from telesketch.sketches.llmsketch import LLMSketch  # noqa: E402


def traffic(packets: int, batch: int) -> list:
    """bench_ingest's batches, decoded once (the 16 distinct ones, cycled)."""
    messages = bench_ingest.make_messages(packets, batch)
    distinct = [wire.message_to_batch(m) for m in messages[:16]]
    return [distinct[i % len(distinct)] for i in range(len(messages))]


def run(batches: list, **settings) -> tuple[LLMSketch, float, float]:
    """``(sketch, model calls per packet, M packets per CPU-second)`` after one warm-up batch."""
    sketch = LLMSketch(estimator="trees", **settings)
    sketch.update(batches[0])
    calls, start = sketch.scorer.model_calls, time.process_time()
    for b in batches:
        sketch.update(b)
    n = sum(map(len, batches))
    return sketch, (sketch.scorer.model_calls - calls) / n, n / (time.process_time() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--packets", type=int, default=4_000_000)
    args = ap.parse_args()
    print(f"# {machine()}")
    batches = traffic(args.packets, args.batch)
    print("\n| 400 KiB in all | cache flows | sketch part bytes | model calls per packet | M packets per CPU-second |")
    print("|---|---|---|---|---|")
    for label, settings in (("separate (not charged)", {}),
                            *((f"charged, scorer_share {s:g}", {"scorer_memory": "charged", "scorer_share": s})
                              for s in (0.1, 0.25, 0.5))):
        sketch, calls, rate = run(batches, memory_bytes=400 * 1024, **settings)
        print(f"| {label} | {sketch.scorer.cache.capacity:,} | {sketch.sketch_memory_bytes:,} | {calls:.3f} | {rate:.2f} |",
              flush=True)
    print("\n| cache_flows (charged, 400 KiB sketch part) | memory_bytes in all | model calls per packet | "
          "M packets per CPU-second |")
    print("|---|---|---|---|")
    for flows in (1 << 12, 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 20):
        total = 400 * 1024 + cache_capacity(flows) * CACHE_ENTRY_BYTES
        sketch, calls, rate = run(batches, memory_bytes=total, scorer_memory="charged", cache_flows=flows)
        print(f"| {flows:,} | {sketch.memory_bytes:,} | {calls:.3f} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
