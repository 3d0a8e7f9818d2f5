"""Traffic summary of a capture: counts, protocol mix, top talkers, top flows, timespan.

Streams the capture batch by batch; memory grows with distinct flows, not with packets.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesketch.packets import FLOW_KEY37_BYTES, PacketBatch, unpack_flow_key, unpack_flow_key37
from telesketch.presenter import format_address

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 58: "ICMPv6"}


def flow_parts(key: bytes) -> tuple[str, str, int, int, int]:
    """``(src text, dst text, src_port, dst_port, proto)`` of a summary flow key: 13 bytes (IPv4,
    dotted quads) or 37 bytes (IPv6, RFC 5952 text)."""
    if len(key) == FLOW_KEY37_BYTES:
        src, dst, sport, dport, proto = unpack_flow_key37(key)
    else:
        src, dst, sport, dport, proto = unpack_flow_key(key)
    return format_address(src), format_address(dst), sport, dport, proto


def _endpoint(address: str, port: int) -> str:
    """``10.0.0.1:80`` or ``[2001:db8::1]:80`` (RFC 5952 section 6: IPv6 bracketed before a port)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _count(counter: Counter, values: np.ndarray) -> None:
    """Add the occurrences of each value of ``values`` (numbers stay ints; ``V`` scalars become bytes)."""
    keys, counts = np.unique(values, return_counts=True)
    names = [k.tobytes() for k in keys] if keys.dtype.kind == "V" else keys.tolist()
    counter.update(dict(zip(names, counts.tolist())))


@dataclass
class TrafficSummary:
    """What a capture holds. Rates are computed over the capture's own timestamps."""

    path: str
    packets: int = 0
    ip_bytes: int = 0
    first_ts_ns: int = 0
    last_ts_ns: int = 0
    read_seconds: float = 0.0
    protocols: Counter = field(default_factory=Counter)
    #: packets per source address: ``int`` keys IPv4, 16-byte ``bytes`` keys IPv6
    sources: Counter = field(default_factory=Counter)
    #: packets per 5-tuple: 13-byte keys IPv4 (:func:`~telesketch.packets.flow_key_bytes`), 37-byte keys IPv6
    flows: Counter = field(default_factory=Counter)

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.last_ts_ns - self.first_ts_ns) / 1e9)

    def add(self, batch: PacketBatch) -> None:
        """Fold one batch into the summary (array-at-a-time counting)."""
        n = len(batch)
        if n == 0:
            return
        if self.packets == 0:
            self.first_ts_ns = int(batch.ts_ns[0])
        self.last_ts_ns = max(self.last_ts_ns, int(batch.ts_ns.max()))
        self.packets += n
        self.ip_bytes += int(batch.length.sum(dtype=np.uint64))
        _count(self.protocols, batch.proto)
        v4 = batch.family(4)  # the batch itself when it holds no IPv6 row
        _count(self.sources, v4.src_ip)
        _count(self.flows, v4.flow_keys_void())
        if len(v4) < n:  # IPv6 rows: their src_ip is 0, so they are counted by 16-byte address
            v6 = batch.family(6)
            _count(self.sources, np.ascontiguousarray(v6.src_ip6).view("V16").ravel())
            _count(self.flows, v6.flow_keys37_void())

    def render(self, top: int = 5) -> str:
        """Human-readable multi-line report."""
        lines = [
            f"capture        {self.path}",
            f"packets        {self.packets:,}  ({self.ip_bytes:,} IP bytes)",
            f"flows          {len(self.flows):,} (5-tuples), {len(self.sources):,} source addresses",
            f"timespan       {self.duration_s:.2f} s of traffic",
            f"read rate      {self.packets / max(self.read_seconds, 1e-9) / 1e6:.2f} M packets/s",
            "protocols      "
            + ", ".join(
                f"{PROTO_NAMES.get(p, str(p))} {c / max(self.packets, 1):.1%}" for p, c in self.protocols.most_common()
            ),
            f"top {top} sources:",
        ]
        lines += [f"  {format_address(ip):<15} {c:>10,} pkts" for ip, c in self.sources.most_common(top)]
        lines.append(f"top {top} flows:")
        for key, count in self.flows.most_common(top):
            src, dst, sport, dport, proto = flow_parts(key)
            lines.append(
                f"  {_endpoint(src, sport)} -> {_endpoint(dst, dport)} "
                f"{PROTO_NAMES.get(proto, str(proto))}  {count:,} pkts"
            )
        return "\n".join(lines)


def summarize_capture(path: str | Path, batch_size: int = 65536) -> TrafficSummary:
    """Read a capture (pcap, pcapng, gzip) with the fast reader and summarise it."""
    from telesketch.traces import read_capture

    summary = TrafficSummary(path=str(path))
    start = time.perf_counter()
    for batch in read_capture(path, batch_size=batch_size):
        summary.add(batch)
    summary.read_seconds = time.perf_counter() - start
    return summary
