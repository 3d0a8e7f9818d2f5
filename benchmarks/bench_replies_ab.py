#!/usr/bin/env python3
"""A gRPC reply's integer-key entries (``telesketch/service/replies.py``) of this tree against
another git revision's, alternating in one process.

The other revision's ``replies.py`` is written (``git show``) into a temporary directory and
imported beside this tree's; each round encodes the same keys and estimates with both
(``int_key_entries``, addresses and fingerprints, ``--rows`` rows per reply, ``--reps`` replies
per timing) and the figure is the median over rounds of base time / this tree's time (thread CPU
time). The two encodings must be equal byte for byte every round. Written for issue 15, where the
array key texts moved from replies.py into the presenter: the move should cost nothing.

    .venv/bin/python benchmarks/bench_replies_ab.py --base main
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import alternate_rounds, machine, module_at_revision  # noqa: E402

from telesketch.service import replies as current  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision whose telesketch/service/replies.py is the baseline")
    ap.add_argument("--rows", type=int, default=500, help="entries per reply")
    ap.add_argument("--reps", type=int, default=400, help="replies encoded per timing")
    ap.add_argument("--rounds", type=int, default=11, help="alternating base/this-tree rounds per row")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    keys = [int(k) for k in rng.integers(0, 1 << 32, args.rows)]
    values = [float(v) for v in rng.normal(0, 1e5, args.rows)]
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at_revision(REPO, args.base, "telesketch/service/replies.py", tmp)
        for int_keys in ("ipv4", "fingerprint"):
            def run(module, int_keys=int_keys):
                start = time.thread_time()
                for _ in range(args.reps):
                    out = module.int_key_entries(keys, values, int_keys)
                return time.thread_time() - start, out

            base_s, ours_s = alternate_rounds(lambda: run(base), lambda: run(current), args.rounds, int_keys)
            ratios = [b / o for b, o in zip(base_s, ours_s)]
            print(f"{int_keys:12s} {args.rows} rows x {args.reps}: base {statistics.median(base_s):.3f} s, "
                  f"this tree {statistics.median(ours_s):.3f} s, base/this median {statistics.median(ratios):.2f}x "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
