#!/usr/bin/env python3
"""Per-batch cost of the four-sketch path (bench_ingest's ``all`` configuration) piece by piece, in
microseconds of CPU per batch, in one process (issue 21 (c) at 8 Ki batches).

Rows (median over ``--rounds`` rounds of ``--batches`` batches each; the traffic is bench_ingest's):

* ``update_parts, concurrency N``: ``SketchSet.update_parts`` of the four sketches, process CPU
  (both threads) and wall time per batch; concurrency 2 is what a 2-core server runs;
* ``sketch NAME``: that sketch alone through ``update_parts`` (serial), thread CPU;
* ``fixed part``: the same rows on a 64-packet batch, which is almost all per-batch cost (glue,
  allocation, ~10 Numba dispatches per sketch); ``x 64 / 8192`` of the 8 Ki per-packet cost is
  left in it;
* the pieces the brief names: the IPv4-only filtering of three sketches (``only_ipv4``), the
  Numba thread-count calls, one thread-pool round trip (``submit`` + ``result``, process CPU).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_batch_overhead.py [--batches 2000] [--rounds 3]

Run it with ``PYTHONPATH`` at another tree (e.g. ``git archive main``) to compare two trees; the
benchmark itself only uses APIs both have.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ALL, make_messages  # noqa: E402

from telesketch import wire  # noqa: E402  (the tree PYTHONPATH names)
from telesketch.service.sketchset import SketchSet  # noqa: E402

EPOCH_NS = 3600 * 10**9


def per_batch(fn, count: int, rounds: int, clock=time.process_time) -> tuple[float, float]:
    """Median (clock µs, wall µs) per call of ``fn(i)`` over ``rounds`` rounds of ``count`` calls."""
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = clock(), time.perf_counter()
        for i in range(count):
            fn(i)
        cpu.append((clock() - c0) / count * 1e6)
        wall.append((time.perf_counter() - w0) / count * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def measure(batch_size: int, batches: int, rounds: int) -> dict[str, tuple[float, float]]:
    data = [wire.message_to_batch(m) for m in make_messages(batch_size * 16, batch_size)]
    out = {}
    for conc in (1, 2):
        ss = SketchSet.from_config(ALL)
        ss.concurrency = conc
        states = ss.new_states(int(data[0].ts_ns[0]) // EPOCH_NS)
        names = [cs.name for cs in ss.active]
        run = lambda i: ss.update_parts(states, dict.fromkeys(names, data[i % 16]))  # noqa: E731
        per_batch(run, 200, 1)  # compile, load caches, fill the tables
        out[f"update_parts, concurrency {conc}"] = per_batch(run, batches, rounds)
        if conc == 1:
            for name in names:
                out[f"  sketch {name}"] = per_batch(lambda i, n=name: ss.update_parts(states, {n: data[i % 16]}),
                                                     batches, rounds, time.thread_time)
        ss.shutdown()
    return out


def pieces(batches: int, rounds: int) -> dict[str, tuple[float, float]]:
    batch = wire.message_to_batch(make_messages(8192, 8192)[0])
    pool = ThreadPoolExecutor(1)
    pool.submit(int).result()

    def threads(_):
        own = numba.get_num_threads()
        numba.set_num_threads(1)
        numba.set_num_threads(1)
        numba.set_num_threads(own)

    return {
        "only_ipv4 x 3 (IPv4-only filtering)": per_batch(lambda _: [batch.only_ipv4() for _ in range(3)], batches, rounds),
        "has_ipv6 x 1": per_batch(lambda _: batch.has_ipv6(), batches, rounds),
        "numba get/set_num_threads x 4": per_batch(threads, batches, rounds),
        "thread-pool round trip (submit + result)": per_batch(lambda _: pool.submit(int).result(), batches, rounds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import telesketch
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"# {telesketch.__file__}; {args.batches} batches x {args.rounds} rounds; cores {os.cpu_count()}; "
          f"load average before {load}")
    rows = {}
    for size in (8192, 64):
        for name, (cpu, wall) in measure(size, args.batches, args.rounds).items():
            rows[f"{name} [{size}]"] = (cpu, wall)
    rows.update(pieces(args.batches, args.rounds))
    for name, (cpu, wall) in rows.items():
        print(f"{name:52s} cpu {cpu:8.1f} us/batch  wall {wall:8.1f}")
    print(f"# load average after {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
