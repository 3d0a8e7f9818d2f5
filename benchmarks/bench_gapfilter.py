#!/usr/bin/env python3
"""GapFilter accuracy and throughput on the spec's synthetic workload (spec §9-§10).

Reproduce (generates the 2M-item trace once into the cache directory, ~1 min):

    .venv/bin/python benchmarks/bench_gapfilter.py                  # accuracy + throughput
    .venv/bin/python benchmarks/bench_gapfilter.py --skip-throughput
    .venv/bin/python benchmarks/bench_gapfilter.py --skip-accuracy --runs 5

The workload is ``python3 ../shared/tools/gapfilter_gen.py -o syn2m.txt -n 2000000 --seed 1 --truth``
(2,000,000 items, 28,770 ground-truth positives). Accuracy is precision / recall / F1 of the
per-item reports against ``exact.gap_labels`` (T1=5, T2=30, reset 10000), averaged over
``--seeds`` hash seeds (our hash differs from the reference's BOBHash64, so figures agree
statistically, not item for item), printed beside the reference figures of §10.1/§10.2.
Throughput: items per second of ``update`` over the preloaded trace in batches of
``--batch`` packets, hashing and event logging included, median of ``--runs`` runs, with one
Numba thread and with all threads; the Straw-man is measured in the same run for the ratios.

IPv6 (issue 18), ``--ipv6``: 40 % of the flows (by a hash of the 5-tuple) become IPv6 flows (the
addresses under 2001:db8::/32, one to one with the IPv4 ones, so the ground truth is unchanged)
and every SEQ is also in ``tcp_seq``. Per memory point: F1 of the IPv4-only trace, of the mixed
trace with ``seq_field="tcp_seq"`` (IPv6 flows inspected under their folded 37-byte keys; F1 of
the IPv6 and IPv4 parts), and with ``ip_id`` (IPv6 packets skipped: coverage and the IPv4 part).
``--baseline TREE``: IPv4-only Mops per CPU second (serial path, one thread) of this tree and
``TREE`` alternating in subprocesses, best of ``--runs`` rounds per tree: before/after in one run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

from common import machine

from telesketch.jit import kernel
from telesketch.packets import PacketBatch
from telesketch.sketches import exact
from telesketch.sketches.gapfilter import GapFilterAO, GapFilterSO, GapFilterStraw, keys_to_columns

GEN_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gapfilter_gen.py"
DEFAULT_CACHE = Path(os.environ.get("TELESKETCH_BENCH_CACHE", Path.home() / ".cache" / "telesketch" / "bench"))
SIZES_KB = (1, 2, 4, 8, 16, 32, 64, 128)

# Reference F1 (and PR/RR) per KiB, spec §10.1 (Straw, SO) and §10.2 (AO fix A+B = project default AO).
REF_F1 = {
    "Straw": {1: 0.7270, 2: 0.8419, 4: 0.9200, 8: 0.9655, 16: 0.9854, 32: 0.9944, 64: 0.9974, 128: 0.9988},
    "SO": {1: 0.9045, 2: 0.9556, 4: 0.9824, 8: 0.9935, 16: 0.9962, 32: 0.9971, 64: 0.9976, 128: 0.9978},
    "AO": {1: 0.8762, 2: 0.9375, 4: 0.9758, 8: 0.9929, 16: 0.9985, 32: 0.9996, 64: 0.9998, 128: 0.9998},
}
REF_MOPS = {"Straw": 23.5, "SO": 53.1, "AO": 38.5}  # §10.4, -O1 -mavx -march=native, one thread
ALGORITHMS = {"Straw": GapFilterStraw, "SO": GapFilterSO, "AO": GapFilterAO}


# ---------------------------------------------------------------------------- workload
@kernel
def _parse_ints(buf, out):
    """Parse whitespace-separated non-negative decimal integers from ``uint8`` text into ``out``."""
    k = 0
    val = 0
    in_num = False
    for i in range(buf.shape[0]):
        c = buf[i]
        if 48 <= c <= 57:
            val = val * 10 + (c - 48)
            in_num = True
        elif in_num:
            out[k] = val
            k += 1
            val = 0
            in_num = False
    if in_num:
        out[k] = val
        k += 1
    return k


def load_workload(cache: Path, items: int, seed: int) -> np.ndarray:
    """``int64[n, 15]`` rows ``b0..b12 SEQ TIME`` of the generator's trace (generated and cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    txt = cache / f"gapfilter_syn_{items}_{seed}.txt"
    npy = txt.with_suffix(".npy")
    if npy.is_file():
        return np.load(npy)
    if not txt.is_file():
        cmd = [sys.executable, str(GEN_TOOL), "-o", str(txt), "-n", str(items), "--seed", str(seed), "--truth"]
        print("generating:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    raw = np.fromfile(txt, np.uint8)
    out = np.empty(items * 15 + 15, np.int64)
    count = _parse_ints(raw, out)
    if count % 15:
        raise SystemExit(f"{txt}: {count} integers is not a multiple of 15")
    rows = out[:count].reshape(-1, 15)
    np.save(npy, rows)
    return rows


def to_batch(rows: np.ndarray) -> PacketBatch:
    cols = keys_to_columns(rows[:, :13].astype(np.uint8))
    return PacketBatch.from_columns(**cols, ip_id=rows[:, 13].astype(np.uint16),
                                    ts_ns=rows[:, 14].astype(np.uint64) * 1000)


def run_sketch(sketch, batches) -> np.ndarray:
    return np.concatenate([sketch.update(b) for b in batches])


# ---------------------------------------------------------------------------- accuracy
def accuracy(batches, truth, sizes, seeds) -> None:
    print(f"\n## Accuracy: mean over hash seeds {list(seeds)}; F1 / recall / precision; "
          "ref = spec §10.1 Straw/SO, §10.2 'AO fix A+B'")
    header = "| KiB | " + " | ".join(f"{a} F1 / RR / PR | {a} ref F1 | Δ" for a in ALGORITHMS) + " |"
    print(header)
    print("|" + "---|" * (1 + 3 * len(ALGORITHMS)))
    for kb in sizes:
        cells = [str(kb)]
        for name, cls in ALGORITHMS.items():
            accs = [exact.label_accuracy(truth, run_sketch(cls(memory_bytes=kb * 1024, seed=s), batches)) for s in seeds]
            f1, rr, pr = (float(np.mean([getattr(a, m) for a in accs])) for m in ("f1", "recall", "precision"))
            ref = REF_F1[name].get(kb)
            cells += [f"{f1:.4f} / {rr:.4f} / {pr:.4f}", "–" if ref is None else f"{ref:.4f}",
                      "–" if ref is None else f"{f1 - ref:+.4f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


# ---------------------------------------------------------------------------- IPv6 (issue 18)
def mixed_batch(batch: PacketBatch) -> PacketBatch:
    """``batch`` with 40 % of its flows turned IPv6 (addresses 2001:db8:H::a.b.c.d, one to one
    with the IPv4 ones) and the SEQ copied into ``tcp_seq`` (flows are TCP)."""
    from telesketch.hashing import hash_keys

    is6 = hash_keys(batch.flow_keys(), 18) % np.uint64(1000) < np.uint64(400)
    cols = batch.columns()

    def addr6(ip):
        out = np.zeros((len(batch), 16), np.uint8)
        out[:, :4] = (0x20, 0x01, 0x0D, 0xB8)
        out[:, 12:] = ip.astype(">u4").view(np.uint8).reshape(-1, 4)
        return np.where(is6[:, None], out, 0).astype(np.uint8)

    cols.update(src_ip6=addr6(batch.src_ip), dst_ip6=addr6(batch.dst_ip), ipv6=is6.astype(np.uint8),
                src_ip=np.where(is6, 0, batch.src_ip), dst_ip=np.where(is6, 0, batch.dst_ip),
                tcp_seq=batch.ip_id.astype(np.uint32), proto=np.full(len(batch), 6))
    return PacketBatch.from_columns(**cols)


def ipv6_accuracy(batch: PacketBatch, truth, sizes, seeds, size: int) -> None:
    mixed = mixed_batch(batch)
    v6 = mixed.ipv6.astype(bool)
    parts = mixed.split(size)
    plain = batch.split(size)
    print(f"\n## IPv6: {v6.mean():.1%} of items IPv6 (40 % of flows); F1 mean over hash seeds {list(seeds)}")
    print("| KiB | variant | IPv4-only F1 | mixed tcp_seq F1 | IPv6 part F1 | IPv4 part F1 | mixed ip_id: covered | IPv4 part F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for kb in sizes:
        for name, cls in ALGORITHMS.items():
            f = {"v4": [], "mix": [], "six": [], "four": [], "ipid4": []}
            covered = 0.0
            for seed in seeds:
                f["v4"].append(exact.label_accuracy(truth, run_sketch(cls(kb * 1024, seed=seed), plain)).f1)
                flags = run_sketch(cls(kb * 1024, seed=seed, seq_field="tcp_seq"), parts)
                f["mix"].append(exact.label_accuracy(truth, flags).f1)
                f["six"].append(exact.label_accuracy(truth[v6], flags[v6]).f1)
                f["four"].append(exact.label_accuracy(truth[~v6], flags[~v6]).f1)
                sketch = cls(kb * 1024, seed=seed)
                flags = run_sketch(sketch, parts)
                assert not flags[v6].any(), "an IPv6 gap with ip_id"
                f["ipid4"].append(exact.label_accuracy(truth[~v6], flags[~v6]).f1)
                covered = sketch.coverage()["covered_packets"] / len(mixed)
            m = {k: float(np.mean(v)) for k, v in f.items()}
            print(f"| {kb} | {name} | {m['v4']:.4f} | {m['mix']:.4f} | {m['six']:.4f} | {m['four']:.4f} | "
                  f"{covered:.1%} | {m['ipid4']:.4f} |", flush=True)


def _speed_child(cache: Path, items: int, seed: int, size: int, mem_kb: int) -> None:
    """Print this tree's IPv4-only Mops per CPU second per variant (serial path, one thread: CPU time
    is what other jobs on a shared host do not distort) as JSON."""
    import json

    nb.set_num_threads(1)
    batches = to_batch(load_workload(cache, items, seed)).split(size)
    print(json.dumps({name: time_updates(cls, batches, mem_kb, 1, False, time.process_time)
                      for name, cls in ALGORITHMS.items()}))


def before_after(baseline: Path, a) -> None:
    import json

    trees = {"before": Path(baseline).resolve(), "after": Path(__file__).resolve().parents[1]}
    best: dict[str, dict] = {k: {} for k in trees}
    for _ in range(a.runs):
        for label, tree in trees.items():
            cmd = [sys.executable, __file__, "--speed-child", "--items", str(a.items), "--gen-seed", str(a.gen_seed),
                   "--cache", str(a.cache), "--batch", str(a.batch), "--mem-kb", str(a.mem_kb)]
            out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True,
                                 text=True)
            for name, mops in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[label][name] = max(best[label].get(name, 0.0), mops)
    print(f"\n## IPv4-only Mops per CPU second before / after (this tree vs {baseline}; {a.mem_kb} KiB, one thread, "
          f"serial path, best of {a.runs} alternating rounds)")
    print("| variant | before | after | after / before |")
    print("|---|---|---|---|")
    for name in ALGORITHMS:
        b, f = best["before"][name], best["after"][name]
        print(f"| {name} | {b:.2f} | {f:.2f} | {f / b:.3f} |", flush=True)


# ---------------------------------------------------------------------------- throughput
def time_updates(cls, batches, mem_kb, runs, parallel, clock=time.perf_counter) -> float:
    """Median Mops of updating a fresh sketch over all batches (one untimed warm-up run)."""
    n = sum(len(b) for b in batches)
    rates = []
    for r in range(runs + 1):
        sketch = cls(memory_bytes=mem_kb * 1024, seed=1)
        t0 = clock()
        for b in batches:
            sketch.update(b, parallel=parallel)
        dt = clock() - t0
        if r:
            rates.append(n / dt / 1e6)
    return float(np.median(rates))


def throughput(batches, mem_kb, runs) -> None:
    """Rows: 1 thread with the fused serial loop, 1 thread with the bucket-partitioned path, and
    all threads with the partitioned path (the Straw-man is serial in every row)."""
    max_threads = nb.config.NUMBA_NUM_THREADS
    print(f"\n## Throughput (Mops, {mem_kb} KiB, batches of {len(batches[0])}, median of {runs}, "
          "hashing and event log included)")
    print("| threads | SO/AO path | Straw | SO | AO | SO / Straw | AO / Straw | SO / ref 53.1 | AO / ref 38.5 "
          "| Straw / ref 23.5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [(1, False), (1, True)] + ([(max_threads, True)] if max_threads > 1 else [])
    for threads, parallel in rows:
        nb.set_num_threads(threads)
        mops = {name: time_updates(cls, batches, mem_kb, runs, parallel) for name, cls in ALGORITHMS.items()}
        print(f"| {threads} | {'partitioned' if parallel else 'serial'} | {mops['Straw']:.1f} | {mops['SO']:.1f} | "
              f"{mops['AO']:.1f} | {mops['SO'] / mops['Straw']:.2f}x | {mops['AO'] / mops['Straw']:.2f}x | "
              f"{mops['SO'] / REF_MOPS['SO']:.2f}x | {mops['AO'] / REF_MOPS['AO']:.2f}x | "
              f"{mops['Straw'] / REF_MOPS['Straw']:.2f}x |", flush=True)
    nb.set_num_threads(max_threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2_000_000)
    p.add_argument("--gen-seed", type=int, default=1)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--batch", type=int, default=65536, help="packets per update call")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_KB), help="memory points, KiB")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="hash seeds averaged for accuracy")
    p.add_argument("--mem-kb", type=int, default=64, help="memory for the throughput runs, KiB")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--ipv6", action="store_true", help="add the IPv6 accuracy table (mixed traffic, 40 %% of flows)")
    p.add_argument("--baseline", type=Path, help="tree to compare IPv4-only Mops against (e.g. ../main)")
    p.add_argument("--speed-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.speed_child:
        _speed_child(a.cache, a.items, a.gen_seed, a.batch, a.mem_kb)
        return

    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print("machine:", machine())
    rows = load_workload(a.cache, a.items, a.gen_seed)
    batch = to_batch(rows)
    batches = batch.split(a.batch)
    t0 = time.perf_counter()
    truth = exact.gap_labels(batch.flow_keys(), batch.ip_id)
    print(f"workload: {len(batch)} items, {len(np.unique(batch.flow_keys_void()))} flows, "
          f"{int(truth.sum())} ground-truth positives ({truth.mean():.2%}; spec: 28,770), "
          f"labels in {time.perf_counter() - t0:.1f}s")
    for cls in ALGORITHMS.values():  # compile / load the kernels outside the timings
        cls(memory_bytes=4096).update(batches[0], parallel=False)
        cls(memory_bytes=4096).update(batches[0], parallel=True)
    if not a.skip_accuracy:
        accuracy(batches, truth, a.sizes, a.seeds)
    if a.ipv6:
        ipv6_accuracy(batch, truth, a.sizes, a.seeds, a.batch)
    if a.baseline:
        before_after(a.baseline, a)
    if not a.skip_throughput:
        throughput(batches, a.mem_kb, a.runs)
        print("load average after:", " ".join(open("/proc/loadavg").read().split()[:3]))


if __name__ == "__main__":
    main()
