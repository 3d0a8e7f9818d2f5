"""Capture readers: the Numba fast path against scapy's record readers + a plain-Python parse.

The oracle is deliberately simple code: scapy (``RawPcapReader`` / ``RawPcapNgReader``) splits the
file into records, and ``ref_frame`` below decodes link, IPv4 and transport headers with
``struct``-style slicing, following the semantics documented in ``telesketch.traces.pcap``. A
second check decodes the real traces with scapy's own layers (``Ether``/``IP``/``TCP``/``UDP``).
"""
from __future__ import annotations

import gzip
import zlib
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telesketch.packets import COLUMN_DTYPES, HEADER_BYTES, PacketBatch
from telesketch.traces import CaptureError, ReadStats, generate_capture, read_capture

from conftest import SHARED_TRACES as TRACES  # noqa: E402 - tests/ is on sys.path (conftest)
REAL = sorted(TRACES.glob("*.pcap")) if TRACES.is_dir() else []
needs_traces = pytest.mark.skipif(not REAL, reason=f"real traces not found at {TRACES}")
VLAN = (0x8100, 0x88A8, 0x9100)


# ------------------------------------------------------------------------- reference decoder
def _link(frame: bytes, linktype: int):
    """(network offset, 'v4' | 'v6' | 'other')."""
    def by_ethertype(et, off):
        return off, {0x0800: "v4", 0x86DD: "v6"}.get(et, "other")

    if linktype in (1, 113):
        p = 12 if linktype == 1 else 14
        if len(frame) < p + 2:
            return 0, "other"
        et, q = int.from_bytes(frame[p:p + 2], "big"), p + 2
        while et in VLAN:
            if len(frame) < q + 4:
                return 0, "other"
            et, q = int.from_bytes(frame[q + 2:q + 4], "big"), q + 4
        if et == 0x8864:  # PPPoE session
            if len(frame) < q + 8:
                return 0, "other"
            ppp = int.from_bytes(frame[q + 6:q + 8], "big")
            return q + 8, {0x21: "v4", 0x57: "v6"}.get(ppp, "other")
        if et == 0x8847:  # MPLS
            while True:
                if len(frame) < q + 4:
                    return 0, "other"
                q += 4
                if frame[q - 2] & 1:
                    break
            if len(frame) <= q:
                return 0, "other"
            return q, {4: "v4", 6: "v6"}.get(frame[q] >> 4, "other")
        return by_ethertype(et, q)
    if linktype == 276:
        return by_ethertype(int.from_bytes(frame[0:2], "big"), 20) if len(frame) >= 20 else (0, "other")
    if linktype == 101:
        v = frame[0] >> 4 if frame else 0
        return 0, {4: "v4", 6: "v6"}.get(v, "other")
    if linktype in (228, 229):
        return 0, "v4" if linktype == 228 else "v6"
    if linktype in (0, 108):
        if len(frame) < 4:
            return 0, "other"
        le, be = int.from_bytes(frame[:4], "little"), int.from_bytes(frame[:4], "big")
        fam = be if linktype == 108 else (le if le < 256 else be)
        return 4, "v4" if fam == 2 else ("v6" if fam in (10, 24, 28, 30) else "other")
    raise AssertionError(linktype)


EXTENSIONS_8 = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes


def ref_ipv6(ip: bytes, ts_ns: int):
    """('v6', row dict) for the IPv6 datagram ``ip`` (semantics of ``telesketch.traces.pcap``)."""
    plen = int.from_bytes(ip[4:6], "big") if len(ip) >= 6 else 0
    if 0 < plen and plen + 40 < len(ip):
        ip = ip[:plen + 40]
    lim = len(ip)
    ip = ip + bytes(400)  # absent bytes read as zero
    nh, p, frag_id, first = ip[6], 40, 0, True
    while p + 2 <= lim and first and nh in EXTENSIONS_8 + (44, 51):
        if nh == 44:
            frag_id = int.from_bytes(ip[p + 6:p + 8], "big")
            first = int.from_bytes(ip[p + 2:p + 4], "big") >> 3 == 0
            step = 8
        else:
            step = (ip[p + 1] + 1) * 8 if nh in EXTENSIONS_8 else (ip[p + 1] + 2) * 4
        nh, p = ip[p], p + step
    thl = {6: 20, 17: 8}.get(nh, 0) if first else 0
    u = lambda a, b: int.from_bytes(ip[a:b], "big")  # noqa: E731
    header = ip[:8] + ip[p:p + thl]
    row = dict(ts_ns=ts_ns, ipv6=1, src_ip6=ip[8:24], dst_ip6=ip[24:40], proto=nh,
               length=min(plen + 40, 65535), ip_id=frag_id, ttl=ip[7], tos=u(0, 2) >> 4 & 0xFF,
               flow_label=u(1, 4) & 0xFFFFF,
               src_port=u(p, p + 2) if thl else 0, dst_port=u(p + 2, p + 4) if thl else 0,
               tcp_seq=u(p + 4, p + 8) if thl == 20 else 0, tcp_flags=ip[p + 13] if thl == 20 else 0,
               tcp_window=u(p + 14, p + 16) if thl == 20 else 0, hdr_len=len(header),
               header=header + bytes(HEADER_BYTES - len(header)), short=lim < p + thl)
    return "v6", row


