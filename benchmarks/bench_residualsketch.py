"""ResidualSketch / CocoSketch benchmark: accuracy at the spec's reference configurations and throughput.

Reproduces specs/residualsketch.md §8 on the synthetic workloads of ``tools/residualsketch_gen.py``
(generated once into ``--cache``), prints each figure beside the reference figure, and the command
that reproduces it:

    .venv/bin/python benchmarks/bench_residualsketch.py                 # everything (~5-10 min, 2 cores)
    .venv/bin/python benchmarks/bench_residualsketch.py --sections throughput
    .venv/bin/python benchmarks/bench_residualsketch.py --sections accuracy --quick
    .venv/bin/python benchmarks/bench_residualsketch.py --sections hard          # issue 20's hard mix
    .venv/bin/python benchmarks/bench_residualsketch.py --sections split --seeds 3   # issue 20: split variants, every row
    .venv/bin/python benchmarks/bench_residualsketch.py --sections why --seeds 2     # issue 20: crucial layers, connection T
    .venv/bin/python benchmarks/bench_residualsketch.py --sections layout --seeds 3  # issue 20: layout "tuned", design + held-out
    .venv/bin/python benchmarks/bench_residualsketch.py --sections bitlayout --seeds 3   # issue 20 2nd pass: bit-mode layouts
    .venv/bin/python benchmarks/bench_residualsketch.py --sections fresh3 --seeds 3      # issue 20 2nd pass: fresh set 3
    .venv/bin/python benchmarks/bench_residualsketch.py --sections bitfresh --seeds 3    # issue 20 2nd pass: bit, fresh set 3
    .venv/bin/python benchmarks/bench_residualsketch.py --sections layoutspeed2 --repeats 3  # 2nd pass: layout speed
    .venv/bin/python benchmarks/bench_residualsketch.py --sections fresh4 --seeds 3      # issue 20 3rd pass: fresh set 4
    .venv/bin/python benchmarks/bench_residualsketch.py --sections fresh5 --seeds 3      # issue 20 3rd pass: fresh set 5
    .venv/bin/python benchmarks/bench_residualsketch.py --sections rules5 --seeds 3      # 3rd pass: rules 3-6, earlier rows
    .venv/bin/python benchmarks/bench_residualsketch.py --sections layoutspeed3 --repeats 3  # 3rd pass: speed vs Coco
    .venv/bin/python benchmarks/bench_residualsketch.py --sections fresh6 --seeds 3      # rule 7: fresh set 6
    .venv/bin/python benchmarks/bench_residualsketch.py --sections ipv6          # mixed IPv4/IPv6 (issue 18)
    .venv/bin/python benchmarks/bench_residualsketch.py --sections ipv4_ab --baseline-tree /tmp/base
    .venv/bin/python benchmarks/bench_residualsketch.py --sections bytes          # byte-weighted (issue 17)
    .venv/bin/python benchmarks/bench_residualsketch.py --sections batched --seeds 3   # issue 22b: GPU batched mode

Accuracy (§6 headline): HHH pairs (layer, prefix) pooled over every layer except /32 (which still
takes part in conditioning); precision, recall, F1; ARE/AAE of the unconditioned estimate over true
positives; mean over ``--seeds`` sketch seeds. Throughput: packets / seconds inside
``update_addresses`` (hashing included, query excluded), single thread, best of ``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import machine

from telesketch.sketches import exact, hierarchy
from telesketch.sketches.residual_layout import load_ratio
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch

SHARED = Path(os.environ.get("TELESKETCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GEN = SHARED / "tools" / "residualsketch_gen.py"
TRACES = SHARED / "traces"
RECORD = np.dtype([("src", "<u4"), ("dst", "<u4"), ("sp", "<u2"), ("dp", "<u2"), ("proto", "u1"), ("ts", "<u8")])
WORKLOADS = {"synth": ["--seed", "1"], "synth_inj": ["--seed", "2", "--inject", "0.2"]}
KIB = 1024

# (trace, T, memory KiB) -> reference figures of spec §8.1: (Residual F1, ARE, noConn F1, Coco F1, ARE)
BYTE_REF = {
    ("synth", 4000, 32): (0.865, 0.131, 0.850, 0.777, 0.229),
    ("synth", 4000, 64): (0.960, 0.088, 0.952, 0.873, 0.172),
    ("synth", 4000, 128): (0.983, 0.043, 0.975, 0.911, 0.113),
    ("synth", 8000, 32): (0.931, 0.136, 0.904, 0.820, 0.168),
    ("synth", 8000, 64): (0.964, 0.067, 0.935, 0.890, 0.119),
    ("synth", 8000, 128): (0.969, 0.041, 0.976, 0.919, 0.080),
    ("synth", 15000, 32): (0.896, 0.095, 0.894, 0.872, 0.133),
    ("synth_inj", 4000, 32): (0.715, 0.145, 0.662, 0.679, 0.244),
    ("synth_inj", 4000, 64): (0.921, 0.062, 0.908, 0.780, 0.167),
    ("synth_inj", 4000, 128): (0.966, 0.029, 0.958, 0.829, 0.107),
    ("synth_inj", 8000, 32): (0.922, 0.158, 0.918, 0.846, 0.197),
    ("synth_inj", 8000, 128): (0.987, 0.040, 0.981, 0.953, 0.092),
    ("synth_inj", 15000, 32): (0.850, 0.127, 0.866, 0.834, 0.157),
}
# memory-starved regime, T = 1500: (Residual F1, noConn F1, Coco F1)
STARVED_REF = {("synth", 32): (0.390, 0.207, 0.0), ("synth", 64): (0.829, 0.367, 0.767),
               ("synth_inj", 64): (0.764, 0.310, 0.635)}
# bit mode, spec §8.2: (Residual{12} F1, ARE, {12,24} F1, {8,12,24} F1, noConn F1, Coco F1, ARE)
BIT_REF = {
    ("synth", 4000, 128): (0.573, 0.055, 0.505, 0.444, 0.572, 0.512, 0.107),
    ("synth", 4000, 256): (0.681, 0.040, 0.632, 0.565, 0.655, 0.636, 0.074),
    ("synth", 4000, 512): (0.733, 0.030, 0.743, 0.678, 0.749, 0.755, 0.050),
    ("synth", 8000, 128): (0.686, 0.036, 0.641, 0.617, 0.685, 0.602, 0.080),
    ("synth", 8000, 256): (0.766, 0.023, 0.739, 0.691, 0.747, 0.716, 0.058),
    ("synth", 8000, 512): (0.853, 0.019, 0.824, 0.804, 0.830, 0.831, 0.035),
    ("synth_inj", 4000, 128): (0.552, None, 0.504, None, 0.554, 0.431, None),
    ("synth_inj", 8000, 128): (0.752, None, 0.699, None, 0.783, None, None),
}
# spec §8.3, Mpps: (mode, KiB) -> (Residual runs, noConn runs, Coco runs)
THROUGHPUT_REF = {("byte", 32): ((23.2, 23.2, 23.5), (21.6, 22.1, 22.2), (42.3, 42.5, 43.7)),
                  ("bit", 256): ((27.8, 29.6), (), (35.6, 42.2))}


# ---------------------------------------------------------------------------- workloads and truth
def load_workload(name: str, cache: Path, packets: int) -> np.ndarray:
    """Source addresses (uint32) of a generated workload, generating it into ``cache`` if needed."""
    path = cache / f"{name}_{packets}.dat"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(GEN), "--out", str(path), "--packets", str(packets), *WORKLOADS[name]]
        print("# generating:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return np.ascontiguousarray(np.fromfile(path, RECORD)["src"])


class Truth:
    """Exact per-layer counts of one address stream, and its HHH sets per threshold (cached)."""

    def __init__(self, addresses: np.ndarray, mode: str):
        self.counts = exact.prefix_counts(addresses, hierarchy.layers_for(mode))
        self._hhh: dict[float, dict] = {}

    def hhh(self, T: float) -> dict:
        if T not in self._hhh:
            self._hhh[T] = hierarchy.hhh_from_counts(self.counts, T)
        return self._hhh[T]


def score(entries, truth: Truth, T: float, include_32: bool = False) -> dict:
    """§6 headline metrics of reported HHH entries (pooled; /32 scored only with ``include_32``)."""
    scored = lambda L: include_32 or L != 32  # noqa: E731
    true_set = {(p, L) for (p, L) in truth.hhh(T) if scored(L)}
    reported = {(e.prefix, e.length): e for e in entries if scored(e.length)}
    acc = exact.set_accuracy(true_set, reported)
    tp = true_set & reported.keys()
    f = {k: truth.counts[k[1]][k[0]] for k in tp}
    est = {k: reported[k].estimate for k in tp}
    cond_true = truth.hhh(T)
    cond_are = exact.are({k: cond_true[k] for k in tp}, {k: reported[k].discounted for k in tp}) if tp else 0.0
    return {"precision": acc.precision, "recall": acc.recall, "f1": acc.f1, "are": exact.are(f, est) if tp else 0.0,
            "aae": exact.aae(f, est) if tp else 0.0, "are_conditioned": cond_are,
            "reported": len(reported), "true": len(true_set)}


def per_layer_f1(entries, truth: Truth, T: float) -> dict[int, float]:
    out = {}
    for L in truth.counts:
        t = {p for (p, l) in truth.hhh(T) if l == L}
        r = {e.prefix for e in entries if e.length == L}
        if t or r:
            out[L] = round(exact.set_accuracy(t, r).f1, 3)
    return out


# ---------------------------------------------------------------------------- algorithms
def make(alg: str, mode: str, memory: int, T: int, seed: int):
    if alg == "coco":
        return CocoSketch(mode=mode, memory_bytes=memory, threshold=T, seed=seed)
    crucial = {"residual": None, "noconn": None, "k12_24": (12, 24), "k8_12_24": (8, 12, 24), "k16_24": (16, 24),
               "k24": (24,)}[alg]
    return ResidualSketch(mode=mode, memory_bytes=memory, threshold=T, seed=seed, crucial_layers=crucial,
                          connection=alg != "noconn")


def run_accuracy(addresses, truth, alg, mode, memory, T, seeds) -> dict:
    runs = []
    for seed in range(seeds):
        sketch = make(alg, mode, memory, T, seed)
        sketch.update_addresses(addresses)
        entries = sketch.hhh_entries()
        result = score(entries, truth, T)
        result["f1_with_32"] = score(entries, truth, T, include_32=True)["f1"]
        result["per_layer_f1"] = per_layer_f1(entries, truth, T)
        runs.append(result)
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "per_layer_f1"}
    mean["f1_runs"] = [round(r["f1"], 3) for r in runs]
    mean["per_layer_f1_seed0"] = runs[0]["per_layer_f1"]
    return mean


def fmt(value, ref=None, digits=3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return text if ref is None else f"{text} ({ref:.{digits}f})"


def accuracy_section(args, cache: Path, results: dict) -> None:
    workloads = {name: load_workload(name, cache, args.packets) for name in WORKLOADS}
    truths = {}

    def truth(name, mode):
        if (name, mode) not in truths:
            truths[(name, mode)] = Truth(workloads[name], mode)
        return truths[(name, mode)]

    byte_rows = list(BYTE_REF.items())[:: 4 if args.quick else 1]
    print("\n### Byte mode, F1 / ARE, mean of", args.seeds, "seeds (reference in parentheses)\n")
    print("| trace | T | memory | Residual F1 | Residual ARE | noConn F1 | CocoSketch F1 | CocoSketch ARE | Residual − Coco |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, T, kib), ref in byte_rows:
        row = {alg: run_accuracy(workloads[name], truth(name, "byte"), alg, "byte", kib * KIB, T, args.seeds)
               for alg in ("residual", "noconn", "coco")}
        results["byte"][f"{name} T={T} {kib}KiB"] = row
        r, n, c = row["residual"], row["noconn"], row["coco"]
        print(f"| {name} | {T} | {kib} KiB | {fmt(r['f1'], ref[0])} | {fmt(r['are'], ref[1])} | {fmt(n['f1'], ref[2])} "
              f"| {fmt(c['f1'], ref[3])} | {fmt(c['are'], ref[4])} | {r['f1'] - c['f1']:+.3f} |", flush=True)

    print("\n### Memory-starved regime, T = 1500, byte mode, F1 (reference)\n")
    print("| trace | memory | Residual | noConn | CocoSketch |")
    print("|---|---|---|---|---|")
    for (name, kib), ref in list(STARVED_REF.items())[:: 3 if args.quick else 1]:
        row = {alg: run_accuracy(workloads[name], truth(name, "byte"), alg, "byte", kib * KIB, 1500, args.seeds)
               for alg in ("residual", "noconn", "coco")}
        results["starved"][f"{name} {kib}KiB"] = row
        print(f"| {name} | {kib} KiB | {fmt(row['residual']['f1'], ref[0])} | {fmt(row['noconn']['f1'], ref[1])} "
              f"| {fmt(row['coco']['f1'], ref[2])} |", flush=True)

    print("\n### Bit mode, F1 (reference); Residual and CocoSketch also ARE\n")
    print("| trace | T | memory | Residual {12} F1 / ARE | {12,24} | {8,12,24} | noConn | CocoSketch F1 / ARE |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, T, kib), ref in list(BIT_REF.items())[:: 4 if args.quick else 1]:
        algs = ("residual", "k12_24", "k8_12_24", "noconn", "coco")
        row = {alg: run_accuracy(workloads[name], truth(name, "bit"), alg, "bit", kib * KIB, T, args.seeds) for alg in algs}
        results["bit"][f"{name} T={T} {kib}KiB"] = row
        cell = lambda alg, i: fmt(row[alg]["f1"], ref[i])  # noqa: E731
        print(f"| {name} | {T} | {kib} KiB | {cell('residual', 0)} / {fmt(row['residual']['are'], ref[1])} "
              f"| {cell('k12_24', 2)} | {cell('k8_12_24', 3)} | {cell('noconn', 4)} "
              f"| {cell('coco', 5)} / {fmt(row['coco']['are'], ref[6])} |", flush=True)


# ---------------------------------------------------------------------------- batched mode (issue 22b)
def batched_section(args, cache: Path, results: dict) -> None:
    """Spec §5's validation of the GPU twin's ``gpu_update="batched"``: F1 of exact mode against the
    batched update (its CPU emulation, :func:`telesketch.sketches.residual_batched.emulate_update`, the
    code the simulator test proves equal to the GPU twin's) at batch sizes ``--batches``, every spec
    memory point of §8.1/§8.2, mean of ``--seeds`` seeds; the spec's bar: |mean F1 difference| <= 0.02."""
    from telesketch.sketches.residual_batched import emulate_update

    workloads = {name: load_workload(name, cache, args.packets) for name in WORKLOADS}
    sizes = [int(v) for v in args.batches.split(",")]
    rows = [("byte", *key) for key in BYTE_REF] + [("bit", *key) for key in BIT_REF]
    print(f"\n### Batched vs exact ResidualSketch update, F1 (mean of {args.seeds} seeds), batches of "
          f"{', '.join(str(b) for b in sizes)} packets\n")
    print("| mode | trace | T | memory | exact F1 | " + " | ".join(f"batched {b} F1 (diff)" for b in sizes)
          + " | seeds exact / batched |")
    print("|---|---|---|---|---|" + "---|" * len(sizes) + "---|")
    truths = {}
    for mode, name, T, kib in rows[:: 4 if args.quick else 1]:
        if args.only and args.only not in f"{mode} {name} T={T} {kib}KiB":
            continue
        if (name, mode) not in truths:
            truths[(name, mode)] = Truth(workloads[name], mode)
        truth, addresses = truths[(name, mode)], workloads[name]
        exact_f1 = []
        batched_f1 = {b: [] for b in sizes}
        for seed in range(args.seeds):
            sketch = ResidualSketch(mode=mode, memory_bytes=kib * KIB, threshold=T, seed=seed)
            sketch.update_addresses(addresses)
            exact_f1.append(score(sketch.hhh_entries(), truth, T)["f1"])
            for b in sizes:
                sketch = ResidualSketch(mode=mode, memory_bytes=kib * KIB, threshold=T, seed=seed)
                for k in range(0, addresses.shape[0], b):
                    emulate_update(sketch, addresses[k:k + b], chunk=None)  # one update per b packets
                batched_f1[b].append(score(sketch.hhh_entries(), truth, T)["f1"])
        ex = float(np.mean(exact_f1))
        cells = [f"{np.mean(batched_f1[b]):.3f} ({np.mean(batched_f1[b]) - ex:+.3f})" for b in sizes]
        runs = " ".join(f"{v:.3f}" for v in exact_f1) + " / " + "; ".join(
            " ".join(f"{v:.3f}" for v in batched_f1[b]) for b in sizes)
        results.setdefault("batched", {})[f"{mode} {name} T={T} {kib}KiB"] = {
            "exact": exact_f1, **{f"batched_{b}": batched_f1[b] for b in sizes}}
        print(f"| {mode} | {name} | {T} | {kib} KiB | {ex:.3f} | " + " | ".join(cells) + f" | {runs} |", flush=True)


# ---------------------------------------------------------------------------- throughput
def throughput_section(args, cache: Path, results: dict) -> None:
    addresses = load_workload("synth", cache, args.packets)
    print(f"\n### Throughput, Mpps (update loop, hashing included), synth, T = 8000, best of {args.repeats}\n")
    print("| mode | memory | Residual | noConn | CocoSketch | Residual / Coco | reference Residual / noConn / Coco (ratio) |")
    print("|---|---|---|---|---|---|---|")
    for (mode, kib), ref in THROUGHPUT_REF.items():
        mpps = {}
        for alg in ("residual", "noconn", "coco"):
            make(alg, mode, kib * KIB, 8000, 0).update_addresses(addresses[:1000])  # compile outside timing
            best = 0.0
            for rep in range(args.repeats):
                sketch = make(alg, mode, kib * KIB, 8000, rep)
                start = time.perf_counter()
                sketch.update_addresses(addresses)
                best = max(best, addresses.size / (time.perf_counter() - start) / 1e6)
            mpps[alg] = best
        results["throughput"][f"{mode} {kib}KiB"] = mpps
        refs = [max(r) if r else None for r in ref]
        print(f"| {mode} | {kib} KiB | {mpps['residual']:.1f} | {mpps['noconn']:.1f} | {mpps['coco']:.1f} "
              f"| {mpps['residual'] / mpps['coco']:.2f} | {fmt(refs[0], digits=1)} / {fmt(refs[1], digits=1)} / "
              f"{fmt(refs[2], digits=1)} ({refs[0] / refs[2]:.2f}) |", flush=True)


# ---------------------------------------------------------------------------- real traces
def read_sources(path: Path) -> np.ndarray:
    """Source addresses of the IPv4 packets of a capture (telesketch reader, dpkt fallback)."""
    try:
        from telesketch.traces import read_capture
    except ImportError:
        read_capture = None
    if read_capture is not None:  # IPv4 rows only (an IPv6 row's src_ip is 0, not an address)
        return np.concatenate([b.src_ip[~b.ipv6.astype(bool)] for b in read_capture(str(path))])
    import dpkt  # fallback while the trace reader is not there

    out = []
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                out.append(int.from_bytes(ip.src, "big"))
    return np.array(out, np.uint32)


def traces_section(args, cache: Path, results: dict) -> None:
    print(f"\n### Real traces, byte mode, source hierarchy, F1 / ARE, mean of {args.seeds} seeds\n")
    print("| trace | packets | T (phi) | memory | Residual F1 / ARE | noConn F1 | Residual K={16,24} F1 | CocoSketch F1 / ARE | true HHH (excl. /32) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("stopddos_amp.TCP.reflection.SYNACK.pcap", "ndpi_merged_hdr128.pcap"):
        path = TRACES / name
        if not path.exists():
            print(f"| {name} | missing | | | | | | | |")
            continue
        addresses = read_sources(path)
        truth = Truth(addresses, "byte")
        for phi in (1e-2, 1e-3):
            T = max(1, int(phi * addresses.size))
            for kib in (2, 8, 32):
                row = {alg: run_accuracy(addresses, truth, alg, "byte", kib * KIB, T, args.seeds)
                       for alg in ("residual", "noconn", "k16_24", "coco")}
                results["traces"][f"{name} phi={phi} {kib}KiB"] = row
                r, n, c = row["residual"], row["noconn"], row["coco"]
                print(f"| {name} | {addresses.size} | {T} ({phi:g}) | {kib} KiB | {fmt(r['f1'])} / {fmt(r['are'])} "
                      f"| {fmt(n['f1'])} | {fmt(row['k16_24']['f1'])} | {fmt(c['f1'])} / {fmt(c['are'])} | {r['true']:.0f} |", flush=True)


# ---------------------------------------------------------------------------- hard mix (issue 20)
HARD = dict(packets=2_500_000, flows=150_000, zipf=1.0, seed=7)


def hard_section(args, cache: Path, results: dict) -> None:
    """ResidualSketch vs CocoSketch on ``generate_batch(mix="hard")``: phi = 2e-3, /0../24 scored.

    Columns: the paper's ResidualSketch (K = {16}), K = {24}, K = {16, 24}, noConn and CocoSketch,
    F1 mean of ``--seeds`` seeds, and per-layer F1 (seed 0) of the paper's version and CocoSketch,
    which shows where the paper's version loses (the layers answered from F, which has half the
    memory CocoSketch has).
    """
    from telesketch.traces import generate_batch

    addresses = np.ascontiguousarray(generate_batch(mix="hard", **HARD).src_ip)
    truth = Truth(addresses, "byte")
    T = int(2e-3 * addresses.size)
    by_layer = {L: sum(1 for (_, l) in truth.hhh(T) if l == L) for L in truth.counts}
    print(f"\n### Hard mix (generate_batch mix='hard' {HARD}), byte mode, T = {T} (phi 2e-3), "
          f"F1 mean of {args.seeds} seeds; true HHH per layer {by_layer}\n")
    print("| memory | Residual {16} (paper) | {24} | {16,24} | noConn | CocoSketch | paper − Coco | per-layer F1 paper | per-layer F1 Coco |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kib in (32, 64, 128):
        row = {alg: run_accuracy(addresses, truth, alg, "byte", kib * KIB, T, args.seeds)
               for alg in ("residual", "k24", "k16_24", "noconn", "coco")}
        results["hard"][f"{kib}KiB"] = row
        f = {alg: row[alg]["f1"] for alg in row}
        print(f"| {kib} KiB | {f['residual']:.3f} | {f['k24']:.3f} | {f['k16_24']:.3f} | {f['noconn']:.3f} | "
              f"{f['coco']:.3f} | {f['residual'] - f['coco']:+.3f} | {row['residual']['per_layer_f1_seed0']} | "
              f"{row['coco']['per_layer_f1_seed0']} |", flush=True)


# ---------------------------------------------------------------------------- issue 20: split variants
#: ResidualSketch variants beside the paper's (equal split, K = {16}): name -> constructor keywords.
SPLIT_VARIANTS = {
    "paper": {},
    "F2/3": {"split": 2 / 3},
    "F3/4": {"split": 0.75},
    "{16,24} 1/2-1/4-1/4": {"crucial_layers": (16, 24), "split": (0.5, 0.25, 0.25)},
}


#: Issue 20 hypotheses beside the paper's version: name -> (constructor keywords, promotion threshold as a function
#: of the report threshold T). "Tc" moves the Residual Connection's threshold (the HHH query still reports at T).
WHY_VARIANTS = {
    "paper": ({}, lambda T: T),
    "K={24}": ({"crucial_layers": (24,)}, lambda T: T),
    "K={16,24}": ({"crucial_layers": (16, 24)}, lambda T: T),
    "Tc=T/2": ({}, lambda T: max(1, T // 2)),
    "Tc=2T": ({}, lambda T: 2 * T),
}


def split_rows(args, cache: Path):
    """``(workload name, addresses, T, KiB)`` of every byte-mode row the benchmark scores: the hard mix,
    spec §8.1 and the starved regime on the generated traces, and the real traces at phi 1e-2 / 1e-3."""
    from telesketch.traces import generate_batch

    hard = np.ascontiguousarray(generate_batch(mix="hard", **HARD).src_ip)
    yield from (("hard", hard, int(2e-3 * hard.size), kib) for kib in (32, 64, 128))
    workloads = {name: load_workload(name, cache, args.packets) for name in WORKLOADS}
    yield from ((name, workloads[name], T, kib) for (name, T, kib) in BYTE_REF)
    yield from ((name, workloads[name], 1500, kib) for (name, kib) in STARVED_REF)
    for name in ("stopddos_amp.TCP.reflection.SYNACK.pcap", "ndpi_merged_hdr128.pcap"):
        if (TRACES / name).exists():
            addresses = read_sources(TRACES / name)
            yield from ((name.split(".")[0], addresses, max(1, int(phi * addresses.size)), kib)
                        for phi in (1e-2, 1e-3) for kib in (2, 8, 32))


def split_section(args, cache: Path, results: dict, variants=None, key: str = "split") -> None:
    """Issue 20: CocoSketch against the paper's ResidualSketch and the ``split`` variants (or ``variants``:
    name -> (keywords, promotion threshold of T)) at equal memory on every byte-mode row (F1, headline
    metric, mean of ``--seeds`` seeds)."""
    variants = variants or {name: (kwargs, lambda T: T) for name, kwargs in SPLIT_VARIANTS.items()}
    print(f"\n### ResidualSketch variants ({key}) vs CocoSketch, byte mode, F1 mean of {args.seeds} seeds\n")
    names = list(variants)
    print("| workload | T | memory | CocoSketch | " + " | ".join(f"Residual {n}" for n in names)
          + " | paper − Coco |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|")
    truths: dict[str, Truth] = {}
    for name, addresses, T, kib in split_rows(args, cache):
        truth = truths.setdefault(name, Truth(addresses, "byte"))
        f1 = {"coco": run_accuracy(addresses, truth, "coco", "byte", kib * KIB, T, args.seeds)["f1"]}
        for variant, (kwargs, promote) in variants.items():
            runs = []
            for seed in range(args.seeds):
                sketch = ResidualSketch(mode="byte", memory_bytes=kib * KIB, threshold=promote(T), seed=seed,
                                        **kwargs)
                sketch.update_addresses(addresses)
                runs.append(score(sketch.hhh_entries(T), truth, T)["f1"])
            f1[variant] = float(np.mean(runs))
        results.setdefault(key, {})[f"{name} T={T} {kib}KiB"] = f1
        print(f"| {name} | {T} | {kib} KiB | {f1['coco']:.3f} | " + " | ".join(f"{f1[n]:.3f}" for n in names)
              + f" | {f1['paper'] - f1['coco']:+.3f} |", flush=True)


# ---------------------------------------------------------------------------- issue 20: tuned layouts
#: Captures NOT used to design ``residual_layout.choose_layout``: scored on their first and second halves.
HELD_OUT = ("stopddos_amp.dns.RRSIG.fragmented.pcap", "stopddos_pkt.TCP.synflood.spoofed.pcap",
            "slips_test-cc-capture-1.pcap")


def held_out_rows():
    """``(name, addresses, T, KiB)``: each held-out capture's IPv4 sources split into halves (packet order),
    phi 1e-2 / 1e-3 of the half, 2 / 8 / 32 KiB: 36 rows with three captures."""
    for name in HELD_OUT:
        if not (TRACES / name).exists():
            print(f"# held-out capture missing: {name}", flush=True)
            continue
        addresses = read_sources(TRACES / name)
        half = addresses.size // 2
        for part, chunk in (("1st half", addresses[:half]), ("2nd half", addresses[half:])):
            chunk = np.ascontiguousarray(chunk)
            yield from ((f"{name.rsplit('.', 1)[0]} {part}", chunk, max(1, int(phi * chunk.size)), kib)
                        for phi in (1e-2, 1e-3) for kib in (2, 8, 32))


#: Generated rows that set nothing in either rule (generator settings not used anywhere else in this file):
#: name -> generate_batch keywords. Scored at phi 5e-4 / 1e-3 / 2e-3 and 16 / 32 / 128 KiB.
FRESH = {"zipf 2M/100k s21": dict(packets=2_000_000, flows=100_000, zipf=1.1, seed=21),
         "zipf0.9 1M/200k s22": dict(packets=1_000_000, flows=200_000, zipf=0.9, seed=22),
         "hard 1M/60k s23": dict(packets=1_000_000, flows=60_000, zipf=1.0, seed=23, mix="hard")}


#: Second fresh set (rule 3 was set without it): generate_batch settings, and the spec's generator (its own
#: seed and injection share, 4 M packets) as ``("gen", args)``.
FRESH2 = {"zipf1.2 3M/150k s31": dict(packets=3_000_000, flows=150_000, zipf=1.2, seed=31),
          "hard 2M/100k s32": dict(packets=2_000_000, flows=100_000, zipf=1.0, seed=32, mix="hard"),
          "zipf1.0 1.5M/300k s33": dict(packets=1_500_000, flows=300_000, zipf=1.0, seed=33),
          "spec-gen 4M s5 inj0.1": ("gen", ["--seed", "5", "--inject", "0.1"])}


def fresh_rows(cache: Path | None = None, workloads: dict | None = None, kibs=(16, 32, 128), phis=(5e-4, 1e-3, 2e-3)):
    """``(name, addresses, T, KiB)`` on :data:`FRESH` (or ``workloads``): every phi of ``phis`` x memory (``kibs``)."""
    from telesketch.traces import generate_batch

    for name, kwargs in (workloads or FRESH).items():
        if isinstance(kwargs, tuple):  # the spec's generator
            path = cache / f"fresh_{name.replace(' ', '_')}.dat"
            if not path.exists():
                cache.mkdir(parents=True, exist_ok=True)
                subprocess.run([sys.executable, str(GEN), "--out", str(path), "--packets", "4000000", *kwargs[1]],
                               check=True, stdout=subprocess.DEVNULL)
            addresses = np.ascontiguousarray(np.fromfile(path, RECORD)["src"])
        else:
            addresses = np.ascontiguousarray(generate_batch(**kwargs).src_ip)
        yield from ((name, addresses, max(1, int(phi * addresses.size)), kib)
                    for phi in phis for kib in kibs)


def tuned_sketch(memory: int, T: int, expected: int, seed: int) -> ResidualSketch:
    """``layout="tuned"`` as the service builds it (phi and packets per epoch), resolving to threshold ``T``."""
    sketch = ResidualSketch(mode="byte", memory_bytes=memory, phi=(T + 0.5) / expected, expected_packets=expected,
                            layout="tuned", seed=seed)
    assert sketch.T == T, (sketch.T, T)
    return sketch


def layout_rows(args, cache: Path, rows, label: str, results: dict) -> None:
    """CocoSketch, the paper's ResidualSketch and ``layout="tuned"`` on ``rows``: F1 mean of ``--seeds`` seeds,
    the tuned layout chosen, and the update time of the paper's version over the tuned one's (same process,
    interleaved per seed: paper, tuned, Coco; ratio of the summed ``update_addresses`` seconds)."""
    print(f"\n### {label}: ResidualSketch paper / tuned vs CocoSketch, byte mode, F1 mean of {args.seeds} seeds\n")
    print("| workload | packets | T | memory | r | tuned layout | CocoSketch | paper | tuned | paper − Coco "
          "| tuned − Coco | tuned speed / paper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    truths: dict[int, Truth] = {}
    out = results.setdefault("layout", {}).setdefault(label, {})
    warm = np.arange(1000, dtype=np.uint32)  # compile every layout's kernel (tuple of 0, 1, 2 masks) before timing
    for kw in ({}, {"crucial_layers": ()}, {"crucial_layers": (16, 24), "split": (0.5, 0.25, 0.25)}):
        ResidualSketch(mode="byte", memory_bytes=32 * KIB, threshold=100, **kw).update_addresses(warm)
    for name, addresses, T, kib in rows:
        truth = truths.setdefault(id(addresses), Truth(addresses, "byte"))
        memory, n = kib * KIB, int(addresses.size)
        f1 = {"coco": [], "paper": [], "tuned": []}
        seconds = {"paper": 0.0, "tuned": 0.0}
        for seed in range(args.seeds):
            for alg in ("paper", "tuned", "coco"):
                sketch = (ResidualSketch(mode="byte", memory_bytes=memory, threshold=T, seed=seed) if alg == "paper"
                          else tuned_sketch(memory, T, n, seed) if alg == "tuned"
                          else CocoSketch(mode="byte", memory_bytes=memory, threshold=T, seed=seed))
                start = time.perf_counter()
                sketch.update_addresses(addresses)
                if alg in seconds:
                    seconds[alg] += time.perf_counter() - start
                f1[alg].append(score(sketch.hhh_entries(T), truth, T)["f1"])
        chosen = tuned_sketch(memory, T, n, 0).params.chosen_layout
        mean = {k: float(np.mean(v)) for k, v in f1.items()}
        speed = seconds["paper"] / seconds["tuned"] if n >= 1_000_000 else None  # shorter: timer noise
        r = load_ratio(memory, T, n)  # the chooser's own r, not a copy of its formula
        out[f"{name} T={T} {kib}KiB"] = {**mean, "layout": chosen.name, "r": r, "packets": n, "speed": speed,
                                         "f1_runs": f1}
        print(f"| {name} | {n} | {T} | {kib} KiB | {r:.2f} | {chosen.name} | {mean['coco']:.3f} "
              f"| {mean['paper']:.3f} | {mean['tuned']:.3f} | {mean['paper'] - mean['coco']:+.3f} "
              f"| {mean['tuned'] - mean['coco']:+.3f} | {fmt(speed, digits=2)} |", flush=True)
    rows_ = list(out.values())
    for alg in ("paper", "tuned"):
        d = [row[alg] - row["coco"] for row in rows_]
        print(f"\n{label}, {alg}: {sum(x > 0.0005 for x in d)} rows above CocoSketch, "
              f"{sum(abs(x) <= 0.0005 for x in d)} equal (within 0.0005), {sum(x < -0.0005 for x in d)} below"
              f" (worst {min(d):+.3f}) of {len(d)}", flush=True)


def layout_speed(args, cache: Path, results: dict) -> None:
    """Mpps of each layout the chooser returns against the paper's, alternating in one process, synth, 32 KiB,
    T = 8000 (the layout is forced through ``crucial_layers`` / ``split``: the rule only picks it)."""
    addresses = load_workload("synth", cache, args.packets)
    layouts = {"paper": {}, "16-24": {"crucial_layers": (16, 24), "split": (0.5, 0.25, 0.25)},
               "flat": {"crucial_layers": ()}}
    make_ = lambda kw, seed: ResidualSketch(mode="byte", memory_bytes=32 * KIB, threshold=8000, seed=seed, **kw)  # noqa: E731
    for kw in layouts.values():
        make_(kw, 0).update_addresses(addresses[:1000])
    best = dict.fromkeys(layouts, 0.0)
    for rep in range(args.repeats):
        for name, kw in layouts.items():
            sketch = make_(kw, rep)
            start = time.perf_counter()
            sketch.update_addresses(addresses)
            best[name] = max(best[name], addresses.size / (time.perf_counter() - start) / 1e6)
    print(f"\n### Layout speed, synth {addresses.size} packets, byte 32 KiB, T = 8000, best of {args.repeats} "
          "alternating runs, Mpps\n")
    print("| layout | Mpps | / paper |")
    print("|---|---|---|")
    for name, mpps in best.items():
        print(f"| {name} | {mpps:.1f} | {mpps / best['paper']:.2f} |", flush=True)
    results.setdefault("layout", {})["speed"] = best


def layout_section(args, cache: Path, results: dict) -> None:
    """Issue 20: ``layout="tuned"`` against the paper's layout and CocoSketch on the design rows (every byte-mode
    row of ``split_rows``), the three further captures' rows (held-out for rule 1, used to set rule 2: see
    ``residual_layout``), fresh set 1 (held-out for rule 2, used to set rule 3) and fresh set 2 (held-out for
    rule 3); then the speed of each layout."""
    layout_rows(args, cache, split_rows(args, cache), "design rows (used to set the rule)", results)
    layout_rows(args, cache, held_out_rows(), "capture rows (held-out for rule 1, set rule 2)", results)
    layout_rows(args, cache, fresh_rows(), "fresh set 1 (held-out for rule 2, set rule 3)", results)
    layout_rows(args, cache, fresh_rows(cache, FRESH2), "fresh set 2 (held-out for rule 3)", results)
    layout_speed(args, cache, results)


# ---------------------------------------------------------------------------- issue 20, second pass
#: Layouts every row of the second-pass sections scores: name -> ResidualSketch keywords (None: CocoSketch).
#: "flat" is CocoSketch bucket for bucket (tests/test_residual_layout.py); it is run, not copied, so the
#: tables show it.
LAYOUT_GRID = {"coco": None, "paper": {}, "16-24": {"crucial_layers": (16, 24), "split": (0.5, 0.25, 0.25)},
               "flat": {"crucial_layers": ()}}


def bit_rows(args, cache: Path):
    """``(workload, addresses, T, KiB)`` of the benchmark's bit-mode rows (spec §8.2, :data:`BIT_REF`)."""
    workloads = {}
    for name, T, kib in BIT_REF:
        if name not in workloads:
            workloads[name] = load_workload(name, cache, args.packets)
        yield name, workloads[name], T, kib


#: Fresh set 3 (issue 20 second pass): generator settings and seeds used nowhere before, held out from every
#: rule (rule 3 and the second pass's rule 4 were both fixed before this set was first generated).
FRESH3 = {"spec-gen 4M s41": ("gen", ["--seed", "41"]),
          "spec-gen 4M s42 inj0.2": ("gen", ["--seed", "42", "--inject", "0.2"]),
          "zipf1.1 2M/120k s43": dict(packets=2_000_000, flows=120_000, zipf=1.1, seed=43),
          "hard 2M/80k s44": dict(packets=2_000_000, flows=80_000, zipf=1.0, seed=44, mix="hard")}


def layout_grid(args, rows, mode: str, label: str, results: dict, rules=()) -> None:
    """F1 (headline, mean of ``--seeds`` seeds) of every :data:`LAYOUT_GRID` layout on ``rows`` in ``mode``, the
    load ratio ``r`` and, per ``rules`` entry ``(name, choose)``, the layout that rule picks and its F1 (read from
    the forced layouts' columns: a rule only picks a layout)."""
    names = list(LAYOUT_GRID)
    rule_names = [name for name, _ in rules]
    print(f"\n### {label}: layouts vs CocoSketch, {mode} mode, F1 mean of {args.seeds} seeds\n")
    print("| workload | packets | T | memory | r | " + " | ".join(names) + " | "
          + "".join(f"{n} (pick) | " for n in rule_names) + "16-24 − Coco |")
    print("|---|---|---|---|---|" + "---|" * (len(names) + len(rule_names) + 1))
    out = results.setdefault("layout2", {}).setdefault(label, {})
    truths: dict[int, Truth] = {}
    for name, addresses, T, kib in rows:
        truth = truths.setdefault(id(addresses), Truth(addresses, mode))
        memory, n = kib * KIB, int(addresses.size)
        f1 = {}
        for layout, kw in LAYOUT_GRID.items():
            runs = []
            for seed in range(args.seeds):
                sketch = (CocoSketch(mode=mode, memory_bytes=memory, threshold=T, seed=seed) if kw is None
                          else ResidualSketch(mode=mode, memory_bytes=memory, threshold=T, seed=seed, **kw))
                sketch.update_addresses(addresses)
                runs.append(score(sketch.hhh_entries(T), truth, T)["f1"])
            f1[layout] = float(np.mean(runs))
        picks = {}
        for rule, choose in rules:
            chosen = choose(memory, T, mode, n).name
            picks[rule] = (chosen, f1["paper" if chosen == "paper" else chosen])
        r = load_ratio(memory, T, n)
        out[f"{name} T={T} {kib}KiB"] = {**f1, "r": r, "packets": n, "picks": picks}
        print(f"| {name} | {n} | {T} | {kib} KiB | {r:.2f} | " + " | ".join(f"{f1[k]:.3f}" for k in names) + " | "
              + "".join(f"{picks[k][1]:.3f} {picks[k][0]} | " for k in rule_names)
              + f"{f1['16-24'] - f1['coco']:+.3f} |", flush=True)
    rows_ = list(out.values())
    for alg in ("paper", "16-24", "flat", *rule_names):
        d = [(row["picks"][alg][1] if alg in rule_names else row[alg]) - row["coco"] for row in rows_]
        print(f"\n{label}, {alg}: {sum(x > 0.0005 for x in d)} rows above CocoSketch, "
              f"{sum(abs(x) <= 0.0005 for x in d)} equal (within 0.0005), {sum(x < -0.0005 for x in d)} below"
              f" (worst {min(d):+.3f}) of {len(d)}", flush=True)


def bit_fresh_rows(cache: Path):
    """Bit mode off the spec's generator: :data:`FRESH3`'s workloads at the bit rows' phi (5e-4, 1e-3) and
    memory points (128 / 256 / 512 KiB); no bit-mode rule was set on them."""
    for name, addresses, T, kib in fresh_rows(cache, FRESH3, (128, 256, 512)):
        if T / addresses.size < 1.5e-3:  # phi 5e-4 and 1e-3 only
            yield name, addresses, T, kib


def layout_speed_rows(args, cache: Path, results: dict) -> None:
    """Update speed of each layout against the paper's on the design rows where the two-block layout is chosen
    (rule 3's rows; rule 4 keeps those of 64 KiB and more), alternating paper / 16-24 / flat run by run in one
    process, ``--repeats`` rounds, thread CPU time, best of the rounds; one Numba thread."""
    import numba

    from telesketch.sketches.residual_layout import choose_layout

    numba.set_num_threads(1)
    layouts = {name: kw for name, kw in LAYOUT_GRID.items() if kw is not None}
    warm = np.arange(1000, dtype=np.uint32)
    for kw in layouts.values():
        ResidualSketch(mode="byte", memory_bytes=32 * KIB, threshold=100, **kw).update_addresses(warm)
    print(f"\n### Layout speed on the rows where 16-24 is chosen, best of {args.repeats} alternating rounds, "
          "thread CPU time\n")
    print("| workload | packets | T | memory | rule 3 | rule 4 | paper Mpps | 16-24 Mpps | flat Mpps "
          "| 16-24 / paper | flat / paper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, addresses, T, kib in split_rows(args, cache):
        n = int(addresses.size)
        picks = [choose_layout(kib * KIB, T, "byte", n, rule=rule).name for rule in (3, 4)]
        if "16-24" not in picks:
            continue
        best = dict.fromkeys(layouts, np.inf)
        for rep in range(args.repeats):
            for layout, kw in layouts.items():
                sketch = ResidualSketch(mode="byte", memory_bytes=kib * KIB, threshold=T, seed=rep, **kw)
                start = time.thread_time()
                sketch.update_addresses(addresses)
                best[layout] = min(best[layout], time.thread_time() - start)
        mpps = {k: n / v / 1e6 for k, v in best.items()}
        results.setdefault("layout_speed2", {})[f"{name} T={T} {kib}KiB"] = mpps
        print(f"| {name} | {n} | {T} | {kib} KiB | {picks[0]} | {picks[1]} | {mpps['paper']:.1f} | {mpps['16-24']:.1f} "
              f"| {mpps['flat']:.1f} | {mpps['16-24'] / mpps['paper']:.2f} | {mpps['flat'] / mpps['paper']:.2f} |",
              flush=True)


def second_pass_rules(numbers=(3, 4)):
    """``(name, choose(memory, T, mode, expected))`` of the rules (of ``numbers`` this tree has) a table compares."""
    from telesketch.sketches import residual_layout as rl

    return [(f"rule {k}", lambda m, T, mode, n, k=k: rl.choose_layout(m, T, mode, n, rule=k))
            for k in numbers if k in getattr(rl, "RULES", {3: None})]


# ---------------------------------------------------------------------------- issue 20, third pass
#: Fresh set 4 (issue 20 third pass): seeds 51-55 and generator settings used nowhere before; rule 5 was committed
#: before this set was first generated. Three spec-generator workloads (the generator whose coarse, /8-heavy HHHs
#: cost the two-block layout its held-out losses) and two ``generate_batch`` ones.
FRESH4 = {"spec-gen 4M s51": ("gen", ["--seed", "51"]),
          "spec-gen 4M s52 inj0.1": ("gen", ["--seed", "52", "--inject", "0.1"]),
          "spec-gen 4M s53 300k addr": ("gen", ["--seed", "53", "--flows", "300000"]),
          "zipf1.0 2M/150k s54": dict(packets=2_000_000, flows=150_000, zipf=1.0, seed=54),
          "hard 3M/150k s55": dict(packets=3_000_000, flows=150_000, zipf=1.0, seed=55, mix="hard")}
#: Fresh set 4's grid: the phi bound of rule 5 (1.5e-3) is approached from both sides (1.2e-3, 1.4e-3 / 1.7e-3),
#: and the two-block region is scored up to 256 KiB (earlier sets stopped at 128 KiB).
FRESH4_KIBS = (64, 96, 128, 256)
FRESH4_PHIS = (2.5e-4, 5e-4, 1e-3, 1.2e-3, 1.4e-3, 1.7e-3, 2e-3)


def layout_speed_vs_coco(args, cache: Path, results: dict) -> None:
    """Update speed of CocoSketch and of every layout ``tuned`` can pick (16-24, flat) and the paper's, on the
    design rows where rule 3, 4, 5 or 6 picks 16-24, and two fresh-set-5 rows where rule 6 picks it at 256 and
    512 KiB: the four alternate run by run in one process, ``--repeats`` rounds, thread CPU time, best of the
    rounds, one Numba thread; ratios to CocoSketch and to the paper's layout."""
    import numba

    from telesketch.sketches.residual_layout import choose_layout

    numba.set_num_threads(1)
    warm = np.arange(1000, dtype=np.uint32)
    for kw in LAYOUT_GRID.values():
        (CocoSketch(mode="byte", memory_bytes=32 * KIB, threshold=100) if kw is None
         else ResidualSketch(mode="byte", memory_bytes=32 * KIB, threshold=100, **kw)).update_addresses(warm)
    print(f"\n### Layout speed against CocoSketch, best of {args.repeats} alternating rounds, thread CPU time\n")
    print("| workload | packets | T | memory | rule 4 | rule 6 | Coco Mpps | paper Mpps | 16-24 Mpps | flat Mpps "
          "| 16-24 / Coco | flat / Coco | paper / Coco | 16-24 / paper | flat / paper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    extra = [row for row in fresh_rows(cache, {k: FRESH5[k] for k in ("spec-gen 4M s61", "zipf1.1 3M/200k s64")},
                                       (256, 512), (5e-4, 2.5e-4))
             if choose_layout(row[3] * KIB, row[2], "byte", row[1].size, rule=6).name == "16-24"]
    for name, addresses, T, kib in [*split_rows(args, cache), *extra]:
        n = int(addresses.size)
        picks = {rule: choose_layout(kib * KIB, T, "byte", n, rule=rule).name for rule in (3, 4, 5, 6)}
        if "16-24" not in picks.values() or n < 1_000_000:
            continue
        best = dict.fromkeys(LAYOUT_GRID, np.inf)
        for rep in range(args.repeats):
            for layout, kw in LAYOUT_GRID.items():
                sketch = (CocoSketch(mode="byte", memory_bytes=kib * KIB, threshold=T, seed=rep) if kw is None
                          else ResidualSketch(mode="byte", memory_bytes=kib * KIB, threshold=T, seed=rep, **kw))
                start = time.thread_time()
                sketch.update_addresses(addresses)
                best[layout] = min(best[layout], time.thread_time() - start)
        mpps = {k: n / v / 1e6 for k, v in best.items()}
        results.setdefault("layout_speed3", {})[f"{name} T={T} {kib}KiB"] = {**mpps, "picks": picks}
        print(f"| {name} | {n} | {T} | {kib} KiB | {picks[4]} | {picks[6]} | {mpps['coco']:.1f} | {mpps['paper']:.1f} "
              f"| {mpps['16-24']:.1f} | {mpps['flat']:.1f} | {mpps['16-24'] / mpps['coco']:.2f} "
              f"| {mpps['flat'] / mpps['coco']:.2f} | {mpps['paper'] / mpps['coco']:.2f} "
              f"| {mpps['16-24'] / mpps['paper']:.2f} | {mpps['flat'] / mpps['paper']:.2f} |", flush=True)


#: Fresh set 5 (issue 20 third pass): seeds 61-65 and settings used nowhere before; rule 6 was committed before this
#: set was first generated. Three spec-generator workloads (one with steeper /8../32 source exponents, so coarser
#: HHHs) and two ``generate_batch`` ones; the grid brackets rule 6's phi bound (7e-4) and reaches 512 KiB.
FRESH5 = {"spec-gen 4M s61": ("gen", ["--seed", "61"]),
          "spec-gen 4M s62 inj0.2": ("gen", ["--seed", "62", "--inject", "0.2"]),
          "spec-gen 4M s63 src-s 1.2..0.9": ("gen", ["--seed", "63", "--src-s", "1.2", "1.1", "1.0", "0.9"]),
          "zipf1.1 3M/200k s64": dict(packets=3_000_000, flows=200_000, zipf=1.1, seed=64),
          "hard 4M/200k s65": dict(packets=4_000_000, flows=200_000, zipf=1.0, seed=65, mix="hard")}
FRESH5_KIBS = (96, 128, 192, 256, 512)
FRESH5_PHIS = (1.25e-4, 2.5e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4)


#: Fresh set 6 (issue 20, rule 7): seeds 71-75 and settings used nowhere before; rule 7 (the paper's layout inside
#: rule 6's region) was committed before this set was first generated. Two spec-generator workloads (one with a
#: flatter /8 exponent and a 15 % injection) and three ``generate_batch`` ones (Zipf 0.95, Zipf 1.2, hard); the
#: grid brackets the region: 64 KiB (r < 8 at phi <= 7e-4: flat) to 512 KiB, phi 2.5e-4 .. 8e-4 (the bound 7e-4).
FRESH6 = {"spec-gen 4M s71": ("gen", ["--seed", "71"]),
          "spec-gen 4M s72 inj0.15 src-s 0.9..": ("gen", ["--seed", "72", "--inject", "0.15",
                                                          "--src-s", "0.9", "1.0", "1.0", "1.0"]),
          "zipf0.95 3M/250k s73": dict(packets=3_000_000, flows=250_000, zipf=0.95, seed=73),
          "zipf1.2 2M/100k s74": dict(packets=2_000_000, flows=100_000, zipf=1.2, seed=74),
          "hard 3M/120k s75": dict(packets=3_000_000, flows=120_000, zipf=1.0, seed=75, mix="hard")}
FRESH6_KIBS = (64, 128, 256, 512)
FRESH6_PHIS = (2.5e-4, 5e-4, 6e-4, 7e-4, 8e-4)


def earlier_rows(args, cache: Path):
    """``(set label, rows)`` of every byte-mode row set scored before fresh set 4 (166 rows)."""
    return [("design rows", split_rows(args, cache)), ("capture rows", held_out_rows()),
            ("fresh set 1", fresh_rows()), ("fresh set 2", fresh_rows(cache, FRESH2)),
            ("fresh set 3", fresh_rows(cache, FRESH3, (32, 64, 128)))]


# ---------------------------------------------------------------------------- IPv6 (issue 18)
IPV6_SHARE = 0.4
IPV6_PRIVACY = 0.3  # share of IPv6 hosts (by /64) whose clients use per-packet random interface ids


def ipv6_from_ipv4_structure(addresses: np.ndarray, seed: int) -> np.ndarray:
    """``uint8[n, 16]`` IPv6 sources with the hierarchy and skew of an IPv4 stream mapped onto the
    IPv6 allocation layers: ``a.b.c.d`` -> ``20aa:bb00:cc00:0dd0::/60`` style, i.e. octet ``a`` picks
    the /16, ``b`` the /32 (ISP), ``c`` the /48 (site), ``d`` the /56 (high nibble) and /64 (low
    nibble). Interface ids: ``::1`` (servers, stable) for most /64s; in ``IPV6_PRIVACY`` of them a
    fresh random id per packet (temporary addresses), so those /64s are heavy with no heavy host.
    """
    rng = np.random.default_rng(seed)
    a = (addresses >> np.uint32(24)).astype(np.uint8)
    b = (addresses >> np.uint32(16)).astype(np.uint8)
    c = (addresses >> np.uint32(8)).astype(np.uint8)
    d = addresses.astype(np.uint8)
    out = np.zeros((addresses.size, 16), np.uint8)
    out[:, 0], out[:, 1], out[:, 2], out[:, 4] = 0x20, a, b, c
    out[:, 6], out[:, 7] = d >> 4, d & 0x0F
    privacy = (((addresses * np.uint32(2654435761)) >> np.uint32(16)) % np.uint32(1000)) < IPV6_PRIVACY * 1000
    out[~privacy, 15] = 1
    out[privacy, 8:] = rng.integers(0, 256, (int(privacy.sum()), 8), dtype=np.uint8)
    return out


class Truth6:
    """Exact per-layer counts of an IPv6 stream (128-bit int prefixes) and its HHH sets."""

    def __init__(self, addresses6: np.ndarray):
        self.counts = exact.prefix_counts6(addresses6)
        self._hhh: dict[float, dict] = {}

    def hhh(self, T: float) -> dict:
        if T not in self._hhh:
            self._hhh[T] = exact.hhh_from_counts(self.counts, T, width=128)
        return self._hhh[T]


def f1_excluding_full_keys(entries, truth, T: float, full: int) -> float:
    """F1 of reported (prefix, length) pairs pooled over every layer except the full-key one."""
    true_set = {k for k in truth.hhh(T) if k[1] != full}
    return exact.set_accuracy(true_set, {(e.prefix, e.length) for e in entries if e.length != full}).f1


def ipv6_runs(alg: str, v4, v6, memory: int, memory6: int, T: int, seeds: int, crucial6=None) -> dict:
    """Mean F1 of both trees of ``seeds`` sketches fed the mixed stream (``v4`` then ``v6`` keys:
    each tree has its own packet index, so the interleaving does not change any state)."""
    f4, f6 = [], []
    for seed in range(seeds):
        if alg == "coco":
            sketch = CocoSketch(memory_bytes=memory, ipv6_memory_bytes=memory6, threshold=T, seed=seed)
        else:
            sketch = ResidualSketch(memory_bytes=memory, ipv6_memory_bytes=memory6, threshold=T, seed=seed,
                                    ipv6_crucial_layers=crucial6)
        sketch.update_addresses(v4[0])
        sketch.update_addresses6(v6[0])
        entries6 = sketch.hhh6_entries()
        f4.append(f1_excluding_full_keys(sketch.hhh_entries(), v4[1], T, 32))
        f6.append(f1_excluding_full_keys(entries6, v6[1], T, 128))
        if seed == 0:
            layers6 = per_layer_f1(entries6, v6[1], T)
    return {"f1_v4": float(np.mean(f4)), "f1_v6": float(np.mean(f6)), "per_layer_f1_v6_seed0": layers6}


def ipv6_section(args, cache: Path, results: dict) -> None:
    """Mixed traffic: 60 % the synth workload's IPv4 sources, 40 % IPv6 sources with the structure
    of the synth workload's other packets (:func:`ipv6_from_ipv4_structure`)."""
    synth = load_workload("synth", cache, args.packets)
    n6 = int(IPV6_SHARE * synth.size)
    v4 = synth[: synth.size - n6]
    v6 = ipv6_from_ipv4_structure(synth[synth.size - n6:], seed=1)
    print(f"# truth: {v4.size} IPv4 + {v6.shape[0]} IPv6 packets; IPv4-only: {synth.size}", flush=True)
    truth4, truth6, truth_only = Truth(v4, "byte"), Truth6(v6), Truth(synth, "byte")
    T = 8000
    seeds = args.seeds
    results["ipv6"] = {"T": T, "crucial": {}, "f1": {}, "memory_for_same_f1": {}}
    print(f"\n### IPv6 crucial layers, ResidualSketch, mixed synth (40 % IPv6), T = {T}, IPv6 F1 "
          f"(/0../64 scored), mean of {seeds} seeds\n")
    choices = [(), (32,), (48,), (56,), (64,), (32, 64), (48, 64), (32, 48, 64)]
    print("| IPv6 memory | " + " | ".join("{" + ",".join(map(str, k)) + "}" for k in choices) + " | CocoSketch |")
    print("|---" * (len(choices) + 2) + "|")
    layered = []
    for kib in (32, 64):
        runs = [ipv6_runs("residual", (v4[:0], truth4), (v6, truth6), KIB, kib * KIB, T, seeds, k) for k in choices]
        coco = ipv6_runs("coco", (v4[:0], truth4), (v6, truth6), KIB, kib * KIB, T, seeds)
        results["ipv6"]["crucial"][f"{kib}KiB"] = dict(zip(map(str, choices), runs), coco=coco)
        print(f"| {kib} KiB | " + " | ".join(f"{r['f1_v6']:.3f}" for r in runs) + f" | {coco['f1_v6']:.3f} |",
              flush=True)
        layered += [(kib, "{" + ",".join(map(str, k)) + "}", r["per_layer_f1_v6_seed0"])
                    for k, r in zip(choices, runs) if k in ((32,), (64,), (32, 64))]
        layered.append((kib, "CocoSketch", coco["per_layer_f1_v6_seed0"]))
    print(f"\nTrue IPv6 HHH per layer: { {L: sum(1 for k in truth6.hhh(T) if k[1] == L) for L in truth6.counts} }; "
          "per-layer F1, seed 0:\n")
    print("| IPv6 memory | crucial layers | F1 per layer |")
    print("|---|---|---|")
    for kib, name, layers in layered:
        print(f"| {kib} KiB | {name} | {layers} |")

    print(f"\n### HHH F1 on mixed traffic vs IPv4-only, T = {T}, each tree given the memory point "
          f"(IPv4 scored /0../24, IPv6 /0../64), mean of {seeds} seeds\n")
    print("| memory per tree | IPv4-only Residual | mixed: IPv4 tree | mixed: IPv6 tree | IPv4-only Coco "
          "| mixed Coco IPv4 | mixed Coco IPv6 | IPv6 memory for the IPv4-only Residual F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for kib in (32, 64, 128):
        only = {alg: ipv6_runs(alg, (synth, truth_only), (v6[:0], truth6), kib * KIB, 240, T, seeds)["f1_v4"]
                for alg in ("residual", "coco")}
        mixed = {alg: ipv6_runs(alg, (v4, truth4), (v6, truth6), kib * KIB, kib * KIB, T, seeds)
                 for alg in ("residual", "coco")}
        needed = None
        for factor in (1, 1.5, 2, 2.5, 3, 4, 6, 8):
            f6 = mixed["residual"]["f1_v6"] if factor == 1 else ipv6_runs(
                "residual", (v4[:0], truth4), (v6, truth6), KIB, int(factor * kib * KIB), T, seeds)["f1_v6"]
            if f6 >= only["residual"]:
                needed = (factor, f6)
                break
        results["ipv6"]["f1"][f"{kib}KiB"] = {"ipv4_only": only, "mixed": mixed}
        results["ipv6"]["memory_for_same_f1"][f"{kib}KiB"] = needed
        need = f"{needed[0]:g}x = {needed[0] * kib:g} KiB (F1 {needed[1]:.3f})" if needed else "> 8x"
        print(f"| {kib} KiB | {only['residual']:.3f} | {mixed['residual']['f1_v4']:.3f} | "
              f"{mixed['residual']['f1_v6']:.3f} | {only['coco']:.3f} | {mixed['coco']['f1_v4']:.3f} | "
              f"{mixed['coco']['f1_v6']:.3f} | {need} |", flush=True)


IPV4_AB_SNIPPET = """
import sys, time, numpy as np
from telesketch.packets import PacketBatch
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch
addresses = np.fromfile(sys.argv[1], np.dtype([("src", "<u4"), ("pad", "V17")]))["src"][: int(sys.argv[2])].copy()
batch = PacketBatch.from_columns(src_ip=addresses)
for name, make in (("residual", lambda s: ResidualSketch(memory_bytes=32768, threshold=8000, seed=s)),
                   ("coco", lambda s: CocoSketch(memory_bytes=32768, threshold=8000, seed=s))):
    make(0).update_addresses(addresses[:1000])
    for how in ("update_addresses", "update(batch)"):
        best = 0.0
        for rep in range(int(sys.argv[3])):
            sketch = make(rep)
            start = time.process_time()  # CPU seconds: wall time on a loaded machine times the neighbours
            sketch.update_addresses(addresses) if how == "update_addresses" else sketch.update(batch)
            best = max(best, addresses.size / (time.process_time() - start) / 1e6)
        print(name, how, best)
"""


# ---------------------------------------------------------------------------- byte-weighted (issue 17)
def read_batch(path: Path):
    """All packets of a capture as one PacketBatch (both families; ``length`` is each packet's bytes)."""
    from telesketch.packets import PacketBatch
    from telesketch.traces import read_capture

    return PacketBatch.concat(list(read_capture(str(path))))


def weighted_score(sketch, truth4: dict, layers4: dict, T: float) -> dict:
    """§6 headline (pooled, /32 excluded) of the IPv4 tree's HHH against a weighted truth."""
    true_set = {k for k in truth4 if k[1] != 32}
    reported = {(e.prefix, e.length): e for e in sketch.hhh_entries(T) if e.length != 32}
    acc = exact.set_accuracy(true_set, reported)
    tp = true_set & reported.keys()
    f = {k: layers4[k[1]][k[0]] for k in tp}
    est = {k: reported[k].estimate for k in tp}
    return {"f1": acc.f1, "are": exact.are(f, est) if tp else 0.0, "true": len(true_set)}


def bytes_section(args, cache: Path, results: dict) -> None:
    """Byte-weighted against packet-counting ResidualSketch / CocoSketch at the same memory: each
    against its own exact truth (packet counts; byte sums of the ``length`` column), T = phi x total."""
    print(f"\n### Byte-weighted (weight = \"bytes\") beside packet counting, byte mode, source hierarchy, IPv4 tree, "
          f"F1 / ARE, mean of {args.seeds} seeds\n")
    print("| trace | phi | memory | packets: Residual F1 / ARE | bytes: Residual F1 / ARE | packets: Coco F1 / ARE "
          "| bytes: Coco F1 / ARE | true HHH packets / bytes |")
    print("|---|---|---|---|---|---|---|---|")
    from telesketch.traces.generate import generate_batch

    inputs = {name: (lambda p=TRACES / name: read_batch(p)) for name in
              ("stopddos_amp.TCP.reflection.SYNACK.pcap", "ndpi_merged_hdr128.pcap")}
    inputs["generate_batch(1M, 20k flows, 30 % IPv6)"] = lambda: generate_batch(1_000_000, 20_000, seed=4,
                                                                                   ipv6_share=0.3)
    for name, load in inputs.items():
        if name.endswith(".pcap") and not (TRACES / name).exists():
            print(f"| {name} | missing | | | | | | |")
            continue
        batch = load()
        v4 = ~batch.ipv6.astype(bool)
        src, lengths = batch.src_ip[v4], batch.length[v4]
        layers = {"packets": exact.prefix_counts(src), "bytes": exact.prefix_counts(src, weights=lengths)}
        totals = {"packets": int(batch.ipv6.size), "bytes": int(batch.length.astype(np.int64).sum())}
        for phi in (1e-2, 1e-3):
            for kib in (2, 8, 32):
                cells = {}
                for weight in ("packets", "bytes"):
                    T = max(1, int(phi * totals[weight]))
                    truth = hierarchy.hhh_from_counts(layers[weight], T)
                    for alg, cls in (("residual", ResidualSketch), ("coco", CocoSketch)):
                        runs = []
                        for seed in range(args.seeds):
                            sketch = cls(memory_bytes=kib * KIB, threshold=T, seed=seed, weight=weight)
                            sketch.update(batch)
                            runs.append(weighted_score(sketch, truth, layers[weight], T))
                        cells[(weight, alg)] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
                results.setdefault("bytes", {})[f"{name} phi={phi} {kib}KiB"] = {
                    f"{w} {a}": v for (w, a), v in cells.items()}
                text = " | ".join(f"{fmt(cells[(w, a)]['f1'])} / {fmt(cells[(w, a)]['are'])}"
                                  for a in ("residual", "coco") for w in ("packets", "bytes"))
                # column order: packets Residual, bytes Residual, packets Coco, bytes Coco
                print(f"| {name} | {phi:g} | {kib} KiB | {text} | {cells[('packets', 'residual')]['true']:.0f} / "
                      f"{cells[('bytes', 'residual')]['true']:.0f} |", flush=True)
    bytes_speed(batch, args.repeats, results)


def bytes_speed(batch, repeats: int, results: dict) -> None:
    """``update(batch)`` Mpps, packets against bytes, same batch, byte mode 32 KiB, best of ``repeats``."""
    print(f"\n### update(batch) Mpps, weight packets / bytes, byte mode 32 KiB, {len(batch):,} packets "
          f"(both families), best of {repeats}\n")
    print("| sketch | packets | bytes | bytes / packets |")
    print("|---|---|---|---|")
    for alg, cls in (("residual", ResidualSketch), ("coco", CocoSketch)):
        best = {}
        for weight in ("packets", "bytes"):
            T = 8000 if weight == "packets" else 8000 * 700
            cls(memory_bytes=32 * KIB, threshold=T, weight=weight).update(batch.split(1000)[0])  # compile
            for rep_ in range(repeats):
                sketch = cls(memory_bytes=32 * KIB, threshold=T, seed=rep_, weight=weight)
                start = time.perf_counter()
                sketch.update(batch)
                best[weight] = max(best.get(weight, 0.0), len(batch) / (time.perf_counter() - start) / 1e6)
        results.setdefault("bytes_speed", {})[alg] = best
        print(f"| {alg} | {best['packets']:.1f} | {best['bytes']:.1f} | {best['bytes'] / best['packets']:.2f} |",
              flush=True)


def ipv4_ab_section(args, cache: Path, results: dict) -> None:
    """IPv4-only throughput before (``--baseline-tree``, e.g. ``git archive`` of main) and after (this
    tree), byte mode 32 KiB, alternating subprocesses (before, after, before, after, ...) in one run;
    packets per CPU second of the child (its wall time on a shared machine measured the load)."""
    if args.baseline_tree is None:
        raise SystemExit("--sections ipv4_ab needs --baseline-tree (a checkout of the code before the change)")
    load_workload("synth", cache, args.packets)
    path = cache / f"synth_{args.packets}.dat"
    trees = {"before": str(args.baseline_tree), "after": str(Path(__file__).resolve().parents[1])}
    best: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            out = subprocess.run([sys.executable, "-c", IPV4_AB_SNIPPET, str(path), str(args.ab_packets),
                                  str(args.repeats)], env={**os.environ, "PYTHONPATH": tree}, check=True,
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                alg, how, mpps = line.split(" ")
                best[(label, alg, how)] = max(best.get((label, alg, how), 0.0), float(mpps))
    print(f"\n### IPv4-only throughput before (--baseline-tree) / after (this tree), M packets per CPU second, "
          f"byte 32 KiB, synth "
          f"({args.ab_packets} packets), best of {args.rounds} x {args.repeats} alternating runs\n")
    print("| sketch | entry point | before | after | after / before |")
    print("|---|---|---|---|---|")
    for alg in ("residual", "coco"):
        for how in ("update_addresses", "update(batch)"):
            b, a = best[("before", alg, how)], best[("after", alg, how)]
            results.setdefault("ipv4_ab", {})[f"{alg} {how}"] = {"before": b, "after": a}
            print(f"| {alg} | {how} | {b:.1f} | {a:.1f} | {a / b:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TELESKETCH_CACHE", "/tmp/telesketch-bench-cache")) / "residualsketch")
    ap.add_argument("--packets", type=int, default=8_000_000, help="packets per synthetic workload (reference: 8M)")
    ap.add_argument("--seeds", type=int, default=3, help="sketch seeds averaged per configuration")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs (best is reported)")
    ap.add_argument("--sections", default="accuracy,throughput,traces")
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    ap.add_argument("--batches", default="16384,65536,1048576", help="batched: comma-separated batch sizes (packets)")
    ap.add_argument("--only", default="", help="batched: rows whose label ('byte synth_inj T=4000 32KiB') contains this")
    ap.add_argument("--json", type=Path, help="write every figure (per-layer F1 included) here")
    ap.add_argument("--baseline-tree", type=Path, help="ipv4_ab: a checkout of the code before the change")
    ap.add_argument("--rounds", type=int, default=3, help="ipv4_ab: alternating before/after rounds")
    ap.add_argument("--ab-packets", type=int, default=4_000_000, help="ipv4_ab: packets per timed run")
    args = ap.parse_args()
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# machine: {machine()}")
    results = {"byte": {}, "starved": {}, "bit": {}, "throughput": {}, "traces": {}, "hard": {}}
    sections = set(args.sections.split(","))
    if "throughput" in sections:
        throughput_section(args, args.cache, results)
    if "accuracy" in sections:
        accuracy_section(args, args.cache, results)
    if "traces" in sections:
        traces_section(args, args.cache, results)
    if "hard" in sections:
        hard_section(args, args.cache, results)
    if "ipv6" in sections:
        ipv6_section(args, args.cache, results)
    if "split" in sections:
        split_section(args, args.cache, results)
    if "layout" in sections:
        layout_section(args, args.cache, results)
    if "fresh2" in sections:
        layout_rows(args, args.cache, fresh_rows(args.cache, FRESH2), "fresh set 2 (held-out for rule 3)", results)
    if "bitlayout" in sections:
        layout_grid(args, bit_rows(args, args.cache), "bit", "bit-mode rows (spec §8.2 memory points)", results)
    if "layoutspeed2" in sections:
        layout_speed_rows(args, args.cache, results)
    if "bitfresh" in sections:
        layout_grid(args, bit_fresh_rows(args.cache), "bit", "bit mode, fresh set 3 workloads", results)
    if "fresh3" in sections:
        layout_grid(args, fresh_rows(args.cache, FRESH3, (32, 64, 128)), "byte", "fresh set 3 (held-out for every rule)", results,
                    second_pass_rules())
    if "fresh4" in sections:
        layout_grid(args, fresh_rows(args.cache, FRESH4, FRESH4_KIBS, FRESH4_PHIS), "byte",
                    "fresh set 4 (held-out for rule 5)", results, second_pass_rules((3, 4, 5)))
    if "layoutspeed3" in sections:
        layout_speed_vs_coco(args, args.cache, results)
    if "fresh5" in sections:
        layout_grid(args, fresh_rows(args.cache, FRESH5, FRESH5_KIBS, FRESH5_PHIS), "byte",
                    "fresh set 5 (held-out for rule 6)", results, second_pass_rules((4, 5, 6)))
    if "rules5" in sections:
        for label, rows in earlier_rows(args, args.cache):
            layout_grid(args, rows, "byte", f"{label}, rules 3-6", results, second_pass_rules((3, 4, 5, 6)))
        layout_grid(args, fresh_rows(args.cache, FRESH4, FRESH4_KIBS, FRESH4_PHIS), "byte", "fresh set 4, rules 3-6",
                    results, second_pass_rules((3, 4, 5, 6)))
    if "fresh6" in sections:
        layout_grid(args, fresh_rows(args.cache, FRESH6, FRESH6_KIBS, FRESH6_PHIS), "byte",
                    "fresh set 6 (held-out for rule 7)", results, second_pass_rules((6, 7)))
    if "why" in sections:
        split_section(args, args.cache, results, WHY_VARIANTS, "why")
    if "ipv4_ab" in sections:
        ipv4_ab_section(args, args.cache, results)
    if "bytes" in sections:
        bytes_section(args, args.cache, results)
    if "batched" in sections:
        batched_section(args, args.cache, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
