#!/usr/bin/env python3
"""Per-batch server CPU of the ingest path with no sketch, stage by stage, in one process.

Issue 21 (a): at 8 Ki batches ingest-only throughput is bounded by what each batch costs, not by
what each packet costs. This runs the server's own per-batch Python code on a real
:class:`~telesketch.service.server.Service` (no sketch, write-ahead log off, gRPC not started) for
every batch of bench_ingest's traffic, one stage at a time, and prints each stage's thread CPU in
microseconds per batch (median over ``--rounds`` rounds):

* ``deserialize``: ``IngestService._admit_bytes`` (the request deserializer: in-flight budget
  reservation and ``PacketBatch.FromString``);
* ``decode``: ``IngestService._decode`` (limits, ``wire.message_to_batch``, timestamp checks);
* ``admit + done``: the worker's queue-depth gauge on admission, and ``SketchWorker._done``'s
  bookkeeping (gauge, queue slot, budget release, the future's result), without the threads;
* ``apply``: ``EpochManager.apply`` (lock, sequence table, epoch split, counters);
* ``account``: ``SketchWorker._account`` (the per-batch metrics).

gRPC's transport, the event-loop wake-ups and the GIL hand-offs between the event loop and the
worker thread are not in these stages; ``bench_ingest.py``'s server CPU per batch minus their sum
is that remainder.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ingest_perbatch.py [--batch-size 8192] [--batches 400] [--rounds 7]

Run it with ``PYTHONPATH`` at another tree (e.g. ``git archive main``) to compare two trees.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from telesketch.service.config import load_config  # noqa: E402  (the tree PYTHONPATH names)
from telesketch.service.server import IngestService, Service  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # noqa: E402  (after telesketch: it puts its own tree on sys.path)

STAGES = ("deserialize", "decode", "admit + done", "apply", "account")


def measure(batch_size: int, batches: int, rounds: int) -> dict[str, float]:
    raws = [m.SerializeToString() for m in bench_ingest.make_messages(batch_size * batches, batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"  # bench_ingest's configuration (a): no sketch (not the defaults)
        path.write_text(json.dumps({"server": {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": tmp,
                                               "epoch_seconds": 3600.0, "wal": False, "queue_batches": 8},
                                    "sketches": {}}))
        config = load_config(path)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        service = Service(config)
        ingest = IngestService(service)
        worker = service.worker
        worker._loop = loop
        worker._slots = asyncio.Semaphore(worker.capacity)
        per_round: dict[str, list[float]] = {s: [] for s in STAGES}
        for _ in range(rounds + 1):  # the first round warms up and is not counted
            spent = dict.fromkeys(STAGES, 0.0)
            for raw in raws:
                t0 = time.thread_time()
                request = ingest._admit_bytes(raw)
                t1 = time.thread_time()
                batch = ingest._decode(request, None)
                t2 = time.thread_time()
                worker.depth += 1
                service.metrics.queue_depth.set(worker.depth)
                future = loop.create_future()
                t3 = time.thread_time()
                start = time.perf_counter()
                result = service.manager.apply(batch, request.message.sender_id, request.message.sequence, request.raw)
                t4 = time.thread_time()
                worker._account(result, time.perf_counter() - start)
                t5 = time.thread_time()
                worker._slots._value -= 1  # what admit's acquire took
                worker._done(future, result, None, request.reserved)
                t6 = time.thread_time()
                for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, (t3 - t2) + (t6 - t5), t4 - t3, t5 - t4)):
                    spent[stage] += seconds
            if _:
                for stage in STAGES:
                    per_round[stage].append(spent[stage] / len(raws) * 1e6)
        service.manager.close()
        service.query_pool.shutdown()
        service.sketchset.shutdown()
    return {s: statistics.median(v) for s, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import telesketch
    figures = measure(args.batch_size, args.batches, args.rounds)
    print(f"# {telesketch.__file__}; batch {args.batch_size}; {args.batches} batches x {args.rounds} rounds; "
          f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for stage, us in figures.items():
        print(f"{stage:14s} {us:8.2f} us/batch")
    print(f"{'sum':14s} {sum(figures.values()):8.2f} us/batch")


if __name__ == "__main__":
    main()
