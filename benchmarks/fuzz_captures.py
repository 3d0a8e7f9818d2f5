"""Mutated captures through the readers (issue 16: "never crashed on 10,000 mutated captures").

Seed captures: small synthetic files from ``generate_capture`` (pcap and pcapng, both byte orders,
micro- and nanosecond timestamps, several link types, IPv6 mixed in), each also gzip-compressed.
Each of ``--captures`` mutants is one seed with one to four mutations: bit flips, bytes set to
0x00 / 0xff / random, a 32-bit field set to an extreme (0, 1, 0x7fffffff, 0xffffffff: lengths and
block sizes), truncation, a chunk deleted, duplicated or inserted (random bytes or a copy of
another part); a gzip seed's mutations go under the compression (3 in 4, then compressed again)
or into the compressed stream itself. The seeds are read once first (the Numba kernels load outside
the timings). Every mutant is read to
the end with ``read_capture`` (batch size 64 so damage falls across batches) and classified:

* ``read``: read to the end without an error; the batch columns all have the batch's length;
* ``clear error``: :class:`telesketch.traces.CaptureError` (a ``ValueError`` naming the file and,
  for damage, the offset), after yielding the good packets before it;
* ``crash``: any other exception (its type, message and the mutant's seed are printed) or a
  worker process that died (a signal, e.g. a segmentation fault in a kernel);
* ``slow``: a read over ``--slow-seconds`` (a hang, or a quadratic path like fault 8's pcapng
  interface lookup) is counted and named too.

Mutants are read in worker processes (``--workers``, chunks of ``--chunk``), so a crash of the
interpreter is seen and counted, not just the end of the run.

    cd benchmarks && python fuzz_captures.py --captures 10000 [--seed 0] [--workers 2]

The run is deterministic for a given ``--seed``: a crash can be reproduced from its mutant number.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (format, byte order, nanosecond, link, ipv6 share) of each seed capture
SEEDS = [("pcap", "little", False, "ethernet", 0.0), ("pcap", "big", True, "vlan", 0.3),
         ("pcap", "little", True, "raw", 0.0), ("pcap", "little", False, "sll2", 0.5),
         ("pcapng", "little", False, "ethernet", 0.3), ("pcapng", "big", True, "ethernet", 0.0),
         ("pcapng", "little", True, "null", 0.0), ("pcapng", "big", False, "sll", 0.5)]
EXTREMES = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0xFFFF)


def seed_captures(tmp: Path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each seed capture, plain and gzip-compressed."""
    from telesketch.traces import generate_capture

    out = []
    for i, (fmt, order, ns, link, v6) in enumerate(SEEDS):
        path = tmp / f"seed{i}.{fmt}"
        generate_capture(path, packets=60, flows=8, seed=i, format=fmt, byteorder=order, nanosecond=ns, link=link,
                         ipv6_share=v6, snaplen=96)
        raw = path.read_bytes()
        name = f"{fmt}-{order}-{'ns' if ns else 'us'}-{link}-v6_{v6}"
        out.append((name, raw))
        out.append((name + ".gz", gzip.compress(raw, 6, mtime=0)))
    return out


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """``data`` with one to four random mutations, and their names."""
    buf = bytearray(data)
    names = []
    for _ in range(int(rng.integers(1, 5))):
        if not buf:
            buf = bytearray(rng.integers(0, 256, 8, dtype=np.uint8).tobytes())
        n = len(buf)
        at = int(rng.integers(0, n))
        kind = str(rng.choice(["flip", "byte", "extreme", "truncate", "delete", "duplicate", "insert", "splice"]))
        if kind == "flip":
            buf[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == "byte":
            buf[at] = int(rng.choice([0, 0xFF, int(rng.integers(0, 256))]))
        elif kind == "extreme":
            value = int(rng.choice(EXTREMES))
            width = 4 if at + 4 <= n else 1
            order = "little" if rng.integers(0, 2) else "big"
            buf[at:at + width] = value.to_bytes(4, order)[:width]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "delete":
            del buf[at:at + int(rng.integers(1, 64))]
        elif kind == "duplicate":
            size = int(rng.integers(1, 128))
            buf[at:at] = buf[at:at + size]
        elif kind == "insert":
            buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        else:  # a chunk copied from elsewhere over this place
            src = int(rng.integers(0, n))
            size = int(rng.integers(1, 256))
            buf[at:at + size] = buf[src:src + size]
        names.append(kind)
    return bytes(buf), names


def read_one(path: Path) -> tuple[str, str, int]:
    """``(outcome, detail, packets)`` of reading ``path`` to the end."""
    from telesketch.traces import CaptureError, read_capture

    packets = 0
    try:
        for batch in read_capture(path, batch_size=64):
            lengths = {len(getattr(batch, c)) for c in batch.columns()}
            if lengths != {len(batch)}:
                return "crash", f"batch columns of lengths {sorted(lengths)} in a batch of {len(batch)}", packets
            packets += len(batch)
    except CaptureError as exc:
        return "clear error", str(exc).replace(str(path), "FILE")[:160], packets
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a crash, named
        return "crash", f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)[-400:]}", packets
    return "read", "", packets


