"""Traffic summary of a capture: counts, protocol mix, top talkers, top flows, timespan.

Streams the capture batch by batch; memory grows with distinct flows, not with packets.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesketch.packets import PacketBatch, format_ipv4, unpack_flow_key

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 58: "ICMPv6"}


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
    sources: Counter = field(default_factory=Counter)
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
        for values, counter in ((batch.proto, self.protocols), (batch.src_ip, self.sources)):
            keys, counts = np.unique(values, return_counts=True)
            counter.update(dict(zip(keys.tolist(), counts.tolist())))
        keys, counts = np.unique(batch.flow_keys_void(), return_counts=True)
        self.flows.update({k.tobytes(): c for k, c in zip(keys, counts.tolist())})

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
        lines += [f"  {format_ipv4(ip):<15} {c:>10,} pkts" for ip, c in self.sources.most_common(top)]
        lines.append(f"top {top} flows:")
        for key, count in self.flows.most_common(top):
            src, dst, sport, dport, proto = unpack_flow_key(key)
            lines.append(
                f"  {format_ipv4(src)}:{sport} -> {format_ipv4(dst)}:{dport} "
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
