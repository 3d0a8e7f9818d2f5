"""ResidualSketch / CocoSketch benchmark: accuracy at the spec's reference configurations and throughput.

Reproduces specs/residualsketch.md §8 on the synthetic workloads of ``tools/residualsketch_gen.py``
(generated once into ``--cache``), prints each figure beside the reference figure, and the command
that reproduces it:

    .venv/bin/python benchmarks/bench_residualsketch.py                 # everything (~5-10 min, 2 cores)
    .venv/bin/python benchmarks/bench_residualsketch.py --sections throughput
    .venv/bin/python benchmarks/bench_residualsketch.py --sections accuracy --quick
    .venv/bin/python benchmarks/bench_residualsketch.py --sections hard          # issue 20's hard mix

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
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch

GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "residualsketch_gen.py"
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
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
    if read_capture is not None:
        return np.concatenate([b.src_ip for b in read_capture(str(path))])
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TELESKETCH_CACHE", "/tmp/telesketch-bench-cache")) / "residualsketch")
    ap.add_argument("--packets", type=int, default=8_000_000, help="packets per synthetic workload (reference: 8M)")
    ap.add_argument("--seeds", type=int, default=3, help="sketch seeds averaged per configuration")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs (best is reported)")
    ap.add_argument("--sections", default="accuracy,throughput,traces")
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    ap.add_argument("--json", type=Path, help="write every figure (per-layer F1 included) here")
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
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
