"""Synthetic capture generator: determinism, the statistics it promises, and readability by scapy."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from telesketch.packets import PacketBatch, format_ipv4
from telesketch.traces import generate_batch, generate_capture, read_capture

KW = dict(packets=20_000, flows=1_000, zipf=1.1, gap_rate=0.02, seed=7)


def _flows(batch: PacketBatch):
    """(inverse index per packet, packets per flow) over 5-tuples."""
    _, inverse, counts = np.unique(batch.flow_keys_void(), return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    sa = generate_capture(a, **KW)
    generate_capture(b, **KW)
    generate_capture(c, **{**KW, "seed": 8})
    assert _digest(a) == _digest(b) != _digest(c)
    assert generate_batch(**KW).equals(generate_batch(**KW))
    assert sa.packets == 20_000 and sa.flows == 1_000 and sa.path == str(a)


def test_batch_equals_file(tmp_path):
    p = tmp_path / "g.pcap"
    generate_capture(p, **KW, link="vlan", ip_options_rate=0.05, frag_rate=0.02)
    got = PacketBatch.concat(read_capture(p))
    assert got.equals(generate_batch(**KW, link="vlan", ip_options_rate=0.05, frag_rate=0.02))


@pytest.mark.parametrize("zipf", [0.8, 1.1, 1.4])
def test_flow_sizes_follow_zipf(zipf):
    batch = generate_batch(packets=200_000, flows=5_000, zipf=zipf, gap_rate=0.0, seed=3)
    _, counts = _flows(batch)
    assert len(counts) == 5_000 and counts.sum() == 200_000
    sizes = np.sort(counts)[::-1][:100].astype(float)
    slope = np.polyfit(np.log(np.arange(1, 101)), np.log(sizes), 1)[0]
    assert abs(-slope - zipf) < 0.15, slope


def test_injected_gaps_are_visible_in_ip_ids():
    """Without reorders, every forward ID jump of >= 2 within a flow is an injected gap."""
    stats_kw = dict(KW, reorder_rate=0.0)
    batch = generate_batch(**stats_kw)
    inverse, _ = _flows(batch)
    order = np.lexsort((np.arange(len(batch)), inverse))
    ids = batch.ip_id[order].astype(np.int64)
    same = inverse[order][1:] == inverse[order][:-1]
    step = (ids[1:] - ids[:-1]) % 65536
    step = step[same]
    from telesketch.traces.generate import _model

    st = _model(**{k: stats_kw[k] for k in ("packets", "flows", "zipf", "gap_rate", "seed")},
                duration_s=10.0, nanosecond=False, snaplen=128, link="ethernet", reorder_rate=0.0,
                ip_options_rate=0.0, frag_rate=0.0, start_s=1.7e9).stats
    assert set(np.unique(step)) <= set(range(1, 2000))
    assert int((step >= 2).sum()) == st.gaps
    rate = st.gaps / (len(batch) - st.flows)
    assert 0.015 < rate < 0.025  # gap_rate 0.02
    assert int(((step >= 2) & (step < 5)).sum()) == st.gaps_by_class["minor"]
    assert int(((step >= 5) & (step < 30)).sum()) == st.gaps_by_class["major"]
    assert int((step >= 30).sum()) == st.gaps_by_class["large"]
    assert min(st.gaps_by_class.values()) > 0


def test_reorders_and_monotone_time(tmp_path):
    s = generate_capture(tmp_path / "r.pcap", **KW, reorder_rate=0.01)
    assert s.reorders > 50
    batch = PacketBatch.concat(read_capture(tmp_path / "r.pcap"))
    ts = batch.ts_ns.astype(np.int64)
    assert np.all(np.diff(ts) >= 0)
    assert 0 < (ts[-1] - ts[0]) / 1e9 <= 10.0
    assert np.all(ts % 1000 == 0)  # microsecond file


def test_fields_correlate_with_flow_size():
    batch = generate_batch(packets=100_000, flows=5_000, seed=1)
    inverse, counts = _flows(batch)
    size = counts[inverse]
    big, small = size >= 64, size < 4
    tcp = batch.proto == 6
    assert tcp[big].mean() > 0.85 and tcp[small].mean() < 0.6
    assert batch.length[big].mean() > 2 * batch.length[small].mean()
    server = np.isin(batch.src_port, [443, 80, 8080, 22, 3306, 8443])
    assert server[big].mean() > 0.5 and server[small].mean() < 0.2
    assert batch.tcp_window[big & tcp].mean() > batch.tcp_window[small & tcp].mean()
    assert set(np.unique(batch.proto)) == {1, 6, 17}


def test_source_prefixes_are_skewed():
    batch = generate_batch(packets=50_000, flows=5_000, seed=2)
    for bits, top_share in ((8, 0.5), (16, 0.2), (24, 0.05)):
        _, counts = np.unique(batch.src_ip >> (32 - bits), return_counts=True)
        assert counts.max() / len(batch) > top_share, bits


@pytest.mark.parametrize("link", ["ethernet", "vlan", "raw", "ipv4", "sll", "sll2", "null"])
def test_readable_by_scapy(tmp_path, link):
    """scapy's own dissectors see the same IPv4/TCP/UDP fields as the batch."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.utils import rdpcap

    p = tmp_path / f"{link}.pcap"
    generate_capture(p, packets=300, flows=30, seed=5, link=link, nanosecond=link == "sll2")
    batch = generate_batch(packets=300, flows=30, seed=5, link=link, nanosecond=link == "sll2")
    pkts = rdpcap(str(p))
    assert len(pkts) == 300
    for i, pkt in enumerate(pkts):
        ip = pkt[IP] if IP in pkt else IP(bytes(pkt)[{"null": 4}.get(link, 0):])
        assert ip.src == format_ipv4(batch.src_ip[i]) and ip.dst == format_ipv4(batch.dst_ip[i])
        assert (ip.id, ip.ttl, ip.len, ip.proto) == (batch.ip_id[i], batch.ttl[i], batch.length[i], batch.proto[i])
        if TCP in ip or UDP in ip:
            l4 = ip[TCP] if TCP in ip else ip[UDP]
            assert (l4.sport, l4.dport) == (batch.src_port[i], batch.dst_port[i])
        assert int(pkt.time * 10**9) == int(batch.ts_ns[i]) or abs(float(pkt.time) - batch.ts_ns[i] / 1e9) < 1e-6
    # the IPv4 header checksum is valid
    raw_ip = bytes(pkts[0][IP]) if IP in pkts[0] else None
    if raw_ip is not None:
        assert IP(raw_ip).chksum == IP(bytes(IP(raw_ip))).chksum


