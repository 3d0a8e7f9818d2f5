"""Synthetic captures with realistic structure, assembled with vectorised numpy.

Model (all draws from one ``numpy.random.Generator`` seeded by ``seed``, so output is
deterministic):

* **Flow sizes** follow a Zipf law: flow of rank ``r`` gets a share ``r**-zipf``; sizes are
  ``1 + multinomial(packets - flows, shares)`` so every flow has at least one packet.
* **Addresses** are hierarchical: the source /8, /16 and /24 are each drawn from a small skewed
  set, so a few prefixes carry much of the traffic (hierarchical heavy hitters are meaningful).
* **Header fields correlate with flow size** the way real traffic does: elephants are mostly TCP
  from server ports (443, 80, ...) with near-MTU lengths, large windows and server TTLs; mid-size
  flows mix web TCP with DNS/NTP/RTP-like UDP; mice are DNS-like UDP queries, SYN probes and ICMP
  with short lengths and ephemeral ports. TTL is an initial value (64/128/255) minus 1-30 hops.
* **IPv4 Identification** runs per flow, +1 per packet, with injected forward jumps at rate
  ``gap_rate`` (sizes: minor [2, 5) 50 %, major [5, 30) 35 %, large [30, 2000) 15 %) and
  occasional reorders (adjacent IDs swapped, rate ``reorder_rate``).
* **Timestamps** increase over ``duration_s``: each flow starts uniformly at random and spreads
  its packets with exponential gaps over part of the remaining time.
* TCP sequence numbers advance by payload bytes; SYN/SYN-ACK open and FIN closes TCP flows.

Frames are written truncated to ``snaplen`` bytes (headers only, as in CAIDA traces); the IPv4
total length keeps the full size. Optional noise: IPv4 options, non-first fragments, IPv6 frames.

**IPv6 flows** (``ipv6_share``: the fraction of flows, drawn from a separate random stream so the
IPv4 flows are those of the IPv4-only capture, and ``ipv6_share=0`` writes today's bytes): the
same sizes, timestamps, ports and TCP fields, sent over IPv6. Addresses follow the IPv4 hierarchy
one level down: /32 from the IPv4 /8 (a few real-looking allocations), /48 from the /16, /56 from
the /24, and a per-host interface identifier. Hop limit = TTL, traffic class = TOS, a random flow
label per flow (0 for ICMPv6). Each packet carries an extension-header chain from
``_EXT_TEMPLATES`` (none, hop-by-hop, destination options, routing type 2, hop-by-hop +
destination options + AH, ESP), and UDP packets may carry a fragment header (first fragments
with the UDP header, non-first ones without; the IPv4 model's non-first fragments become IPv6
non-first fragments). The fragment identification's low 16 bits run the flow's IP-ID sequence
(with its injected gaps); ICMP becomes ICMPv6 echo (58).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from telesketch.packets import HEADER_BYTES, PacketBatch

#: link name -> pcap link type
LINKS = {"ethernet": 1, "vlan": 1, "raw": 101, "ipv4": 228, "sll": 113, "sll2": 276, "null": 0}
GAP_CLASSES = (("minor", 2, 5, 0.50), ("major", 5, 30, 0.35), ("large", 30, 2000, 0.15))
_L3L4 = 96  # widest IPv4 header (60) + TCP header with options (32), rounded up
#: IPv6 extension-header chains (next-header values in order) and their weights per IPv6 packet.
_EXT_TEMPLATES = ((), (0,), (60,), (43,), (0, 60, 51), (50,))
_EXT_WEIGHTS = (0.70, 0.07, 0.06, 0.05, 0.06, 0.06)
#: Bytes of each extension header as written (ESP: SPI + sequence number, then opaque payload).
_EXT_LEN = {0: 8, 60: 8, 43: 24, 51: 24, 44: 8, 50: 8}
_ESP_PAYLOAD = 16
#: Widest IPv6 datagram prefix written: header (40) + longest chain with a fragment header (48)
#: + TCP header with options (32).
_L3L4_V6 = 40 + 48 + 32
#: Share of UDP packets of IPv6 flows that get a first / a non-first fragment header.
_V6_FIRST_FRAG, _V6_LATER_FRAG = 0.04, 0.04
#: /32 allocations the IPv6 addresses are drawn into (by the IPv4 first octet).
_V6_PREFIXES = np.array([0x20010DB8, 0x2A001450, 0x26001F18, 0x2001067C, 0x2C0FFB50, 0x2406DA00], np.uint64)
_CHUNK = 65536


@dataclass
class GenerateStats:
    """What a generator call produced: ``packets`` rows of both families (``ipv6_packets`` of them
    in ``ipv6_flows`` IPv6 flows); ``noise_packets`` are the extra IPv6/UDP frames of
    ``ipv6_rate``, outside the model and not in ``generate_batch``."""

    path: str | None
    packets: int
    flows: int
    gaps: int
    gaps_by_class: dict = field(default_factory=dict)
    reorders: int = 0
    noise_packets: int = 0
    link: str = "ethernet"
    linktype: int = 1
    format: str = "pcap"
    nanosecond: bool = False
    bytes_written: int = 0
    max_flow_size: int = 0
    ipv6_packets: int = 0
    ipv6_flows: int = 0


@dataclass
class _Synth:
    """Per-packet model output in file order, plus the summary."""

    batch: PacketBatch
    l3: np.ndarray          # uint8[n, W] IP (+ extension) + transport bytes as written
    l3_len: np.ndarray      # length of each datagram (bytes on the wire after the link header)
    stats: GenerateStats
    l2_src: np.ndarray      # u32 per packet: the flow's IPv4 source (link-layer addresses, VLAN choice)
    l2_dst: np.ndarray
    is_ipv6: np.ndarray     # bool per packet


def _be(arr: np.ndarray, col: int, values, width: int) -> None:
    """Write ``values`` big-endian into ``arr[:, col:col+width]``."""
    v = np.asarray(values, np.uint64)
    for k in range(width):
        arr[:, col + k] = (v >> np.uint64(8 * (width - 1 - k))) & np.uint64(0xFF)


def _read_be(arr: np.ndarray, col, width: int) -> np.ndarray:
    """Big-endian unsigned ints from ``arr[:, col:col+width]`` (``col`` scalar or per row)."""
    rows = np.arange(arr.shape[0])
    out = np.zeros(arr.shape[0], np.uint64)
    for k in range(width):
        out = (out << np.uint64(8)) | arr[rows, np.asarray(col) + k].astype(np.uint64)
    return out


def _place(dst: np.ndarray, start: np.ndarray, src: np.ndarray, count: np.ndarray) -> None:
    """``dst[r, start[r] + k] = src[r, k]`` for ``k < count[r]`` (vectorised scatter)."""
    k = np.arange(src.shape[1])
    rows, cols = np.nonzero(k[None, :] < count[:, None])
    dst[rows, start[rows] + cols] = src[rows, cols]


def _segment_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each flow's first packet (``first`` = bool[n])."""
    total = np.cumsum(values)
    starts = np.flatnonzero(first)
    before = np.repeat(total[starts] - values[starts], np.diff(np.append(starts, len(values))))
    return total - before