def ref_frame(frame: bytes, linktype: int, ts_ns: int):
    """('v4' | 'v6', row dict) / ('other', None) for one captured frame."""
    off, kind = _link(frame, linktype)
    if kind == "v6":
        ip = frame[off:]
        return ref_ipv6(ip, ts_ns) if ip and ip[0] >> 4 == 6 else ("other", None)
    if kind != "v4":
        return kind, None
    ip = frame[off:]
    if not ip or ip[0] >> 4 != 4 or ip[0] & 15 < 5:
        return "other", None
    hlen = (ip[0] & 15) * 4
    tot = int.from_bytes(ip[2:4], "big") if len(ip) >= 4 else 0
    if hlen <= tot < len(ip):
        ip = ip[:tot]
    ip = ip + bytes(200)  # absent bytes read as zero
    u = lambda a, b: int.from_bytes(ip[a:b], "big")  # noqa: E731
    proto, frag = ip[9], u(6, 8) & 0x1FFF
    thl = {6: 20, 17: 8}.get(proto, 0) if frag == 0 else 0
    t = hlen
    keep = min(HEADER_BYTES, hlen + thl)
    header = bytearray(ip[:keep] + bytes(HEADER_BYTES - keep))
    header[12:20] = bytes(8)
    row = dict(ts_ns=ts_ns, src_ip=u(12, 16), dst_ip=u(16, 20), proto=proto, length=tot,
               ip_id=u(4, 6), ttl=ip[8], tos=ip[1],
               src_port=u(t, t + 2) if thl else 0, dst_port=u(t + 2, t + 4) if thl else 0,
               tcp_seq=u(t + 4, t + 8) if thl == 20 else 0, tcp_flags=ip[t + 13] if thl == 20 else 0,
               tcp_window=u(t + 14, t + 16) if thl == 20 else 0, hdr_len=keep, header=bytes(header))
    return "v4", row


def rows_to_batch(rows) -> PacketBatch:
    cols = {name: np.array([r.get(name, 0) for r in rows], dtype=np.uint64).astype(dt)
            for name, dt in COLUMN_DTYPES.items()}
    cols["header"] = np.frombuffer(b"".join(r["header"] for r in rows), np.uint8).reshape(-1, HEADER_BYTES)
    for name in ("src_ip6", "dst_ip6"):
        cols[name] = np.frombuffer(b"".join(r.get(name, bytes(16)) for r in rows), np.uint8).reshape(-1, 16)
    return PacketBatch.from_columns(**cols)


def scapy_records(path):
    """(frame bytes, linktype, ts_ns, caplen < wirelen) per record, via scapy's raw readers."""
    from scapy.utils import RawPcapNgReader, RawPcapReader

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x0a\x0d\x0d\x0a":
        with RawPcapNgReader(str(path)) as r:
            for frame, m in r:
                units = (m.tshigh << 32) | m.tslow
                yield frame, m.linktype, units * 10**9 // m.tsresol, len(frame) < m.wirelen
    else:
        with RawPcapReader(str(path)) as r:
            scale = 1 if r.nano else 1000
            for frame, m in r:
                yield frame, r.linktype, m.sec * 10**9 + m.usec * scale, m.caplen < m.wirelen


def reference(path):
    """(expected batch, expected ReadStats counters) from scapy records + ``ref_frame``."""
    rows, counts = [], dict(packets_read=0, ipv4=0, ipv6=0, ipv6_skipped=0, other_skipped=0, truncated_records=0)
    for frame, lt, ts, cut in scapy_records(path):
        kind, row = ref_frame(frame, lt, ts)
        counts["packets_read"] += 1
        counts["truncated_records"] += cut
        counts[{"v4": "ipv4", "v6": "ipv6", "other": "other_skipped"}[kind]] += 1
        if row:
            rows.append(row)
    return rows_to_batch(rows), counts


def read_all(path, batch_size=65536, stats=None) -> PacketBatch:
    return PacketBatch.concat(read_capture(path, batch_size=batch_size, stats=stats))


def assert_same(got: PacketBatch, want: PacketBatch):
    assert len(got) == len(want)
    for name in got.columns():
        a, b = getattr(got, name), getattr(want, name)
        bad = np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1)) if len(a) else []
        assert len(bad) == 0, f"column {name}: {len(bad)} rows differ, first at {bad[0]}: {a[bad[0]]} != {b[bad[0]]}"


def check_against_scapy(path, batch_size=65536):
    stats = ReadStats()
    got = read_all(path, batch_size, stats)
    want, counts = reference(path)
    assert_same(got, want)
    for key, value in counts.items():
        assert getattr(stats, key) == value, key
    return got, stats


# ------------------------------------------------------------------------- real traces
@needs_traces
@pytest.mark.needs_traces
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_trace_matches_scapy(path):
    """Every file in ../shared/traces: all columns equal, all counters equal (about 2 s in all)."""
    got, stats = check_against_scapy(path, batch_size=4096)
    assert stats.ipv4 + stats.ipv6 == len(got) > 0 and stats.ipv6 == got.ipv6_count()
    if path.name.startswith("ndpi"):
        assert stats.ipv6 == 5132 and stats.ipv6_skipped == 0  # the nDPI mix has IPv6


@needs_traces
@pytest.mark.needs_traces
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_trace_matches_scapy_layers(path):
    """Independent decode with scapy's layers on the first 1500 fully captured packets of each family."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    got = read_all(path)
    i, checked = 0, {"v4": 0, "v6": 0}
    for frame, lt, ts, cut in scapy_records(path):
        if min(checked.values()) >= 1500:
            break
        kind, _ = ref_frame(frame, lt, ts)
        if kind == "other":
            continue
        if checked[kind] < 1500 and not cut:
            pkt = Ether(frame)
            off, _ = _link(frame, lt)
            if kind == "v4" and IP in pkt and len(frame) - off >= pkt[IP].len:
                assert_scapy_ipv4(pkt[IP], got, i)
                checked["v4"] += 1
            elif kind == "v6" and IPv6 in pkt and len(frame) - off >= 40 + pkt[IPv6].plen:
                assert_scapy_ipv6(pkt[IPv6], got, i)
                checked["v6"] += 1
            assert got.ts_ns[i] == ts
        i += 1
    assert checked["v4"] > 0
    if path.name.startswith("ndpi"):
        assert checked["v6"] == 1500


def assert_scapy_ipv4(ip, got: PacketBatch, i: int) -> None:
    """Row ``i`` of ``got`` agrees with scapy's decode of the IPv4 layer ``ip``."""
    from scapy.layers.inet import TCP, UDP

    assert got.ipv6[i] == 0
    assert got.src_ip[i] == int.from_bytes(bytes(map(int, ip.src.split("."))), "big")
    assert got.dst_ip[i] == int.from_bytes(bytes(map(int, ip.dst.split("."))), "big")
    assert (got.proto[i], got.length[i], got.ip_id[i], got.ttl[i], got.tos[i]) == (
        ip.proto, ip.len, ip.id, ip.ttl, ip.tos)
    l4 = ip.payload
    if ip.frag == 0 and isinstance(l4, (TCP, UDP)):
        assert (got.src_port[i], got.dst_port[i]) == (l4.sport, l4.dport)
    if ip.frag == 0 and isinstance(l4, TCP):
        assert (got.tcp_seq[i], got.tcp_window[i], got.tcp_flags[i]) == (
            l4.seq, l4.window, int(l4.flags) & 0xFF)


