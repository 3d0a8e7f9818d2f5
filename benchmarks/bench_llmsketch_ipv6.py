"""LLM-Sketch on mixed IPv4/IPv6 traffic (issue #18): accuracy next to IPv4-only, memory for the same
accuracy, and IPv4-only packet-path throughput before/after a change.

Traffic: ``telesketch.traces.generate_batch`` (IPv4, Zipf flows); the *mixed* trace is the same
packets with a share of the flows (default 40 %) turned into IPv6 flows: random 2001:db8::/32
addresses, a random flow label per flow, the header block rewritten in the compact IPv6 layout
(traffic class = TOS, payload length, next header = protocol, hop limit = TTL, then the transport
header). Flow sizes, ports and timing are unchanged, so the two traces differ only in the address
family, and any accuracy difference is the 37-byte keys'.

Accuracy (``--sections accuracy``): ``LLMSketch(flow_size)`` at the spec's memory sweep (200 ... 1000
KiB, spec table §2.1) with per-flow scores from the shipped trees estimator (FlowScorer, sync,
re-scoring): ARE / AAE over all flows of the IPv4-only trace, of the mixed trace, and of the mixed
trace's IPv6 and IPv4 flows apart; then the smallest memory (a 10 KiB-step search between the sweep
points) at which the mixed trace's IPv6 flows reach the IPv4-only trace's ARE.

Throughput (``--sections throughput --before DIR``): 1 M IPv4 packets through
``LLMSketch(400 KiB).update`` (precomputed scores; trees through the FlowScorer), in fresh
subprocesses importing ``DIR`` (a checkout of the commit before) and this tree in turn, rounds
interleaved (A B A B ...), best of each; the ratio after/before is the figure (same run, same load).

    .venv/bin/python benchmarks/bench_llmsketch_ipv6.py --quick
    git worktree add /tmp/before <commit>   # or: git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bench_llmsketch_ipv6.py --sections throughput --before /tmp/before
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from common import machine

from telesketch.estimators import OracleEstimator, load_estimator
from telesketch.estimators.scoring import FlowScorer
from telesketch.packets import PacketBatch
from telesketch.sketches.llmsketch import LLMSketch, v4_mapped_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_ipv6(batch: PacketBatch, share: float, seed: int = 0) -> PacketBatch:
    """``batch`` with flows made IPv6 (module doc) until ``share`` of the packets are; flow sizes unchanged.

    Flows are taken in random order while the IPv6 packet count stays within ``share``, so the
    share holds for packets, with the flow-size mix of the whole trace on both sides."""
    rng = np.random.default_rng(seed)
    _, inv, sizes = np.unique(batch.flow_keys_void(), return_inverse=True, return_counts=True)
    inv = inv.ravel()
    flows = sizes.shape[0]
    order = rng.permutation(flows)
    is6 = np.zeros(flows, bool)
    is6[order[np.cumsum(sizes[order]) <= share * len(batch)]] = True
    addr = rng.integers(0, 256, (flows, 2, 16), dtype=np.uint8)
    addr[:, :, 0:4] = (0x20, 0x01, 0x0D, 0xB8)
    label = rng.integers(1, 1 << 20, flows, dtype=np.uint32)
    six = is6[inv]
    cols = batch.columns()
    h4 = batch.header[six]
    ihl = (h4[:, 0].astype(np.int64) & 0xF) * 4
    total = (h4[:, 2].astype(np.int64) << 8) | h4[:, 3]
    payload = np.maximum(total - ihl, 0)
    fl = label[inv[six]]
    h6 = np.zeros_like(h4)
    h6[:, 0] = 0x60 | (h4[:, 1] >> 4)
    h6[:, 1] = ((h4[:, 1] & 0xF) << 4) | (fl >> 16).astype(np.uint8)
    h6[:, 2], h6[:, 3] = (fl >> 8) & 0xFF, fl & 0xFF
    h6[:, 4], h6[:, 5] = payload >> 8, payload & 0xFF
    h6[:, 6], h6[:, 7] = h4[:, 9], h4[:, 8]
    transport = np.clip(batch.hdr_len[six].astype(np.int64) - ihl, 0, 32)
    at = ihl[:, None] + np.arange(32)[None, :]
    body = np.take_along_axis(h4, np.minimum(at, 39), axis=1)
    h6[:, 8:40] = np.where(np.arange(32)[None, :] < transport[:, None], body, 0)
    header, hdr_len, length = cols["header"].copy(), cols["hdr_len"].copy(), cols["length"].copy()
    header[six], hdr_len[six], length[six] = h6, 8 + transport, np.minimum(payload + 40, 0xFFFF)
    return PacketBatch.from_columns(**cols | {
        "ipv6": six.astype(np.uint8), "src_ip": np.where(six, 0, batch.src_ip), "dst_ip": np.where(six, 0, batch.dst_ip),
        "src_ip6": np.where(six[:, None], addr[inv, 0], 0).astype(np.uint8),
        "dst_ip6": np.where(six[:, None], addr[inv, 1], 0).astype(np.uint8),
        "flow_label": np.where(six, label[inv], 0), "header": header, "hdr_len": hdr_len, "length": length,
        "ip_id": np.where(six, 0, batch.ip_id)})


def truth(batch: PacketBatch):
    """``(keys37 uint8[f, 37], counts int64[f], is_ipv6 bool[f])`` of every flow."""
    keys, counts = np.unique(batch.flow_keys37(), axis=0, return_counts=True)
    return keys, counts, ~v4_mapped_rows(keys)


def scores_of(batch: PacketBatch, estimator, chunk: int = 65536) -> np.ndarray:
    scorer = FlowScorer(estimator, rescore=True, mode="sync")
    return np.concatenate([scorer.scores(b) for b in batch.split(chunk)])


def errors(batch, scores, memory, keys, counts, chunk=65536):
    """Per-flow absolute errors ``float64[f]`` of ``LLMSketch(memory)`` after the whole trace."""
    sketch = LLMSketch(memory, "flow_size")
    at = 0
    for part in batch.split(chunk):
        sketch.update(part, scores[at:at + len(part)])
        at += len(part)
    return np.abs(sketch.flow_size(keys) - counts).astype(np.float64)


def accuracy(packets: int, flows: int, share: float, memories_kib, seed: int) -> None:
    from telesketch.traces import generate_batch

    v4 = generate_batch(packets, flows, seed=seed)
    mixed = to_ipv6(v4, share, seed)
    k4, c4, _ = truth(v4)
    km, cm, six = truth(mixed)
    print(f"\n## accuracy: {packets:,} packets, {len(c4):,} flows (generate_batch seed {seed}); mixed: "
          f"{six.mean():.0%} of flows / {mixed.ipv6.mean():.0%} of packets IPv6; FlowScorer sync re-scoring; "
          f"LLMSketch(flow_size)")
    trees = load_estimator("trees")
    for name, s4, sm in (("shipped trees", scores_of(v4, trees), scores_of(mixed, trees)),
                         ("oracle", scores_of(v4, OracleEstimator.from_batch(v4)),
                          scores_of(mixed, OracleEstimator.from_batch(mixed)))):
        print(f"\n### scores: {name}")
        accuracy_table(v4, mixed, s4, sm, k4, c4, km, cm, six, memories_kib)


def accuracy_table(v4, mixed, s4, sm, k4, c4, km, cm, six, memories_kib) -> None:
    print("\n| memory | IPv4-only ARE | AAE | mixed ARE | AAE | mixed: IPv6 flows ARE | IPv4 flows ARE |")
    print("|---|---|---|---|---|---|---|")
    target = {}
    for kib in memories_kib:
        e4 = errors(v4, s4, kib * 1024, k4, c4)
        em = errors(mixed, sm, kib * 1024, km, cm)
        r4, rm = e4 / c4, em / cm
        target[kib] = r4.mean()
        print(f"| {kib} KiB | {r4.mean():.3f} | {e4.mean():.2f} | {rm.mean():.3f} | {em.mean():.2f} | "
              f"{rm[six].mean():.3f} | {rm[~six].mean():.3f} |", flush=True)
    print("\n| memory (IPv4-only) | IPv4-only ARE | smallest memory where the mixed trace's IPv6 flows reach it |")
    print("|---|---|---|")
    for kib in memories_kib:
        found = None
        for m in range(max(kib - 60, 10), kib + 70, 10):
            rm = errors(mixed, sm, m * 1024, km, cm) / cm
            if rm[six].mean() <= target[kib]:
                found = m
                break
        print(f"| {kib} KiB | {target[kib]:.3f} | {f'{found} KiB' if found else f'> {kib + 60} KiB'} |", flush=True)


THROUGHPUT_CHILD = r"""
import json, sys, time
import numpy as np
from telesketch.estimators import load_estimator
from telesketch.sketches.llmsketch import LLMSketch
from telesketch.traces import generate_batch
packets, repeats = int(sys.argv[1]), int(sys.argv[2])
batch = generate_batch(packets, 50_000, seed=1)
parts = batch.split(65536)
scores = np.random.default_rng(0).random(len(batch))
trees = load_estimator("trees")
def precomputed():
    sketch, at = LLMSketch(400 * 1024), 0
    for part in parts:
        sketch.update(part, scores[at:at + len(part)])
        at += len(part)
