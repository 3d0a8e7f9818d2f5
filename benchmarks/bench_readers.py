"""Capture-reader throughput: the Numba fast path vs scapy RawPcapReader + struct and vs dpkt.

Input: ../shared/traces/ndpi_merged_hdr128.pcap (or under ``$TELESKETCH_SHARED_TRACES``) with its
records repeated until the file holds at least ``--packets`` packets (a temporary file). The fast reader parses the whole file; scapy and
dpkt parse the first ``--subset`` packets and their per-packet rate is extrapolated (they are
linear in the packet count). Each figure is the best of ``--repeat`` runs, after a warm-up run
that loads the Numba kernels and the page cache.

    .venv/bin/python benchmarks/bench_readers.py --packets 2000000 --subset 200000

Every parser extracts the same fields (5-tuple, length, IP ID, TTL, TOS, TCP flags/window/seq)
for IPv4 packets; the fast reader also fills the 40-byte header block.
"""
from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine

from telesketch.traces import ReadStats, read_capture

#: ../shared/traces beside the checkout, or $TELESKETCH_SHARED_TRACES (as the tests: a git worktree has none beside it)
TRACES = Path(os.environ.get("TELESKETCH_SHARED_TRACES") or Path(__file__).resolve().parents[2] / "shared" / "traces")
TRACE = TRACES / "ndpi_merged_hdr128.pcap"


def build_looped(src: Path, packets: int, dst: Path) -> int:
    """Write ``src``'s records repeated to reach ``packets``; returns the packet count written."""
    data = src.read_bytes()
    header, body = data[:24], data[24:]
    per_copy = count_records(body)
    copies = -(-packets // per_copy)
    with open(dst, "wb") as f:
        f.write(header)
        for _ in range(copies):
            f.write(body)
    return copies * per_copy


def count_records(body: bytes) -> int:
    n = pos = 0
    while pos < len(body):
        pos += 16 + struct.unpack_from("<I", body, pos + 8)[0]
        n += 1
    return n


def run_fast(path: Path, batch_size: int) -> tuple[int, int]:
    stats = ReadStats()
    rows = 0
    for batch in read_capture(path, batch_size=batch_size, stats=stats):
        rows += len(batch)
    return stats.packets_read, rows


def run_scapy(path: Path, limit: int) -> tuple[int, int]:
    """scapy RawPcapReader for records, struct for Ethernet/VLAN/IPv4/TCP/UDP; column lists."""
    from scapy.utils import RawPcapReader

    cols = [[] for _ in range(12)]
    n = 0
    unpack_ip = struct.Struct("!BBHHHBBHII").unpack_from
    unpack_tcp = struct.Struct("!HHIIBBH").unpack_from
    unpack_ports = struct.Struct("!HH").unpack_from
    with RawPcapReader(str(path)) as reader:
        for frame, meta in reader:
            n += 1
            if n > limit:
                n -= 1
                break
            if len(frame) < 14:
                continue
            et, off = int.from_bytes(frame[12:14], "big"), 14
            while et in (0x8100, 0x88A8) and len(frame) >= off + 4:
                et, off = int.from_bytes(frame[off + 2:off + 4], "big"), off + 4
            if et != 0x0800 or len(frame) < off + 20:
                continue
            vihl, tos, tot, ipid, frag, ttl, proto, _, src, dst = unpack_ip(frame, off)
            t = off + (vihl & 15) * 4
            sport = dport = flags = win = seq = 0
            if frag & 0x1FFF == 0:
                if proto == 6 and len(frame) >= t + 16:
                    sport, dport, seq, _, _, flags, win = unpack_tcp(frame, t)
                elif proto == 17 and len(frame) >= t + 4:
                    sport, dport = unpack_ports(frame, t)
            for c, v in zip(cols, (meta.sec * 10**9 + meta.usec * 1000, src, dst, sport, dport,
                                   proto, tot, ipid, ttl, tos, flags, win)):
                c.append(v)
    arrays = [np.array(c, np.uint64) for c in cols]
    return n, len(arrays[0])


def run_dpkt(path: Path, limit: int) -> tuple[int, int]:
    """dpkt.pcap.Reader + dpkt.ethernet.Ethernet decoding; column lists."""
    import dpkt

    cols = [[] for _ in range(12)]
    n = 0
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            n += 1
            if n > limit:
                n -= 1
                break
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except (dpkt.UnpackError, IndexError):
                continue
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            l4 = ip.data
            sport = dport = flags = win = _seq = 0
            if isinstance(l4, dpkt.tcp.TCP):
                sport, dport, flags, win, _seq = l4.sport, l4.dport, l4.flags, l4.win, l4.seq
            elif isinstance(l4, dpkt.udp.UDP):
                sport, dport = l4.sport, l4.dport
            for c, v in zip(cols, (int(ts * 1e9), int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big"),
                                   sport, dport, ip.p, ip.len, ip.id, ip.ttl, ip.tos, flags, win)):
                c.append(v)
    arrays = [np.array(c, np.uint64) for c in cols]
    return n, len(arrays[0])


def best_of(repeat: int, fn, *args) -> tuple[float, tuple]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets in the looped file")
    ap.add_argument("--subset", type=int, default=200_000, help="packets timed for scapy and dpkt")
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trace", type=Path, default=TRACE)
    args = ap.parse_args()
    if not args.trace.exists():
        raise SystemExit(f"trace not found: {args.trace}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "looped.pcap"
        total = build_looped(args.trace, args.packets, path)
        size = path.stat().st_size
        run_fast(path, args.batch_size)  # warm-up: Numba cache load / compile, page cache
        t_fast, (recs, rows) = best_of(args.repeat, run_fast, path, args.batch_size)
        t_scapy, (n_s, rows_s) = best_of(args.repeat, run_scapy, path, args.subset)
        t_dpkt, (n_d, rows_d) = best_of(args.repeat, run_dpkt, path, args.subset)
    fast = recs / t_fast
    scapy_rate, dpkt_rate = n_s / t_scapy, n_d / t_dpkt
    print(f"machine: {machine()}")
    print(f"input: {args.trace.name} looped to {total:,} packets ({size / 2**20:.0f} MiB), "
          f"batch_size={args.batch_size}, best of {args.repeat}")
    print(f"fast reader : {recs:,} records ({rows:,} IPv4 rows) in {t_fast:.3f} s = "
          f"{fast / 1e6:.2f} M packets/s ({size / t_fast / 2**30:.2f} GiB/s)")
    print(f"scapy+struct: {n_s:,} records ({rows_s:,} IPv4 rows) in {t_scapy:.3f} s = "
          f"{scapy_rate / 1e6:.3f} M packets/s (extrapolated to the full file: {total / scapy_rate:.1f} s)")
    print(f"dpkt        : {n_d:,} records ({rows_d:,} IPv4 rows) in {t_dpkt:.3f} s = "
          f"{dpkt_rate / 1e6:.3f} M packets/s (extrapolated to the full file: {total / dpkt_rate:.1f} s)")
    print(f"speed-up: {fast / scapy_rate:.1f}x scapy RawPcapReader+struct, {fast / dpkt_rate:.1f}x dpkt")


if __name__ == "__main__":
    main()
