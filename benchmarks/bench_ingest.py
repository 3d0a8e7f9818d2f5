"""End-to-end ingest throughput of ``telesketch serve`` through gRPC on loopback.

The server runs as a separate process (``python -m telesketch.cli serve``); this process streams
pre-encoded ``PacketBatch`` messages with ``Ingest.Push`` and times from the first send to the
summary (which arrives only after every batch is applied). Configurations: (a) no sketch,
(b) each sketch alone, (c) all four; batch sizes 8k and 64k; then peak server memory (VmHWM) with
8 concurrent streaming clients on configuration (c). Beside the wall-clock rate, packets per
second of the server's own CPU time (all its threads): on a shared machine the wall clock
measures the load, the CPU time much less so; and the clients' CPU time (this process), so that
``bound_mpps`` = cores / (server + client CPU seconds per packet) is the most this server and
these clients could reach on this machine with every core to themselves (one process only: Ray
actors' CPU is not counted with ``--shards`` > 1). Write-ahead log off unless ``--wal``.
``--shards 1,2`` repeats each configuration with the sketches on that many Ray actors (``serve
--shards``; 1 = in process); the RSS column is then the front end's only. ``--sketch-threads 1,0``
repeats each configuration with the sketches of a batch applied one after another (1) and
concurrently on the cores (0, the default), so the two pipelines compare within one run.

    .venv/bin/python benchmarks/bench_ingest.py [--packets 4000000] [--wal] [--only none,all] [--shards 1,2]
        [--sketch-threads 1,0] [--clients 1,8] [--compare-with /tmp/main-tree] [--wire messages|bytes]

``--compare-with`` runs that tree's *server*; the client is always this tree's (``Client`` is imported
from here). ``--wire bytes`` streams what ``Client.push`` sends (``wire.batch_to_bytes``) instead of
protobuf messages; this tree's client passes bytes through.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, timed_threads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from telesketch import wire  # noqa: E402
from telesketch.client import Client  # noqa: E402
from telesketch.packets import PacketBatch  # noqa: E402

SKETCHES = {
    "gapfilter_ao": {"gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024}},
    "hiddensketch": {"hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4}},
    "residualsketch": {"hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "phi": 1e-3,
                               "expected_packets": 2_500_000}},
    "llmsketch": {"flows": {"kind": "llmsketch", "memory_bytes": 400 * 1024, "task": "flow_size",
                            "estimator": "constant"}},
}
ALL = {k: v for d in SKETCHES.values() for k, v in d.items()}
#: The LM estimator (the shipped MiniLM head) scores new flows on a background thread (the packet path
#: uses a provisional score until then), so these rows measure what the model costs ingest.
LM = {"kind": "llmsketch", "memory_bytes": 400 * 1024, "task": "flow_size", "estimator": "lm"}
#: The default estimator (``auto`` = the shipped trees), scored in the packet path: issue 21's "(c) with
#: the default estimator" is ``all_trees``.
TREES = {**LM, "estimator": "trees"}
#: ``llmsketch_trees`` with its flow-score cache charged to its 400 KiB (issue #19 row 7): the cache takes
#: the default share (``scorer_share`` 0.1: 1,240 flows), the sketch the rest (``scoring.charged_split``).
#: ``..._charged_9mb``: charged too, with a cache that holds this traffic's ~140 k flows (2^18 entries,
#: 8.25 MiB) beside a 400 KiB sketch part, so ``memory_bytes`` is the 8.6 MiB total.
TREES_CHARGED = {**TREES, "scorer_memory": "charged"}
TREES_CHARGED_9MB = {**TREES, "memory_bytes": 400 * 1024 + 33 * (1 << 18), "scorer_memory": "charged",
                     "cache_flows": 1 << 18}
CONFIGS = {"none": {}, **SKETCHES, "all": ALL, "llmsketch_lm": {"flows": LM}, "all_lm": {**ALL, "flows": LM},
           "llmsketch_trees": {"flows": TREES}, "all_trees": {**ALL, "flows": TREES},
           "llmsketch_trees_charged": {"flows": TREES_CHARGED}, "llmsketch_trees_charged_9mb": {"flows": TREES_CHARGED_9MB}}


WITH_HEADER = False
#: ``--wire``: "messages" (protobuf messages the client serializes per batch) or "bytes" (the
#: serialized batches ``Client.push`` sends, ``wire.batch_to_bytes``: passed through as they are)
WIRE = "messages"
#: cores the server and the clients share (the ``bound_mpps`` column: cores over CPU seconds per packet)
CORES = os.cpu_count() or 1


def make_messages(total: int, batch_size: int, seed: int = 0) -> list:
    """Zipf traffic in one epoch, encoded once (the client only serialises). Without
    ``--with-header`` the optional 40-byte ``header`` block is not sent (collectors that feed no
    learned estimator), which halves the bytes per packet."""
    rng = np.random.default_rng(seed)
    n = batch_size * 16  # 16 distinct batches, cycled
    flow = (rng.zipf(1.1, n) % 200_000).astype(np.int64)
    batch = PacketBatch.from_columns(
        ts_ns=np.full(n, 1_700_000_000 * 10**9, np.uint64), src_ip=(0x0A000000 + flow * 7919 % (1 << 24)).astype(np.uint32),
        dst_ip=(0xC0A80000 + flow % 4096).astype(np.uint32), src_port=(flow % 60000 + 1024).astype(np.uint16),
        dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8),
        ip_id=rng.integers(0, 65536, n).astype(np.uint16), length=np.full(n, 800, np.uint16))
    parts = batch.split(batch_size)
    count = max(1, total // batch_size)
    # IPv4 only, so schema 1: the same bytes a schema-2 sender writes (it leaves the IPv6 fields out)
    # and what a --compare-with tree older than schema 2 reads
    if WIRE == "bytes":  # what Client.push sends: wire.batch_to_bytes, all-zero optional columns left out
        raw = [wire.batch_to_bytes(p, schema_version=1) for p in parts]
        return [raw[i % len(raw)] for i in range(count)]
    messages = [wire.batch_to_message(p, schema_version=1) for p in parts]
    if not WITH_HEADER:
        for m in messages:
            m.ClearField("header")
            m.ClearField("hdr_len")
    return [messages[i % len(messages)] for i in range(count)]


def start_server(sketches: dict, data_dir: str, wal: bool, shards: int = 1, sketch_threads: int = 0,
                 code: Path | None = None):
    """``telesketch serve`` from this tree, or from the tree ``code`` (``--compare-with``)."""
    server = {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": data_dir,
              "epoch_seconds": 3600.0, "wal": wal, "queue_batches": 8, "shards": shards}
    if sketch_threads:  # 0 is the default: left out, so an older tree without the setting runs too
        server["sketch_threads"] = sketch_threads
    cfg = {"server": server, "sketches": sketches}
    path = Path(data_dir) / "config.json"
    path.write_text(json.dumps(cfg))
    root = REPO if code is None else code
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "serve", "--config", str(path),
                             "--log-level", "warning"], stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    line = proc.stdout.readline()
    if not line.startswith("telesketch serving"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line}")
    port = int(line.split()[2].split("=")[1])
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(name: str, batch_size: int, total: int, wal: bool, clients: int = 1, shards: int = 1,
        sketch_threads: int = 0, code: Path | None = None) -> dict:
    messages = make_messages(total // clients, batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        proc, port = start_server(CONFIGS[name], tmp, wal, shards, sketch_threads, code)
        try:
            warm = Client(f"127.0.0.1:{port}")
            warm.push_messages(messages[:2])  # JIT caches loaded, sketches touched
            rss_before = peak_rss_mib(proc.pid)
            cpu_before = cpu_seconds(proc.pid)
            client_before = time.process_time()
            results = []

            def stream():
                with Client(f"127.0.0.1:{port}") as c:
                    results.append(c.push_messages(messages).applied_packets)

            seconds = timed_threads(stream, clients)
            server_cpu = cpu_seconds(proc.pid) - cpu_before
            client_cpu = time.process_time() - client_before  # this process runs only the clients meanwhile
            packets = sum(results)
            return {"code": "this tree" if code is None else str(code), "config": name, "shards": shards, "sketch_threads": sketch_threads, "batch": batch_size,
                    "clients": clients, "packets": packets,
                    "seconds": round(seconds, 3), "mpps": round(packets / seconds / 1e6, 2),
                    "server_cpu_s": round(server_cpu, 2),
                    "mpps_per_server_cpu": round(packets / max(server_cpu, 1e-9) / 1e6, 2),
                    "client_cpu_s": round(client_cpu, 2),
                    # server and clients share the machine's cores: at most this many packets/s
                    # if both kept their CPU cost per packet and had every core to themselves
                    "bound_mpps": round(CORES * packets / max(server_cpu + client_cpu, 1e-9) / 1e6, 2),
                    "peak_rss_mib": round(peak_rss_mib(proc.pid), 1), "rss_after_warmup_mib": round(rss_before, 1)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=4_000_000, help="packets per measurement")
    ap.add_argument("--wal", action="store_true", help="write-ahead log on (the default service setting)")
    ap.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    ap.add_argument("--batch-sizes", default="8192,65536")
    ap.add_argument("--with-header", action="store_true", help="also send the 40-byte header block")
    ap.add_argument("--shards", default="1", help="comma-separated shard counts (>1: Ray actors)")
    ap.add_argument("--sketch-threads", default="0", help="comma-separated sketch_threads (0: the cores, 1: serial)")
    ap.add_argument("--clients", default="1", help="comma-separated client counts for every row")
    ap.add_argument("--compare-with", type=Path, default=None,
                    help="another source tree (e.g. `git archive` of main): each row also runs its server, interleaved")
    ap.add_argument("--wire", choices=("messages", "bytes"), default="messages",
                    help="what the clients stream: protobuf messages (serialized per batch) or the bytes "
                         "Client.push sends (wire.batch_to_bytes: zero columns, the header, left out)")
    args = ap.parse_args()
    global WITH_HEADER, WIRE
    WITH_HEADER = args.with_header
    WIRE = args.wire
    print(f"# {machine()}; wal={'on' if args.wal else 'off'}; header={'sent' if args.with_header else 'not sent'}; wire={args.wire}; command: "
          f"{' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    rows = []
    for shards in map(int, args.shards.split(",")):
        for name in args.only.split(","):
            for size in map(int, args.batch_sizes.split(",")):
                for clients in map(int, args.clients.split(",")):
                    for threads in map(int, args.sketch_threads.split(",")):
                        for code in ([args.compare_with] if args.compare_with else []) + [None]:
                            if code is not None and threads:
                                continue  # an older tree runs its own (serial) pipeline only
                            row = run(name, size, args.packets, args.wal, clients=clients, shards=shards,
                                      sketch_threads=threads, code=code)
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    if "all" in args.only.split(",") and args.clients == "1":
        row = run("all", 65536, args.packets, args.wal, clients=8)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| code | config | shards | sketch_threads | batch | clients | M packets/s | M packets per server CPU-second "
          f"| client CPU s | bound on {CORES} cores, M packets/s | peak server RSS MiB |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['config']} | {r['shards']} | {r['sketch_threads']} | {r['batch']} | {r['clients']} | "
              f"{r['mpps']} | {r['mpps_per_server_cpu']} | {r['client_cpu_s']} | {r['bound_mpps']} | {r['peak_rss_mib']} |")
    print(f"# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
