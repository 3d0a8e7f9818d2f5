#!/usr/bin/env python3
"""Server CPU seconds of a no-sketch (or configured) ingest, several trees interleaved round by round.

``bench_ingest.py --compare-with`` runs two trees once per invocation, and its per-CPU ratio swung
by ±25 % between invocations on the shared machine. This driver starts each tree's ``telesketch
serve`` in turn (the same server settings and pre-encoded schema-1 IPv4 messages as
``bench_ingest.py``), pushes the messages from one client after a 2-batch warm-up, and reads the
server's CPU seconds (user + system, all threads) and minor page faults from ``/proc``. It repeats
that for ``--rounds`` rounds, all trees in each round, and prints every figure and each tree's
median. Used for issue 18's open no-sketch ingest row (BENCHMARKS.md, "IPv6: closing figures").

    .venv/bin/python benchmarks/bench_ingest_interleaved.py /tmp/base-tree /tmp/other-tree . [--rounds 6]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_ingest  # noqa: E402
from common import machine  # noqa: E402

from telesketch.client import Client  # noqa: E402


def faults_and_cpu(pid: int) -> tuple[int, float]:
    """(minor page faults, CPU seconds) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), bench_ingest.cpu_seconds(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", type=Path, help="checkouts to compare ('.' for this tree)")
    ap.add_argument("--config", default="none", choices=sorted(bench_ingest.CONFIGS),
                    help="sketches the server runs (bench_ingest.py's configurations)")
    ap.add_argument("--packets", type=int, default=10_000_000, help="packets pushed per tree per round")
    ap.add_argument("--batch", type=int, default=65536, help="packets per message")
    ap.add_argument("--rounds", type=int, default=6, help="rounds; every tree runs once per round")
    args = ap.parse_args()
    print("machine:", machine())
    messages = bench_ingest.make_messages(args.packets, args.batch)
    cpu: dict[str, list[float]] = {str(t): [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            with tempfile.TemporaryDirectory(prefix="bench-interleaved-") as tmp:
                proc, port = bench_ingest.start_server(bench_ingest.CONFIGS[args.config], tmp, False,
                                                       code=tree.resolve())
                try:
                    with Client(f"127.0.0.1:{port}") as warm:  # closed: no channel left open into the timing
                        warm.push_messages(messages[:2])
                    f0, c0 = faults_and_cpu(proc.pid)
                    with Client(f"127.0.0.1:{port}") as client:
                        packets = client.push_messages(messages).applied_packets
                    f1, c1 = faults_and_cpu(proc.pid)
                finally:
                    proc.kill()
                    proc.wait()
            cpu[str(tree)].append(c1 - c0)
            print(f"{str(tree):30s} {packets:,} packets  server CPU {c1 - c0:.2f} s  "
                  f"minor faults per batch {(f1 - f0) / len(messages):.0f}", flush=True)
    for tree, seconds in cpu.items():
        print(f"median {tree}: {statistics.median(seconds):.3f} server CPU s "
              f"({args.packets / statistics.median(seconds) / 1e6:.1f} M packets per CPU second)")
    print("machine after:", machine())


if __name__ == "__main__":
    main()