def worker(first: int, count: int, seed: int, slow_seconds: float) -> None:
    """Read mutants ``first .. first+count-1``; print one JSON summary line."""
    with tempfile.TemporaryDirectory(prefix="fuzzcap-") as tmp:
        tmp = Path(tmp)
        seeds = seed_captures(tmp)
        for name, data in seeds:  # warm-up: the Numba kernels load (or compile) outside the timings
            (tmp / "warm").write_bytes(data)
            (tmp / "warm.gz").write_bytes(data)
            read_one(tmp / ("warm.gz" if name.endswith(".gz") else "warm"))
        outcomes, crashes, slow, errors = Counter(), [], [], Counter()
        packets = 0
        worst = 0.0
        for i in range(first, first + count):
            rng = np.random.default_rng([seed, i])
            name, data = seeds[i % len(seeds)]
            if name.endswith(".gz") and rng.random() < 0.75:  # damage under the compression, mostly
                mutant, how = mutate(gzip.decompress(data), rng)
                mutant = gzip.compress(mutant, 6, mtime=0)
            else:
                mutant, how = mutate(data, rng)
            path = tmp / f"m{i}{'.gz' if name.endswith('.gz') else ''}"
            path.write_bytes(mutant)
            t = time.perf_counter()
            outcome, detail, n = read_one(path)
            took = time.perf_counter() - t
            worst = max(worst, took)
            outcomes[outcome] += 1
            packets += n
            if outcome == "crash":
                crashes.append({"mutant": i, "seed": name, "mutations": how, "detail": detail})
            elif outcome == "clear error":
                errors[detail.split(":")[1].strip()[:60] if ":" in detail else detail[:60]] += 1
            if took > slow_seconds:
                slow.append({"mutant": i, "seed": name, "seconds": round(took, 2)})
            path.unlink()
    print(json.dumps({"outcomes": outcomes, "crashes": crashes, "slow": slow, "packets": packets,
                      "worst_seconds": worst, "errors": errors.most_common(8)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", type=int, default=10_000, help="mutated captures to read")
    ap.add_argument("--seed", type=int, default=0, help="random seed (a run is deterministic for it)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes at once")
    ap.add_argument("--chunk", type=int, default=1000, help="mutants per worker process")
    ap.add_argument("--slow-seconds", type=float, default=2.0, help="a read longer than this is reported as slow")
    ap.add_argument("--worker", nargs=2, type=int, metavar=("FIRST", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.seed, args.slow_seconds)
        return
    from common import machine

    print(f"# {machine()}; command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    start = time.perf_counter()
    chunks = [(first, min(args.chunk, args.captures - first)) for first in range(0, args.captures, args.chunk)]
    total, crashes, slow, errors, packets, worst = Counter(), [], [], Counter(), 0, 0.0
    running: list[tuple[subprocess.Popen, tuple[int, int]]] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    while chunks or running:
        while chunks and len(running) < args.workers:
            first, count = chunks.pop(0)
            cmd = [sys.executable, __file__, "--worker", str(first), str(count), "--seed", str(args.seed),
                   "--slow-seconds", str(args.slow_seconds)]
            running.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env), (first, count)))
        proc, (first, count) = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:  # the interpreter died: every mutant of the chunk is unaccounted for
            total["crash"] += 1
            crashes.append({"chunk": [first, count], "detail": f"worker exited with {proc.returncode}"})
            continue
        got = json.loads(out.strip().splitlines()[-1])
        total.update(got["outcomes"])
        crashes += got["crashes"]
        slow += got["slow"]
        errors.update(dict(got["errors"]))
        packets += got["packets"]
        worst = max(worst, got["worst_seconds"])
    print(json.dumps({"captures": args.captures, "outcomes": dict(total), "crashes": len(crashes),
                      "slow_reads": len(slow), "worst_read_seconds": round(worst, 3), "packets_read": packets,
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    print(json.dumps({"most_common_errors": errors.most_common(10)}), flush=True)
    for c in crashes[:20]:
        print(json.dumps({"crash": c}), flush=True)
    for s in slow[:20]:
        print(json.dumps({"slow": s}), flush=True)
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
