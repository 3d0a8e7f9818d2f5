"""What sharding on Ray does to the service's answers (and its ingest rate) on one machine.

The same traffic (``telesketch.traces.generate_batch``, one epoch) goes through ``telesketch serve``
in process (1 shard) and with its sketches on 2 and 4 Ray actors (``shards = N``), through the real
gRPC front end on loopback. Every answer is scored against the ``exact`` kind configured next to
the sketches (merged over the shards, so it is the one-process ground truth):

* heavy hitters (Hidden Sketch by source, phi 1e-4): F1;
* HHH (ResidualSketch, byte mode, phi 1e-3): F1 over (prefix, length), discounted;
* flow gaps (GapFilter-AO): F1 over (ts_ns, flow) events;
* flow sizes (LLM-Sketch, constant estimator): ARE over the 1,000 largest flows.

Each shard gets the configured ``memory_bytes``, so N shards hold N times the memory;
``--equal-memory`` gives each shard 1/N of it instead (the same total as one process).

    .venv/bin/python benchmarks/bench_sharding.py [--packets 1000000] [--flows 50000] [--shards 1,2,4]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from telesketch.client import Client  # noqa: E402
from telesketch.service.config import DEFAULT_SKETCHES, ServiceConfig  # noqa: E402
from telesketch.service.server import ServiceThread  # noqa: E402
from telesketch.sketches import exact  # noqa: E402
from telesketch.traces import generate_batch  # noqa: E402


def sketches(packets: int, shards: int = 1, equal_memory: bool = False) -> dict:
    """The default sketch set sized for an epoch of ``packets`` (Hidden Sketch's FS gate and
    ResidualSketch's T come from the expected epoch size), LLM-Sketch on the constant estimator (no
    model per actor), and ``exact``."""
    out = copy.deepcopy(DEFAULT_SKETCHES)
    out["flows"]["estimator"] = "constant"
    out["hh"]["expected_epoch_items"] = packets
    out["hhh"]["expected_packets"] = packets
    if equal_memory:
        for spec in out.values():
            spec["memory_bytes"] //= shards
    out["truth"] = {"kind": "exact", "phi": 1e-4, "hhh_phi": 1e-3}
    return out


def measure(batches, shards: int, k_flows: int, equal_memory: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        cfg = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=tmp, epoch_seconds=3600.0,
                            wal=False, shards=shards, sketches=sketches(sum(map(len, batches)), shards, equal_memory),
                            max_message_bytes=64 << 20)
        with ServiceThread(cfg) as svc:
            client = Client(f"127.0.0.1:{svc.grpc_port}", timeout=600)
            client.push(batches[:1])  # JIT caches loaded, actors warm
            start = time.perf_counter()
            summary = client.push(batches[1:])
            seconds = time.perf_counter() - start
            hh = exact.set_accuracy(dict(client.heavy_hitters(sketch="truth", phi=1e-4)),
                                    dict(client.heavy_hitters(sketch="hh")))
            hhh = exact.set_accuracy({(p, n) for p, n, _ in client.hhh(sketch="truth")},
                                     {(p, n) for p, n, _ in client.hhh(sketch="hhh")})
            gaps = exact.set_accuracy({(g.ts_ns, g.key) for g in client.flow_gaps(sketch="truth")},
                                      {(g.ts_ns, g.key) for g in client.flow_gaps(sketch="gaps")})
            top = client.top_flows(k_flows, sketch="truth")
            est = client.flow_size([k for k, _ in top], sketch="flows")
            are = float(np.mean([abs(e - c) / c for (_, c), e in zip(top, est)]))
            client.close()
    return {"shards": shards, "mpps": summary.applied_packets / seconds / 1e6, "hh": hh, "hhh": hhh, "gaps": gaps,
            "are": are}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--top", type=int, default=1000, help="flow-size ARE over this many largest flows")
    ap.add_argument("--equal-memory", action="store_true", help="each shard gets memory_bytes / shards")
    args = ap.parse_args()
    print(f"# {machine()}; command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    batch = generate_batch(packets=args.packets, flows=args.flows, seed=7)
    batches = batch.split(65536)
    rows = []
    for shards in map(int, args.shards.split(",")):
        row = measure(batches, shards, args.top, args.equal_memory)
        rows.append(row)
        print(f"shards={shards}: {row['mpps']:.2f} M packets/s", flush=True)
    memory = "each shard 1/N of the memory" if args.equal_memory else "each shard the configured memory"
    print(f"\n{len(batch):,} packets, {args.flows:,} flows (generate_batch seed 7), 64 Ki batches, {memory}\n")
    print("| shards | ingest M packets/s | HH F1 (P / R) | HHH F1 (P / R) | gaps F1 (P / R) | flow-size ARE, top "
          f"{args.top} |\n|---|---|---|---|---|---|")
    for r in rows:
        cell = lambda a: f"{a.f1:.3f} ({a.precision:.3f} / {a.recall:.3f})"  # noqa: E731
        print(f"| {r['shards']} | {r['mpps']:.2f} | {cell(r['hh'])} | {cell(r['hhh'])} | {cell(r['gaps'])} | "
              f"{r['are']:.4f} |")


if __name__ == "__main__":
    main()
