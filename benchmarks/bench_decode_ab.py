#!/usr/bin/env python3
"""Server-side decode of a schema-1 IPv4 message, this tree against another tree, alternating
subprocesses: ``PacketBatch.FromString`` + ``wire.message_to_batch`` of one 65,536-packet
``generate_batch`` message (each tree encodes it; both write the same bytes), CPU nanoseconds per
packet, best of 5 x 100 decodes per subprocess, best over rounds. The one step of the gRPC ingest
path that the IPv6 work changed for IPv4-only traffic (issue 18's closing audit).

    .venv/bin/python benchmarks/bench_decode_ab.py /tmp/base-tree [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import inspect, json, time
from telesketch import wire
from telesketch.traces import generate_batch
from telesketch.v1 import batch_pb2
batch = generate_batch(65536, 5000, seed=3)
if "schema_version" in inspect.signature(wire.batch_to_message).parameters:
    raw = wire.batch_to_message(batch, schema_version=1).SerializeToString()
else:
    raw = wire.batch_to_message(batch).SerializeToString()
for _ in range(20):
    wire.message_to_batch(batch_pb2.PacketBatch.FromString(raw))
best = 1e9
for _ in range(5):
    start = time.process_time()
    for _ in range(100):
        wire.message_to_batch(batch_pb2.PacketBatch.FromString(raw))
    best = min(best, time.process_time() - start)
print(json.dumps({"ns_per_packet": best / (100 * 65536) * 1e9, "bytes": len(raw)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path, help="a checkout of the tree to compare with (e.g. git archive 8b8d87d)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating base/this-tree subprocess rounds")
    args = ap.parse_args()
    trees = {"base": str(args.base.resolve()), "this tree": str(Path(__file__).resolve().parents[1])}
    got: dict[str, list] = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            out = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, "PYTHONPATH": tree},
                                 capture_output=True, text=True, check=True).stdout
            got[label].append(json.loads(out.strip().splitlines()[-1]))
    best = {label: min(r["ns_per_packet"] for r in rows) for label, rows in got.items()}
    sizes = {rows[0]["bytes"] for rows in got.values()}
    print(f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}; message bytes {sorted(sizes)}")
    for label in trees:
        print(f"{label}: {best[label]:.2f} CPU ns per packet (best of {args.rounds} rounds)")
    print(f"this tree / base CPU time: {best['this tree'] / best['base']:.3f}")


if __name__ == "__main__":
    main()