def test_arguments_checked(tmp_path):
    with pytest.raises(ValueError, match="link"):
        generate_capture(tmp_path / "x.pcap", packets=10, flows=2, link="token-ring")
    with pytest.raises(ValueError, match="snaplen"):
        generate_batch(packets=10, flows=2, snaplen=30)
    s = generate_capture(tmp_path / "y.pcap", packets=5, flows=50)
    assert s.flows == 5  # never more flows than packets


@pytest.mark.slow
def test_million_packets_is_fast(tmp_path):
    import time

    t0 = time.perf_counter()
    s = generate_capture(tmp_path / "m.pcap", packets=1_000_000, flows=50_000, zipf=1.1, gap_rate=0.01, seed=7)
    assert time.perf_counter() - t0 < 30
    assert s.packets == 1_000_000


def test_hard_mix_has_scanners_elephants_and_hot_prefixes():
    """``mix="hard"`` (issue 20): scanners, elephants, many sources, a hot /16 and /24."""
    b = generate_batch(200_000, 12_000, zipf=1.0, seed=3, mix="hard")
    src, dst = np.asarray(b.src_ip), np.asarray(b.dst_ip)
    fanout = {}
    for s, d in zip(src.tolist(), dst.tolist()):
        fanout.setdefault(s, set()).add(d)
    assert max(len(v) for v in fanout.values()) > 40                # a scanner touches many destinations
    assert len(np.unique(src)) > 3_000                              # a wide body of sources
    flows, sizes = np.unique(b.flow_keys_void(), return_counts=True)
    assert np.sort(sizes)[-6:].min() >= 0.01 * len(src)             # six elephants
    assert np.mean((src >> 16) == 0x8E1F) > 0.05                    # 142.31.0.0/16
    assert np.mean((src >> 8) == 0xB9402A) > 0.05                   # 185.64.42.0/24
    with pytest.raises(ValueError, match="mix"):
        generate_batch(1000, 10, mix="nope")