def scored():
    sketch = LLMSketch(400 * 1024, estimator=trees, scoring="sync", keep_keys=True)
    for part in parts:
        sketch.update(part)
out = {}
for name, fn in (("precomputed", precomputed), ("trees+names", scored)):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t0)
    out[name] = packets / best / 1e6
print(json.dumps(out))
"""


def throughput(before: str, packets: int, rounds: int, repeats: int) -> None:
    trees = {"before": os.path.abspath(before), "after": REPO}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(rounds):
        for label, path in trees.items():
            env = {**os.environ, "PYTHONPATH": path}
            proc = subprocess.run([sys.executable, "-c", THROUGHPUT_CHILD, str(packets), str(repeats)], env=env,
                                  capture_output=True, text=True, check=True, cwd=path)
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\n## IPv4-only packet path: {packets:,} packets (generate_batch, 50,000 flows, batches of 65,536), "
          f"LLMSketch(400 KiB, flow_size), best of {repeats} per subprocess, {rounds} interleaved rounds")
    print(f"before: {trees['before']}\n\n| scores | before M pkt/s (best) | after M pkt/s (best) | after / before "
          f"(best) | after / before (median of the {rounds} rounds' ratios) |\n|---|---|---|---|---|")
    for case in runs["before"][0]:
        b = [r[case] for r in runs["before"]]
        a = [r[case] for r in runs["after"]]
        paired = float(np.median([y / x for x, y in zip(b, a)]))
        print(f"| {case} | {max(b):.2f} | {max(a):.2f} | {max(a) / max(b):.3f} | {paired:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="accuracy", help="comma list: accuracy, throughput")
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets of the generated trace")
    ap.add_argument("--flows", type=int, default=50_000, help="flows of the generated trace")
    ap.add_argument("--ipv6-share", type=float, default=0.4, help="share of the flows made IPv6 (0..1)")
    ap.add_argument("--memories", default="200,400,600,800,1000", help="comma list of memories in KiB")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--before", help="a checkout of the commit before, for the throughput comparison")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved before/after rounds (throughput)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per round (throughput)")
    ap.add_argument("--quick", action="store_true", help="200k packets, 10k flows, 100 and 200 KiB")
    args = ap.parse_args(argv)
    if args.quick:
        args.packets, args.flows, args.memories = 200_000, 10_000, "100,200"
    print(f"# LLM-Sketch, IPv6 ({machine()})")
    sections = args.sections.split(",")
    if "accuracy" in sections:
        accuracy(args.packets, args.flows, args.ipv6_share, [int(m) for m in args.memories.split(",")], args.seed)
    if "throughput" in sections:
        if not args.before:
            ap.error("--sections throughput needs --before DIR (a checkout of the commit before)")
        throughput(args.before, args.packets, args.rounds, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
