"""Server CPU of one query against a filled service, and the ingest-lock hold of its open-epoch copy.

A service (in this process, the log off) takes ``--packets`` packets of the Zipf traffic of
``bench_reliability.py`` into one open epoch (its four sketches: ``gaps`` GapFilter-AO, ``hh``
Hidden Sketch, ``hhh`` ResidualSketch, ``flows`` LLM-Sketch). Then, per query kind, ``--queries``
answers are computed the way the gRPC handler does (the query engine, then the protobuf reply; for
``HeavyHitters`` also with the reply built one entry per row, as before, in the same run) and
timed with ``time.process_time`` (CPU of the whole process, so of the server alone: nothing else
runs) and wall time, per query.

``copy`` rows: the open-epoch copy a query makes under the ingest lock, now (``sketch.copy()``)
against the round trip through bytes every kind but Hidden Sketch used before
(``from_bytes(to_bytes())``), per copy, in the same run.

    cd benchmarks && python bench_query_cpu.py [--packets 1000000] [--queries 200]

Copied into an older tree's ``benchmarks/`` it measures that tree (the before of a before/after).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_reliability import ALL, batches  # noqa: E402
from common import machine  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.client import Client  # noqa: E402
from telesketch.service import server as srv  # noqa: E402
from telesketch.service.config import ServiceConfig  # noqa: E402
from telesketch.service.queries import WindowSpec  # noqa: E402


def replies(q):
    """``{name: () -> reply}``: each query kind as its gRPC handler answers it (engine + protobuf)."""
    w = WindowSpec()
    per_row = getattr(srv, "_keys_per_row", srv._keys)  # a tree before array-at-a-time replies: its only build
    return {
        "HeavyHitters hh": lambda: srv._keys(q.heavy_hitters(w, "hh")),
        "HeavyHitters hh, reply per row (before)": lambda: per_row(q.heavy_hitters(w, "hh")),
        "HierarchicalHeavyHitters hhh": lambda: srv._prefixes(q.hhh(w, "hhh", None, None, (4,))),
        "FlowGaps gaps": lambda: q.gaps(w, "gaps", 0),
        "TopFlows flows k=10": lambda: srv._keys(q.top_flows(w, 10, "flows")),
        "TopFlows flows k=1000": lambda: srv._keys(q.top_flows(w, 1000, "flows")),
    }


def per_call(fn, n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``fn`` over ``n`` calls."""
    fn()  # warm (compiles, caches)
    c, t = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c) / n * 1e3, (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets ingested before the queries")
    ap.add_argument("--queries", type=int, default=200, help="queries (and copies) timed per kind")
    args = ap.parse_args()
    print(json.dumps({"machine": machine(), "packets": args.packets, "queries": args.queries}))
    with tempfile.TemporaryDirectory(prefix="bench-qcpu-") as tmp:
        cfg = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=tmp, epoch_seconds=3600.0,
                            wal=False, sketches=ALL)
        with srv.ServiceThread(cfg) as svc:
            with Client(f"127.0.0.1:{svc.grpc_port}") as c:
                c.push_messages([wire.batch_to_message(b) for b in batches(args.packets, 8192)])
            service = svc.service
            for name, fn in replies(service.queries).items():
                cpu, wall = per_call(fn, args.queries)
                print(json.dumps({"part": "query", "query": name, "cpu_ms": round(cpu, 3), "wall_ms": round(wall, 3)}))
            manager = service.manager
            open_epoch = next(e for e in manager.window(None, None, False, 0) if not e.closed)
            for cs in manager.sketchset.sketches:
                state = open_epoch.states[cs.name]
                now, _ = per_call(lambda: cs.copy(state), args.queries)
                before, _ = per_call(lambda: type(state).from_bytes(state.to_bytes()), args.queries)
                print(json.dumps({"part": "copy", "sketch": cs.name, "kind": type(state).__name__,
                                  "copy_ms": round(now, 3), "bytes_round_trip_ms": round(before, 3),
                                  "ratio": round(before / now, 1) if now else None}))


if __name__ == "__main__":
    main()