def _zipf_sizes(rng, packets: int, flows: int, zipf: float) -> np.ndarray:
    """Flow sizes, largest first: 1 + a multinomial split of the rest with shares ``r**-zipf``."""
    shares = np.arange(1, flows + 1, dtype=np.float64) ** -float(zipf)
    shares /= shares.sum()
    return 1 + rng.multinomial(packets - flows, shares)


def _skewed_choice(rng, values: np.ndarray, size: int, skew: float = 1.2) -> np.ndarray:
    p = np.arange(1, len(values) + 1, dtype=np.float64) ** -skew
    return values[rng.choice(len(values), size=size, p=p / p.sum())]


def _addresses(rng, flows: int, n8: int, n16: int, n24: int, first_octets) -> np.ndarray:
    """Hierarchically skewed u32 addresses: skewed /8, then /16, then /24, host uniform."""
    o1 = _skewed_choice(rng, rng.choice(np.asarray(first_octets), n8, replace=False), flows)
    o2 = _skewed_choice(rng, rng.permutation(256)[:n16], flows, 1.0)
    o3 = _skewed_choice(rng, rng.permutation(256)[:n24], flows, 0.9)
    o4 = rng.integers(1, 255, flows)
    return ((o1.astype(np.uint64) << 24) | (o2.astype(np.uint64) << 16)
            | (o3.astype(np.uint64) << 8) | o4.astype(np.uint64)).astype(np.uint32)


MIXES = ("zipf", "hard")


