#!/usr/bin/env python3
"""The write-ahead log append of this tree against another git revision's, alternating in one process.

The other revision's ``telesketch/service/epochs.py`` is written (``git show``) into a temporary
directory and imported beside this tree's as ``epochs_base``. Each round, a fresh
``EpochManager`` of each (its own data directory, durability ``none``: the write without the fsync,
as ``bench_ingest_costs.py`` measures it) logs the same received batches with ``_log``; the thread
CPU time of those calls is the round's figure. After every round the two ``wal.log`` files must be
byte-identical. Reported: each side's ns/packet (median) and the median of this tree / base.

Also printed, for where the time goes: one process's thread CPU per packet of the record's parts
(CRC32C of the payload, joining frame and payload, and ``os.write`` of the payload alone to a fresh
file and over the same offset of a file, i.e. without new page-cache pages).

    .venv/bin/python benchmarks/bench_wal_ab.py [--base main] [--packets 2000000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from bench_ingest import make_messages  # noqa: E402
from common import alternate_rounds, machine, module_at_revision  # noqa: E402

import crc32c  # noqa: E402

from telesketch.service import epochs as current  # noqa: E402
from telesketch.service.sketchset import SketchSet  # noqa: E402

EPOCH_NS = 3600 * 10**9


def run_once(module, raws: list[bytes], order: list[int], tmp: Path, tag: str) -> tuple[float, bytes]:
    """Thread CPU seconds of ``_log`` of ``raws[i] for i in order`` into a fresh log; the log's bytes."""
    data = tmp / tag
    manager = module.EpochManager(SketchSet.from_config({}), EPOCH_NS, 4, data, wal=True, durability="none")
    try:
        spent = 0.0
        for i in order:
            start = time.thread_time()
            manager._log(raws[i])
            spent += time.thread_time() - start
    finally:
        manager.close()
    log = (data / "wal.log").read_bytes()
    for f in data.iterdir():
        f.unlink()
    data.rmdir()
    return spent, log


def parts(raws: list[bytes], order: list[int], tmp: Path) -> dict[str, float]:
    """Thread CPU ns per packet (this process, one pass) of the record's parts."""
    out = {}
    fd_new = os.open(tmp / "parts-append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    fd_same = os.open(tmp / "parts-same", os.O_WRONLY | os.O_CREAT)
    head = bytes(16)
    for name, fn in (("crc32c of the payload", lambda r: crc32c.crc32c(r)),
                     ("frame + payload joined (bytes concat)", lambda r: head + r),
                     ("os.write of the payload, appending (new pages)", lambda r: os.write(fd_new, r)),
                     ("os.write of the payload, same offset (cached pages)", lambda r: os.pwrite(fd_same, r, 0))):
        start = time.thread_time()
        for i in order:
            fn(raws[i])
        out[name] = time.thread_time() - start
    os.close(fd_new)
    os.close(fd_same)
    (tmp / "parts-append").unlink()
    (tmp / "parts-same").unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision whose epochs.py is the baseline")
    ap.add_argument("--batch-sizes", default="8192,65536", help="comma-separated packets per batch")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets logged per side per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating base/this-tree rounds")
    args = ap.parse_args()
    print(f"# {machine()}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        tmp = Path(workdir)
        base = module_at_revision(REPO, args.base, "telesketch/service/epochs.py", tmp)
        print("\n| batch | bytes/packet | base ns/packet | this tree ns/packet | this / base (median) | rounds | log |\n"
              "|---|---|---|---|---|---|---|")
        split = {}
        for size in (int(s) for s in args.batch_sizes.split(",")):
            raws = [m.SerializeToString() for m in make_messages(size * 16, size)[:16]]
            order = [i % len(raws) for i in range(max(1, args.packets // size))]
            n = len(order) * size
            b, o = alternate_rounds(lambda: run_once(base, raws, order, tmp, "base"),
                                    lambda: run_once(current, raws, order, tmp, "ours"),
                                    args.rounds, f"log at {size}")
            ratio = float(np.median(np.array(o) / np.array(b)))
            print(f"| {size} | {len(raws[0]) / size:.1f} | {np.median(b) / n * 1e9:.1f} | {np.median(o) / n * 1e9:.1f} "
                  f"| {ratio:.3f} | {args.rounds} | byte-identical every round |", flush=True)
            split[size] = {k: v / n * 1e9 for k, v in parts(raws, order, tmp).items()}
        sizes = list(split)
        print("\n| part (one pass) | " + " | ".join(f"{s} ns/packet" for s in sizes) + " |\n|---|"
              + "---|" * len(sizes))
        for name in split[sizes[0]]:
            print(f"| {name} | " + " | ".join(f"{split[s][name]:.1f}" for s in sizes) + " |")
    print(f"\n# load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
