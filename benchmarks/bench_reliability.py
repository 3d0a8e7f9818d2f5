"""Reliability figures of ``telesketch serve`` (BENCHMARKS.md, "Reliability").

Three parts, each against a server subprocess on loopback:

* ``durability``: ingest packets/s with the write-ahead log off and in each durability mode
  (``none``, ``interval``, ``every-batch``), one client streaming pre-encoded batches with
  ``Ingest.Push``; no sketch configured, so the figure is the log's cost and nothing else.
* ``kill``: rounds of kill -9 (0.05-0.5 s into the round) while one client pushes 500-packet
  batches one by one (``PushOne``, a sender id, durability every-batch), then restart, resume from ``Ingest.Resume`` and push the rest. Counts acknowledged packets that
  the restarted server does not have (lost), and checks every flow's count against the ``exact``
  sketch (each batch applied exactly once).
* ``query``: 8 clients each pushing streams of 8 batches; packets/s and the worst stream latency
  (start of a stream to its summary), without and then with one more client polling
  ``HeavyHitters`` back to back (the four default sketches, LLM-Sketch on the constant estimator, log off).

    .venv/bin/python benchmarks/bench_reliability.py [--parts durability,kill,query] [--packets 2000000] [--rounds 20]
        [--repeat 1] [--query-shares 1.0,0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from common import machine, timed_threads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.client import Client  # noqa: E402
from telesketch.packets import PacketBatch  # noqa: E402

ALL = {"gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024},
       "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4},
       "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "phi": 1e-3,
               "expected_packets": 2_500_000},
       "flows": {"kind": "llmsketch", "memory_bytes": 400 * 1024, "task": "flow_size", "estimator": "constant"}}


def batches(total: int, batch_size: int, seed: int = 0, first_ts_ns: int = 1_700_000_000 * 10**9) -> list[PacketBatch]:
    """Zipf traffic in one epoch; flows told apart by source address."""
    rng = np.random.default_rng(seed)
    flow = (rng.zipf(1.1, total) % 50_000).astype(np.int64)
    batch = PacketBatch.from_columns(
        ts_ns=np.full(total, first_ts_ns, np.uint64), src_ip=(0x0A000000 + flow).astype(np.uint32),
        dst_ip=np.full(total, 0xC0A80001, np.uint32), src_port=np.full(total, 1000, np.uint16),
        dst_port=np.full(total, 443, np.uint16), proto=np.full(total, 6, np.uint8),
        length=np.full(total, 800, np.uint16))
    return batch.split(batch_size)


def start_server(data_dir: str, sketches: dict, **server) -> tuple[subprocess.Popen, int]:
    values = {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": data_dir, "epoch_seconds": 3600.0}
    values.update(server)
    path = Path(data_dir) / "config.json"
    path.write_text(json.dumps({"server": values, "sketches": sketches}))
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "serve", "--config", str(path),
                             "--data-dir", str(Path(data_dir) / "data"), "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("telesketch serving"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line}")
    proc.ports = dict(part.split("=") for part in line.split()[2:])  # grpc=..., http=... (when served)
    return proc, int(line.split()[2].split("=")[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float | None:
    """One unlabelled series from the server's /metrics (None when it has no such series)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=60)


