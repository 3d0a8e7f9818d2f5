"""Capture-reader throughput of this tree against another git revision, as a ratio in one run.

The other revision's ``telesketch`` package is extracted with ``git archive`` into a temporary
directory; each round reads every input once per tree, alternating, in a fresh subprocess (a
warm-up read first: Numba cache load or compile, page cache), and the best of the rounds counts.
Times are the subprocess's CPU time (user + system), not wall time: on a shared, loaded machine
wall time mostly measures the neighbours (the reader is single-threaded).
Inputs: an IPv4-only generated capture and, when present, the nDPI trace looped (about 5 % IPv6).

    .venv/bin/python benchmarks/bench_readers_ab.py --base main --packets 2000000 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from bench_readers import TRACE, build_looped
from common import machine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_READ = """
import sys, time
from telesketch.traces import ReadStats, read_capture
def once():
    stats, rows = ReadStats(), 0
    for batch in read_capture(sys.argv[1], batch_size=65536, stats=stats):
        rows += len(batch)
    return stats.packets_read, rows
once()
best = float("inf")
for _ in range(2):
    t = time.process_time(); records, rows = once(); best = min(best, time.process_time() - t)
print(best, records, rows)
"""


def extract(rev: str, dest: Path) -> Path:
    """``rev``'s ``telesketch`` package under ``dest`` (returned: the directory to put on the path)."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "telesketch"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def timed_read(root: Path, path: Path) -> tuple[float, int, int]:
    """(best CPU seconds, records, rows) of reading ``path`` with the package under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = f"import telesketch; assert telesketch.__file__.startswith({str(root)!r}), telesketch.__file__\n"
    out = subprocess.run([sys.executable, "-c", code + _READ, str(path)], env=env, cwd=root, check=True,
                         capture_output=True, text=True).stdout.split()  # cwd: ``-c`` puts it first on the path
    return float(out[0]), int(out[1]), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare this tree with")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets in each input capture")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of them counts")
    args = ap.parse_args()
    from telesketch.traces import generate_capture

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base = extract(args.base, d / "base")
        inputs = {"IPv4-only generated": d / "ipv4.pcap"}
        generate_capture(inputs["IPv4-only generated"], packets=args.packets, flows=args.packets // 20, seed=1)
        if TRACE.exists():
            inputs["nDPI looped (IPv6 ~5 %)"] = d / "ndpi.pcap"
            build_looped(TRACE, args.packets, inputs["nDPI looped (IPv6 ~5 %)"])
        best = {(name, tree): float("inf") for name in inputs for tree in ("base", "this")}
        rows = {}
        for _ in range(args.rounds):
            for name, path in inputs.items():
                for tree, root in (("base", base), ("this", REPO)):
                    seconds, records, n = timed_read(root, path)
                    best[name, tree] = min(best[name, tree], seconds)
                    rows[name, tree] = (records, n)
    print(f"machine: {machine()}")
    print(f"base: {args.base}; best of {args.rounds} alternating rounds, each the best of 2 reads")
    for name in inputs:
        b, t = best[name, "base"], best[name, "this"]
        records = rows[name, "this"][0]
        print(f"{name}: base {records / b / 1e6:.2f} M packets per CPU second ({rows[name, 'base'][1]:,} rows), "
              f"this {records / t / 1e6:.2f} M ({rows[name, 'this'][1]:,} rows), this/base CPU time {t / b:.3f}")


if __name__ == "__main__":
    main()
