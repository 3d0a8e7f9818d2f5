"""The client's CPU per batch, A/B in one process: ``Client.push_messages`` of a base revision's
``telesketch/client.py`` against this tree's, alternating rounds, both streaming the same
pre-encoded 8 Ki (or ``--batch``) ``PacketBatch`` messages to one no-sketch ``telesketch serve``
of this tree on loopback (as ``bench_ingest.py --only none`` does). ``--mode push``: both clients
stream the same ``PacketBatch`` objects with ``Client.push`` (the client encodes each batch: the
base through ``batch_to_message``, this tree through ``batch_to_bytes``), sender id set, so each
batch also gets a sequence number.

Client CPU is ``time.process_time`` of this process (every thread: the request iterator, gRPC's
C-core threads), which runs only the client meanwhile; per batch in microseconds. Issue 21 (a).

    .venv/bin/python benchmarks/bench_client_ab.py [--base main] [--batch 8192] [--batches 2000] [--rounds 5] [--mode messages|push]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_ingest import make_messages, start_server  # noqa: E402
from common import machine, module_at_revision  # noqa: E402

from telesketch import client as this_client  # noqa: E402
from telesketch import wire  # noqa: E402


def one_round(module, port: int, messages: list, mode: str = "messages") -> tuple[float, float]:
    """(client CPU µs per batch, wall µs per batch) of one ``push_messages`` (or ``push``) stream."""
    with module.Client(f"127.0.0.1:{port}", sender_id=f"ab-{module.__name__}" if mode == "push" else "") as c:
        if mode == "push":
            c.last_sequence()  # the Resume call outside the timing
        cpu, wall = time.process_time(), time.perf_counter()
        summary = c.push(messages) if mode == "push" else c.push_messages(messages)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert summary.batches == len(messages), summary
    return cpu / len(messages) * 1e6, wall / len(messages) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision of the baseline client.py")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--batches", type=int, default=2000, help="batches per round and client")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=("messages", "push"), default="messages",
                    help="push_messages of pre-encoded messages (bench_ingest) or push of PacketBatch objects")
    args = ap.parse_args()
    print(f"# {machine()}; command: {' '.join(sys.argv)}", flush=True)
    messages = make_messages(args.batch * args.batches, args.batch)
    if args.mode == "push":
        distinct = {id(m): wire.message_to_batch(m) for m in messages}
        messages = [distinct[id(m)] for m in messages]
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        base = module_at_revision(REPO, args.base, "telesketch/client.py", tmp)
        proc, port = start_server({}, tmp, False)
        try:
            for module in (base, this_client):
                one_round(module, port, messages[:50], args.mode)  # warm: channel, server JIT
            results = {"base": [], "this": []}
            for r in range(args.rounds):
                order = [("base", base), ("this", this_client)]
                for label, module in order if r % 2 == 0 else order[::-1]:
                    cpu, wall = one_round(module, port, messages, args.mode)
                    results[label].append((cpu, wall))
                    print(f"round {r} {label}: client CPU {cpu:.1f} µs/batch, wall {wall:.1f} µs/batch", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in results.items()}
    ratios = [b[0] / t[0] for b, t in zip(results["base"], results["this"])]
    print(f"median client CPU µs/batch: base {med['base'][0]:.1f}, this {med['this'][0]:.1f}; "
          f"base/this per round {min(ratios):.2f}-{max(ratios):.2f}; wall µs/batch base {med['base'][1]:.1f}, "
          f"this {med['this'][1]:.1f}")
    print(f"# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