# ------------------------------------------------------------------------- IPv6 flows (issue 18)
def test_default_ipv6_share_keeps_todays_bytes(tmp_path):
    """Digests of captures written before ``ipv6_share`` existed (same seeds and arguments)."""
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcapng"
    generate_capture(a, packets=3000, flows=200, seed=5)
    generate_capture(b, packets=3000, flows=200, seed=5, link="vlan", format="pcapng", ip_options_rate=0.1,
                     frag_rate=0.05, ipv6_rate=0.02, byteorder="big", nanosecond=True, ipv6_share=0.0)
    assert _digest(a) == "7bc1c799e1303c6e3fa2863b582282f1592cc80217354c6ee975aefc57ecd818"
    assert _digest(b) == "d3aa86d56610d530d76da3680c3bc22ac0d826bcc725df3fde1a8d98dfd95c0e"


MIXED = dict(packets=4000, flows=400, seed=5, ipv6_share=0.4, frag_rate=0.05, ip_options_rate=0.05)


@pytest.mark.parametrize("link,fmt", [("ethernet", "pcap"), ("vlan", "pcapng"), ("raw", "pcap"), ("null", "pcap"),
                                      ("sll2", "pcapng")])
def test_mixed_batch_equals_file(tmp_path, link, fmt):
    p = tmp_path / f"m.{fmt}"
    stats = generate_capture(p, **MIXED, link=link, format=fmt)
    got = PacketBatch.concat(read_capture(p, batch_size=999))
    want = generate_batch(**MIXED, link=link)
    assert got.equals(want)
    assert stats.packets == len(got) and stats.ipv6_packets == got.ipv6_count() > 0


def test_ipv6_flows_are_a_share_of_flows_and_ipv4_flows_are_unchanged(tmp_path):
    mixed = generate_batch(**MIXED)
    only4 = generate_batch(**{**MIXED, "ipv6_share": 0.0})
    stats = generate_capture(tmp_path / "s.pcap", **MIXED)
    assert 0.3 < stats.ipv6_flows / stats.flows < 0.5 and stats.ipv6_packets == mixed.ipv6_count()
    assert np.array_equal(mixed.ts_ns, only4.ts_ns)
    assert mixed.family(4).equals(only4[mixed.ipv6 == 0])  # same IPv4 packets, field for field
    six = mixed.family(6)
    assert not six.src_ip.any() and not six.dst_ip.any() and six.flow_label.any()
    assert set(np.unique(six.proto)) <= {6, 17, 50, 58}
    # the fragment identification carries the flow's IP-ID sequence (injected gaps included)
    fragmented = six[(six.ip_id != 0)]
    assert len(fragmented) > 0


def test_ipv6_prefixes_mirror_the_ipv4_hierarchy():
    six = generate_batch(packets=20_000, flows=2_000, seed=2, ipv6_share=0.5).family(6)
    top32 = np.unique(six.src_ip6[:, :4].copy().view(">u4").ravel(), return_counts=True)[1].max()
    assert top32 / len(six) > 0.3  # a few /32 allocations carry most traffic
    assert len(np.unique(six.src_keys16().view("V16"))) > 100


def test_mixed_capture_has_every_extension_header_and_fragments(tmp_path):
    """scapy's dissectors find each extension header, first and non-first fragments, ESP."""
    from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                    IPv6ExtHdrRouting)
    from scapy.layers.ipsec import AH, ESP
    from scapy.utils import rdpcap

    p = tmp_path / "x.pcap"
    generate_capture(p, **MIXED, snaplen=256)
    seen = dict.fromkeys(["hbh", "dst", "rt", "ah", "esp", "frag_first", "frag_later"], 0)
    for pkt in rdpcap(str(p)):
        if IPv6 not in pkt:
            continue
        seen["hbh"] += IPv6ExtHdrHopByHop in pkt
        seen["dst"] += IPv6ExtHdrDestOpt in pkt
        seen["rt"] += IPv6ExtHdrRouting in pkt
        seen["ah"] += AH in pkt
        seen["esp"] += ESP in pkt
        if IPv6ExtHdrFragment in pkt:
            seen["frag_first" if pkt[IPv6ExtHdrFragment].offset == 0 else "frag_later"] += 1
    assert all(seen.values()), seen


def test_ipv6_share_arguments_checked(tmp_path):
    with pytest.raises(ValueError, match="ipv6_share"):
        generate_batch(packets=10, flows=2, ipv6_share=1.5)
    with pytest.raises(ValueError, match="IPv4 only"):
        generate_capture(tmp_path / "x.pcap", packets=10, flows=2, link="ipv4", ipv6_share=0.5)
