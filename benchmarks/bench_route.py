#!/usr/bin/env python3
"""What the sharded front end does per batch before the shards see it: split the batch by flow and
by source (``route`` sends whole PacketBatch objects, ``route_parts`` only the columns holding
data) and serialise the parts as Ray does (pickle protocol 5). Bytes are exact; times are the
median of ``--runs`` (thread CPU time). bench_ingest's traffic, header block not sent.

``--base REV`` (default ``main``) adds an A/B in this process: ``route_parts`` as of ``REV`` (its
``cluster.py`` imported beside this tree's) against this tree's, alternating run by run, the two
routings' parts checked equal column by column; the ratio is the median of per-run ratios.

    .venv/bin/python benchmarks/bench_route.py [--shards 2] [--runs 7] [--base main]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import make_messages  # noqa: E402
from common import machine, module_at_revision  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.distributed.cluster import route, route_parts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--base", default="main", help="git revision whose route_parts is the A/B baseline ('' : none)")
    args = ap.parse_args()
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print("\n| batch | routing | wire bytes / packet | bytes sent to shards / packet | split + pickle ms / batch |")
    print("|---|---|---|---|---|")
    for size in (8192, 65536):
        message = make_messages(size, size)[0]
        batch = wire.message_to_batch(message)
        for fn in (route, route_parts):
            times, sent = [], 0
            for _ in range(args.runs):
                start = time.thread_time()
                blobs = [pickle.dumps(p, protocol=5) for pair in fn(batch, args.shards, 7, True) for p in pair]
                times.append(time.thread_time() - start)
                sent = sum(len(b) for b in blobs)
            print(f"| {size} | {fn.__name__} | {message.ByteSize() / size:.1f} | {sent / size:.1f} | "
                  f"{np.median(times) * 1e3:.2f} |", flush=True)
    if args.base:
        ab(args)
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


def _same_parts(a, b) -> bool:
    flat_a = [p for pair in a for p in pair if p is not None]
    flat_b = [p for pair in b for p in pair if p is not None]
    return len(flat_a) == len(flat_b) and all(
        x.n == y.n and x.columns.keys() == y.columns.keys()
        and all(np.array_equal(x.columns[k], y.columns[k]) for k in x.columns) for x, y in zip(flat_a, flat_b))


def ab(args) -> None:
    """``route_parts`` of ``args.base`` against this tree's, alternating, split + pickle thread CPU time."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at_revision(repo, args.base, "telesketch/distributed/cluster.py", tmp)
        print(f"\nA/B against {args.base}: route_parts, {args.shards} shards, by flow and by source, split + pickle, "
              f"median of {args.runs} alternating runs (thread CPU time)")
        print("\n| batch | base ms / batch | this tree ms / batch | base / this tree (median of per-run ratios) |")
        print("|---|---|---|---|")
        for size in (8192, 65536):
            batch = wire.message_to_batch(make_messages(size, size)[0])
            fns = {"base": base.route_parts, "ours": route_parts}
            if not _same_parts(fns["base"](batch, args.shards, 7, True), fns["ours"](batch, args.shards, 7, True)):
                sys.exit("route_parts differs from the baseline's")
            times = {"base": [], "ours": []}
            for _ in range(args.runs):
                for name, fn in fns.items():
                    start = time.thread_time()
                    for _ in range(max(1, 524288 // size)):
                        [pickle.dumps(p, protocol=5) for pair in fn(batch, args.shards, 7, True) for p in pair]
                    times[name].append((time.thread_time() - start) / max(1, 524288 // size))
            ratio = np.median(np.array(times["base"]) / np.array(times["ours"]))
            print(f"| {size} | {np.median(times['base']) * 1e3:.2f} | {np.median(times['ours']) * 1e3:.2f} | "
                  f"{ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
