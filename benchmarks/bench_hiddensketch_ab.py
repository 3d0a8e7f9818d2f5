#!/usr/bin/env python3
"""Hidden Sketch's update path of this tree against another git revision's, alternating in one process.

The other revision's ``telesketch/sketches/hiddensketch.py`` is written (``git show``) into a
temporary directory and imported beside this tree's module as ``hiddensketch_base``. Each round, a
fresh sketch of each module (same parameters) takes the same batches through
:meth:`HiddenSketch.update` (the service path: key words from the batch columns, the first-stage
gate, the second-stage insert), timed in thread CPU seconds. After every round the two sketches'
``to_bytes()`` must be equal: only a faster change with bit-identical state is accepted. The figure
is the median over rounds of this tree's CPU time / the baseline's (below 1: this tree is faster).

Traffic: ``bench_ingest.py``'s (Zipf flows, 16 distinct batches cycled, as ``bench_ingest_costs.py``
feeds them). Rows: the service configuration of ``bench_ingest`` (``src_ip``, 55 KiB, phi 1e-4), and,
for the state check across key widths and weighting, ``5tuple``, ``src_ip6`` and ``weight="bytes"``.

    .venv/bin/python benchmarks/bench_hiddensketch_ab.py [--base main] [--packets 2000000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from bench_ingest import SKETCHES, make_messages  # noqa: E402
from common import alternate_rounds, machine, module_at_revision  # noqa: E402

from telesketch import wire  # noqa: E402
from telesketch.sketches import hiddensketch as current  # noqa: E402

SERVICE = {k: v for k, v in SKETCHES["hiddensketch"]["hh"].items() if k != "kind"}
#: (row label, HiddenSketch parameters); the first is bench_ingest's service configuration
ROWS = [
    ("src_ip 55 KiB (bench_ingest)", SERVICE),
    ("5tuple 128 KiB", {"key": "5tuple", "memory_bytes": 128 * 1024, "phi": 1e-4}),
    ("src_ip6 128 KiB", {"key": "src_ip6", "memory_bytes": 128 * 1024, "phi": 1e-4}),
    ("src_ip 55 KiB, bytes", {**SERVICE, "weight": "bytes"}),
]


def run_once(module, params: dict, batches: list, order: list) -> tuple[float, bytes]:
    """Thread CPU seconds of one fresh sketch's ``update`` over ``batches[i] for i in order``, and its
    final ``to_bytes()``."""
    sketch = module.HiddenSketch(**params)
    sketch.update(batches[0])  # the first batch untimed: compiles or loads the kernels
    start = time.thread_time()
    for i in order:
        sketch.update(batches[i])
    return time.thread_time() - start, sketch.to_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision whose hiddensketch.py is the baseline")
    ap.add_argument("--batch-sizes", default="8192,65536", help="comma-separated packets per batch")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets per sketch per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating base/this-tree rounds per row")
    ap.add_argument("--rows", default="all", help="'all' or 'service' (the first row only)")
    args = ap.parse_args()
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    rows = ROWS if args.rows == "all" else ROWS[:1]
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at_revision(REPO, args.base, "telesketch/sketches/hiddensketch.py", tmp)
        print("\n| row | batch | base ns/packet | this tree ns/packet | this / base (median) | rounds | state |\n"
              "|---|---|---|---|---|---|---|")
        for size in (int(s) for s in args.batch_sizes.split(",")):
            batches = [wire.message_to_batch(m) for m in make_messages(size * 16, size)[:16]]
            order = [i % len(batches) for i in range(max(1, args.packets // size))]
            n = len(order) * size
            for label, params in rows:
                b, o = alternate_rounds(lambda: run_once(base, params, batches, order),
                                        lambda: run_once(current, params, batches, order),
                                        args.rounds, f"{label} at {size}")
                ratio = float(np.median(np.array(o) / np.array(b)))
                print(f"| {label} | {size} | {np.median(b) / n * 1e9:.1f} | {np.median(o) / n * 1e9:.1f} | "
                      f"{ratio:.3f} | {args.rounds} | equal every round |", flush=True)
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