def assert_scapy_ipv6(ip6, got: PacketBatch, i: int) -> None:
    """Row ``i`` of ``got`` agrees with scapy's decode of the IPv6 layer ``ip6``: addresses, hop
    limit, traffic class, flow label, length, and the protocol and ports after scapy's own walk of
    the extension headers (a non-first fragment ends it: no ports)."""
    import socket

    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import (IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                    IPv6ExtHdrRouting)
    from scapy.layers.ipsec import AH

    assert got.ipv6[i] == 1 and got.src_ip[i] == 0 == got.dst_ip[i]
    assert bytes(got.src_ip6[i]) == socket.inet_pton(socket.AF_INET6, ip6.src)
    assert bytes(got.dst_ip6[i]) == socket.inet_pton(socket.AF_INET6, ip6.dst)
    assert (got.ttl[i], got.tos[i], got.flow_label[i], got.length[i]) == (ip6.hlim, ip6.tc, ip6.fl, ip6.plen + 40)
    classes = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 44: IPv6ExtHdrFragment, 60: IPv6ExtHdrDestOpt, 51: AH}
    proto, layer, frag_id, first = ip6.nh, ip6.payload, 0, True
    while proto in classes:
        if not isinstance(layer, classes[proto]):  # scapy leaves what follows AH undecoded
            layer = classes[proto](bytes(layer))
        proto = layer.nh
        if isinstance(layer, IPv6ExtHdrFragment):
            frag_id, first = layer.id & 0xFFFF, layer.offset == 0
            if not first:
                break
        layer = layer.payload
    assert (got.proto[i], got.ip_id[i]) == (proto, frag_id)
    if first and proto in (6, 17) and not isinstance(layer, (TCP, UDP)):
        layer = (TCP if proto == 6 else UDP)(bytes(layer))  # scapy leaves what follows AH undecoded
    if first and isinstance(layer, (TCP, UDP)) and proto in (6, 17):
        assert (got.src_port[i], got.dst_port[i]) == (layer.sport, layer.dport)
        if isinstance(layer, TCP):
            assert (got.tcp_seq[i], got.tcp_window[i], got.tcp_flags[i]) == (
                layer.seq, layer.window, int(layer.flags) & 0xFF)
    else:
        assert got.src_port[i] == 0 == got.dst_port[i]


@needs_traces
@pytest.mark.needs_traces
def test_real_trace_pcapng_and_gzip_equal_pcap(tmp_path):
    src = TRACES / "slips_test-cc-capture-1.pcap"
    want = read_all(src)
    ng = tmp_path / "slips.pcapng"
    ng.write_bytes(to_pcapng(scapy_records(src)))
    assert_same(read_all(ng, batch_size=1000), want)
    gz = tmp_path / "slips.anything"
    gz.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
    stats = ReadStats()
    assert_same(read_all(gz, batch_size=3000, stats=stats), want)
    assert stats.compressed and stats.format == "pcap"


# ------------------------------------------------------------------------- generated captures
LINKS = ["ethernet", "vlan", "raw", "ipv4", "sll", "sll2", "null"]


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("byteorder,nanosecond", [("little", False), ("big", True), ("big", False)])
def test_generated_matches_scapy(tmp_path, link, byteorder, nanosecond):
    path = tmp_path / f"g_{link}.pcap"
    generate_capture(path, packets=1500, flows=150, seed=11, link=link, byteorder=byteorder,
                     nanosecond=nanosecond, ipv6_rate=0.05, ip_options_rate=0.1, frag_rate=0.05,
                     snaplen=72)
    got, stats = check_against_scapy(path, batch_size=500)
    assert stats.format == ("pcap-ns" if nanosecond else "pcap")
    assert stats.short_headers > 0  # snaplen 72 cuts some option-heavy headers


@pytest.mark.parametrize("link", ["ethernet", "sll2", "raw"])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_pcapng_equals_pcap(tmp_path, link, byteorder):
    kw = dict(packets=2000, flows=100, seed=5, link=link, byteorder=byteorder, nanosecond=True,
              ipv6_rate=0.03)
    generate_capture(tmp_path / "a.pcap", **kw)
    generate_capture(tmp_path / "a.pcapng", format="pcapng", **kw)
    a = read_all(tmp_path / "a.pcap")
    b = read_all(tmp_path / "a.pcapng", batch_size=333)
    assert_same(b, a)
    check_against_scapy(tmp_path / "a.pcapng")


def test_gzip_both_formats(tmp_path):
    for fmt in ("pcap", "pcapng"):
        p = tmp_path / f"x.{fmt}"
        generate_capture(p, packets=3000, flows=200, seed=2, format=fmt)
        gz = tmp_path / f"x.{fmt}.gz"
        gz.write_bytes(gzip.compress(p.read_bytes()))
        assert_same(read_all(gz, batch_size=700), read_all(p))


def test_gzip_window_slides(tmp_path, monkeypatch):
    """A tiny decompression window forces refills and growth mid-record."""
    from telesketch.traces import pcap

    monkeypatch.setattr(pcap.ByteSource, "WINDOW", 64)
    for fmt in ("pcap", "pcapng"):
        p = tmp_path / f"w.{fmt}"
        generate_capture(p, packets=400, flows=40, seed=9, format=fmt, snaplen=1600)
        gz = tmp_path / f"w.{fmt}.gz"
        gz.write_bytes(gzip.compress(p.read_bytes()))
        assert_same(read_all(gz, batch_size=64), read_all(p))


