"""Hidden Sketch benchmark: accuracy, heavy changers, insert throughput and decode time (spec §14).

Workloads are those of the spec's reference table, produced by ``hiddensketch_gen.py`` with the
spec's arguments into a cache directory (generated on first use). One sketch per window, 4-byte
keys (bytes 0..3 of each record, the generator's little-endian ``uint32`` view), ``phi = 1e-4``,
``thresh = trunc(phi * N - 10)`` with the window's actual ``N``, default parameters otherwise.

    .venv/bin/python benchmarks/bench_hiddensketch.py                 # everything (~ a few minutes)
    .venv/bin/python benchmarks/bench_hiddensketch.py --only accuracy # one part: accuracy | small_ss |
                                                                      # changers | big | throughput | 5tuple |
                                                                      # overflow (issue 20: 0.25x..2x, hard mix) |
                                                                      # overflow_strategies (partial-decode variants)
    .venv/bin/python benchmarks/bench_hiddensketch.py --only ipv6     # issue 18: mixed traffic, 16-byte keys
    .venv/bin/python benchmarks/bench_hiddensketch.py --only v4speed --baseline ../main
    .venv/bin/python benchmarks/bench_hiddensketch.py --only bytes --seeds 1   # issue 17: by bytes vs packets
                                                                      # IPv4-only Mops: this tree vs another

IPv6 (``--only ipv6``): 40 % of the keys (by a hash of the key) become IPv6 sources (one of 256
/64s under 2001:db8::/32, a hashed interface id), window 0 of each workload. Rows: the 4-byte
sketch on the IPv4-only stream; the same memory on the mixed stream (IPv6 rows in the 16-byte
companion, 128 KiB) per family; then the whole stream as 16-byte keys (``key="src_ip6"``) over a
memory sweep: the memory a 16-byte sketch needs for the 4-byte sketch's accuracy.
``--only v4speed --baseline TREE``: ``update(batch)`` and ``update_keys`` Mops of the 4-byte
sketch at 55 KiB on IPv4-only window 0 per CPU second of the process (the insert is serial; CPU
time is what other jobs on a shared host do not distort), this tree and ``TREE`` alternating in
subprocesses (``--repeat`` rounds, best per tree): before/after ratios measured in one run.

Bytes (``--only bytes``): window 0 of each §14.1 workload at the spec's memory points, every key
given a fixed packet size ``40 + hash_u32(key, 17) % 1461`` bytes (sizes differ by source, so byte
ranks are not packet ranks); the packet sketch as above, the byte sketch (``weight="bytes"``) with
``thresh = trunc(phi * B - 10)``, ``B`` the window's bytes, scored against ``{k : bytes > phi * B}``;
both at the same ``memory_bytes`` (the byte sketch's counters are wider, so it has fewer), and the
byte sketch again with as many counters as the packet sketch (:func:`equal_counter_memory`); insert
Mops of both in the same run (ratios only).

Metrics per spec §10: P, Rec, F1 of the reported set against ``{k : f > phi * N}``; ARE and AAE
over true positives; ARE over all true keys (a miss counts 1). Throughput: items/s of
``update_keys`` over 64 Ki-item batches (hashing included), best of ``--repeat`` runs. Decode:
wall time of ``decode()`` (enumeration + FS filter + peel + report), warm kernels.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import machine

from telesketch.sketches import exact
from telesketch.sketches.hiddensketch import HiddenSketch

ROOT = Path(__file__).resolve().parent
GENERATOR = ROOT.parent.parent / "shared" / "tools" / "hiddensketch_gen.py"
DEFAULT_CACHE = ROOT / ".cache" / "hiddensketch"
BATCH = 65536
PHI = 1e-4
RECORD = np.dtype([("key", "u1", 13), ("ts", "<f8")])

WORKLOADS = {
    "zipf_a1.0": "--windows 4 --items 2500000 --universe 1000000 --skew 1.0 --drift 0.01 --seed 1",
    "zipf_a1.2": "--windows 4 --items 2500000 --universe 1000000 --skew 1.2 --drift 0.01 --seed 2",
    "zipf10m_a1.0": "--windows 1 --items 10000000 --universe 2000000 --skew 1.0 --seed 3",
    "zipf10m_a1.2": "--windows 1 --items 10000000 --universe 2000000 --skew 1.2 --seed 4",
}

# spec §14.1: (workload, KiB) -> (F1, P, Rec, ARE_TP, AAE_TP, decode s, note); None = no result
REF_ACCURACY = {
    ("zipf_a1.0", 30): None,
    ("zipf_a1.0", 40): (0.006, 0.40, 0.003, None, None, 38, "decode failed"),
    ("zipf_a1.0", 45): (0.782, 0.642, 1.0, 0.0895, 34.4, 0.52, ""),
    ("zipf_a1.0", 50): (0.829, 0.708, 1.0, 0.0760, 29.0, 0.15, ""),
    ("zipf_a1.0", 55): (0.858, 0.752, 1.0, 0.0655, 25.0, 0.10, ""),
    ("zipf_a1.0", 80): (0.934, 0.877, 1.0, 0.0369, 13.9, 0.07, ""),
    ("zipf_a1.0", 120): (0.967, 0.937, 1.0, 0.0201, 7.5, 0.03, ""),
    ("zipf_a1.2", 25): None,
    ("zipf_a1.2", 30): (0.830, 0.709, 1.0, 0.0710, 27.9, 0.13, ""),
    ("zipf_a1.2", 40): (0.937, 0.882, 1.0, 0.0352, 13.8, 0.03, ""),
    ("zipf_a1.2", 55): (0.973, 0.948, 1.0, 0.0185, 7.1, 0.02, ""),
    ("zipf_a1.2", 80): (0.986, 0.972, 1.0, 0.0094, 3.6, 0.03, ""),
    ("zipf_a1.2", 120): (0.994, 0.988, 1.0, 0.0044, 1.6, 0.02, ""),
}
# spec §14.1, smaller SS (M = 6144, bf_row_bits = 1500): (workload, KiB) -> (F1, ARE)
REF_SMALL_SS = {("zipf_a1.2", 30): (0.913, 0.045), ("zipf_a1.0", 40): (0.311, None)}
# spec §14.2: (workload, KiB) -> (F1, P, ARE_TP, AAE, Mops, decode s)
REF_BIG = {
    ("zipf10m_a1.0", 100): (0.853, 0.744, 0.0670, 103, 2.6, 0.12),
    ("zipf10m_a1.0", 150): (0.920, 0.852, 0.0395, 61, 2.9, 0.06),
    ("zipf10m_a1.0", 250): (0.961, 0.925, 0.0210, 32, 3.1, 0.05),
    ("zipf10m_a1.2", 100): (0.961, 0.925, 0.0198, 31, 1.7, 0.03),
    ("zipf10m_a1.2", 150): (0.978, 0.957, 0.0096, 15, 1.8, 0.03),
}
# spec §14.3: insert Mops of the C++ reference at 55 KiB (quiet host, -O2)
REF_MOPS = {"zipf_a1.0": (4.0, 4.6), "zipf_a1.2": (2.7, 3.1)}
# spec §14.1 heavy changers at 55 KiB: F1 range per window pair
REF_HC = {"zipf_a1.0": (0.93, 1.00), "zipf_a1.2": (0.97, 1.00)}


# ---------------------------------------------------------------------------- data
def ensure_workload(name: str, cache: Path) -> Path:
    path = cache / f"{name}.dat"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(GENERATOR), "--out", str(path), *WORKLOADS[name].split()]
        print("generating:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return path


def load_windows(path: Path) -> list[dict]:
    """Per window: ``keys4`` (``uint32[n]``), ``flows`` (``uint8[n, 13]``), and exact counts."""
    rec = np.fromfile(path, RECORD)
    window = np.floor(rec["ts"] / 10.0).astype(np.int64)
    out = []
    for w in np.unique(window):
        part = rec[window == w]
        flows = np.ascontiguousarray(part["key"])
        keys4 = np.ascontiguousarray(flows[:, :4]).view("<u4").ravel()
        out.append({"keys4": keys4, "flows": flows, "n": len(keys4)})
    return out


def truth_for(win: dict) -> tuple[dict, dict]:
    if "truth" not in win:
        counts = exact.count_dict(win["keys4"])
        limit = PHI * win["n"]
        win["truth"] = (counts, {k: c for k, c in counts.items() if c > limit})
    return win["truth"]


# ---------------------------------------------------------------------------- runs
def run_window(win: dict, memory_kib: int, **kw) -> tuple[HiddenSketch, dict]:
    keys = win["keys4"]
    thresh = max(0, int(PHI * win["n"] - 10))
    sketch = HiddenSketch(memory_bytes=memory_kib * 1024, phi=PHI, thresh=thresh, **kw)
    start = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        sketch.update_keys(keys[i:i + BATCH])
    insert_s = time.perf_counter() - start
    start = time.perf_counter()
    result = sketch.decode()
    decode_s = time.perf_counter() - start
    counts, true = truth_for(win)
    est = dict(result.items)
    acc = exact.set_accuracy(true, est)
    tp = [k for k in true if k in est]
    return sketch, {
        "f1": acc.f1, "p": acc.precision, "rec": acc.recall,
        "are_tp": exact.are(true, est, tp), "aae_tp": exact.aae(true, est, tp), "are_all": exact.are(true, est),
        "under": sum(est[k] < counts.get(k, 0) for k in est),
        "true": len(true), "reported": len(est), "ss_keys": result.n_ss_keys, "cands": result.n_candidates,
        "after_fs": result.n_after_fs, "ok": result.decode_ok, "overflow": result.overflow,
        "mops": len(keys) / insert_s / 1e6, "decode_s": decode_s,
    }


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def fmt(x, spec="{:.3f}") -> str:
    return "–" if x is None else spec.format(x)


def accuracy(cache: Path, lines: list[str], seeds: int, small_ss: bool = False) -> None:
    refs = REF_SMALL_SS if small_ss else REF_ACCURACY
    kw = dict(cm_bytes=6144, bf_row_bits=1500) if small_ss else {}
    title = "smaller SS (M = 6144, bf_row_bits = 1500)" if small_ss else "default SS (18,063 B)"
    lines += [f"\nAccuracy vs memory, {title}; mean over {seeds} hash seeds x windows (ours | reference)\n",
              "| α | KiB | F1 | F1 range over seeds | P | Rec | ARE (TP) | AAE (TP) | ARE (all) | decode ms | SS keys | cands / after FS | ok windows | ref F1 | ref P | ref ARE | ref decode s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, kib), ref in refs.items():
        windows = load_cached(name, cache)
        rows = [run_window(w, kib, seed=seed, **kw)[1] | {"seed": seed} for seed in range(seeds) for w in windows]
        per_seed = [np.mean([r["f1"] for r in rows if r["seed"] == seed]) for seed in range(seeds)]
        ok = sum(r["ok"] for r in rows)
        ovf = sum(r["overflow"] for r in rows)
        under = sum(r["under"] for r in rows)
        if small_ss:
            ref_f1, ref_are = ref
            ref_cells = [fmt(ref_f1), "", fmt(ref_are), ""]
        else:
            ref_cells = ["–", "–", "–", "–"] if ref is None else [fmt(ref[0]), fmt(ref[1]), fmt(ref[3], "{:.4f}"), fmt(ref[5], "{:.2f}")]
        alpha = name.split("_a")[1]
        lines.append(
            f"| {alpha} | {kib} | {mean(rows, 'f1'):.3f} | {min(per_seed):.3f}–{max(per_seed):.3f} | {mean(rows, 'p'):.3f} | {mean(rows, 'rec'):.3f} | "
            f"{mean(rows, 'are_tp'):.4f} | {mean(rows, 'aae_tp'):.1f} | {mean(rows, 'are_all'):.4f} | "
            f"{1e3 * mean(rows, 'decode_s'):.0f} | {mean(rows, 'ss_keys'):.0f} | "
            f"{mean(rows, 'cands'):.0f} / {mean(rows, 'after_fs'):.0f} | {ok}/{len(rows)}"
            f"{f' ({ovf} overflow)' if ovf else ''}{f' UNDERCOUNT {under}' if under else ''} | " + " | ".join(ref_cells) + " |"
        )
        print(lines[-1], flush=True)


def changers(cache: Path, lines: list[str]) -> None:
    lines += ["\nHeavy changers at 55 KiB (thr_c = phi * max(N_prev, N_now)), per window pair\n",
              "| α | pair | true changers | reported | P | Rec | F1 | ref F1 range |", "|---|---|---|---|---|---|---|---|"]
    for name in ("zipf_a1.0", "zipf_a1.2"):
        windows = load_cached(name, cache)
        sketches = [run_window(w, 55)[0] for w in windows]
        for i in range(1, len(windows)):
            true = exact.heavy_changers(windows[i - 1]["keys4"], windows[i]["keys4"], phi=PHI)
            got = dict(sketches[i].heavy_changers(sketches[i - 1]))
            acc = exact.set_accuracy(true, got)
            lo, hi = REF_HC[name]
            lines.append(f"| {name.split('_a')[1]} | {i - 1}→{i} | {len(true)} | {len(got)} | {acc.precision:.3f} | "
                         f"{acc.recall:.3f} | {acc.f1:.3f} | {lo:.2f}–{hi:.2f} |")
            print(lines[-1], flush=True)


def big(cache: Path, lines: list[str]) -> None:
    lines += ["\nOne 10 M-item window, 16-bit FS counters (thresh = 990)\n",
              "| α | KiB | F1 | P | Rec | ARE (TP) | AAE | insert Mops | decode ms | ok | ref F1 | ref P | ref ARE | ref AAE | ref Mops | ref decode s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, kib), ref in REF_BIG.items():
        win = load_cached(name, cache)[0]
        r = run_window(win, kib, fs_counter_bits=16)[1]
        lines.append(
            f"| {name.split('_a')[1]} | {kib} | {r['f1']:.3f} | {r['p']:.3f} | {r['rec']:.3f} | {r['are_tp']:.4f} | "
            f"{r['aae_tp']:.0f} | {r['mops']:.1f} | {1e3 * r['decode_s']:.0f} | {r['ok']} | "
            + " | ".join([f"{ref[0]:.3f}", f"{ref[1]:.3f}", f"{ref[2]:.4f}", f"{ref[3]}", f"{ref[4]}", f"{ref[5]}"]) + " |"
        )
        print(lines[-1], flush=True)


def throughput(cache: Path, lines: list[str], repeat: int) -> None:
    lines += ["\nInsert throughput at 55 KiB (update_keys, 64 Ki batches, hashing included; best of "
              f"{repeat}) and decode time per window\n",
              "| α | ours Mops | reference Mops (spec §14.3) | ratio vs ref upper | ours decode ms (max over windows) | SS-path share |",
              "|---|---|---|---|---|---|"]
    for name in ("zipf_a1.0", "zipf_a1.2"):
        windows = load_cached(name, cache)
        best, decode_ms, share = 0.0, 0.0, []
        for _ in range(repeat):
            for w in windows:
                sketch, r = run_window(w, 55)
                best = max(best, r["mops"])
                decode_ms = max(decode_ms, 1e3 * r["decode_s"])
        for w in windows:
            s = HiddenSketch(memory_bytes=55 * 1024, phi=PHI, thresh=int(PHI * w["n"] - 10))
            s.update_keys(w["keys4"])
            share.append(float(s.cm[0].sum()) / w["n"])
        lo, hi = REF_MOPS[name]
        lines.append(f"| {name.split('_a')[1]} | {best:.1f} | {lo}–{hi} | {best / hi:.1f}x | {decode_ms:.0f} | {np.mean(share):.0%} |")
        print(lines[-1], flush=True)


def five_tuple(cache: Path, lines: list[str]) -> None:
    lines += ["\n13-byte 5-tuple keys (no reference figures; B = 8, bf_row_bits = 2200, M = 10,240), window 0\n",
              "| α | KiB | F1 | P | Rec | ARE (TP) | SS keys | cands / after FS | ok | decode ms | insert Mops |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("zipf_a1.0", "zipf_a1.2"):
        win = load_cached(name, cache)[0]
        flows = win["flows"]
        for kib in (128, 160):
            sketch = HiddenSketch(key="5tuple", memory_bytes=kib * 1024, phi=PHI, thresh=int(PHI * win["n"] - 10))
            start = time.perf_counter()
            for i in range(0, len(flows), BATCH):
                sketch.update_keys(flows[i:i + BATCH])
            mops = len(flows) / (time.perf_counter() - start) / 1e6
            start = time.perf_counter()
            res = sketch.decode()
            dec = time.perf_counter() - start
            true = exact.heavy_hitters(flows, phi=PHI)
            est = dict(res.items)
            acc = exact.set_accuracy(true, est)
            tp = [k for k in true if k in est]
            lines.append(f"| {name.split('_a')[1]} | {kib} | {acc.f1:.3f} | {acc.precision:.3f} | {acc.recall:.3f} | "
                         f"{exact.are(true, est, tp):.4f} | {res.n_ss_keys} | {res.n_candidates} / {res.n_after_fs} | "
                         f"{res.decode_ok} | {1e3 * dec:.0f} | {mops:.1f} |")
            print(lines[-1], flush=True)


# ---------------------------------------------------------------------------- overflow (issue 20)
HARD = dict(packets=2_500_000, flows=150_000, zipf=1.0, seed=7)
OVERFLOW_FACTORS = (0.25, 0.375, 0.5, 0.55, 0.6, 0.625, 0.75, 1.0, 1.5, 2.0)


def overflow(lines: list[str], target: float = 0.95, step_kib: int = 4) -> None:
    """Recall / F1 from 0.25x to 2x of the memory the hard mix needs, spec decode vs partial decode.

    Trace: ``generate_batch(mix="hard")`` (scanners, elephants, Zipf sources, hot /16 and /24),
    heavy hitters by source at ``phi = 1e-4``, default parameters (``thresh = 240``). "Needed" is
    the smallest memory on a ``step_kib`` grid from which every larger grid point's (spec) decode
    reaches F1 ``target`` (scanned from 256 KiB down).
    """
    from telesketch.traces import generate_batch

    src = np.asarray(generate_batch(mix="hard", **HARD).src_ip)
    counts = exact.count_dict(src)
    true = {k: c for k, c in counts.items() if c > PHI * len(src)}
    ss = HiddenSketch(phi=PHI).params.ss_bytes

    def run(memory: int, decodes=(("paper", False), ("partial", True))) -> dict:
        sketch = HiddenSketch(memory_bytes=memory, phi=PHI)
        for i in range(0, len(src), BATCH):
            sketch.update_keys(src[i:i + BATCH])
        out = {"load": sketch.load_factor}
        for name, partial in decodes:
            start = time.perf_counter()
            res = sketch.decode(partial=partial)
            est = dict(res.items)
            acc = exact.set_accuracy(true, est)
            out[name] = {"rec": acc.recall, "p": acc.precision, "f1": acc.f1, "reported": len(est),
                         "under": sum(est[k] < counts.get(k, 0) for k in est), "ok": res.decode_ok,
                         "overflow": res.overflow, "bounded": len(res.bounded), "s": time.perf_counter() - start}
        return out

    needed = None  # scanning down from 256 KiB: the smallest memory from which every grid point reaches the target
    for kib in range(256, 19, -step_kib):
        if run(kib * 1024, (("paper", False),))["paper"]["f1"] < target:
            break
        needed = kib * 1024
    lines += [f"\nHidden Sketch under overflow: mix='hard' {HARD}, {len(true)} true heavy sources at phi = {PHI:g}; "
              f"needed = {needed / 1024:g} KiB (from it up, every {step_kib} KiB grid point has F1 >= {target}); "
              f"the second stage alone is {ss:,} B\n",
              "| x needed | KiB | load factor | spec decode: ok / overflow | spec Rec | spec F1 | spec keys | partial Rec | partial P | partial F1 | partial keys (bounded) | under-counts | decode s (spec / partial) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for factor in OVERFLOW_FACTORS:
        memory = int(needed * factor)
        if memory <= ss:
            lines.append(f"| {factor:g} | {memory / 1024:.1f} | – | not buildable: below the second stage ({ss:,} B) "
                         "| | | | | | | | | |")
            print(lines[-1], flush=True)
            continue
        r = run(memory)
        a, b = r["paper"], r["partial"]
        lines.append(f"| {factor:g} | {memory / 1024:.1f} | {r['load']:.2f} | {a['ok']} / {a['overflow']} | {a['rec']:.3f} | "
                     f"{a['f1']:.3f} | {a['reported']} | {b['rec']:.3f} | {b['p']:.3f} | {b['f1']:.3f} | "
                     f"{b['reported']} ({b['bounded']}) | {a['under'] + b['under']} | {a['s']:.1f} / {b['s']:.1f} |")
        print(lines[-1], flush=True)


# Memory points of the strategy comparison: 0.55x, 0.6x and 0.625x of the 56 KiB the hard mix needs
# (the overflow table): the FS mostly saturated, the peel stopping short, the last complete decode.
STRATEGY_KIB = (30.8, 33.6, 35.0)
STRATEGY_ROOMS = (1.0, 0.75, 0.5)


def _partial_bounds(sketch: HiddenSketch, rounds: int) -> dict:
    """The arrays behind a partial decode (as ``HiddenSketch._decode_family`` computes them, with
    ``rounds`` of tightening), candidate order: keys, FS estimates, peeled counts and which keys
    are exact, upper and lower bounds of ``f_SS``, the per-row counters under each key."""
    from telesketch.sketches import hiddensketch as hs

    p, lay = sketch.params, sketch._layout
    parts = [hs._decode_block(b, sketch.seg, lay.seg_layout, sketch.bf, lay.bf_layout, lay.bf_seeds, lay.blk_seed,
                              p.blocks, lay.nbytes, lay.post_order, lay.child_ptr, lay.child_idx, lay.suffix,
                              p.max_enum) for b in range(p.blocks)]
    lo, hi = np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
    overflow = any(q[2] for q in parts)
    fs = np.empty(lo.shape[0], np.int64)
    hs._fs_query_many(lo, hi, lay.nbytes, sketch.fs, lay.fs_seeds, p.fs_width, p.fs_cap, fs)
    keep = fs > p.thresh
    lo, hi, fs = lo[keep], hi[keep], fs[keep]
    order = np.lexsort((lo, hi))
    lo, hi, fs = lo[order], hi[order], fs[order]
    f_ss, _, resolved, residual = hs._peel(lo, hi, lay.nbytes, sketch.cm, lay.cm_seeds, p.cm_width)
    buckets = np.empty((lo.shape[0], 3), np.int64)
    hs._cm_buckets(lo, hi, lay.nbytes, lay.cm_seeds, p.cm_width, buckets)
    remaining = sketch.cm.astype(np.int64).ravel() if overflow else np.maximum(residual, 0)
    exact_count = np.zeros(lo.shape[0], bool) if overflow else resolved
    per_row = remaining[buckets]
    upper, lower = per_row.min(axis=1), np.zeros(lo.shape[0], np.int64)
    if not overflow:
        upper = np.minimum(upper, fs)
        lower = hs._tighten(buckets, remaining, upper, ~exact_count, rounds)
    return {"keys": hs.words_to_keys(lo, hi, 4), "fs": fs, "f_ss": f_ss, "exact": exact_count, "upper": upper,
            "lower": lower, "per_row": per_row, "remaining": remaining.reshape(3, -1), "overflow": overflow}


def _cmm_rank(d: dict) -> np.ndarray:
    """Count-Mean-Min style: median over rows of (counter - the row's median counter)."""
    return np.median(d["per_row"] - np.median(d["remaining"], axis=1)[None, :], axis=1)


#: orders of the bounded keys when more pass phi * N than the room (the default: "upper bound")
STRATEGY_RANKS = {
    "upper bound (default)": lambda d: d["upper"].astype(float),
    "lower bound, then upper": lambda d: d["lower"] * 1e9 + d["upper"],
    "lower + upper": lambda d: (d["lower"] + d["upper"]).astype(float),
    "median over rows": lambda d: np.median(d["per_row"], axis=1),
    "Count-Mean-Min": _cmm_rank,
    "FS estimate, then upper": lambda d: np.minimum(d["fs"], 1 << 40) * 1e6 + d["upper"],
}


def overflow_strategies(lines: list[str]) -> None:
    """Partial-decode variants on the hard mix at ``STRATEGY_KIB``: the order in which bounded keys
    fill the room (``STRATEGY_RANKS``), the room itself (x ``PEEL_LIMIT * 3 * cm_width`` keys) and
    the rounds of bound tightening. Every variant keeps the estimates (upper bounds, never an
    under-count); only which keys are reported changes."""
    from telesketch.traces import generate_batch

    src = np.asarray(generate_batch(mix="hard", **HARD).src_ip)
    counts = exact.count_dict(src)
    limit = PHI * len(src)
    true = {k for k, c in counts.items() if c > limit}

    def score(sketch: HiddenSketch, d: dict, rank, room_scale: float) -> str:
        offset = sketch.thresh
        total = np.where(d["exact"], d["f_ss"] + offset, np.minimum(d["fs"], d["upper"] + offset))
        present = np.where(d["exact"], d["f_ss"], d["upper"]) > 0
        sure = np.flatnonzero(present & d["exact"] & (total > limit))
        maybe = np.flatnonzero(present & ~d["exact"] & (total > limit))
        room = max(0, int(room_scale * HiddenSketch.PEEL_LIMIT * 3 * sketch.params.cm_width) - len(sure))
        picked = maybe[np.argsort(-rank(d)[maybe], kind="stable")[:room]]
        reported = {d["keys"][i]: int(total[i]) for i in [*sure, *picked]}
        acc = exact.set_accuracy(true, reported)
        under = sum(est < counts.get(k, 0) for k, est in reported.items())
        return f"{acc.recall:.3f} | {acc.precision:.3f} | {acc.f1:.3f} | {len(reported)} | {under}"

    lines += [f"\nHidden Sketch partial-decode strategies: mix='hard' {HARD}, {len(true)} true heavy sources at "
              f"phi = {PHI:g}; room = x * 0.818 * 3 * cm_width keys\n",
              "| KiB | load factor | candidates / peeled | strategy | room x | tighten rounds | Rec | P | F1 | keys | under-counts |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kib in STRATEGY_KIB:
        sketch = HiddenSketch(memory_bytes=int(kib * 1024), phi=PHI)
        for i in range(0, len(src), BATCH):
            sketch.update_keys(src[i:i + BATCH])
        for rounds in (0, 8, 64):
            d = _partial_bounds(sketch, rounds)
            head = (f"| {kib:g} | {sketch.load_factor:.2f} | {len(d['keys'])} / "
                    f"{int((d['exact'] & (d['f_ss'] > 0)).sum())}{' (overflow)' if d['overflow'] else ''}")
            if d["exact"].all():  # a complete decode: no bounded key, every variant answers the same
                lines.append(f"{head} | complete decode: every variant | | | {score(sketch, d, STRATEGY_RANKS['upper bound (default)'], 1.0)} |")
                print(lines[-1], flush=True)
                break
            ranks = STRATEGY_RANKS if rounds == HiddenSketch.TIGHTEN_ROUNDS else {"upper bound (default)": STRATEGY_RANKS["upper bound (default)"]}
            for name, rank in ranks.items():
                for room in STRATEGY_ROOMS:
                    lines.append(f"{head} | {name} | {room:g} | {rounds} | {score(sketch, d, rank, room)} |")
                    print(lines[-1], flush=True)


_LOADED: dict[str, list[dict]] = {}


# ---------------------------------------------------------------------------- IPv6 (issue 18)
IPV6_SHARE = 0.4
IPV6_MIXED_KIB = {"zipf_a1.0": (45, 55, 80, 120), "zipf_a1.2": (30, 40, 55, 80)}
IPV6_SWEEP_KIB = (72, 80, 96, 112, 128, 160, 192)


def ipv6_addresses(keys4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(is6, addr16)`` per item: whether its key is an IPv6 source (40 % of keys, by hash) and the
    key's 16-byte address (2001:db8:0:P::/64, ``P`` one of 256, interface id a 64-bit hash)."""
    from telesketch.hashing import hash_u32

    h = hash_u32(keys4, 18)
    is6 = (h % np.uint64(1000)) < np.uint64(IPV6_SHARE * 1000)
    addr = np.zeros((len(keys4), 16), np.uint8)
    addr[:, :4] = (0x20, 0x01, 0x0D, 0xB8)
    addr[:, 7] = (h >> np.uint64(56)).astype(np.uint8)
    addr[:, 8:] = hash_u32(keys4, 19).astype(">u8").view(np.uint8).reshape(-1, 8)
    return is6, addr


def _score(result, counts: dict, limit: float) -> dict:
    est = dict(result.items)
    true = {k: c for k, c in counts.items() if c > limit}
    acc = exact.set_accuracy(true, est)
    tp = [k for k in true if k in est]
    return {"f1": acc.f1, "p": acc.precision, "rec": acc.recall, "are_tp": exact.are(true, est, tp) if tp else 0.0,
            "true": len(true), "ok": result.decode_ok, "under": sum(est[k] < counts.get(k, 0) for k in est)}


def _timed(sketch: HiddenSketch, feed) -> tuple:
    start = time.perf_counter()
    feed(sketch)
    insert_s = time.perf_counter() - start
    start = time.perf_counter()
    result = sketch.decode()
    return result, insert_s, time.perf_counter() - start


def ipv6(cache: Path, lines: list[str]) -> None:
    from telesketch.packets import PacketBatch

    lines += ["\nIPv6 (issue 18): window 0, 40 % of keys IPv6, phi = 1e-4, IPv6 companion 128 KiB\n",
              "| α | KiB | stream | IPv6 share of items | F1 | P | Rec | ARE (TP) | true HH | ok | insert Mops | decode ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, points in IPV6_MIXED_KIB.items():
        win = load_cached(name, cache)[0]
        keys4, n = win["keys4"], win["n"]
        thresh = max(0, int(PHI * n - 10))
        is6, addr = ipv6_addresses(keys4)
        batch = PacketBatch.from_columns(src_ip=np.where(is6, 0, keys4).astype(np.uint32),
                                         src_ip6=np.where(is6[:, None], addr, 0).astype(np.uint8),
                                         ipv6=is6.astype(np.uint8))
        parts = batch.split(BATCH)
        counts4 = exact.count_dict(keys4)
        truth_mixed = exact.count_dict(keys4[~is6])
        six = {}
        for a in addr[is6]:
            six[a.tobytes()] = six.get(a.tobytes(), 0) + 1
        alpha = name.split("_a")[1]

        def row(kib, stream, share, r, insert_s, decode_s):
            lines.append(f"| {alpha} | {kib} | {stream} | {share} | {r['f1']:.3f} | {r['p']:.3f} | {r['rec']:.3f} | "
                         f"{r['are_tp']:.4f} | {r['true']} | {r['ok']}{' UNDERCOUNT' if r['under'] else ''} | "
                         f"{n / insert_s / 1e6:.2f} | {1e3 * decode_s:.0f} |")
            print(lines[-1], flush=True)

        for kib in points:
            four = HiddenSketch(memory_bytes=kib * 1024, phi=PHI, thresh=thresh)
            res, ins, dec = _timed(four, lambda s: [s.update_keys(keys4[i:i + BATCH]) for i in range(0, n, BATCH)])
            row(kib, "IPv4 only", "0 %", _score(res, counts4, PHI * n), ins, dec)
            mixed = HiddenSketch(memory_bytes=kib * 1024, phi=PHI, thresh=thresh)
            res, ins, dec = _timed(mixed, lambda s: [s.update(p) for p in parts])
            row(kib, "mixed: all", f"{is6.mean():.0%}", _score(res, {**truth_mixed, **six}, PHI * n), ins, dec)
            fam4 = [(k, c) for k, c in res.items if isinstance(k, int)]
            fam6 = [(k, c) for k, c in res.items if isinstance(k, bytes)]
            for label, items, truth in (("mixed: IPv4 part", fam4, truth_mixed), ("mixed: IPv6 part", fam6, six)):
                r = _score(type(res)(items, res.decode_ok, res.overflow, 0, 0, 0, 0), truth, PHI * n)
                row(kib, label, "", r, ins, dec)
        all6 = np.ascontiguousarray(addr)  # the same stream, every key as its 16-byte address
        uniq = np.fromiter(counts4.keys(), np.uint32, len(counts4))
        truth16 = {a.tobytes(): counts4[int(k)] for k, a in zip(uniq, ipv6_addresses(uniq)[1])}
        for kib in IPV6_SWEEP_KIB:
            wide = HiddenSketch(key="src_ip6", memory_bytes=kib * 1024, phi=PHI, thresh=thresh)
            res, ins, dec = _timed(wide, lambda s: [s.update_keys(all6[i:i + BATCH]) for i in range(0, n, BATCH)])
            row(kib, "all as 16-byte keys", "100 %", _score(res, truth16, PHI * n), ins, dec)


def _v4speed_child(cache: Path, repeat: int) -> None:
    """Print ``{"update_keys": Mops, "update_batch": Mops}`` (best of ``repeat``) for this tree."""
    import json

    from telesketch.packets import PacketBatch

    win = load_cached("zipf_a1.2", cache)[0]
    keys4, n = win["keys4"], win["n"]
    parts = PacketBatch.from_columns(src_ip=keys4).split(BATCH)
    thresh = int(PHI * n - 10)
    warm = HiddenSketch(memory_bytes=55 * 1024, phi=PHI, thresh=thresh)  # load the kernels untimed
    warm.update(parts[0])
    warm.update_keys(keys4[:BATCH])
    best = {"update_keys": 0.0, "update_batch": 0.0}
    for _ in range(repeat):
        for how in best:
            sketch = HiddenSketch(memory_bytes=55 * 1024, phi=PHI, thresh=thresh)
            start = time.process_time()  # CPU seconds: other jobs on a shared host do not count
            if how == "update_keys":
                for i in range(0, n, BATCH):
                    sketch.update_keys(keys4[i:i + BATCH])
            else:
                for part in parts:
                    sketch.update(part)
            best[how] = max(best[how], n / (time.process_time() - start) / 1e6)
    print(json.dumps(best))


def v4speed(cache: Path, lines: list[str], baseline: Path, repeat: int) -> None:
    """IPv4-only insert Mops, this tree vs ``baseline``, alternating subprocesses; best per tree."""
    import json
    import os

    ours = ROOT.parent
    trees = {"before (baseline)": Path(baseline).resolve(), "after (this tree)": ours}
    best: dict[str, dict] = {label: {} for label in trees}
    for _ in range(repeat):
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run([sys.executable, __file__, "--only", "v4speed_child", "--repeat", "1",
                                  "--cache", str(cache)], env=env, check=True, capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for how, mops in got.items():
                best[label][how] = max(best[label].get(how, 0.0), mops)
    b, a = best["before (baseline)"], best["after (this tree)"]
    lines += [f"\nIPv4-only insert at 55 KiB, zipf α = 1.2 window 0, items per CPU second (best of {repeat} "
              "alternating runs per tree)\n",
              "| path | before Mops | after Mops | after / before |", "|---|---|---|---|"]
    for how in ("update_keys", "update_batch"):
        lines.append(f"| {how} | {b[how]:.2f} | {a[how]:.2f} | {a[how] / b[how]:.3f} |")
        print(lines[-1], flush=True)


def equal_counter_memory(memory_bytes: int) -> tuple[int, int]:
    """``(memory_bytes, cm_bytes)`` of a byte-weighted sketch with as many FS and CM counters as a
    packet sketch of ``memory_bytes`` (8-bit FS -> 32-bit: 4x its bytes; 32-bit CM -> 64-bit: 2x)."""
    packets = HiddenSketch(memory_bytes=memory_bytes, phi=PHI, thresh=0).params
    return packets.ss_bytes + packets.cm_bytes + 4 * packets.fs_bytes, 2 * packets.cm_bytes


def _bytes_run(win: dict, memory_kib: int, seed: int, weighted: bool, equal_counters: bool = False) -> dict:
    """One window at one memory, packets or bytes: F1 / P / Rec / ARE (TP) against its own truth, Mops."""
    from telesketch.hashing import hash_u32

    keys = win["keys4"]
    if "sizes" not in win:
        win["sizes"] = (40 + hash_u32(keys, 17) % np.uint64(1461)).astype(np.int64)
        win["byte_counts"] = exact.count_dict(keys, win["sizes"])
    sizes = win["sizes"]
    if weighted:
        volume, counts = int(sizes.sum()), win["byte_counts"]
        memory, cm = equal_counter_memory(memory_kib * 1024) if equal_counters else (memory_kib * 1024, 10_240)
        sketch = HiddenSketch(memory_bytes=memory, cm_bytes=cm, phi=PHI, thresh=max(0, int(PHI * volume - 10)),
                              weight="bytes", seed=seed)
    else:
        volume, counts = win["n"], truth_for(win)[0]
        sketch = HiddenSketch(memory_bytes=memory_kib * 1024, phi=PHI, thresh=max(0, int(PHI * volume - 10)), seed=seed)
    start = time.process_time()
    for i in range(0, len(keys), BATCH):
        if weighted:
            sketch.update_keys(keys[i:i + BATCH], sizes[i:i + BATCH])
        else:
            sketch.update_keys(keys[i:i + BATCH])
    insert_s = time.process_time() - start
    result = sketch.decode()
    true = {k: c for k, c in counts.items() if c > PHI * volume}
    est = dict(result.items)
    acc = exact.set_accuracy(true, est)
    tp = [k for k in true if k in est]
    return {"f1": acc.f1, "p": acc.precision, "rec": acc.recall, "are_tp": exact.are(true, est, tp),
            "true": len(true), "ok": result.decode_ok, "mops": len(keys) / insert_s / 1e6,
            "under": sum(est[k] < counts.get(k, 0) for k in est)}


def bytes_accuracy(cache: Path, lines: list[str], seeds: int) -> None:
    """Issue 17: byte-weighted F1 beside packet F1 at the spec's memory points (module docstring)."""
    lines += [f"\nBy bytes vs by packets, window 0, mean over {seeds} hash seeds (same memory_bytes)\n",
              "| α | KiB | packets: F1 / P / Rec / ARE (TP) | bytes: F1 / P / Rec / ARE (TP) | "
              "bytes, equal counters: KiB, F1 / P / Rec / ARE (TP) | true HH packets / bytes | "
              "decode ok packets / bytes / equal | Mops packets / bytes (CPU s) |",
              "|---|---|---|---|---|---|---|---|"]
    for (name, kib) in REF_ACCURACY:
        win = load_cached(name, cache)[0]
        cols = []
        for weighted, equal in ((False, False), (True, False), (True, True)):
            cols.append([_bytes_run(win, kib, seed, weighted, equal) for seed in range(seeds)])
        cell = lambda rows: (f"{mean(rows, 'f1'):.3f} / {mean(rows, 'p'):.3f} / {mean(rows, 'rec'):.3f} / "  # noqa: E731
                             f"{mean(rows, 'are_tp'):.4f}" + (" UNDERCOUNT" if any(r["under"] for r in rows) else ""))
        equal_kib = equal_counter_memory(kib * 1024)[0] / 1024
        lines.append(f"| {name.split('_a')[1]} | {kib} | {cell(cols[0])} | {cell(cols[1])} | {equal_kib:.0f}, {cell(cols[2])} | "
                     f"{cols[0][0]['true']} / {cols[1][0]['true']} | "
                     + " / ".join(f"{sum(r['ok'] for r in c)}/{seeds}" for c in cols)
                     + f" | {mean(cols[0], 'mops'):.2f} / {mean(cols[1], 'mops'):.2f} |")
        print(lines[-1], flush=True)


def load_cached(name: str, cache: Path) -> list[dict]:
    if name not in _LOADED:
        _LOADED[name] = load_windows(ensure_workload(name, cache))
    return _LOADED[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", choices=["accuracy", "small_ss", "changers", "big", "throughput", "5tuple", "overflow",
                                       "overflow_strategies", "ipv6", "v4speed", "v4speed_child", "bytes"],
                    action="append", help="run only these parts (repeatable)")
    ap.add_argument("--baseline", type=Path, help="for --only v4speed: the tree to compare against (e.g. ../main)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3, help="hash seeds averaged in the accuracy tables")
    args = ap.parse_args()
    if args.only == ["v4speed_child"]:
        _v4speed_child(args.cache, args.repeat)
        return
    parts = args.only or ["throughput", "accuracy", "small_ss", "changers", "big", "5tuple"]
    # warm the kernels (compile or load the Numba cache) before timing anything
    warm = HiddenSketch(thresh=0)
    warm.update_keys(np.arange(1000, dtype=np.uint32))
    warm.decode()
    lines = [f"machine: {machine()}",
             f"command: .venv/bin/python benchmarks/bench_hiddensketch.py {' '.join(sys.argv[1:])}".rstrip()]
    print("\n".join(lines), flush=True)
    for part in parts:
        {"accuracy": lambda: accuracy(args.cache, lines, args.seeds),
         "small_ss": lambda: accuracy(args.cache, lines, args.seeds, small_ss=True),
         "changers": lambda: changers(args.cache, lines),
         "big": lambda: big(args.cache, lines),
         "throughput": lambda: throughput(args.cache, lines, args.repeat),
         "5tuple": lambda: five_tuple(args.cache, lines),
         "overflow": lambda: overflow(lines),
         "overflow_strategies": lambda: overflow_strategies(lines),
         "ipv6": lambda: ipv6(args.cache, lines),
         "bytes": lambda: bytes_accuracy(args.cache, lines, args.seeds),
         "v4speed": lambda: v4speed(args.cache, lines, args.baseline, args.repeat)}[part]()
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
