#!/usr/bin/env python3
"""ResidualSketch / CocoSketch update kernels of this tree against another git revision's, alternating in one process.

The other revision's ``telesketch/sketches/cocosketch.py`` is written (``git show``) into a
temporary directory and imported beside this tree's module as ``cocosketch_base``; both
``stream_kernel`` functions then run on the same sketches' arrays (a fresh sketch of this tree per
run, fed through :meth:`update_addresses`' own arguments), over the same address batches. The figure
is the median over rounds of base time / this tree's time (thread CPU time, one Numba thread).
After every round the two runs' bucket arrays (``cells``, ``occ``) must be equal: a change that is
only faster is the only kind this benchmark accepts.

    .venv/bin/python benchmarks/bench_residual_ab.py --base HEAD [--workload spec --shared ../shared]
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numba as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

import bench_kernels  # noqa: E402
from common import add_ab_options, alternate_rounds, machine, module_at_revision  # noqa: E402

from telesketch.sketches import cocosketch as current  # noqa: E402
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch  # noqa: E402

KIB = 1024
#: (row label, sketch factory taking memory bytes, memory in KiB) as bench_kernels' rows
ROWS = [
    *[(f"ResidualSketch {mode} {kib} KiB",
       lambda memory, mode=mode: ResidualSketch(mode=mode, memory_bytes=memory, threshold=2000, seed=1), kib)
      for mode, kib in (("byte", 32), ("byte", 128), ("bit", 256))],
    # layout = "tuned"'s two picks (issue 20): its 16-24 layout and flat (F alone, CocoSketch's state)
    *[(f"ResidualSketch {name} byte {kib} KiB",
       lambda memory, kw=kw: ResidualSketch(mode="byte", memory_bytes=memory, threshold=2000, seed=1, **kw), kib)
      for name, kw in (("16-24", {"crucial_layers": (16, 24), "split": (0.5, 0.25, 0.25)}),
                       ("flat", {"crucial_layers": ()}))
      for kib in (128,)],
    *[(f"CocoSketch {mode} {kib} KiB",
       lambda memory, mode=mode: CocoSketch(mode=mode, memory_bytes=memory, threshold=2000, seed=1), kib)
      for mode, kib in (("byte", 32), ("byte", 128), ("bit", 256))],
]


def load_base(rev: str, workdir: Path):
    """Import ``telesketch/sketches/cocosketch.py`` as of ``rev`` (a module named ``cocosketch_base``)."""
    return module_at_revision(REPO, rev, "telesketch/sketches/cocosketch.py", workdir)


def kernel_args(module, sketch):
    """``stream_kernel``'s arguments after the keys and weights, as ``update_addresses`` passes them
    (``masks``: ResidualSketch's tuple and CocoSketch's None where the module takes them, else arrays)."""
    source = inspect.getsource(module)
    if isinstance(sketch, ResidualSketch):
        masks = sketch.kernel_masks() if "m = len(masks)" in source else sketch._masks
        return (sketch.cells, sketch.occ, masks, np.int64(sketch.T), sketch._seed_mix)
    f_only = None if "if masks is None" in source else np.zeros(0, np.uint32)
    return (sketch.cells, sketch.occ, f_only, 0, sketch._seed_mix)


def run_once(module, factory, memory: int, batches) -> tuple[float, bytes]:
    """Thread CPU seconds of one fresh sketch's kernel over every batch, and its final arrays' bytes."""
    sketch = factory(memory)
    connection = sketch.params.connection if isinstance(sketch, ResidualSketch) else True
    no_weights = np.zeros(0, np.int64)
    args = kernel_args(module, sketch)
    packets = 0
    start = time.thread_time()
    for keys in batches:
        module.stream_kernel(keys, no_weights, *args, np.uint64(packets), connection, *sketch._geometry)
        packets += keys.shape[0]
    return time.thread_time() - start, sketch.cells.tobytes() + sketch.occ.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ab_options(ap, REPO, "cocosketch.py", "HEAD")
    ap.add_argument("--only", default="", help="comma-separated row prefixes (Residual,Coco)")
    args = ap.parse_args()
    nb.set_num_threads(1)
    if args.workload == "spec":
        full = bench_kernels.spec_workloads(args.shared, args.cache, args.packets)["hhh"]
    else:
        full = bench_kernels.workload(args.packets, 100_000)
    batches = [np.ascontiguousarray(b.src_ip) for b in full.split(args.batch)]
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
          f"# {args.workload} workload, {len(full)} packets in batches of {args.batch}; "
          f"median of {args.rounds} alternating rounds (thread CPU time)\n")
    print(f"| kernel | {args.base} Mops | this tree Mops | this tree / {args.base} |")
    print("|---|---|---|---|")
    only = tuple(filter(None, args.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        for label, factory, kib in ROWS:
            if only and not label.startswith(only):
                continue
            for module in (base, current):  # compile or load caches outside the timed rounds
                run_once(module, factory, 4 * KIB, batches[:1])
            base_s, ours_s = alternate_rounds(lambda: run_once(base, factory, kib * KIB, batches),
                                              lambda: run_once(current, factory, kib * KIB, batches),
                                              args.rounds, label)
            ratio = float(np.median(np.array(base_s) / np.array(ours_s)))
            print(f"| {label} | {len(full) / np.median(base_s) / 1e6:.1f} | "
                  f"{len(full) / np.median(ours_s) / 1e6:.1f} | {ratio:.2f}x |", flush=True)
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