def _hard_mix(rng, packets: int, flows: int, zipf: float):
    """Flow sizes and endpoints of the ``mix="hard"`` setting: ``(sizes, src, dst)``.

    Built to stress sketches beyond the papers' workloads (issue 20):

    * **scanners**: 24 sources, 10 % of the flows, one packet each to a distinct destination;
    * **elephants**: 6 flows with 1.5 % of the packets each (9 % together);
    * **Zipf body**: the other flows, Zipf(``zipf``) sizes, their sources drawn with Zipf(1.1)
      weights from a pool of ``flows // 5`` addresses, so a source carries many flows;
    * **hot prefixes**: 30 % of the pool lies in one /16 and 10 % in one /24 (inside another /16),
      and half the elephants are in that /24, so /16 and /24 aggregates are heavy without any of
      their sources being heavy.
    """
    n_scan = max(1, flows // 10)
    n_eleph = min(6, max(0, flows - n_scan - 1))
    n_body = flows - n_scan - n_eleph
    eleph_pkts = int(packets * 0.015)
    body_pkts = packets - n_scan - n_eleph * eleph_pkts
    if n_body < 1 or body_pkts < n_body:
        raise ValueError(f"mix='hard' needs more packets than flows (got {packets:,} packets, {flows:,} flows)")
    sizes = np.concatenate([np.full(n_eleph, eleph_pkts, np.int64), _zipf_sizes(rng, body_pkts, n_body, zipf),
                            np.ones(n_scan, np.int64)])
    pool_n = max(16, flows)
    pool = _addresses(rng, pool_n, 8, 64, 128, [23, 31, 45, 52, 64, 77, 91, 104, 142, 151, 172, 185, 203, 212])
    hot16, hot24 = np.uint32(0x8E1F0000), np.uint32(0xB9402A00)  # 142.31.0.0/16, 185.64.42.0/24
    k16, k24 = int(0.30 * pool_n), int(0.10 * pool_n)
    pool[:k16] = hot16 | rng.integers(0, 1 << 16, k16).astype(np.uint32)
    pool[k16:k16 + k24] = hot24 | rng.integers(1, 255, k24).astype(np.uint32)
    pool = rng.permutation(pool)
    weights = np.arange(1, pool_n + 1, dtype=np.float64) ** -0.6
    body_src = pool[rng.choice(pool_n, n_body, p=weights / weights.sum())]
    eleph_src = np.where(np.arange(n_eleph) % 2 == 0, hot24 | rng.integers(1, 255, n_eleph).astype(np.uint32),
                         pool[rng.integers(0, pool_n, n_eleph)]).astype(np.uint32)
    scanners = _addresses(rng, 24, 4, 8, 16, [5, 37, 89, 193])
    scan_src = scanners[rng.integers(0, 24, n_scan)]
    src = np.concatenate([eleph_src, body_src, scan_src]).astype(np.uint32)
    dst = _addresses(rng, flows, 3, 8, 32, [10, 100, 192])
    dst[-n_scan:] = (np.uint32(0x0A000000) | rng.integers(0, 1 << 24, n_scan).astype(np.uint32))
    return sizes, src, dst


def _pick(rng, mask, choices, probs, out) -> None:
    """``out[mask] = choice(choices, p=probs)`` for each masked element."""
    m = int(mask.sum())
    if m:
        out[mask] = rng.choice(np.asarray(choices), size=m, p=np.asarray(probs) / np.sum(probs))


def _flow_table(rng, sizes: np.ndarray) -> dict:
    """Per-flow attributes (proto, ports, TTL, TOS, window, direction) correlated with size."""
    f = len(sizes)
    big = sizes >= 64
    mid = (sizes >= 4) & ~big
    small = sizes < 4
    proto = np.zeros(f, np.uint8)
    _pick(rng, big, [6, 17], [0.93, 0.07], proto)
    _pick(rng, mid, [6, 17, 1], [0.70, 0.28, 0.02], proto)
    _pick(rng, small, [6, 17, 1], [0.38, 0.56, 0.06], proto)
    tcp, udp = proto == 6, proto == 17
    eph = rng.integers(32768, 61000, f)
    service = np.zeros(f, np.int64)
    _pick(rng, tcp & big, [443, 80, 8080, 22, 3306, 8443], [60, 22, 6, 5, 4, 3], service)
    _pick(rng, tcp & mid, [443, 80, 22, 25, 993, 8080], [55, 25, 6, 5, 5, 4], service)
    _pick(rng, tcp & small, [443, 80, 22, 23, 445, 3389, 8080, 53], [30, 15, 15, 10, 10, 8, 6, 6], service)
    _pick(rng, udp & big, [443, 5004, 3478, 1194], [50, 25, 15, 10], service)
    _pick(rng, udp & mid, [53, 123, 443, 5353, 5004], [40, 15, 25, 10, 10], service)
    _pick(rng, udp & small, [53, 123, 137, 161, 1900], [70, 12, 6, 6, 6], service)
    # elephants mostly carry the server->client direction (bulk download), mice client->server
    from_server = np.zeros(f, bool)
    from_server[big] = rng.random(int(big.sum())) < 0.75
    from_server[mid] = rng.random(int(mid.sum())) < 0.45
    from_server[small] = rng.random(int(small.sum())) < 0.10
    src_port = np.where(from_server, service, eph)
    dst_port = np.where(from_server, eph, service)
    icmp = proto == 1
    src_port[icmp] = 0
    dst_port[icmp] = 0
    ttl0 = np.zeros(f, np.int64)
    _pick(rng, big | mid, [64, 128, 255], [0.70, 0.22, 0.08], ttl0)
    _pick(rng, small, [64, 128, 255], [0.45, 0.50, 0.05], ttl0)
    hops = np.where(big, rng.integers(3, 18, f), rng.integers(1, 31, f))
    tos = np.zeros(f, np.int64)
    media = udp & (service == 5004) | udp & (service == 3478)
    tos[media] = 0xB8
    tos[tcp & big & (rng.random(f) < 0.1)] = 0x28
    window = np.where(big, rng.integers(16384, 65536, f),
                      np.where(mid, rng.integers(8192, 64241, f),
                               rng.choice(np.array([1024, 4096, 5840, 29200, 64240]), f)))
    return dict(proto=proto, src_port=src_port, dst_port=dst_port, ttl=np.clip(ttl0 - hops, 1, 255),
                tos=tos, window=window, big=big, mid=mid, small=small, from_server=from_server,
                service=service)


def _lengths(rng, ft: dict, flow: np.ndarray) -> np.ndarray:
    """IPv4 total lengths per packet, by flow class and protocol."""
    n = len(flow)
    proto, big, mid = ft["proto"][flow], ft["big"][flow], ft["mid"][flow]
    srv, service = ft["from_server"][flow], ft["service"][flow]
    u = rng.random(n)
    length = np.full(n, 40, np.int64)
    tcp = proto == 6
    bulk = tcp & srv & (big | mid)
    length[bulk] = np.where(u[bulk] < 0.78, 1500 - rng.integers(0, 3, int(bulk.sum())) * 52,
                            rng.integers(52, 1500, int(bulk.sum())))
    acks = tcp & ~srv & (big | mid)
    length[acks] = np.where(u[acks] < 0.8, 52, rng.integers(52, 700, int(acks.sum())))
    tcp_small = tcp & ~(big | mid)
    length[tcp_small] = rng.choice(np.array([40, 44, 52, 60]), int(tcp_small.sum()))
    udp = proto == 17
    dns = udp & (service != 443) & (service != 5004) & (service != 3478)
    length[dns] = np.where(srv[dns], rng.integers(80, 512, int(dns.sum())), rng.integers(56, 120, int(dns.sum())))
    quic = udp & (service == 443)
    length[quic] = np.where(srv[quic] & (u[quic] < 0.8), rng.integers(1200, 1358, int(quic.sum())),
                            rng.integers(60, 200, int(quic.sum())))
    rtp = udp & ((service == 5004) | (service == 3478))
    length[rtp] = rng.integers(160, 240, int(rtp.sum()))
    icmp = proto == 1
    length[icmp] = rng.choice(np.array([84, 56, 64]), int(icmp.sum()))
    return length


def _ip_ids(rng, n_flows: int, flow: np.ndarray, first: np.ndarray, gap_rate: float, reorder_rate: float):
    """Per-flow IPv4 IDs with injected jumps and reorders; returns (ids, gap counts, reorders)."""
    n = len(flow)
    inc = np.ones(n, np.int64)
    jump = (rng.random(n) < gap_rate) & ~first
    m = int(jump.sum())
    cls = rng.choice(len(GAP_CLASSES), size=m, p=[c[3] for c in GAP_CLASSES])
    lo = np.array([c[1] for c in GAP_CLASSES])[cls]
    hi = np.array([c[2] for c in GAP_CLASSES])[cls]
    inc[jump] = lo + (rng.random(m) * (hi - lo)).astype(np.int64)
    inc[first] = 0
    ids = (rng.integers(0, 65536, n_flows)[flow] + _segment_cumsum(inc, first)) & 0xFFFF
    # reorder: swap the IDs of packets p and p+1 of the same flow
    last = np.append(first[1:], True)
    cand = np.flatnonzero((rng.random(n) < reorder_rate) & ~last & ~first)
    cand = cand[np.append(True, np.diff(cand) > 1)] if len(cand) else cand
    ids[cand], ids[cand + 1] = ids[cand + 1].copy(), ids[cand].copy()
    counts = {c[0]: int((cls == i).sum()) for i, c in enumerate(GAP_CLASSES)}
    return ids, counts, len(cand)


def _timestamps(rng, sizes, flow, first, duration_s: float, start_s: float, nanosecond: bool):
    """u64 ns timestamps per packet (flow-grouped order), at the file's resolution."""
    f = len(sizes)
    start = rng.random(f) * duration_s * 0.95
    span = (duration_s - start) * np.where(sizes >= 64, rng.uniform(0.3, 1.0, f), rng.uniform(0.0, 0.3, f))
    gaps = rng.exponential(1.0, len(flow))
    gaps[first] = 0.0
    walk = _segment_cumsum(gaps, first)
    total = np.maximum(walk[np.flatnonzero(first) + sizes - 1], 1e-12)
    t = start[flow] + walk / total[flow] * span[flow]
    ns = np.uint64(int(start_s * 1e9)) + np.round(t * 1e9).astype(np.uint64)
    if not nanosecond:
        ns -= ns % np.uint64(1000)
    return ns


def _tcp_layer(rng, flow, first, last, ft, ip_len, ihl, nfl):
    """TCP flags, data offset, seq, ack, window per packet (all packets; used where proto=6)."""
    n = len(flow)
    srv = ft["from_server"][flow]
    flags = np.where(rng.random(n) < 0.4, 0x18, 0x10)
    flags[last & ~first] = 0x11
    flags[first] = np.where(srv[first], 0x12, 0x02)
    rst = first & (ft["small"][flow]) & (rng.random(n) < 0.08)
    flags[rst] = 0x14
    doff = np.where((flags & 0x02) != 0, 8, 5)
    payload = np.where(doff == 8, 0, np.maximum(ip_len - ihl * 4 - doff * 4, 0))
    step = payload + ((flags & 0x03) != 0)
    seq = (rng.integers(0, 2**32, nfl, dtype=np.uint64)[flow]
           + (_segment_cumsum(step, first) - step).astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    ack = rng.integers(0, 2**32, n, dtype=np.uint64)
    ack[flags == 0x02] = 0
    base = ft["window"][flow]
    window = np.where(ft["big"][flow], base - rng.integers(0, 2048, n), base)
    window = np.clip(window, 0, 65535)
    window[rst] = 0
    return flags, doff, seq, ack, window


def _synthesize(packets, flows, zipf, gap_rate, seed, duration_s, nanosecond, snaplen, link,
                reorder_rate, ip_options_rate, frag_rate, start_s, mix="zipf", ipv6_share=0.0) -> _Synth:
    packets, flows = int(packets), int(flows)
    if packets < 1 or flows < 1:
        raise ValueError(f"packets and flows must be positive, got {packets}, {flows}")
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    flows = min(flows, packets)
    rng = np.random.default_rng(seed)
    if mix == "hard":
        sizes, src, dst = _hard_mix(rng, packets, flows, zipf)
        ft = _flow_table(rng, sizes)
    else:
        sizes = _zipf_sizes(rng, packets, flows, zipf)
        ft = _flow_table(rng, sizes)
        src = _addresses(rng, flows, 6, 12, 24, [23, 31, 45, 52, 64, 77, 91, 104, 142, 151, 172, 185, 203, 212])
        dst = _addresses(rng, flows, 3, 8, 32, [10, 100, 192])
    _dedupe_ports(rng, src, dst, ft)
    flow = np.repeat(np.arange(flows), sizes)
    first = np.zeros(packets, bool)
    first[np.cumsum(sizes) - sizes] = True
    last = np.append(first[1:], True)
    n = packets
    proto = ft["proto"][flow].astype(np.int64)
    ihl = np.where(rng.random(n) < ip_options_rate, rng.choice(np.array([6, 8, 15]), n), 5)
    ip_len = _lengths(rng, ft, flow)
    flags, doff, seq, ack, window = _tcp_layer(rng, flow, first, last, ft, ip_len, ihl, flows)
    frag = (proto == 17) & (rng.random(n) < frag_rate)
    thl = np.where(frag, 0, np.where(proto == 6, doff * 4, 8))
    ip_len = np.where((proto == 6) & (doff == 8), ihl * 4 + 32, np.maximum(ip_len, ihl * 4 + thl))
    ids, gaps_by_class, reorders = _ip_ids(rng, flows, flow, first, gap_rate, reorder_rate)
    ts = _timestamps(rng, sizes, flow, first, duration_s, start_s, nanosecond)

    l3 = np.zeros((n, _L3L4), np.uint8)
    l3[:, 0] = 0x40 | ihl
    l3[:, 1] = ft["tos"][flow]
    _be(l3, 2, ip_len, 2)
    _be(l3, 4, ids, 2)
    fragword = np.where(proto == 6, 0x4000, 0) + np.where(frag, 185 + rng.integers(0, 8, n), 0)
    _be(l3, 6, fragword, 2)
    l3[:, 8] = ft["ttl"][flow]
    l3[:, 9] = proto
    _be(l3, 12, src[flow], 4)
    _be(l3, 16, dst[flow], 4)
    _ip_options(l3, ihl)
    _be(l3, 10, _ip_checksum(l3, ihl), 2)
    l4 = _transport(n, proto, ft, flow, flags, doff, seq, ack, window, ip_len, ihl, rng)
    _place(l3, ihl * 4, l4, thl)
    is6 = np.zeros(n, bool)
    dlen = ip_len
    if ipv6_share > 0:
        rng6 = np.random.default_rng([int(seed), 2])  # its own stream: the IPv4 flows stay as they were
        is6 = (rng6.random(flows) < ipv6_share)[flow]
        l3, dlen = _ipv6_rows(rng6, l3, is6, flow, flows, proto, l4, thl, ip_len, ihl, frag, ids, ft, src, dst)

    avail = np.minimum(np.minimum(snaplen - _l2_len(link, src[flow]), dlen), l3.shape[1])
    if np.any(avail < 20):
        raise ValueError(f"snaplen {snaplen} leaves less than an IPv4 header after the link header")
    order = np.argsort(ts, kind="stable")
    l3, ts, ihl, proto, frag, dlen, avail, flow, is6 = (
        l3[order], ts[order], ihl[order], proto[order], frag[order], dlen[order], avail[order], flow[order],
        is6[order])
    if is6.any():
        four = ~is6
        parts = [_batch_from_bytes(l3[four, :_L3L4], avail[four], ts[four], ihl[four], proto[four], frag[four]),
                 _batch6_from_bytes(l3[is6], avail[is6], ts[is6])]
        where = np.concatenate([np.flatnonzero(four), np.flatnonzero(is6)])
        batch = PacketBatch.concat(parts)[np.argsort(where, kind="stable")]
    else:
        batch = _batch_from_bytes(l3, avail, ts, ihl, proto, frag)
    stats = GenerateStats(path=None, packets=n, flows=flows, gaps=sum(gaps_by_class.values()),
                          gaps_by_class=gaps_by_class, reorders=reorders, nanosecond=nanosecond,
                          max_flow_size=int(sizes.max()), ipv6_packets=int(is6.sum()),
                          ipv6_flows=len(np.unique(flow[is6])))
    return _Synth(batch=batch, l3=l3, l3_len=dlen, stats=stats, l2_src=src[flow], l2_dst=dst[flow], is_ipv6=is6)


def _dedupe_ports(rng, src, dst, ft) -> None:
    """Redraw ephemeral ports until every flow has a distinct 5-tuple."""
    for _ in range(20):
        key = np.stack([src.astype(np.int64), dst.astype(np.int64), ft["src_port"], ft["dst_port"],
                        ft["proto"].astype(np.int64)], axis=1)
        _, idx, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        dup = np.ones(len(src), bool)
        dup[idx] = False
        if not dup.any():
            return
        d = np.flatnonzero(dup)
        fresh = rng.integers(1024, 65536, len(d))
        srv = ft["from_server"][d]
        icmp = ft["proto"][d] == 1
        ft["dst_port"][d[srv & ~icmp]] = fresh[srv & ~icmp]
        ft["src_port"][d[~srv & ~icmp]] = fresh[~srv & ~icmp]
        src[d[icmp]] = src[d[icmp]] ^ rng.integers(1, 255, int(icmp.sum())).astype(np.uint32)


def _ip_options(l3: np.ndarray, ihl: np.ndarray) -> None:
    """Fill IPv4 options: Router Alert, then NOPs, EOL last."""
    opt = ihl > 5
    if not opt.any():
        return
    rows = np.flatnonzero(opt)
    l3[rows, 20:24] = [0x94, 0x04, 0x00, 0x00]
    for k in range(24, 60):
        sel = rows[ihl[rows] * 4 > k]
        l3[sel, k] = 0x01
    l3[rows, ihl[rows] * 4 - 1] = 0x00


def _ip_checksum(l3: np.ndarray, ihl: np.ndarray) -> np.ndarray:
    words = l3[:, :60].astype(np.uint32).reshape(len(l3), 30, 2)
    words = (words[:, :, 0] << 8) | words[:, :, 1]
    words[np.arange(30)[None, :] >= (ihl * 2)[:, None]] = 0
    words[:, 5] = 0
    s = words.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _transport(n, proto, ft, flow, flags, doff, seq, ack, window, ip_len, ihl, rng) -> np.ndarray:
    """Transport header bytes per packet (TCP with SYN options, UDP, ICMP echo)."""
    l4 = np.zeros((n, 32), np.uint8)
    _be(l4, 0, ft["src_port"][flow], 2)
    _be(l4, 2, ft["dst_port"][flow], 2)
    tcp, udp, icmp = proto == 6, proto == 17, proto == 1
    t = np.flatnonzero(tcp)
    sub = l4[t]
    _be(sub, 4, seq[t], 4)
    _be(sub, 8, ack[t], 4)
    sub[:, 12] = doff[t] << 4
    sub[:, 13] = flags[t]
    _be(sub, 14, window[t], 2)
    syn = doff[t] == 8
    sub[syn, 20:32] = [2, 4, 5, 0xB4, 1, 3, 3, 7, 4, 2, 1, 1]
    l4[t] = sub
    u = np.flatnonzero(udp)
    sub = l4[u]
    _be(sub, 4, ip_len[u] - ihl[u] * 4, 2)
    l4[u] = sub
    c = np.flatnonzero(icmp)
    sub = l4[c]
    sub[:, 0] = 8
    sub[:, 1:4] = 0
    _be(sub, 4, rng.integers(0, 65536, len(c)), 2)
    l4[c] = sub
    return l4


def _batch_from_bytes(l3, avail, ts, ihl, proto, frag) -> PacketBatch:
    """The PacketBatch a reader extracts from these datagrams (bytes past ``avail`` absent)."""
    n = len(l3)
    seen = l3.copy()
    seen[np.arange(_L3L4)[None, :] >= avail[:, None]] = 0
    hlen = ihl * 4
    thl = np.where(frag, 0, np.where(proto == 6, 20, np.where(proto == 17, 8, 0)))
    keep = np.minimum(hlen + thl, HEADER_BYTES)
    header = seen[:, :HEADER_BYTES].copy()
    header[np.arange(HEADER_BYTES)[None, :] >= keep[:, None]] = 0
    header[:, 12:20] = 0
    ports = thl > 0
    is_tcp = thl == 20
    z = np.zeros(n, np.uint64)
    return PacketBatch.from_columns(
        ts_ns=ts, src_ip=_read_be(seen, 12, 4), dst_ip=_read_be(seen, 16, 4),
        src_port=np.where(ports, _read_be(seen, hlen, 2), z),
        dst_port=np.where(ports, _read_be(seen, hlen + 2, 2), z),
        proto=seen[:, 9], length=_read_be(seen, 2, 2), ip_id=_read_be(seen, 4, 2),
        ttl=seen[:, 8], tos=seen[:, 1],
        tcp_flags=np.where(is_tcp, _read_be(seen, hlen + 13, 1), z),
        tcp_window=np.where(is_tcp, _read_be(seen, hlen + 14, 2), z),
        tcp_seq=np.where(is_tcp, _read_be(seen, hlen + 4, 4), z),
        hdr_len=keep, header=header,
    )


# ---------------------------------------------------------------------------------------------
# IPv6 flows


def _mix64(values: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each value (splitmix64 finaliser): per-host interface identifiers."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _ipv6_addresses(v4: np.ndarray, salt: int) -> np.ndarray:
    """``uint8[k, 16]`` addresses mirroring the IPv4 hierarchy: /32 from the /8, /48 from the /16,
    /56 from the /24, interface identifier from the whole address (``salt`` separates sources and
    destinations)."""
    v4 = np.asarray(v4, np.uint64)
    out = np.zeros((len(v4), 16), np.uint8)
    o1, o2, o3 = v4 >> np.uint64(24), (v4 >> np.uint64(16)) & np.uint64(255), (v4 >> np.uint64(8)) & np.uint64(255)
    _be(out, 0, _V6_PREFIXES[(o1 + np.uint64(salt)) % np.uint64(len(_V6_PREFIXES))], 4)
    _be(out, 4, o2 * np.uint64(251) & np.uint64(0xFFFF), 2)
    out[:, 6] = o3
    _be(out, 8, _mix64(v4 ^ np.uint64(salt << 40)), 8)
    return out


def _ipv6_rows(rng, l3, is6, flow, flows, proto, l4, thl, ip_len, ihl, frag, ids, ft, src, dst):
    """``(l3, datagram lengths)`` with the rows ``is6`` rewritten as IPv6 datagrams (see the module
    docstring) carrying the same upper-layer bytes (``ip_len - ihl * 4``); ``l3`` widens to
    ``_L3L4_V6`` bytes."""
    n = len(flow)
    out = np.zeros((n, _L3L4_V6), np.uint8)
    out[:, :_L3L4] = l3
    dlen = np.asarray(ip_len, np.int64).copy()
    upper_len = dlen - ihl * 4
    rows = np.flatnonzero(is6)
    label = np.where(ft["proto"] == 1, 0, rng.integers(1, 1 << 20, flows))
    frag_hi = rng.integers(0, 1 << 16, flows)
    template = rng.choice(len(_EXT_TEMPLATES), size=len(rows), p=_EXT_WEIGHTS)
    udp = proto[rows] == 17
    u = rng.random(len(rows))
    later = frag[rows] | (udp & (u < _V6_LATER_FRAG))
    first = udp & ~later & (u < _V6_LATER_FRAG + _V6_FIRST_FRAG)
    later &= template != 5
    first &= template != 5  # no fragment header inside ESP
    upper = np.where(proto[rows] == 1, 58, proto[rows])
    f = flow[rows]
    head = np.zeros((len(rows), 40), np.uint8)
    tc = ft["tos"][f]
    head[:, 0] = 0x60 | (tc >> 4)
    head[:, 1] = ((tc & 15) << 4) | (label[f] >> 16)
    _be(head, 2, label[f] & 0xFFFF, 2)
    head[:, 7] = ft["ttl"][f]
    head[:, 8:24] = _ipv6_addresses(src[f], 0)
    head[:, 24:40] = _ipv6_addresses(dst[f], 1)
    body = upper_len[rows]
    for t, chain in enumerate(_EXT_TEMPLATES):
        for fragment in (None, "first", "later"):
            sel = (template == t) & {None: ~(first | later), "first": first, "later": later}[fragment]
            if not sel.any():
                continue
            k = np.flatnonzero(sel)
            types = chain + ((44,) if fragment else ())
            nexts = types[1:] + ((int(-1),) if types and types[-1] == 50 else (-2,))
            block = np.zeros((len(k), _L3L4_V6), np.uint8)
            block[:, :40] = head[k]
            block[:, 6] = types[0] if types else 0
            if not types:
                block[:, 6] = upper[k]
            pos = 40
            for typ, nxt in zip(types, nexts):
                nxt_val = upper[k] if nxt == -2 else (nxt if nxt >= 0 else 0)
                pos = _write_extension(block, k, pos, typ, nxt_val, fragment, rows, ids, frag_hi, f, rng)
            ext_len = pos - 40
            if types and types[-1] == 50:
                block[:, pos:pos + _ESP_PAYLOAD] = rng.integers(0, 256, (len(k), _ESP_PAYLOAD), dtype=np.uint8)
                plen = ext_len + _ESP_PAYLOAD + body[k]
            elif fragment == "later":
                plen = ext_len + body[k]
            else:
                width = np.where(upper[k] == 58, 8, thl[rows[k]])
                icmp6 = l4[rows[k]].copy()
                icmp6[upper[k] == 58, 0] = 128  # ICMPv6 echo request
                _place(block, np.full(len(k), pos), icmp6, width)
                plen = ext_len + body[k]
            _be(block, 4, plen, 2)
            out[rows[k]] = block
            dlen[rows[k]] = 40 + plen
    return out, dlen


def _write_extension(block, k, pos, typ, nxt, fragment, rows, ids, frag_hi, f, rng) -> int:
    """Write one extension header of type ``typ`` at ``pos`` in every row of ``block``; returns the
    offset after it."""
    block[:, pos] = nxt
    if typ in (0, 60):      # hop-by-hop / destination options: PadN over the 6 option bytes
        block[:, pos + 2:pos + 4] = [1, 4]
    elif typ == 43:         # routing type 2 (mobile IPv6): one home address
        block[:, pos + 1:pos + 4] = [2, 2, 1]
        block[:, pos + 8:pos + 24] = block[:, 8:24]
    elif typ == 51:         # AH: payload length 4 -> (4 + 2) * 4 = 24 bytes; SPI, sequence, ICV
        block[:, pos + 1] = 4
        block[:, pos + 4:pos + 24] = rng.integers(0, 256, (len(k), 20), dtype=np.uint8)
    elif typ == 44:         # fragment: offset (8-byte units) << 3 | M, identification
        offset = rng.integers(185, 193, len(k)) if fragment == "later" else np.zeros(len(k), np.int64)
        more = rng.random(len(k)) < 0.5 if fragment == "later" else np.ones(len(k), bool)
        _be(block, pos + 2, (offset << 3) | more, 2)
        _be(block, pos + 4, (frag_hi[f[k]].astype(np.uint64) << np.uint64(16)) | ids[rows[k]].astype(np.uint64), 4)
    elif typ == 50:         # ESP: SPI, sequence number (the rest is opaque)
        block[:, pos:pos + 8] = rng.integers(0, 256, (len(k), 8), dtype=np.uint8)
    return pos + _EXT_LEN[typ]


#: IPv6 extension headers the readers walk (ESP ends the walk).
_WALKED = (0, 43, 60, 51, 44)


def _batch6_from_bytes(l3, avail, ts) -> PacketBatch:
    """The IPv6 rows a reader extracts from these datagrams (bytes past ``avail`` absent), by the
    rules of ``telesketch.traces.pcap.parse_ipv6`` applied to whole columns."""
    n, width = l3.shape
    rows = np.arange(n)
    seen = np.zeros((n, width + 64), np.uint8)
    seen[:, :width] = l3
    plen = _read_be(seen, 4, 2).astype(np.int64)
    lim = np.where((plen > 0) & (plen + 40 < avail), plen + 40, avail)
    seen[np.arange(width + 64)[None, :] >= lim[:, None]] = 0
    nh = seen[:, 6].astype(np.int64)
    p = np.full(n, 40, np.int64)
    ip_id = np.zeros(n, np.int64)
    first = np.ones(n, bool)
    active = np.ones(n, bool)
    for _ in range(8):
        q = np.minimum(p, width)  # past ``width`` every byte is absent (lim <= width)
        walk = active & (p + 2 <= lim) & np.isin(nh, _WALKED)
        frag = walk & (nh == 44)
        step = np.where(nh == 51, (seen[rows, q + 1].astype(np.int64) + 2) * 4,
                        np.where(frag, 8, (seen[rows, q + 1].astype(np.int64) + 1) * 8))
        ip_id = np.where(frag, _read_be(seen, q + 6, 2).astype(np.int64), ip_id)
        later = frag & ((_read_be(seen, q + 2, 2).astype(np.int64) >> 3) != 0)
        first &= ~later
        nh = np.where(walk, seen[rows, q].astype(np.int64), nh)
        p = np.where(walk, p + step, p)
        active = walk & ~later
    thl = np.where(first & (nh == 6), 20, np.where(first & (nh == 17), 8, 0))
    q = np.minimum(p, width)
    header = np.zeros((n, HEADER_BYTES), np.uint8)
    header[:, :8] = seen[:, :8]
    for k in range(20):
        header[:, 8 + k] = np.where(k < thl, seen[rows, q + k], 0)
    ports, is_tcp = thl > 0, thl == 20
    z = np.zeros(n, np.uint64)
    return PacketBatch.from_columns(
        ts_ns=ts, ipv6=np.ones(n, np.uint8), src_ip6=seen[:, 8:24], dst_ip6=seen[:, 24:40],
        src_port=np.where(ports, _read_be(seen, q, 2), z), dst_port=np.where(ports, _read_be(seen, q + 2, 2), z),
        proto=nh, length=np.minimum(plen + 40, 65535), ip_id=ip_id, ttl=seen[:, 7],
        tos=(_read_be(seen, 0, 2) >> np.uint64(4)) & np.uint64(0xFF), flow_label=_read_be(seen, 1, 3) & np.uint64(0xFFFFF),
        tcp_flags=np.where(is_tcp, _read_be(seen, q + 13, 1), z),
        tcp_window=np.where(is_tcp, _read_be(seen, q + 14, 2), z),
        tcp_seq=np.where(is_tcp, _read_be(seen, q + 4, 4), z),
        hdr_len=8 + thl, header=header,
    )


# ---------------------------------------------------------------------------------------------
# link layers and file writers


def _l2_len(link: str, src: np.ndarray) -> np.ndarray:
    """Link header length per frame (VLAN: QinQ, 22 bytes, for sources with low bits 00)."""
    if link == "vlan":
        return np.where((src & 3) == 0, 22, 18)
    fixed = {"ethernet": 14, "sll": 16, "sll2": 20, "null": 4}.get(link, 0)
    return np.full(len(src), fixed)


def _l2(link: str, ethertype: np.ndarray, src: np.ndarray, dst: np.ndarray, rng) -> tuple:
    """(link header bytes uint8[n, 22], length per row) for each frame."""
    n = len(ethertype)
    out = np.zeros((n, 22), np.uint8)
    if link in ("ethernet", "vlan"):
        out[:, 0:2] = [0x02, 0x00]
        _be(out, 2, dst, 4)
        out[:, 6:8] = [0x02, 0x01]
        _be(out, 8, src, 4)
        if link == "ethernet":
            _be(out, 12, ethertype, 2)
            return out, np.full(n, 14)
        qinq = (src & 3) == 0
        vid = rng.integers(1, 4095, n)
        _be(out, 12, np.where(qinq, 0x88A8, 0x8100), 2)
        _be(out, 14, vid, 2)
        _be(out, 16, np.where(qinq, 0x8100, ethertype), 2)
        _be(out, 18, np.where(qinq, vid + 1, 0), 2)
        _be(out, 20, ethertype, 2)  # only reached by QinQ rows (length 22)
        return out, _l2_len(link, src)
    if link == "sll":
        _be(out, 0, np.zeros(n), 2)        # packet type: to us
        _be(out, 2, np.ones(n), 2)         # ARPHRD_ETHER
        _be(out, 4, np.full(n, 6), 2)
        out[:, 6:8] = [0x02, 0x01]
        _be(out, 8, src, 4)
        _be(out, 14, ethertype, 2)
        return out, np.full(n, 16)
    if link == "sll2":
        _be(out, 0, ethertype, 2)
        _be(out, 4, np.full(n, 2), 4)      # interface index
        _be(out, 8, np.ones(n), 2)         # ARPHRD_ETHER
        out[:, 11] = 6
        out[:, 12:14] = [0x02, 0x01]
        _be(out, 14, src, 4)
        return out, np.full(n, 20)
    if link == "null":
        out[:, 0] = np.where(ethertype == 0x0800, 2, 30)  # AF_INET / AF_INET6 (BSD), host order LE
        return out, np.full(n, 4)
    return out, np.zeros(n, np.int64)          # raw / ipv4


def _ipv6_noise(rng, count: int, ts_all: np.ndarray, width: int = _L3L4):
    """IPv6/UDP datagrams (header bytes ``uint8[count, width]``, length, timestamps) to interleave
    as noise outside the traffic model."""
    l3 = np.zeros((count, width), np.uint8)
    l3[:, 0] = 0x60
    plen = rng.integers(16, 600, count)
    _be(l3, 4, plen, 2)
    l3[:, 6] = 17
    l3[:, 7] = 64
    l3[:, 8:40] = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    _be(l3, 40, rng.integers(1024, 65536, count), 2)
    _be(l3, 42, np.full(count, 53), 2)
    ts = np.sort(rng.choice(ts_all, count)) if count else np.zeros(0, np.uint64)
    return l3, plen + 40, ts


def _frames(link, l3, dlen, ethertype, src, dst, snaplen, rng):
    """(frame bytes uint8[m, W], caplen, origlen) for a chunk of datagrams."""
    l2, l2len = _l2(link, ethertype, src, dst, rng)
    origlen = l2len + dlen
    caplen = np.minimum(origlen, snaplen)
    width = int(caplen.max()) if len(caplen) else 0
    fr = np.zeros((len(l3), max(width, 22 + l3.shape[1])), np.uint8)
    _place(fr, np.zeros(len(l3), np.int64), l2, l2len)
    _place(fr, l2len, l3, np.minimum(caplen - l2len, l3.shape[1]))
    return fr, caplen, origlen


def _pcap_records(fr, caplen, origlen, ts, nanosecond, order) -> bytes:
    m = len(caplen)
    hdr = np.empty((m, 4), np.dtype(np.uint32).newbyteorder(order))
    sec = ts // np.uint64(1_000_000_000)
    frac = ts % np.uint64(1_000_000_000)
    hdr[:, 0] = sec
    hdr[:, 1] = frac if nanosecond else frac // np.uint64(1000)
    hdr[:, 2] = caplen
    hdr[:, 3] = origlen
    rec = np.concatenate([hdr.view(np.uint8).reshape(m, 16), fr], axis=1)
    return rec[np.arange(rec.shape[1])[None, :] < (16 + caplen)[:, None]].tobytes()


def _pcapng_records(fr, caplen, origlen, ts, nanosecond, order) -> bytes:
    m = len(caplen)
    u32 = np.dtype(np.uint32).newbyteorder(order)
    padded = (caplen + 3) & ~3
    blen = 32 + padded
    units = ts if nanosecond else ts // np.uint64(1000)
    hdr = np.empty((m, 7), u32)
    hdr[:, 0] = 6
    hdr[:, 1] = blen
    hdr[:, 2] = 0
    hdr[:, 3] = units >> np.uint64(32)
    hdr[:, 4] = units & np.uint64(0xFFFFFFFF)
    hdr[:, 5] = caplen
    hdr[:, 6] = origlen
    body = np.zeros((m, fr.shape[1] + 8), np.uint8)
    body[:, : fr.shape[1]] = fr
    body[np.arange(body.shape[1])[None, :] >= caplen[:, None]] = 0
    trailer = np.asarray(blen, u32).view(np.uint8).reshape(m, 4)
    _place(body, padded, trailer, np.full(m, 4))
    rec = np.concatenate([hdr.view(np.uint8).reshape(m, 28), body], axis=1)
    return rec[np.arange(rec.shape[1])[None, :] < blen[:, None]].tobytes()


def _file_header(fmt, linktype, snaplen, nanosecond, order) -> bytes:
    bo = "<" if order == "little" else ">"
    if fmt == "pcap":
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        return struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    shb = struct.pack(bo + "IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    opts = b""
    if nanosecond:
        opts = struct.pack(bo + "HH", 9, 1) + b"\x09\0\0\0" + struct.pack(bo + "HH", 0, 0)
    idb_len = 20 + len(opts)
    idb = struct.pack(bo + "IIHHI", 1, idb_len, linktype, 0, snaplen) + opts + struct.pack(bo + "I", idb_len)
    return shb + idb


def _check_args(link, fmt, byteorder, ipv6_share=0.0):
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}; choose one of {sorted(LINKS)}")
    if not 0.0 <= ipv6_share <= 1.0:
        raise ValueError(f"ipv6_share must be in [0, 1], got {ipv6_share}")
    if ipv6_share > 0 and link == "ipv4":
        raise ValueError("link 'ipv4' (228) carries IPv4 only; use another link for ipv6_share > 0")
    if fmt not in ("pcap", "pcapng"):
        raise ValueError(f"format must be 'pcap' or 'pcapng', got {fmt!r}")
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")


def generate_batch(packets: int, flows: int, zipf: float = 1.1, gap_rate: float = 0.01, seed: int = 0,
                   *, duration_s: float = 10.0, nanosecond: bool = False, snaplen: int = 128,
                   link: str = "ethernet", reorder_rate: float | None = None,
                   ip_options_rate: float = 0.0, frag_rate: float = 0.0,
                   start_s: float = 1.7e9, mix: str = "zipf", ipv6_share: float = 0.0) -> PacketBatch:
    """The packets ``generate_capture`` would write with the same arguments, as a batch (both
    families with ``ipv6_share``; the ``ipv6_rate`` noise frames are not part of it).

    Identical, column for column, to reading that file back (timestamps are rounded to
    microseconds unless ``nanosecond``; fields cut off by ``snaplen`` read as zero).
    ``mix="hard"``: scanners, elephants, a Zipf body of sources and hot /16 and /24 prefixes
    (see ``_hard_mix``).
    """
    _check_args(link, "pcap", "little", ipv6_share)
    return _model(packets, flows, zipf, gap_rate, seed, duration_s, nanosecond, snaplen, link,
                  reorder_rate, ip_options_rate, frag_rate, start_s, mix, ipv6_share).batch


def _model(packets, flows, zipf, gap_rate, seed, duration_s, nanosecond, snaplen, link,
           reorder_rate, ip_options_rate, frag_rate, start_s, mix="zipf", ipv6_share=0.0) -> _Synth:
    reorder_rate = gap_rate / 10 if reorder_rate is None else reorder_rate
    return _synthesize(packets, flows, zipf, gap_rate, seed, duration_s, nanosecond, snaplen, link,
                       reorder_rate, ip_options_rate, frag_rate, start_s, mix, ipv6_share)


def generate_capture(path, packets: int = 1_000_000, flows: int = 50_000, zipf: float = 1.1,
                     gap_rate: float = 0.01, seed: int = 0, *, link: str = "ethernet",
                     nanosecond: bool = False, duration_s: float = 10.0, snaplen: int = 128,
                     byteorder: str = "little", format: str = "pcap",
                     reorder_rate: float | None = None, ip_options_rate: float = 0.0,
                     frag_rate: float = 0.0, ipv6_rate: float = 0.0,
                     start_s: float = 1.7e9, progress=None, mix: str = "zipf",
                     ipv6_share: float = 0.0) -> GenerateStats:
    """Write a synthetic capture (classic pcap, or pcapng with ``format="pcapng"``) to ``path``.

    ``link`` is one of ethernet, vlan (802.1Q, a quarter QinQ), raw (101), ipv4 (228), sll (113),
    sll2 (276), null (0). ``byteorder`` sets the file's byte order; ``nanosecond`` the timestamp
    resolution. ``ipv6_share`` sends that fraction of the flows over IPv6 (extension headers and
    fragments in the mix, see the module docstring); 0 writes today's IPv4-only bytes.
    ``ipv6_rate`` adds that fraction of extra IPv6/UDP noise frames outside the traffic model
    (readers read them; ``generate_batch`` does not hold them).
    See the module docstring for the traffic model (``mix="hard"``: see ``_hard_mix``). Returns a
    :class:`GenerateStats`. ``progress(packets_written)``: called after each chunk written (for a
    progress bar).
    """
    _check_args(link, format, byteorder, ipv6_share)
    synth = _model(packets, flows, zipf, gap_rate, seed, duration_s, nanosecond, snaplen, link,
                   reorder_rate, ip_options_rate, frag_rate, start_s, mix, ipv6_share)
    rng = np.random.default_rng([int(seed), 1])
    l3, dlen, ts = synth.l3, synth.l3_len, synth.batch.ts_ns
    src, dst = synth.l2_src, synth.l2_dst
    ethertype = np.where(synth.is_ipv6, 0x86DD, 0x0800)
    n6 = int(round(len(ts) * ipv6_rate))
    if n6:
        l3_6, dlen6, ts6 = _ipv6_noise(rng, n6, ts, l3.shape[1])
        order = np.argsort(np.concatenate([ts, ts6]), kind="stable")
        l3 = np.concatenate([l3, l3_6])[order]
        dlen = np.concatenate([dlen, dlen6])[order]
        ts = np.concatenate([ts, ts6])[order]
        src = np.concatenate([src, np.zeros(n6, np.uint32)])[order]
        dst = np.concatenate([dst, np.zeros(n6, np.uint32)])[order]
        ethertype = np.concatenate([ethertype, np.full(n6, 0x86DD)])[order]
    linktype = LINKS[link]
    records = _pcap_records if format == "pcap" else _pcapng_records
    written = 0
    with open(path, "wb") as f:
        head = _file_header(format, linktype, snaplen, nanosecond, byteorder)
        f.write(head)
        written += len(head)
        for a in range(0, len(ts), _CHUNK):
            s = slice(a, a + _CHUNK)
            fr, caplen, origlen = _frames(link, l3[s], dlen[s], ethertype[s], src[s], dst[s], snaplen, rng)
            data = records(fr, caplen, origlen, ts[s], nanosecond, byteorder)
            f.write(data)
            written += len(data)
            if progress is not None:  # packets written so far (IPv4 and IPv6 noise frames)
                progress(min(a + _CHUNK, len(ts)))
    st = synth.stats
    st.path, st.link, st.linktype, st.format = os.fspath(path), link, linktype, format
    st.noise_packets, st.bytes_written = n6, written
    return st
