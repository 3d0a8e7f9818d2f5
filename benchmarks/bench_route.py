#!/usr/bin/env python3
"""What the sharded front end does per batch before the shards see it: split the batch by flow and
by source (``route`` sends whole PacketBatch objects, ``route_parts`` only the columns holding
data) and serialise the parts as Ray does (pickle protocol 5). Bytes are exact; times are the
median of ``--runs`` (thread CPU time). bench_ingest's traffic, header block not sent.

    .venv/bin/python benchmarks/bench_route.py [--shards 2] [--runs 7]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import make_messages  # noqa: E402
from common import machine  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.distributed.cluster import route, route_parts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
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
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
