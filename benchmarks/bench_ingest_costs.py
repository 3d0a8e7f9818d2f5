#!/usr/bin/env python3
"""Where an ingested packet's server CPU goes: each stage of the ingest path in one process, in
nanoseconds of thread CPU time per packet, and the end-to-end rate those costs allow on the cores.

Stages, in the order the server runs them on one batch (bench_ingest's traffic and sketches,
configuration (c), LLM-Sketch on the constant estimator; the header block not sent):

* ``parse``: ``PacketBatch.FromString`` (gRPC's request deserializer, on the event loop);
* ``decode + validate``: ``IngestService._decode`` (size limits, ``wire.message_to_batch``, the
  timestamp checks), the real method on a stub service;
* ``log append``: ``EpochManager._log`` of the received bytes (write-ahead log, durability
  ``none``: the write without the fsync, whose cost is a wait rather than CPU);
* ``apply (no sketch)``: ``EpochManager.apply`` with no sketch configured (lock, sequence table,
  epoch split, counters);
* each sketch's ``SketchSet.update_parts`` alone (serial, so its cost is not hidden by another
  thread), LLM-Sketch also split into its scoring path (``FlowScorer.scores``) and its kernel on
  those scores;
* ``shard routing``: the sharded front end's ``route_parts`` into 2 shards plus pickling the parts
  (protocol 5, as Ray does); not on the one-process path.

Each round runs every batch through every stage in turn; a stage's figure is the median over
``--rounds`` rounds of its CPU time per packet. The bound: with ``C`` cores and nothing but these
stages, the server applies at most ``C / sum`` packets per second, and at most ``1 / max(sketch)``
(one sketch's updates of one batch are serial), whichever is lower. gRPC's transport, the event
loop, the worker hand-off and the client (on the same machine in ``bench_ingest.py``) all come
on top, so the bound is optimistic.

    .venv/bin/python benchmarks/bench_ingest_costs.py [--batch-sizes 8192,65536] [--packets 2000000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import ALL, make_messages  # noqa: E402
from common import machine  # noqa: E402

from telesketch.distributed.cluster import route_parts  # noqa: E402
from telesketch.service.config import ServiceConfig  # noqa: E402
from telesketch.service.epochs import EpochManager  # noqa: E402
from telesketch.service.server import IngestService, RawBatch  # noqa: E402
from telesketch.service.sketchset import SketchSet  # noqa: E402
from telesketch.sketches.llmsketch import LLMSketch  # noqa: E402
from telesketch.v1 import batch_pb2  # noqa: E402

EPOCH_NS = 3600 * 10**9
ROUTE_SEED = 7


def stages(raws: list[bytes], tmp: Path):
    """``(name, kind, fn(index) -> None)`` for every stage; ``kind``: ``front`` (once per batch on the
    one-process path), ``sketch``, ``part`` (a sketch's share, not added again) or ``shard``."""
    cfg = ServiceConfig()
    ingest = IngestService(SimpleNamespace(config=cfg, manager=SimpleNamespace(epoch_ns=EPOCH_NS)))
    messages = [batch_pb2.PacketBatch.FromString(r) for r in raws]
    batches = [ingest._decode(RawBatch(r, m, size=len(r)), None) for r, m in zip(raws, messages)]
    logger = EpochManager(SketchSet.from_config({}), EPOCH_NS, 4, tmp / "wal", wal=True, durability="none")
    bare = EpochManager(SketchSet.from_config({}), EPOCH_NS, 4, None, wal=False)
    sketches = SketchSet.from_config(ALL)
    sketches.concurrency = 1
    states = sketches.new_states(int(batches[0].ts_ns[0]) // EPOCH_NS)
    flows = states["flows"]
    out = [
        ("parse (PacketBatch.FromString)", "front", lambda i: batch_pb2.PacketBatch.FromString(raws[i])),
        ("decode + validate (IngestService._decode)", "front",
         lambda i: ingest._decode(RawBatch(raws[i], messages[i], size=len(raws[i])), None)),
        ("log append (write-ahead log, no fsync)", "front", lambda i: logger._log(raws[i])),
        ("apply, no sketch (EpochManager.apply)", "front", lambda i: bare.apply(batches[i])),
    ]
    for cs in sketches.active:
        out.append((f"sketch {cs.name} ({cs.kind_name})", "sketch",
                    lambda i, name=cs.name: sketches.update_parts(states, {name: batches[i]})))
    scorer_state = flows.copy()  # the same sketch without the scorer: its kernel on given scores
    scorer = flows.scorer
    scores: list = [None]

    def score(i):
        scores[0] = scorer.scores(batches[i])

    out.append(("  of which flows: scoring path (FlowScorer.scores)", "part", score))
    out.append(("  of which flows: kernel on those scores", "part",
                lambda i: LLMSketch.update(scorer_state, batches[i], scores[0])))
    out.append(("shard routing, 2 shards (route_parts + pickle)", "shard",
                lambda i: [pickle.dumps(p, protocol=5) for pair in route_parts(batches[i], 2, ROUTE_SEED, True)
                           for p in pair]))
    return out, (logger, bare, sketches)


def measure(batch_size: int, packets: int, rounds: int) -> tuple[list, dict]:
    messages = make_messages(batch_size * 16, batch_size)  # the 16 distinct batches bench_ingest cycles
    raws = [m.SerializeToString() for m in messages]
    per_round = max(1, packets // batch_size)
    order = [i % len(raws) for i in range(per_round)]
    with tempfile.TemporaryDirectory() as tmp:
        table, owners = stages(raws, Path(tmp))
        for _, _, fn in table:  # compile, load caches, warm the flow cache as across epochs
            fn(0)
        seconds = {name: [] for name, _, _ in table}
        for _ in range(rounds):
            spent = dict.fromkeys(seconds, 0.0)
            for i in order:
                for name, _, fn in table:
                    start = time.thread_time()
                    fn(i)
                    spent[name] += time.thread_time() - start
            for name in seconds:
                seconds[name].append(spent[name])
        owners[0].close()
        owners[1].close()
        owners[2].shutdown()
    n = per_round * batch_size
    ns = {name: float(np.median(s)) / n * 1e9 for name, s in seconds.items()}
    return table, ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8192,65536", help="comma-separated packets per batch")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets per stage per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each figure is the median")
    ap.add_argument("--cores", type=int, default=2, help="cores the bound assumes")
    args = ap.parse_args()
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    results = {size: measure(size, args.packets, args.rounds) for size in sizes}
    table = results[sizes[0]][0]
    head = " | ".join(f"{s} ns/packet" for s in sizes)
    print(f"\n| stage | {head} |\n|---|{'---|' * len(sizes)}")
    for name, _, _ in table:
        print(f"| {name} | " + " | ".join(f"{results[s][1][name]:.1f}" for s in sizes) + " |")
    sums = {}
    for s in sizes:
        ns = results[s][1]
        front = sum(v for (name, kind, _) in table if kind == "front" for v in [ns[name]])
        sketch = [ns[name] for name, kind, _ in table if kind == "sketch"]
        sums[s] = (front, sum(sketch), max(sketch))
    rows = [("front stages (parse .. apply)", lambda f, t, m: f), ("all four sketches", lambda f, t, m: t),
            ("one process, total", lambda f, t, m: f + t)]
    for label, pick in rows:
        print(f"| **{label}** | " + " | ".join(f"**{pick(*sums[s]):.1f}**" for s in sizes) + " |")
    print(f"\n| bound on {args.cores} cores | " + " | ".join(f"{s} M packets/s" for s in sizes)
          + f" |\n|---|{'---|' * len(sizes)}")
    bounds = [
        ("sketches only: cores / sum(sketches)", lambda f, t, m: args.cores / t),
        ("sketches only: 1 / slowest sketch", lambda f, t, m: 1 / m),
        ("one process: cores / total", lambda f, t, m: args.cores / (f + t)),
        ("ingest only, no sketch: cores / front", lambda f, t, m: args.cores / f),
    ]
    for label, fn in bounds:
        print(f"| {label} | " + " | ".join(f"{fn(*sums[s]) * 1e3:.2f}" for s in sizes) + " |")
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}; cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