def test_batches_are_bounded_and_concat_equal(tmp_path):
    p = tmp_path / "b.pcap"
    generate_capture(p, packets=1000, flows=50, seed=1)
    sizes = [len(b) for b in read_capture(p, batch_size=128)]
    assert max(sizes) == 128 and sum(sizes) == 1000
    assert read_all(p, batch_size=1).equals(read_all(p))
    with pytest.raises(ValueError):
        next(read_capture(p, batch_size=0))


# ------------------------------------------------------------------------- hand-built pcapng
def _block(bo, btype, body):
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def _shb(bo):
    return _block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(bo, linktype, snaplen=0, tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += struct.pack(bo + "HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        opts += struct.pack(bo + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(bo + "HH", 0, 0)
    return _block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def _epb(bo, ifid, units, frame, wirelen=None, opts=b""):
    body = struct.pack(bo + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(frame),
                       wirelen or len(frame)) + frame + bytes(-len(frame) % 4) + opts
    return _block(bo, 6, body)


def to_pcapng(records, bo="<"):
    """Plain pcapng writer for tests: one interface (us), EPBs with options, skipped extra blocks."""
    out, lt_seen = [_shb(bo)], None
    for k, (frame, lt, ts, cut) in enumerate(records):
        if lt_seen is None:
            out.append(_idb(bo, lt, snaplen=0, tsresol=6))
            lt_seen = lt
        opts = struct.pack(bo + "HHI", 2, 4, 1) + struct.pack(bo + "HH", 0, 0) if k % 3 == 0 else b""
        out.append(_epb(bo, 0, ts // 1000, frame, len(frame) + cut, opts))
        if k % 50 == 0:
            out.append(_block(bo, 5, bytes(20)))  # interface statistics: skipped
    return b"".join(out)


def _tcp_frame(src_ip, sport, seq):
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 7, 0, 64, 6, 0, src_ip.to_bytes(4, "big"), bytes(4))
    tcp = struct.pack(">HHIIBBHHH", sport, 80, seq, 0, 0x50, 0x10, 1000, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp


def test_pcapng_sections_interfaces_resolutions(tmp_path):
    """Two sections of different byte order, several interfaces and resolutions, SPB, unknown blocks."""
    f = [_tcp_frame(0x0A000001 + k, 1000 + k, k) for k in range(6)]
    raw_ip = f[5][14:]
    data = (
        _shb("<") + _idb("<", 1, tsresol=6) + _idb("<", 1, tsresol=9, tsoffset=100)
        + _epb("<", 0, 1_600_000_000_123456, f[0]) + _epb("<", 1, 5, f[1])
        + _block("<", 4, bytes(8)) + _block("<", 0x40000BAD, b"custom")
        + _shb(">") + _idb(">", 1, snaplen=60, tsresol=0x80 | 20) + _idb(">", 101, tsresol=3)
        + _epb(">", 0, (3 << 20) + (1 << 19), f[2]) + _block(">", 3, struct.pack(">I", len(f[3])) + f[3])
        + _epb(">", 1, 42, raw_ip)
    )
    p = tmp_path / "multi.pcapng"
    p.write_bytes(data)
    stats = ReadStats()
    b = read_all(p, batch_size=2, stats=stats)
    assert list(b.src_ip) == [0x0A000001, 0x0A000002, 0x0A000003, 0x0A000004, 0x0A000006]
    assert list(b.ts_ns) == [1_600_000_000_123_456_000, 100 * 10**9 + 5, 3 * 10**9 + 5 * 10**8, 0, 42 * 10**6]
    assert list(b.src_port) == [1000, 1001, 1002, 1003, 1005] and list(b.tcp_seq) == [0, 1, 2, 3, 5]
    assert stats.link_types == [1, 1, 1, 101] and stats.packets_read == 5


def test_pcapng_bad_interface_and_unknown_link(tmp_path):
    f = _tcp_frame(0x0A000001, 1, 1)
    p = tmp_path / "x.pcapng"
    p.write_bytes(_shb("<") + _idb("<", 1) + _epb("<", 0, 1, f) + _epb("<", 3, 2, f))
    got = []
    with pytest.raises(CaptureError, match=r"interface.*offset \d+"):
        for b in read_capture(p):
            got.append(b)
    assert sum(map(len, got)) == 1
    p.write_bytes(_shb("<") + _idb("<", 147))
    with pytest.raises(CaptureError, match="link type 147"):
        read_all(p)


def _pcap_file(frames, linktype=1, bo="<", snaplen=65535):
    out = [struct.pack(bo + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for k, (frame, wirelen) in enumerate(frames):
        out.append(struct.pack(bo + "IIII", 1_700_000_000 + k, 999_999, len(frame), wirelen) + frame)
    return b"".join(out)


def test_encapsulations_and_edge_frames(tmp_path):
    """PPPoE, MPLS, QinQ/0x9100, IP options, fragments, ICMP, Ethernet padding, cut headers."""
    mac = bytes(12)
    tcp = _tcp_frame(0xC0A80001, 4242, 99)[14:]
    opts_ip = bytearray(tcp[:20] + b"\x94\x04\x00\x00" + tcp[20:])
    opts_ip[0], opts_ip[3] = 0x46, 44
    frag = bytearray(tcp)
    frag[6:8] = (0x2000 | 185).to_bytes(2, "big")
    icmp = bytearray(tcp)
    icmp[9] = 1
    udp = bytearray(tcp[:20] + struct.pack(">HHHH", 53, 5353, 8, 0))
    udp[3], udp[9] = 28, 17
    frames = [
        mac + b"\x88\x64" + bytes([0x11, 0, 0, 1]) + struct.pack(">HH", len(tcp) + 2, 0x21) + tcp,
        mac + b"\x88\x64" + bytes(6) + b"\x00\x57" + b"\x60" + bytes(5) + b"\x3b" + bytes(33),  # PPPoE IPv6
        mac + b"\x88\x47" + bytes([0, 1, 0, 64, 0, 2, 1, 64]) + tcp,           # MPLS, 2 labels
        mac + b"\x91\x00\x00\x05\x81\x00\x00\x06\x08\x00" + bytes(opts_ip),  # 0x9100 + 802.1Q
        mac + b"\x08\x00" + bytes(frag),
        mac + b"\x08\x00" + bytes(icmp),
        mac + b"\x08\x00" + bytes(udp) + b"\xee" * 18,                         # padding past tot-len
        mac + b"\x08\x00" + tcp[:30],                                           # cut inside TCP
        mac + b"\x08\x00" + b"\x45",                                           # one IP byte
        mac + b"\x08\x00",                                                      # no IP byte: other
        mac + b"\x08\x00" + b"\x43" + bytes(30),                               # IHL 3: other
        mac[:5],                                                                  # runt: other
        mac + b"\x08\x06" + bytes(28),                                          # ARP
    ]
    p = tmp_path / "edge.pcap"
    p.write_bytes(_pcap_file([(f, len(f) + 10) for f in frames]))
    got, stats = check_against_scapy(p, batch_size=3)
    assert (stats.ipv4, stats.ipv6, stats.other_skipped) == (8, 1, 4)
    assert got.ipv6.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]  # the PPPoE IPv6 frame is a row
    got = got.family(4)
    assert list(got.src_port) == [4242, 4242, 4242, 0, 0, 53, 4242, 0]
    assert list(got.hdr_len) == [40, 40, 40, 20, 20, 28, 40, 20]
    assert got.header[2, 20:24].tolist() == [0x94, 4, 0, 0] and got.header[2, 24:26].tolist() == [0x10, 0x92]
    assert got.header[5, 28:].sum() == 0  # UDP: nothing after the 8-byte header, padding ignored
    assert got.tcp_window[6] == 0 and got.tcp_seq[6] == 99  # cut after byte 30 of the datagram
    assert stats.short_headers == 2 and stats.truncated_records == 13


# ------------------------------------------------------------------------- errors
def test_unknown_link_type_named(tmp_path):
    p = tmp_path / "wifi.pcap"
    p.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 127))
    with pytest.raises(CaptureError, match=r"link type 127 \(IEEE802_11_RADIOTAP\)"):
        read_all(p)


@pytest.mark.parametrize("content", [b"", b"\xd4\xc3", b"hello world, not a capture", gzip.compress(b"plain text")])
def test_not_a_capture(tmp_path, content):
    p = tmp_path / "junk.bin"
    p.write_bytes(content)
    with pytest.raises(CaptureError):
        read_all(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "c.pcap"
    generate_capture(p, packets=2000, flows=100, seed=4)
    z = bytearray(gzip.compress(p.read_bytes()))
    z[len(z) // 2] ^= 0xFF
    (tmp_path / "c.gz").write_bytes(bytes(z))
    with pytest.raises(CaptureError):
        read_all(tmp_path / "c.gz")


def test_huge_caplen_is_named(tmp_path):
    p = tmp_path / "h.pcap"
    generate_capture(p, packets=10, flows=2, seed=4)
    data = bytearray(p.read_bytes())
    data[24 + 8:24 + 12] = struct.pack("<I", 0x7FFFFFFF)
    p.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"offset 24\b.*2147483647"):
        read_all(p)


# ------------------------------------------------------------------------- fuzzing
def _small_capture(fmt: str, byteorder: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"s.{fmt}"
        generate_capture(p, packets=40, flows=6, seed=3, format=fmt, byteorder=byteorder,
                         link="vlan", ipv6_rate=0.1, ip_options_rate=0.2, snaplen=96)
        return p.read_bytes()


SMALL = {(fmt, bo): _small_capture(fmt, bo) for fmt in ("pcap", "pcapng") for bo in ("little", "big")}


def _layout(data: bytes, fmt: str, bo: str):
    """(end offsets of packet records/blocks, end offsets of every block, end of the file header)."""
    o = "<" if bo == "little" else ">"
    pkt_ends, all_ends, pos = [], [], 24 if fmt == "pcap" else 0
    header_end = 24 if fmt == "pcap" else None
    if fmt == "pcap":
        all_ends.append(pos)
    while pos < len(data):
        if fmt == "pcap":
            pos += 16 + struct.unpack_from(o + "I", data, pos + 8)[0]
            pkt_ends.append(pos)
        else:
            btype, blen = struct.unpack_from(o + "II", data, pos)
            if btype in (3, 6) and header_end is None:
                header_end = pos
            pos += blen
            if btype in (3, 6):
                pkt_ends.append(pos)
        all_ends.append(pos)
    return pkt_ends, all_ends, header_end


def _read_until_error(data: bytes):
    """(rows read, CaptureError or None); any other exception propagates and fails the test."""
    with tempfile.NamedTemporaryFile(suffix=".cap") as f:
        f.write(data)
        f.flush()
        batches, err = [], None
        try:
            for b in read_capture(f.name, batch_size=7):
                batches.append(b)
        except CaptureError as exc:
            err = exc
        return PacketBatch.concat(batches), err


def _reference_rows(data: bytes):
    with tempfile.NamedTemporaryFile(suffix=".cap") as f:
        f.write(data)
        f.flush()
        return reference(f.name)[0]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = st.sampled_from(sorted(SMALL))


def _expected_prefix(data: bytes, upto: int) -> PacketBatch:
    """Reference rows of the packet records that end at or before ``upto`` (header intact)."""
    return _reference_rows(data[:upto])


@FUZZ
@given(kind=KINDS, frac=st.floats(0, 1))
def test_truncated_file_yields_prefix_then_error(kind, frac):
    data = SMALL[kind]
    cut = int(len(data) * frac)
    got, err = _read_until_error(data[:cut])
    pkt_ends, all_ends, header_end = _layout(data, *kind)
    done = [e for e in pkt_ends if e <= cut]
    want = _expected_prefix(data, done[-1]) if done else PacketBatch.empty()
    assert_same(got, want)
    if cut in all_ends:
        assert err is None
    else:
        assert err is not None and ("offset" in str(err) or "too short" in str(err))


@FUZZ
@given(kind=KINDS, flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_give_packets_or_capture_error(kind, flips):
    intact = SMALL[kind]
    data = bytearray(intact)
    first = len(data)
    for where, mask in flips:
        i = min(int(where * len(data)), len(data) - 1)
        data[i] ^= mask
        first = min(first, i)
    got, err = _read_until_error(bytes(data))
    pkt_ends, _, header_end = _layout(intact, *kind)
    done = [e for e in pkt_ends if e <= first]
    if done and first >= header_end:
        # every record that ends before the first damaged byte reads exactly as in the intact file
        want = _expected_prefix(intact, done[-1])
        assert len(got) >= len(want)
        assert_same(got[: len(want)], want)
    if err is None and kind[0] == "pcap":
        # no error: the same rows as scapy's record walk + the reference decoder
        assert_same(got, _reference_rows(bytes(data)))


@FUZZ
@given(data=st.binary(min_size=0, max_size=300), kind=KINDS)
def test_garbage_after_valid_header(data, kind):
    head = SMALL[kind][: (24 if kind[0] == "pcap" else 28 + 20)]
    got, err = _read_until_error(head + data)
    assert err is None or isinstance(err, CaptureError)
    assert all(len(getattr(got, c)) == len(got) for c in got.columns())


# ------------------------------------------------------------------------- issue 17: truncated gzip
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_gzip_yields_every_complete_packet_before_the_damage(tmp_path, fmt):
    p = tmp_path / f"t.{fmt}"
    generate_capture(p, packets=3000, flows=50, seed=8, format=fmt)
    whole = read_all(p)
    z = gzip.compress(p.read_bytes())
    (tmp_path / "t.gz").write_bytes(z[: len(z) * 2 // 3])  # a download cut short
    got, error = [], None
    try:
        for batch in read_capture(tmp_path / "t.gz", batch_size=256):
            got.append(batch)
    except CaptureError as exc:
        error = str(exc)
    assert error is not None and "gzip" in error and "truncated" in error, error
    n = sum(len(b) for b in got)
    offset = int(error.split("offset ")[1].split()[0].rstrip(":,"))
    assert offset > 0
    # every packet whose record lies wholly in the decompressible part, and nothing else
    assert 1000 < n < 3000
    assert np.array_equal(np.concatenate([b.ts_ns for b in got]), whole.ts_ns[:n])


def test_truncated_gzip_on_a_record_boundary_is_still_an_error(tmp_path):
    """The damage must not pass for a clean end when the cut falls between records."""
    p = tmp_path / "b.pcap"
    generate_capture(p, packets=200, flows=5, seed=8)
    raw = p.read_bytes()
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    partial = co.compress(raw) + co.flush(zlib.Z_SYNC_FLUSH)  # all of it, but no end-of-stream marker
    (tmp_path / "b.gz").write_bytes(partial)
    with pytest.raises(CaptureError, match="gzip"):
        read_all(tmp_path / "b.gz")


def test_pcapng_many_interface_blocks_read_in_linear_time(tmp_path):
    """10,000 interface description blocks (a 200 KB file) took 70 s when each one rebuilt the whole
    interface table; every packet still names the right interface's link type and resolution."""
    import time

    f = _tcp_frame(0x0A000001, 1, 1)
    n_if = 10_000
    idbs = b"".join(_idb("<", 1, tsresol=6 if k % 2 else 9) for k in range(n_if))
    p = tmp_path / "many.pcapng"
    p.write_bytes(_shb("<") + idbs + _epb("<", n_if - 1, 7, f) + _epb("<", n_if - 2, 7, f))
    start = time.perf_counter()
    stats = ReadStats()
    b = read_all(p, stats=stats)
    elapsed = time.perf_counter() - start
    assert list(b.ts_ns) == [7_000, 7] and len(stats.link_types) == n_if
    assert elapsed < 5.0, f"{n_if} interface blocks took {elapsed:.1f} s"


# ------------------------------------------------------------------------- IPv6 (issue 18)
@pytest.mark.parametrize("link", ["ethernet", "vlan", "raw", "sll", "sll2", "null"])
def test_generated_ipv6_matches_scapy(tmp_path, link):
    """Mixed captures with every extension header and fragments; snaplen 96 cuts some chains."""
    path = tmp_path / f"g6_{link}.pcap"
    generate_capture(path, packets=1500, flows=150, seed=12, link=link, ipv6_share=0.5, frag_rate=0.05,
                     snaplen=96, ipv6_rate=0.02)
    got, stats = check_against_scapy(path, batch_size=500)
    assert stats.ipv6 == got.ipv6_count() > 500 and stats.ipv6_skipped == 0
    assert stats.short_headers > 0


@pytest.mark.parametrize("link", ["ethernet", "vlan", "raw", "sll", "sll2", "null"])
def test_generated_ipv6_matches_scapy_layers(tmp_path, link):
    """Every IPv6 row of a fully captured mixed capture, on each link type the generator writes,
    against scapy's own link layer and extension-header walk."""
    path = tmp_path / "g6.pcap"
    generate_capture(path, packets=1200, flows=120, seed=13, link=link, ipv6_share=0.6, frag_rate=0.1,
                     snaplen=256)
    got = read_all(path)
    checked = 0
    for i, (frame, lt, ts, cut) in enumerate(scapy_records(path)):
        off, kind = _link(frame, lt)
        if kind == "v6":
            ip6, _ = _scapy_ipv6(frame, lt, off)
            assert_scapy_ipv6(ip6, got, i)
            checked += 1
    assert checked == got.ipv6_count() > 500


def _v6(nh, ext=b"", upper=b"", plen=None, tc=0xB8, label=0x12345, hlim=61):
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    body = ext + upper
    plen = len(body) if plen is None else plen
    return (bytes([0x60 | tc >> 4, (tc & 15) << 4 | label >> 16]) + (label & 0xFFFF).to_bytes(2, "big")
            + plen.to_bytes(2, "big") + bytes([nh, hlim]) + src + dst + body)


def test_ipv6_extension_headers_by_hand(tmp_path):
    """Each extension header, ESP, fragments, cut chains, padding, and the IPv6 link types."""
    tcp = struct.pack(">HHIIBBHHH", 4242, 443, 77, 0, 0x50, 0x12, 999, 0, 0)
    udp = struct.pack(">HHHH", 5353, 53, 8, 0)
    hbh = lambda nxt: bytes([nxt, 0, 1, 4, 0, 0, 0, 0])  # noqa: E731
    ah = lambda nxt: bytes([nxt, 4, 0, 0]) + bytes(20)    # noqa: E731 - (4 + 2) * 4 = 24 bytes
    rt = lambda nxt: bytes([nxt, 2, 2, 1]) + bytes(20)    # noqa: E731 - (2 + 1) * 8 = 24 bytes
    frag = lambda nxt, off, ident: bytes([nxt, 0]) + (off << 3 | 1).to_bytes(2, "big") + ident.to_bytes(4, "big")  # noqa: E731
    eth = bytes(12) + b"\x86\xdd"
    frames = [
        eth + _v6(6, upper=tcp),                                                   # 0 plain TCP
        eth + _v6(0, hbh(60) + hbh(43) + rt(51) + ah(6), tcp),                    # 1 HBH, DST, RT, AH
        eth + _v6(44, frag(17, 0, 0xABCD1234), udp),                              # 2 first fragment
        eth + _v6(44, frag(17, 185, 0xABCD1235), b"\xee" * 16),                    # 3 later fragment
        eth + _v6(50, bytes(8) + b"\x11" * 16),                                   # 4 ESP
        eth + _v6(0, hbh(50) + bytes(8)),                                         # 5 HBH then ESP
        eth + _v6(0, b"\x06", plen=40),                                           # 6 HBH cut after 1 byte
        eth + _v6(17, upper=udp) + b"\xee" * 20,                                  # 7 Ethernet padding
        eth + _v6(59, plen=0),                                                    # 8 no next header
        eth + b"\x45" + bytes(39),                                                # 9 0x86DD, version 4: other
        eth + _v6(6, upper=tcp)[:30],                                             # 10 cut in the addresses
    ]
    p = tmp_path / "v6.pcap"
    p.write_bytes(_pcap_file([(f, len(f)) for f in frames]))
    got, stats = check_against_scapy(p, batch_size=4)
    assert (stats.ipv4, stats.ipv6, stats.other_skipped) == (0, 10, 1)
    assert got.proto.tolist() == [6, 6, 17, 17, 50, 50, 0, 17, 59, 6]
    assert got.src_port.tolist() == [4242, 4242, 5353, 0, 0, 0, 0, 5353, 0, 0]
    assert got.ip_id.tolist() == [0, 0, 0x1234, 0x1235, 0, 0, 0, 0, 0, 0]
    assert got.hdr_len.tolist() == [28, 28, 16, 8, 8, 8, 8, 16, 8, 28]
    assert got.length.tolist()[:3] == [60, 40 + 8 * 2 + 24 + 24 + 20, 56]
    assert (got.ttl[0], got.tos[0], got.flow_label[0], got.tcp_seq[0], got.tcp_window[0]) == (61, 0xB8, 0x12345, 77, 999)
    assert bytes(got.header[0, :8]) == frames[0][14:22] and bytes(got.header[0, 8:28]) == tcp
    assert bytes(got.header[1, 8:28]) == tcp  # extension headers are not kept, the TCP header is
    assert not got.header[7, 16:].any()  # padding past 40 + payload length ignored
    assert got.src_ip6[0].tolist()[-1] == 1 and got.dst_ip6[0].tolist()[-1] == 2 and not got.src_ip.any()
    assert got.dst_ip6[9].tolist() == [0x20, 1, 0x0D, 0xB8, 0, 0] + [0] * 10 and got.src_ip6[9, 15] == 1  # cut at 30
    assert stats.short_headers == 2  # rows 6 and 9 lack part of their headers


@pytest.mark.parametrize("linktype,prefix", [(229, b""), (101, b""), (108, (30).to_bytes(4, "big")),
                                             (0, (28).to_bytes(4, "little")), (113, bytes(14) + b"\x86\xdd"),
                                             (276, b"\x86\xdd" + bytes(18))])
def test_ipv6_on_every_link_type(tmp_path, linktype, prefix):
    tcp = struct.pack(">HHIIBBHHH", 1, 2, 3, 0, 0x50, 0x10, 5, 0, 0)
    p = tmp_path / "l.pcap"
    p.write_bytes(_pcap_file([(prefix + _v6(6, upper=tcp), 0)] * 3, linktype=linktype))
    got, stats = check_against_scapy(p)
    assert stats.ipv6 == 3 and got.src_port.tolist() == [1, 1, 1] and got.dst_port.tolist() == [2, 2, 2]


def _every_extension_header_datagrams() -> list[bytes]:
    """IPv6 datagrams holding each extension header the reader walks, alone and chained: hop-by-hop,
    routing, destination options, AH, first and non-first fragments (UDP and TCP inside), and ESP
    ending the walk (alone, after hop-by-hop, after AH)."""
    tcp = struct.pack(">HHIIBBHHH", 4242, 443, 77, 5, 0x50, 0x18, 999, 0, 0)
    udp = struct.pack(">HHHH", 5353, 53, 8, 0)
    hbh = lambda nxt: bytes([nxt, 0, 1, 4, 0, 0, 0, 0])  # noqa: E731 - PadN, 8 bytes
    dst = lambda nxt: bytes([nxt, 1, 1, 12]) + bytes(12)  # noqa: E731 - (1 + 1) * 8 = 16 bytes
    rt = lambda nxt: bytes([nxt, 2, 0, 1]) + bytes(20)    # noqa: E731 - type 0, (2 + 1) * 8 = 24 bytes
    ah = lambda nxt: bytes([nxt, 4, 0, 0]) + bytes(20)    # noqa: E731 - (4 + 2) * 4 = 24 bytes
    frag = lambda nxt, off, ident, more=1: (bytes([nxt, 0]) + (off << 3 | more).to_bytes(2, "big")  # noqa: E731
                                            + ident.to_bytes(4, "big"))
    esp = bytes([0, 0, 1, 0, 0, 0, 0, 7]) + b"\x5a" * 24
    return [
        _v6(0, hbh(6), tcp),                                        # hop-by-hop
        _v6(43, rt(17), udp),                                       # routing
        _v6(60, dst(6), tcp),                                       # destination options
        _v6(51, ah(17), udp),                                       # AH
        _v6(44, frag(6, 0, 0x00C0FFEE), tcp),                       # first fragment, TCP
        _v6(44, frag(17, 0, 0x12345678), udp),                      # first fragment, UDP
        _v6(44, frag(6, 181, 0x00C0FFEE, more=0), b"\xee" * 24),    # last (non-first) fragment of TCP
        _v6(44, frag(17, 3, 0x12345678), b"\xee" * 24),             # middle fragment of UDP
        _v6(50, esp),                                               # ESP
        _v6(0, hbh(50), esp),                                       # hop-by-hop then ESP
        _v6(51, ah(50), esp),                                       # AH then ESP
        _v6(0, hbh(43) + rt(60) + dst(51) + ah(44) + frag(6, 0, 0xBEEF), tcp),    # all of them, then TCP
        _v6(0, hbh(60) + dst(44) + frag(17, 90, 0xBEEF, more=0), b"\xee" * 16),   # chain, non-first
        _v6(60, dst(44) + frag(50, 0, 0xA), esp),                   # fragment then ESP
        _v6(58, upper=bytes([128, 0, 0, 0, 0, 1, 0, 1])),           # ICMPv6: no ports
    ]


#: link type -> how one IPv6 datagram is framed on it (every way the reader takes IPv6)
IPV6_LINKS = {
    "ethernet": (1, lambda ip: bytes(12) + b"\x86\xdd" + ip),
    "vlan": (1, lambda ip: bytes(12) + b"\x81\x00\x00\x07\x86\xdd" + ip),
    "qinq": (1, lambda ip: bytes(12) + b"\x88\xa8\x00\x05\x81\x00\x00\x06\x86\xdd" + ip),
    "pppoe": (1, lambda ip: bytes(12) + b"\x88\x64" + bytes([0x11, 0, 0, 1]) + (len(ip) + 2).to_bytes(2, "big")
              + b"\x00\x57" + ip),
    "mpls": (1, lambda ip: bytes(12) + b"\x88\x47" + bytes([0, 1, 0, 64, 0, 2, 1, 64]) + ip),
    "raw101": (101, lambda ip: ip),
    "raw229": (229, lambda ip: ip),
    "sll": (113, lambda ip: bytes(14) + b"\x86\xdd" + ip),
    "sll2": (276, lambda ip: b"\x86\xdd" + bytes(18) + ip),
    "null-af24": (0, lambda ip: (24).to_bytes(4, "little") + ip),
    "null-af28": (0, lambda ip: (28).to_bytes(4, "little") + ip),
    "loop-af30": (108, lambda ip: (30).to_bytes(4, "big") + ip),
    "loop-af10": (108, lambda ip: (10).to_bytes(4, "big") + ip),
}


def _scapy_ipv6(frame: bytes, linktype: int, off: int):
    """scapy's IPv6 layer of ``frame``, decoded from the link layer by scapy's class for
    ``linktype`` where scapy knows the encapsulation, from the reference offset where it does not (the
    BSD loopback address families 24, 28 and 30, which scapy's loopback layers do not map); the
    flag says which."""
    import scapy.contrib.mpls  # noqa: F401 - binds MPLS to Ethernet and guesses IPv6 after the labels
    import scapy.layers.ppp  # noqa: F401 - binds PPPoE session frames and PPP's IPv6 protocol
    from scapy.config import conf
    from scapy.layers.inet6 import IPv6

    pkt = conf.l2types.num2layer[linktype](frame)
    if IPv6 in pkt:
        return pkt[IPv6], True
    return IPv6(frame[off:]), False


@pytest.mark.parametrize("link", sorted(IPV6_LINKS))
def test_every_ipv6_extension_header_on_every_link_type_matches_scapy_layers(tmp_path, link):
    """Issue 18's must-show: the reader equals scapy's own decode (its link layer, IPv6 layer and
    extension-header walk, ``assert_scapy_ipv6``) on IPv6 datagrams with every extension header,
    first and non-first fragments and ESP, framed on every link type and Ethernet encapsulation
    the reader takes; and the reference decoder agrees on every column (``check_against_scapy``)."""
    linktype, wrap = IPV6_LINKS[link]
    datagrams = _every_extension_header_datagrams()
    frames = [wrap(ip) for ip in datagrams]
    p = tmp_path / f"ext_{link}.pcap"
    p.write_bytes(_pcap_file([(f, len(f)) for f in frames], linktype=linktype))
    got, stats = check_against_scapy(p, batch_size=4)
    assert stats.ipv6 == len(datagrams) == len(got) and stats.short_headers == 0
    by_scapy_link = 0
    for i, frame in enumerate(frames):
        off, kind = _link(frame, linktype)
        assert kind == "v6"
        ip6, whole = _scapy_ipv6(frame, linktype, off)
        by_scapy_link += whole
        assert_scapy_ipv6(ip6, got, i)
    if link not in ("null-af24", "null-af28", "loop-af30"):
        assert by_scapy_link == len(frames), "scapy's link layer found the IPv6 layer in every frame"
    # what the walk must give, independently of both decoders
    assert got.proto.tolist() == [6, 17, 6, 17, 6, 17, 6, 17, 50, 50, 50, 6, 17, 50, 58]
    assert got.src_port.tolist() == [4242, 5353, 4242, 5353, 4242, 5353, 0, 0, 0, 0, 0, 4242, 0, 0, 0]
    assert got.ip_id.tolist() == [0, 0, 0, 0, 0xFFEE, 0x5678, 0xFFEE, 0x5678, 0, 0, 0, 0xBEEF, 0xBEEF, 0xA, 0]
    assert got.tcp_seq.tolist()[:5] == [77, 0, 77, 0, 77] and got.tcp_seq[11] == 77
