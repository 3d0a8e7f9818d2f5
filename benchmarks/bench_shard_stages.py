#!/usr/bin/env python3
"""Where a batch's time goes in the sharded path (``serve --shards N``), stage by stage, on real Ray.

A local Ray cluster (``ray.init(num_cpus=cores)``) runs ``N`` shard actors, each a
:class:`~telesketch.distributed.cluster.ShardWorker` with timers around its work, built from
bench_ingest's configuration (c) (all four sketches, LLM-Sketch on the constant estimator). This
process plays the front end's worker thread: it takes pre-decoded batches of bench_ingest's
traffic (header block not sent) and hands each to the shards the way
:class:`~telesketch.distributed.service.ShardPool` does. No gRPC, no log: only the shard path.

Stages per batch, each as thread CPU time and wall time (``ms / batch`` and ``ns / packet``):

* front end: ``route_parts`` (scan, hashes, counting sorts, gathers); the ``.remote()`` calls
  (pickling the parts, copying them into the object store, submitting the tasks); the wait in
  ``ray.get`` until every shard has replied.
* each actor: ``ray.get`` of its parts (the object store read and unpickling; the parts travel
  as refs in a list so the actor resolves them itself and the time is its own), the sketches'
  update (``ShardWorker.update``), and the gap between the front end's submit and the actor's
  start (scheduling, queueing, the argument transfer).
* whole processes: CPU seconds of this process, of each actor process, and of the rest of Ray
  (raylet with its object store, GCS, idle workers), from ``/proc/<pid>/stat``, per packet.

``--modes`` picks how the front end hands batches over (compared in one run, alternating round by
round; ``MODES``): ``main`` as main's ``ShardPool.update`` (a ``ShardPart`` pair per shard, Numba's
default threads in the actors, the front end waits for every shard before the next batch);
``packed`` with one contiguous ``PackedParts`` buffer per shard; ``packed+1thread`` also with each
actor's kernels on one Numba thread; ``branch`` also with ``INFLIGHT_BATCHES`` batches in flight
per shard (the front end waits only for the oldest), as this branch's ``ShardPool`` does in the
service. The parts travel as refs (``ray.put``, then the actor's own ``ray.get``), so the
actor's object-store read is timed apart from its update.

Also a one-process row: the same batches through one ``SketchSet`` (concurrent, both cores), the
rate sharding has to beat.

    .venv/bin/python benchmarks/bench_shard_stages.py [--batch-sizes 8192,65536] [--packets 2000000]
        [--shards 2] [--rounds 3] [--modes main,packed,packed+1thread,branch]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import ALL, make_messages  # noqa: E402
from common import machine  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.distributed import cluster  # noqa: E402
from telesketch.service import sketchset as ss  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (Ray's GCS, raylet, workers and actors started by ``ray.init``)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


class TimedWorker(cluster.ShardWorker):
    """A ShardWorker that records, per call, when it started and what each step cost."""

    def __init__(self, specs, shard=0):
        super().__init__(specs, shard)
        self.log = []

    def pid(self) -> int:
        return os.getpid()

    def timed_update(self, refs: list, submitted: float, numba_threads: int) -> int:
        import ray

        entered = time.monotonic()
        self.numba_threads = numba_threads
        c0, w0 = time.thread_time(), time.perf_counter()
        got = ray.get(refs)
        flow, source = (got[0], got[1]) if len(got) == 2 else (got[0], None)
        c1, w1 = time.thread_time(), time.perf_counter()
        packets = self.update(flow, source)
        c2, w2 = time.thread_time(), time.perf_counter()
        self.log.append((entered - submitted, c1 - c0, w1 - w0, c2 - c1, w2 - w1, len(flow)))
        return packets

    def timed_update_shared(self, path: str, nbytes: int, n_flow: int, n_source, layout: tuple, submitted: float,
                            numba_threads: int) -> int:
        entered = time.monotonic()
        self.numba_threads = numba_threads
        c0, w0 = time.thread_time(), time.perf_counter()
        buffer = np.fromfile(path, np.uint8, count=nbytes)
        flow, source = cluster.PackedParts(n_flow, n_source, layout, buffer).parts()
        c1, w1 = time.thread_time(), time.perf_counter()
        packets = self.update(flow, source)
        c2, w2 = time.thread_time(), time.perf_counter()
        self.log.append((entered - submitted, c1 - c0, w1 - w0, c2 - c1, w2 - w1, n_flow))
        return packets

    def take_log(self) -> list:
        out, self.log = self.log, []
        return out


def one_process(batches, rounds: int) -> tuple[float, float]:
    """One SketchSet (concurrent sketches, both cores) over ``batches``: (M packets/s, best of
    ``rounds``; this process's CPU ns per packet, median)."""
    sketchset = ss.SketchSet.from_config(ALL)
    states = sketchset.new_states(0)
    sketchset.update(states, batches[0])
    best, cpu = 0.0, []
    n = sum(map(len, batches))
    for _ in range(rounds):
        start, c0 = time.perf_counter(), proc_cpu(os.getpid())
        for b in batches:
            sketchset.update(states, b)
        best = max(best, n / (time.perf_counter() - start) / 1e6)
        cpu.append((proc_cpu(os.getpid()) - c0) / n * 1e9)
    sketchset.shutdown()
    return best, float(np.median(cpu))


#: how the front end hands a batch over: (transport, Numba threads per actor update, batches in flight)
MODES = {
    "main": ("parts", 0, 1),  # main's ShardPool.update: a ShardPart pair per shard, wait for every batch
    "packed": ("packed", 0, 1),  # one contiguous PackedParts buffer per shard, through the object store
    "shm": ("shm", 0, 1),  # the same buffer through a SharedRing slot (shared memory), path passed inline
    "shm+1thread": ("shm", 1, 1),  # ... and each actor's kernels on one Numba thread
    "branch": ("shm", 1, cluster.INFLIGHT_BATCHES),  # ... and INFLIGHT_BATCHES batches in flight per shard
}


def stage_run(ray, actors, pids, others, batches, shards, by_source, mode, rings):
    """Push ``batches`` through ``actors`` as ``MODES[mode]`` says; per-stage totals (seconds) and
    process CPU seconds."""
    transport, numba_threads, inflight = MODES[mode]
    front = {"route": [0.0, 0.0], "submit": [0.0, 0.0], "wait": [0.0, 0.0]}
    cpu0 = {p: proc_cpu(p) for p in [os.getpid(), *pids, *others]}
    pending: list = []
    start = time.perf_counter()
    for batch in batches:
        c, w = time.thread_time(), time.perf_counter()
        paths = [""] * shards
        if transport == "shm":
            def slot(s, nbytes):
                paths[s], view = rings[s].take(nbytes)
                return view
            parts = [(p, None) for p in cluster.route_packed(batch, shards, cluster.ROUTE_SEED, by_source, slot)]
        elif transport == "packed":
            parts = [(p, None) for p in cluster.route_packed(batch, shards, cluster.ROUTE_SEED, by_source)]
        else:
            parts = cluster.route_parts(batch, shards, cluster.ROUTE_SEED, by_source)
        c1, w1 = time.thread_time(), time.perf_counter()
        front["route"][0] += c1 - c
        front["route"][1] += w1 - w
        refs = []
        for actor, (f, s), path in zip(actors, parts, paths):
            if transport == "shm":
                refs.append(actor.timed_update_shared.remote(path, len(f.buffer), f.n_flow, f.n_source, f.columns,
                                                             time.monotonic(), numba_threads))
            else:
                args = [ray.put(f)] + ([ray.put(s)] if s is not None else [])
                refs.append(actor.timed_update.remote(args, time.monotonic(), numba_threads))
        del parts
        c2, w2 = time.thread_time(), time.perf_counter()
        front["submit"][0] += c2 - c1
        front["submit"][1] += w2 - w1
        pending.append(refs)
        while len(pending) >= inflight + (1 if inflight > 1 else 0):
            ray.get(pending.pop(0))
        c3, w3 = time.thread_time(), time.perf_counter()
        front["wait"][0] += c3 - c2
        front["wait"][1] += w3 - w2
    c, w = time.thread_time(), time.perf_counter()
    for refs in pending:
        ray.get(refs)
    front["wait"][0] += time.thread_time() - c
    front["wait"][1] += time.perf_counter() - w
    seconds = time.perf_counter() - start
    cpu = {p: proc_cpu(p) - v for p, v in cpu0.items()}
    logs = ray.get([a.take_log.remote() for a in actors])
    return seconds, front, cpu, logs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8192,65536")
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args = ap.parse_args()
    import ray

    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    specs = cluster.shard_specs(ALL, args.shards)
    by_source = any(cluster.routed_by_source(s) for s in specs.values())
    remote = ray.remote(TimedWorker)
    actors = [remote.remote(specs, i) for i in range(args.shards)]
    ray.get([a.advance.remote(0) for a in actors])
    pids = ray.get([a.pid.remote() for a in actors])
    others = [p for p in descendants(os.getpid()) if p not in pids]
    modes = args.modes.split(",")
    rings = [cluster.SharedRing(f"bench{i}", cluster.INFLIGHT_BATCHES + 1) for i in range(args.shards)]
    for size in map(int, args.batch_sizes.split(",")):
        batches = [wire.message_to_batch(m) for m in make_messages(args.packets, size)]
        n = sum(map(len, batches))
        for mode in modes:
            stage_run(ray, actors, pids, others, batches[:4], args.shards, by_source, mode, rings)  # warm
        results = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(stage_run(ray, actors, pids, others, batches, args.shards, by_source, mode,
                                               rings))
        single, single_cpu = one_process(batches, args.rounds)
        print(f"\n## {size}-packet batches, {len(batches)} batches ({n:,} packets), {args.shards} shards; "
              f"medians of {args.rounds} alternating rounds; load {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print(f"one process (SketchSet, concurrent sketches): {single:.2f} M packets/s (best of {args.rounds}), "
              f"{single_cpu:.1f} process CPU ns/packet (median)")
        print("\n| stage | " + " | ".join(f"{m} CPU ns/packet | {m} wall ms/batch" for m in modes) + " |")
        print("|---|" + "---|---|" * len(modes))
        rows: dict[str, dict[str, tuple]] = {}
        for mode in modes:
            per = results[mode]
            med = lambda xs: float(np.median(xs))  # noqa: E731
            rows.setdefault("M packets/s (wall)", {})[mode] = (med([n / r[0] / 1e6 for r in per]), None)
            for stage in ("route", "submit", "wait"):
                rows.setdefault(f"front end: {stage}", {})[mode] = (
                    med([r[1][stage][0] for r in per]) / n * 1e9, med([r[1][stage][1] for r in per]) / len(batches) * 1e3)
            for i in range(args.shards):
                logs = [np.array(r[3][i]) for r in per]
                rows.setdefault(f"actor {i}: submit to start", {})[mode] = (
                    None, med([lg[:, 0].mean() for lg in logs]) * 1e3)
                rows.setdefault(f"actor {i}: ray.get of its parts", {})[mode] = (
                    med([lg[:, 1].sum() for lg in logs]) / n * 1e9, med([lg[:, 2].mean() for lg in logs]) * 1e3)
                rows.setdefault(f"actor {i}: sketch update", {})[mode] = (
                    med([lg[:, 3].sum() for lg in logs]) / n * 1e9, med([lg[:, 4].mean() for lg in logs]) * 1e3)
            front_pid = os.getpid()
            rows.setdefault("process CPU: front end", {})[mode] = (med([r[2][front_pid] for r in per]) / n * 1e9, None)
            for i, p in enumerate(pids):
                rows.setdefault(f"process CPU: actor {i}", {})[mode] = (med([r[2][p] for r in per]) / n * 1e9, None)
            rows.setdefault("process CPU: rest of Ray", {})[mode] = (
                med([sum(r[2][p] for p in others) for r in per]) / n * 1e9, None)
            rows.setdefault("process CPU: all", {})[mode] = (med([sum(r[2].values()) for r in per]) / n * 1e9, None)
        for name, by_mode in rows.items():
            cells = []
            for mode in modes:
                cpu, wall = by_mode.get(mode, (None, None))
                cells += [f"{cpu:.1f}" if cpu is not None else "", f"{wall:.2f}" if wall is not None else ""]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for ring in rings:
        ring.close()
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    ray.shutdown()


if __name__ == "__main__":
    main()
