#!/usr/bin/env python3
"""Where a no-sketch server's CPU per batch goes beyond its Python stages: the real ``telesketch
serve`` with its ``Push`` handler cut down step by step (issue 21 (a)).

Variants (the server process runs ``--serve VARIANT``, which patches ``IngestService.Push``):

* ``floor``: read the stream (gRPC transport, event loop, the request deserializer with its
  in-flight budget reservation) and nothing else;
* ``decode``: also ``IngestService._decode`` (limits, ``wire.message_to_batch``, timestamp checks);
* ``inline``: also ``EpochManager.apply`` and the worker's metrics on the event loop itself, with
  no hand-off to the worker thread (not a valid server: it is only the cost without the hand-off);
* ``full``: the server unchanged (decode on the loop, apply on the worker thread).

For every tree (this one, and ``--compare-with`` trees such as a ``git archive`` of main) and
variant, in alternating rounds, one client streams bench_ingest's pre-encoded messages with no
sketch and the write-ahead log off; printed: the server's CPU (all threads, /proc) and the client
process's CPU per batch in microseconds, medians over ``--rounds``. The /proc CPU clock ticks every
10 ms, so use enough packets (16 M at 8 Ki batches: about 2000 batches).

    .venv/bin/python benchmarks/bench_ingest_variants.py [--batch-size 8192] [--packets 16000000]
        [--rounds 3] [--variants floor,decode,inline,full] [--clients 1] [--compare-with /tmp/main-tree]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def patch(variant: str) -> None:
    """In the server process: replace ``IngestService.Push`` for ``variant`` (``full``: unchanged)."""
    from telesketch.service import server as srv
    from telesketch.v1 import service_pb2

    if variant == "full":
        return

    async def Push(self, request_iterator, context):
        batches = 0
        worker = self.service.worker
        async for request in request_iterator:
            batches += 1
            if variant != "floor":
                batch = self._decode(request, context)
                if variant == "inline":
                    message = request.message
                    start = time.perf_counter()
                    result = self.service.manager.apply(batch, message.sender_id, message.sequence, request.raw)
                    worker._account(result, time.perf_counter() - start)
            self._release(request)
        return service_pb2.PushSummary(batches=batches)

    srv.IngestService.Push = Push


def serve(variant: str, argv: list[str]) -> None:
    patch(variant)
    from telesketch import cli

    sys.exit(cli.main(["serve", *argv]))


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all the process's threads so far (/proc): each
    wake-up of a sleeping thread (the event loop, the worker) is one; less disturbed by other jobs
    on a shared machine than its CPU time."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches:" in line)
    return total


def measure(tree: Path, variant: str, messages: list, clients: int = 1) -> tuple[float, float, float]:
    """(server CPU, client CPU) microseconds per batch and the server's context switches per batch,
    ``messages`` split over ``clients`` concurrent streams."""
    import bench_ingest as b
    from telesketch.client import Client

    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        cfg = {"server": {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": tmp,
                          "epoch_seconds": 3600.0, "wal": False, "queue_batches": 8}, "sketches": {}}
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(cfg))
        env = dict(os.environ, PYTHONPATH=str(tree))
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", variant, "--config",
                                 str(path), "--log-level", "warning"], stdout=subprocess.PIPE, text=True, env=env,
                                cwd=tree)
        try:
            line = proc.stdout.readline()
            if not line.startswith("telesketch serving"):
                raise RuntimeError(f"server did not start: {line}")
            port = int(line.split()[2].split("=")[1])
            with Client(f"127.0.0.1:{port}") as warm:
                warm.push_messages(messages[:4])
            server0, client0, switches0 = b.cpu_seconds(proc.pid), time.process_time(), context_switches(proc.pid)
            share = len(messages) // clients

            def stream(i: int = 0) -> None:
                with Client(f"127.0.0.1:{port}") as client:
                    client.push_messages(messages[i * share:(i + 1) * share])

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            server, client_cpu = b.cpu_seconds(proc.pid) - server0, time.process_time() - client0
            switches = context_switches(proc.pid) - switches0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    batches = share * clients
    return server / batches * 1e6, client_cpu / batches * 1e6, switches / batches


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--packets", type=int, default=16_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="floor,decode,inline,full")
    ap.add_argument("--clients", type=int, default=1, help="concurrent streams (threads of this process)")
    ap.add_argument("--compare-with", type=Path, action="append", default=[])
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_ingest as b

    trees = [*args.compare_with, HERE.parent]
    messages = b.make_messages(args.packets, args.batch_size)
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"# {b.machine()}; batch {args.batch_size}; {args.clients} client(s); {len(messages)} batches x {args.rounds} rounds; "
          f"load average before {load}", flush=True)
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            for tree in trees:
                runs.setdefault((str(tree), variant), []).append(measure(tree, variant, messages, args.clients))
    print("\n| tree | variant | server CPU us/batch (runs) | median | client CPU us/batch (median) "
          "| server context switches per batch (median) |\n|---|---|---|---|---|---|")
    for (tree, variant), values in runs.items():
        server = [round(s) for s, _, _ in values]
        print(f"| {tree} | {variant} | {', '.join(map(str, server))} | {statistics.median(server):.0f} | "
              f"{statistics.median(c for _, c, _ in values):.0f} | {statistics.median(x for _, _, x in values):.2f} |")
    print(f"# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
