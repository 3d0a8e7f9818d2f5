"""A generated capture whose header fields carry (noisy) information about flow size.

For estimator tests and the benchmark's generated trace, independent of the capture generator.
Flows belong to service classes; a class fixes the protocol, the server port, a TTL family, the
TCP window and the packet-length mix, and draws flow sizes from its own distribution (bulk
transfers are long, DNS and scans are one or two packets). A ``noise`` share of flows takes its
size from a random other class, so headers predict size only statistically, as on real traffic.
Packets of all flows are interleaved by random arrival times.
"""
from __future__ import annotations

import numpy as np

from telesketch.packets import PacketBatch

# name: (share of flows, proto, server port, ttl, window, mean payload, size median, size sigma)
CLASSES = [
    ("bulk", 0.06, 6, 443, 52, 65535, 1400, 300.0, 1.0),
    ("video", 0.04, 17, 443, 57, 0, 1200, 150.0, 0.8),
    ("web", 0.30, 6, 80, 64, 29200, 500, 12.0, 0.9),
    ("ssh", 0.05, 6, 22, 63, 501, 90, 40.0, 1.0),
    ("dns", 0.35, 17, 53, 128, 0, 60, 1.5, 0.4),
    ("scan", 0.20, 6, 0, 245, 1024, 0, 1.0, 0.1),
]