# ---------------------------------------------------------------------------- durability modes
def durability(total: int, batch_size: int, repeat: int = 3) -> list[dict]:
    """Each mode ``repeat`` times, the modes interleaved (a shared machine's load drifts); the
    median run per mode is reported."""
    messages = [wire.batch_to_message(b) for b in batches(total, batch_size)]
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        for mode in ("off", "none", "interval", "every-batch"):
            with tempfile.TemporaryDirectory(prefix="bench-rel-") as tmp:
                server = {"wal": False} if mode == "off" else {"durability": mode}
                proc, port = start_server(tmp, {}, **server)
                try:
                    with Client(f"127.0.0.1:{port}") as c:
                        c.push_messages(messages[:2])
                        start = time.perf_counter()
                        applied = c.push_messages(messages).applied_packets
                        runs.setdefault(mode, []).append(applied / (time.perf_counter() - start) / 1e6)
                finally:
                    stop(proc)
    rows = []
    for mode, mpps in runs.items():
        row = {"part": "durability", "mode": mode, "batch": batch_size, "packets": total, "runs": len(mpps),
               "median_mpps": round(float(np.median(mpps)), 2), "all_mpps": [round(x, 2) for x in mpps]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- kill -9 rounds
def kill_rounds(rounds: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    plan = batches(rounds * 400 * 500, 500, seed=seed)
    expected = Counter()
    for b in plan:
        values, n = np.unique(b.src_ip, return_counts=True)
        expected.update(dict(zip(values.tolist(), n.tolist())))
    acked = lost = 0
    with tempfile.TemporaryDirectory(prefix="bench-rel-") as tmp:
        proc, port = start_server(tmp, {"exact": {"kind": "exact"}})
        sent = 0
        for r in range(rounds):
            client = Client(f"127.0.0.1:{port}", sender_id="collector", timeout=10)
            sent = client.last_sequence()
            acked_seqs = []
            killer = threading.Timer(rng.uniform(0.05, 0.5), lambda p=proc: os.killpg(p.pid, signal.SIGKILL))
            killer.start()
            try:  # push until the kill interrupts a call
                for seq in range(sent + 1, len(plan) + 1):
                    client.push_one(plan[seq - 1], sequence=seq)
                    acked_seqs.append(seq)
            except grpc.RpcError:
                pass
            killer.join()
            proc.wait()
            client.close()
            acked += sum(len(plan[s - 1]) for s in acked_seqs)
            proc, port = start_server(tmp, {"exact": {"kind": "exact"}})
            last = Client(f"127.0.0.1:{port}", sender_id="collector").last_sequence()
            lost += sum(len(plan[s - 1]) for s in acked_seqs if s > last)
        client = Client(f"127.0.0.1:{port}", sender_id="collector", timeout=60)
        rest = plan[client.last_sequence():]
        if rest:
            client.push(rest)
        epochs = client.stats()["epochs"]
        got = Counter()
        for key, estimate in client.top_flows(100_000, last=len(epochs), sketch="exact"):
            got[int.from_bytes(key[:4], "big")] += int(estimate)
        stop(proc)
    row = {"part": "kill", "rounds": rounds, "acked_batches": acked // 500, "acked_packets": acked, "acked_lost": lost,
           "every_batch_once": got == expected, "packets": sum(expected.values())}
    print(json.dumps(row), flush=True)
    return row


# ---------------------------------------------------------------------------- queries vs. ingest
def query_poll(total: int, clients: int = 8, batch_size: int = 8192, stream_batches: int = 8,
               repeat: int = 1, shares: tuple[float | None, ...] = (None,)) -> list[dict]:
    """``repeat`` rounds of runs: one without the polling client, then one with it per entry of
    ``shares`` (the server's ``query_share``; None: the server's default, not set), each polled
    run's ratio to the round's unpolled run printed; a round is measured back to back so that a
    shared machine's load drifts little within it."""
    messages = [wire.batch_to_message(b) for b in batches(total // clients, batch_size)]
    rows = []
    for polling, share in [(False, None), *[(True, s) for s in shares]] * repeat:
        with tempfile.TemporaryDirectory(prefix="bench-rel-") as tmp:
            extra = {} if share is None else {"query_share": share}
            # the log off: only queries vs. ingest; HTTP on for the query CPU metric
            proc, port = start_server(tmp, ALL, wal=False, http_address="127.0.0.1:0", **extra)
            http_port = int(proc.ports.get("http", 0))
            try:
                Client(f"127.0.0.1:{port}").push_messages(messages[:2])
                cpu_before = process_cpu_seconds(proc.pid)
                query_cpu_before = metric(http_port, "telesketch_query_cpu_seconds") if http_port else None
                latencies, done, query_seconds = [], threading.Event(), []

                def poll():
                    with Client(f"127.0.0.1:{port}") as q:
                        while not done.is_set():
                            t = time.perf_counter()
                            q.heavy_hitters(sketch="hh")
                            query_seconds.append(time.perf_counter() - t)

                def stream():
                    with Client(f"127.0.0.1:{port}") as c:
                        for i in range(0, len(messages), stream_batches):
                            t = time.perf_counter()
                            c.push_messages(messages[i : i + stream_batches])
                            latencies.append(time.perf_counter() - t)

                poller = threading.Thread(target=poll) if polling else None
                if poller:
                    poller.start()
                seconds = timed_threads(stream, clients)
                done.set()
                if poller:
                    poller.join()
                server_cpu = process_cpu_seconds(proc.pid) - cpu_before
                query_cpu = (metric(http_port, "telesketch_query_cpu_seconds") - query_cpu_before
                             if query_cpu_before is not None else None)
            finally:
                stop(proc)
        packets = clients * sum(len(b.ts_ns) // 8 for b in messages)  # ts_ns is 8 bytes per packet
        row = {"part": "query", "polling": polling, "query_share": share, "clients": clients,
               "load": open("/proc/loadavg").read().split()[0], "mpps": round(packets / seconds / 1e6, 2),
               "worst_stream_s": round(max(latencies), 3), "queries": len(query_seconds),
               "server_cpu_s_per_m_packets": round(server_cpu / (packets / 1e6), 3),
               "query_cpu_share_of_wall": round(query_cpu / seconds, 3) if query_cpu is not None else None,
               "median_query_s": round(float(np.median(query_seconds)), 4) if query_seconds else None,
               "worst_query_s": round(max(query_seconds), 3) if query_seconds else None}
        if polling:
            unpolled = next(r for r in reversed(rows) if not r["polling"])
            row["polled_over_unpolled"] = round(row["mpps"] / unpolled["mpps"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for share in shares:
        ratios = [r["polled_over_unpolled"] for r in rows if r["polling"] and r["query_share"] == share]
        worst = [r["worst_stream_s"] for r in rows if r["polling"] and r["query_share"] == share]
        print(json.dumps({"part": "query", "query_share": share, "pairs": len(ratios),
                          "median_polled_over_unpolled": float(np.median(ratios)), "ratios": sorted(ratios),
                          "below_0_80": sum(r < 0.8 for r in ratios), "worst_stream_polled_s": [min(worst), max(worst)]}),
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="durability,kill,query")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets per durability / query measurement")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=20, help="kill -9 rounds")
    ap.add_argument("--repeat", type=int, default=1, help="query part: rounds of runs (without / with polling)")
    ap.add_argument("--query-shares", default="",
                    help="query part: comma-separated query_share values, one polled run each per round "
                         "(default: one polled run at the server's default)")
    args = ap.parse_args()
    print(f"# {machine()}; command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    parts = args.parts.split(",")
    if "durability" in parts:
        for size in (args.batch_size, 65536):
            durability(args.packets, size)
    if "kill" in parts:
        kill_rounds(args.rounds)
    if "query" in parts:
        shares = tuple(float(v) for v in args.query_shares.split(",")) if args.query_shares else (None,)
        query_poll(args.packets, repeat=args.repeat, shares=shares)


if __name__ == "__main__":
    main()