def generate_labelled_batch(packets: int = 200_000, flows: int = 10_000, noise: float = 0.15,
                            seed: int = 0) -> PacketBatch:
    """About ``packets`` packets over ``flows`` flows (IPv4, header block filled as the reader does).

    ``packets`` and ``flows`` must be positive (``ValueError``, as :func:`telesketch.traces.generate_batch`);
    every flow has at least one packet, so ``flows > packets`` gives about ``flows`` packets."""
    if int(packets) <= 0 or int(flows) <= 0:
        raise ValueError(f"packets and flows must be positive, got {packets}, {flows}")
    rng = np.random.default_rng(seed)
    shares = np.array([c[1] for c in CLASSES])
    cls = rng.choice(len(CLASSES), size=flows, p=shares / shares.sum())
    size_cls = np.where(rng.random(flows) < noise, rng.choice(len(CLASSES), size=flows), cls)
    med = np.array([c[7] for c in CLASSES])[size_cls]
    sig = np.array([c[8] for c in CLASSES])[size_cls]
    sizes = np.maximum(1, np.round(med * np.exp(sig * rng.standard_normal(flows)))).astype(np.int64)
    sizes = np.maximum(1, np.round(sizes * packets / sizes.sum())).astype(np.int64)
    flow_of = np.repeat(np.arange(flows), sizes)
    start = rng.random(flows)
    t = start[flow_of] + rng.random(flow_of.shape[0]) * 0.5 * (sizes[flow_of] > 1)
    order = np.argsort(t, kind="stable")
    flow_of = flow_of[order]
    pos = _positions(flow_of, flows)

    proto = np.array([c[2] for c in CLASSES], np.uint8)[cls]
    port = np.array([c[3] for c in CLASSES], np.int64)[cls]
    port = np.where(port == 0, rng.integers(1, 65535, flows), port)
    ttl = (np.array([c[4] for c in CLASSES])[cls] - rng.integers(0, 12, flows)).astype(np.uint8)
    window = np.array([c[5] for c in CLASSES], np.int64)[cls]
    payload = np.array([c[6] for c in CLASSES], np.int64)[cls]
    src = rng.integers(1, 2**32 - 1, flows, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(1, 2**32 - 1, flows, dtype=np.uint64).astype(np.uint32)
    sport = rng.integers(1024, 65535, flows)
    ip_id0 = rng.integers(0, 65535, flows)
    seq0 = rng.integers(0, 2**32 - 1, flows, dtype=np.uint64)

    f = flow_of
    n = f.shape[0]
    is_tcp = proto[f] == 6
    plen = np.where(pos == 1, 0, np.minimum(1460, rng.poisson(payload[f]) * (rng.random(n) < 0.8)))
    length = (20 + np.where(is_tcp, 20, 8) + plen).astype(np.int64)
    flags = np.where(pos == 1, 0x02, np.where(plen > 0, 0x18, 0x10)) * is_tcp
    cols = dict(
        ts_ns=(np.sort(t) * 1e9).astype(np.uint64), src_ip=src[f], dst_ip=dst[f], src_port=sport[f],
        dst_port=port[f], proto=proto[f], length=length, ip_id=(ip_id0[f] + pos) % 65536, ttl=ttl[f],
        tos=np.zeros(n, np.uint8), tcp_flags=flags * is_tcp, tcp_window=np.where(is_tcp, window[f], 0),
        tcp_seq=((seq0[f] + pos.astype(np.uint64) * 1000) % 2**32) * is_tcp,
    )
    header, hdr_len = build_headers(cols, rng)
    return PacketBatch.from_columns(**cols, header=header, hdr_len=hdr_len)


def _positions(flow_of: np.ndarray, flows: int) -> np.ndarray:
    """1-based position of each packet within its flow."""
    order = np.argsort(flow_of, kind="stable")
    sf = flow_of[order]
    first = np.concatenate(([0], np.flatnonzero(np.diff(sf)) + 1))
    run_start = np.repeat(first, np.diff(np.concatenate((first, [sf.shape[0]]))))
    pos = np.empty(flow_of.shape[0], np.int64)
    pos[order] = np.arange(sf.shape[0]) - run_start + 1
    return pos


def build_headers(cols: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """The ``header`` block (IPv4 20 B + TCP 20 B or UDP 8 B, addresses zeroed) and ``hdr_len``."""
    n = len(cols["proto"])
    h = np.zeros((n, 40), np.uint8)
    be16 = lambda at, v: (h.__setitem__((slice(None), at), (np.asarray(v) >> 8) & 0xFF),
                          h.__setitem__((slice(None), at + 1), np.asarray(v) & 0xFF))
    h[:, 0] = 0x45
    h[:, 1] = cols["tos"]
    be16(2, cols["length"])
    be16(4, cols["ip_id"])
    h[:, 6] = 0x40
    h[:, 8] = cols["ttl"]
    h[:, 9] = cols["proto"]
    be16(10, rng.integers(0, 65536, n))  # checksum (depends on the removed addresses)
    tcp = np.asarray(cols["proto"]) == 6
    be16(20, cols["src_port"])
    be16(22, cols["dst_port"])
    seq = np.asarray(cols["tcp_seq"]).astype(np.uint64)
    for k in range(4):
        h[:, 24 + k] = np.where(tcp, (seq >> np.uint64(24 - 8 * k)) & np.uint64(0xFF), h[:, 24 + k])
    udp_len = np.asarray(cols["length"]) - 20
    h[:, 24] = np.where(tcp, h[:, 24], (udp_len >> 8) & 0xFF)
    h[:, 25] = np.where(tcp, h[:, 25], udp_len & 0xFF)
    csum = rng.integers(0, 65536, n)
    h[:, 26] = np.where(tcp, h[:, 26], csum >> 8)
    h[:, 27] = np.where(tcp, h[:, 27], csum & 0xFF)
    h[:, 32] = np.where(tcp, 0x50, 0)
    h[:, 33] = np.where(tcp, cols["tcp_flags"], 0)
    win = np.asarray(cols["tcp_window"])
    h[:, 34] = np.where(tcp, win >> 8, 0)
    h[:, 35] = np.where(tcp, win & 0xFF, 0)
    h[:, 36] = np.where(tcp, csum >> 8, 0)
    h[:, 37] = np.where(tcp, csum & 0xFF, 0)
    hdr_len = np.where(tcp, 40, 28).astype(np.uint8)
    h[~tcp, 28:] = 0
    return h, hdr_len
