"""Classic libpcap reader with a Numba fast path, plus the pieces every capture reader shares.

The file is memory-mapped (or, when gzip-compressed, decompressed into a sliding window). Two
``@njit(nogil=True)`` passes fill preallocated :class:`~telesketch.packets.PacketBatch` columns,
at most ``batch_size`` packets per call: a walker (:func:`_pcap_walk`; pcapng has its own) locates
records and returns the byte offset it reached, then :func:`store_frames` parses link, IPv4 and
transport headers of the frames found straight into the columns. Memory stays bounded by one
batch (plus the gzip window) whatever the file size. (Two passes rather than one call per frame:
handing 15 column arrays to a per-frame function costs a reference-count pair per array per
packet, which was 4x slower.)

Per-packet semantics (shared with the pcapng reader through :func:`parse_frame`):

* link types: Ethernet (1) with any number of 802.1Q / 802.1ad / QinQ tags (then also PPPoE
  sessions and MPLS label stacks), raw IP (101),
  IPv4 (228), IPv6 (229), Linux cooked v1 (113) and v2 (276), BSD null (0, host byte order) and
  loop (108, network byte order);
* IPv4 and IPv6 packets become rows; everything else is skipped and counted in
  :class:`ReadStats`. A frame whose IPv4 header has a version nibble other than 4 or an IHL below
  5, whose IPv6 header has a version nibble other than 6, or with no IP byte at all counts as
  ``other_skipped``;
* IPv6 rows (see :func:`parse_ipv6` and docs/IPV6.md): addresses in ``src_ip6``/``dst_ip6``
  (``src_ip``/``dst_ip`` 0), ``ttl`` the hop limit, ``tos`` the traffic class, ``flow_label``,
  ``length`` the payload length + 40 (saturating at 65535), extension headers walked to the
  upper-layer ``proto`` and ports, ``ip_id`` the low 16 bits of the fragment identification (0
  without a fragment header); bytes past ``40 + payload length`` are ignored as for IPv4;
* ``length`` is the IPv4 total-length field; ``ip_id``, ``ttl``, ``tos``, ``proto``, addresses
  (numeric u32) come from the IPv4 header; ports and TCP fields from the transport header, which is
  looked for only when the fragment offset is 0 (non-first fragments and ICMP have ports 0);
* bytes past the end of the IPv4 datagram (``min(captured, total-length)`` when the total length
  is plausible, i.e. at least the header length) are treated as absent: link-layer padding and
  FCS never leak into fields. Absent bytes read as zero, so frames cut by the snap length still
  yield a row with whatever was captured;
* ``header`` is the first ``min(40, IHL*4 + 20 (TCP) | 8 (UDP) | 0)`` bytes of the datagram
  (IPv4 header with options, then the transport header without TCP options), bytes 12-19
  (addresses) zeroed, zero padded to 40; ``hdr_len`` is that length. For IPv6 rows it is the
  first 8 bytes of the IPv6 header (version, traffic class, flow label, payload length, next
  header, hop limit: the addresses dropped), then the upper-layer header (20 TCP / 8 UDP / 0
  bytes; extension headers not kept), zero padded; ``hdr_len`` is ``8 + 20 | 8 | 0``.
"""
from __future__ import annotations

import mmap
import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from telesketch.jit import kernel
from telesketch.packets import COLUMN_DTYPES, HEADER_BYTES, PacketBatch


class CaptureError(ValueError):
    """The capture cannot be read: unknown format or link type, truncated or corrupt data.

    For damage inside the file the message names the byte offset (in the decompressed stream for
    gzip input), and every good packet before that point has already been yielded.
    """


@dataclass
class ReadStats:
    """Counters of one read (updated in place while iterating; pass one to ``read_capture``).

    ``packets_read`` counts every packet record, ``ipv4`` and ``ipv6`` the rows yielded of each
    family, ``other_skipped`` the rest. ``ipv6_skipped`` is kept for compatibility and stays 0:
    IPv6 packets are read, not skipped (before IPv6 support it counted them). ``truncated_records``
    counts records cut by the snap length (captured < original length) and ``short_headers`` the
    rows whose IP (+ extension) + transport header was not fully captured. ``bytes_read`` is the
    offset reached (decompressed bytes for gzip).
    """

    format: str = ""
    compressed: bool = False
    link_types: list = field(default_factory=list)
    packets_read: int = 0
    ipv4: int = 0
    ipv6: int = 0
    ipv6_skipped: int = 0
    other_skipped: int = 0
    truncated_records: int = 0
    short_headers: int = 0
    bytes_read: int = 0

    def _add(self, counters: np.ndarray) -> None:
        self.packets_read += int(counters[C_RECORDS])
        self.ipv4 += int(counters[C_IPV4])
        self.ipv6 += int(counters[C_IPV6])
        self.other_skipped += int(counters[C_OTHER])
        self.truncated_records += int(counters[C_TRUNC])
        self.short_headers += int(counters[C_SHORT])
        counters[:] = 0


# ---------------------------------------------------------------------------------------------
# constants shared with pcapng.py

#: Link types the frame parser understands, with their names for error messages.
LINK_TYPES = {
    0: "NULL",
    1: "ETHERNET",
    101: "RAW",
    108: "LOOP",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}
#: A few unsupported ones, so the error names them.
_OTHER_LINK_NAMES = {
    6: "IEEE802_5", 9: "PPP", 10: "FDDI", 50: "PPP_HDLC", 51: "PPP_ETHER", 104: "C_HDLC",
    105: "IEEE802_11", 119: "PRISM_HEADER", 127: "IEEE802_11_RADIOTAP", 147: "USER0",
    187: "BLUETOOTH_HCI_H4", 192: "PPI", 195: "IEEE802_15_4", 215: "NETLINK", 220: "USB_LINUX_MMAPPED",
    249: "USBPCAP", 263: "WATTSTOPPER_DLM",
}

# counters layout
C_RECORDS, C_IPV4, C_IPV6, C_OTHER, C_TRUNC, C_SHORT = range(6)
N_COUNTERS = 6

# kernel status codes
ST_FULL = 0      # batch is full
ST_END = 1       # consumed the buffer exactly
ST_SHORT = 2     # a record/block runs past the end of the buffer
ST_BAD = 3       # corrupt record/block at the returned offset
ST_SHB = 4       # pcapng: section header block at the offset (handled in Python)
ST_IDB = 5       # pcapng: interface description block at the offset (handled in Python)
ST_BADIF = 6     # pcapng: packet block names an interface that was not described

KIND_IPV4, KIND_IPV6, KIND_OTHER = 0, 1, 2

#: Largest record length accepted whatever the snap length says (libpcap accepts up to
#: max(snaplen, 262144)); bounded so garbage cannot make a gzip window grow without limit.
MAX_RECORD = 16 * 1024 * 1024
_PCAP_MIN_BOUND = 262144

#: The scalar columns in the order the kernels take them, then ``header``.
KERNEL_COLUMN_DTYPES = {k: v for k, v in COLUMN_DTYPES.items() if k not in ("ipv6", "flow_label")}
SCALAR_COLUMNS = tuple(KERNEL_COLUMN_DTYPES)
#: Every column in the order :func:`new_columns` makes them and :func:`store_frames` takes them.
KERNEL_ORDER = SCALAR_COLUMNS + ("header", "ipv6", "flow_label", "src_ip6", "dst_ip6")


def link_type_name(linktype: int) -> str:
    """Readable name of a link type number (for messages)."""
    return LINK_TYPES.get(linktype) or _OTHER_LINK_NAMES.get(linktype) or "unknown"


def check_link_type(linktype: int, where: str) -> None:
    """Raise :class:`CaptureError` unless the frame parser handles ``linktype``."""
    if linktype not in LINK_TYPES:
        raise CaptureError(
            f"{where}: unsupported link type {linktype} ({link_type_name(linktype)}); "
            f"supported: {', '.join(f'{k} {v}' for k, v in sorted(LINK_TYPES.items()))}"
        )


# ---------------------------------------------------------------------------------------------
# Numba: byte helpers and the per-frame parser


@kernel(inline="always")
def rd32(buf, p, swap):
    """u32 at ``buf[p]`` as int64: little-endian, or big-endian when ``swap``."""
    b0 = np.int64(buf[p])
    b1 = np.int64(buf[p + 1])
    b2 = np.int64(buf[p + 2])
    b3 = np.int64(buf[p + 3])
    if swap:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


@kernel(inline="always")
def _be16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@kernel(inline="always")
def _byte(buf, base, k, lim):
    """Byte ``k`` of the datagram at ``base``, or 0 when ``k`` is past the usable ``lim``."""
    if k < lim:
        return np.int64(buf[base + k])
    return np.int64(0)


@kernel(inline="always")
def _transport_fields(buf, base, l4, thl, lim):
    """Ports and TCP fields of the upper-layer header at datagram offset ``l4`` (IPv4 and IPv6 alike).

    ``thl`` is the header's nominal length: 20 (TCP: ports, sequence number, flags, window), 8
    (UDP: ports) or 0 (no transport fields: all zero). Returns ``(sport, dport, tcp_flags,
    tcp_window, tcp_seq)`` as int64; bytes at or past ``lim`` read as zero (see :func:`_byte`).
    """
    z = np.int64(0)
    sport = z
    dport = z
    flags = z
    win = z
    seq = z
    if thl > 0:
        sport = (_byte(buf, base, l4, lim) << 8) | _byte(buf, base, l4 + 1, lim)
        dport = (_byte(buf, base, l4 + 2, lim) << 8) | _byte(buf, base, l4 + 3, lim)
    if thl == 20:
        seq = ((_byte(buf, base, l4 + 4, lim) << 24) | (_byte(buf, base, l4 + 5, lim) << 16)
               | (_byte(buf, base, l4 + 6, lim) << 8) | _byte(buf, base, l4 + 7, lim))
        flags = _byte(buf, base, l4 + 13, lim)
        win = (_byte(buf, base, l4 + 14, lim) << 8) | _byte(buf, base, l4 + 15, lim)
    return sport, dport, flags, win, seq


@kernel(inline="always")
def _network_offset(buf, off, caplen, linktype):
    """(offset of the network header relative to ``off``, KIND_*) for one frame."""
    if linktype == 1 or linktype == 113:
        p = 12 if linktype == 1 else 14
        if p + 2 > caplen:
            return 0, KIND_OTHER
        et = _be16(buf, off + p)
        q = p + 2
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if q + 4 > caplen:
                return 0, KIND_OTHER
            et = _be16(buf, off + q + 2)
            q += 4
        if et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
            if q + 8 > caplen:
                return 0, KIND_OTHER
            ppp = _be16(buf, off + q + 6)
            q += 8
            if ppp == 0x0021:
                return q, KIND_IPV4
            if ppp == 0x0057:
                return q, KIND_IPV6
            return q, KIND_OTHER
        if et == 0x8847:  # MPLS unicast: labels until bottom of stack, then IP by version
            while True:
                if q + 4 > caplen:
                    return 0, KIND_OTHER
                bottom = buf[off + q + 2] & 1
                q += 4
                if bottom:
                    break
            if q >= caplen:
                return 0, KIND_OTHER
            v = buf[off + q] >> 4
            if v == 4:
                return q, KIND_IPV4
            if v == 6:
                return q, KIND_IPV6
            return q, KIND_OTHER
        if et == 0x0800:
            return q, KIND_IPV4
        if et == 0x86DD:
            return q, KIND_IPV6
        return q, KIND_OTHER
    if linktype == 101:
        if caplen < 1:
            return 0, KIND_OTHER
        v = buf[off] >> 4
        if v == 4:
            return 0, KIND_IPV4
        if v == 6:
            return 0, KIND_IPV6
        return 0, KIND_OTHER
    if linktype == 228:
        return 0, KIND_IPV4
    if linktype == 229:
        return 0, KIND_IPV6
    if linktype == 276:
        if caplen < 20:
            return 0, KIND_OTHER
        et = _be16(buf, off)
        if et == 0x0800:
            return 20, KIND_IPV4
        if et == 0x86DD:
            return 20, KIND_IPV6
        return 20, KIND_OTHER
    if linktype == 0 or linktype == 108:
        if caplen < 4:
            return 0, KIND_OTHER
        be = rd32(buf, off, True)
        le = rd32(buf, off, False)
        fam = be if linktype == 108 else (le if le < 256 else be)
        if fam == 2:
            return 4, KIND_IPV4
        if fam == 24 or fam == 28 or fam == 30 or fam == 10:
            return 4, KIND_IPV6
        return 4, KIND_OTHER
    return 0, KIND_OTHER


@kernel(inline="always")
def parse_frame(buf, off, caplen, linktype):
    """Decode one frame ``buf[off:off+caplen]`` into scalars (no arrays: cheap to inline).

    Returns ``(kind, base, lim, total, src, dst, sport, dport, proto, length, ip_id, ttl, tos,
    tcp_flags, tcp_window, tcp_seq)``: ``base`` is the buffer offset of the IPv4 header, ``lim``
    the usable datagram bytes, ``total`` the nominal IP + transport header length. For KIND_IPV6
    only ``base`` (offset of the IPv6 header) and ``lim`` (captured bytes from there) are set:
    :func:`parse_ipv6` decodes it. Only ``kind`` is meaningful for KIND_OTHER.
    """
    z = np.int64(0)
    l3, kind = _network_offset(buf, off, caplen, linktype)
    avail = caplen - l3
    if avail < 1 or kind == KIND_OTHER:
        return KIND_OTHER, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z
    if kind == KIND_IPV6:
        if (buf[off + l3] >> 4) != 6:
            return KIND_OTHER, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z
        return KIND_IPV6, off + l3, avail, z, z, z, z, z, z, z, z, z, z, z, z, z
    base = off + l3
    b0 = np.int64(buf[base])
    ihl = b0 & 15
    if (b0 >> 4) != 4 or ihl < 5:
        return KIND_OTHER, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z
    hlen = ihl * 4
    lim = avail
    tot = (_byte(buf, base, 2, lim) << 8) | _byte(buf, base, 3, lim)
    if tot >= hlen and tot < lim:
        lim = tot
    pr = _byte(buf, base, 9, lim)
    fo = ((_byte(buf, base, 6, lim) & 0x1F) << 8) | _byte(buf, base, 7, lim)
    thl = 0
    if fo == 0:
        if pr == 6:
            thl = 20
        elif pr == 17:
            thl = 8
    src = ((_byte(buf, base, 12, lim) << 24) | (_byte(buf, base, 13, lim) << 16)
           | (_byte(buf, base, 14, lim) << 8) | _byte(buf, base, 15, lim))
    dst = ((_byte(buf, base, 16, lim) << 24) | (_byte(buf, base, 17, lim) << 16)
           | (_byte(buf, base, 18, lim) << 8) | _byte(buf, base, 19, lim))
    ip_id = (_byte(buf, base, 4, lim) << 8) | _byte(buf, base, 5, lim)
    ttl = _byte(buf, base, 8, lim)
    tos = _byte(buf, base, 1, lim)
    sport, dport, flags, win, seq = _transport_fields(buf, base, hlen, thl, lim)
    return (KIND_IPV4, base, lim, hlen + thl, src, dst, sport, dport, pr, tot, ip_id, ttl, tos,
            flags, win, seq)


#: IPv6 extension headers walked by :func:`parse_ipv6` (ESP, 50, ends the walk as the protocol).
EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_ESP, EXT_AH, EXT_DEST_OPTS = 0, 43, 44, 50, 51, 60

#: Bytes of the IPv6 fixed header kept at the start of an IPv6 row's ``header`` block.
IPV6_HEADER_KEEP = 8


@kernel(inline="always")
def parse_ipv6(buf, base, avail):
    """Decode the IPv6 datagram at ``buf[base:base+avail]`` and walk its extension headers.

    Returns ``(lim, l4, thl, proto, length, ip_id, ttl, tos, flow_label, sport, dport, tcp_flags,
    tcp_window, tcp_seq, need)``: ``need`` the bytes the headers span (``lim < need``: a short
    header, the chain or the upper-layer header cut), ``lim`` the usable datagram bytes (``min(avail, 40 + payload
    length)``; a payload length of 0, as in jumbograms, keeps ``avail``), ``l4`` the offset of the
    upper-layer header and ``thl`` its nominal length (20 TCP, 8 UDP, else 0). Extension headers
    hop-by-hop (0), routing (43), destination options (60) (length ``(byte 1 + 1) * 8``), AH (51)
    (``(byte 1 + 2) * 4``) and fragment (44, 8 bytes) are walked while their first two bytes are
    captured; ESP (50), a non-first fragment or any other next-header value ends the walk, and
    ``proto`` is the next-header value reached. Ports and TCP fields come only from a first (or
    no) fragment. ``ip_id`` is the low 16 bits of the fragment header's identification, 0 without
    one. Absent bytes read as zero, as for IPv4.
    """
    lim = avail
    plen = (_byte(buf, base, 4, lim) << 8) | _byte(buf, base, 5, lim)
    if plen > 0 and plen + 40 < lim:
        lim = plen + 40
    b1 = _byte(buf, base, 1, lim)
    tos = ((_byte(buf, base, 0, lim) & 15) << 4) | (b1 >> 4)
    label = ((b1 & 15) << 16) | (_byte(buf, base, 2, lim) << 8) | _byte(buf, base, 3, lim)
    nh = _byte(buf, base, 6, lim)
    ttl = _byte(buf, base, 7, lim)
    p = np.int64(40)
    ip_id = np.int64(0)
    first = True
    while p + 2 <= lim:
        if nh == EXT_HOP_BY_HOP or nh == EXT_ROUTING or nh == EXT_DEST_OPTS:
            step = (_byte(buf, base, p + 1, lim) + 1) * 8
        elif nh == EXT_AH:
            step = (_byte(buf, base, p + 1, lim) + 2) * 4
        elif nh == EXT_FRAGMENT:
            step = np.int64(8)
            ip_id = (_byte(buf, base, p + 6, lim) << 8) | _byte(buf, base, p + 7, lim)
            if ((_byte(buf, base, p + 2, lim) << 8) | _byte(buf, base, p + 3, lim)) >> 3:
                first = False
        else:
            break
        nh = _byte(buf, base, p, lim)
        p += step
        if not first:
            break
    thl = np.int64(0)
    if first:
        if nh == 6:
            thl = 20
        elif nh == 17:
            thl = 8
    sport, dport, flags, win, seq = _transport_fields(buf, base, p, thl, lim)
    length = min(plen + 40, 65535)
    need = p + thl  # bytes the headers span; a chain cut inside an extension header needs more
    if first and (nh == EXT_HOP_BY_HOP or nh == EXT_ROUTING or nh == EXT_DEST_OPTS or nh == EXT_AH
                  or nh == EXT_FRAGMENT):
        need = p + 2
    return lim, p, thl, nh, length, ip_id, ttl, tos, label, sport, dport, flags, win, seq, need


@kernel  # not inlined: called once per IPv6 row with few arrays
def _copy_ipv6_bytes(buf, base, lim, l4, thl, n, header, src_ip6, dst_ip6):
    """Row ``n``'s addresses and ``header`` from the IPv6 datagram at ``buf[base:base+lim]``:
    the first 8 bytes of the IPv6 header (addresses dropped), then the upper-layer header (TCP 20
    / UDP 8 bytes at ``l4``, extension headers skipped), zero padded."""
    for k in range(16):
        src_ip6[n, k] = _byte(buf, base, 8 + k, lim)
        dst_ip6[n, k] = _byte(buf, base, 24 + k, lim)
    for k in range(IPV6_HEADER_KEEP):
        header[n, k] = _byte(buf, base, k, lim)
    for k in range(thl):
        header[n, IPV6_HEADER_KEEP + k] = _byte(buf, base, l4 + k, lim)
    for k in range(IPV6_HEADER_KEEP + thl, HEADER_BYTES):
        header[n, k] = 0


@kernel  # not inlined: runs once per batch holding IPv6
def _zero_ipv6_columns(ipv6, flow_label, src_ip6, dst_ip6, n):
    """Zero rows ``[0, n)`` of the IPv6-only columns (IPv4 rows stored before the first IPv6 one)."""
    for i in range(n):
        ipv6[i] = 0
        flow_label[i] = 0
        for k in range(16):
            src_ip6[i, k] = 0
            dst_ip6[i, k] = 0


@kernel
def store_frames(buf, rec_off, rec_len, rec_link, rec_ts, m, n, counters, mixed, ts_ns, src_ip, dst_ip,
                 src_port, dst_port, proto, length, ip_id, ttl, tos, tcp_flags, tcp_window, tcp_seq,
                 hdr_len, header, ipv6, flow_label, src_ip6, dst_ip6):
    """Parse the ``m`` frames listed in ``rec_*`` and append the IP ones as rows from ``n``.

    The walkers (pcap records, pcapng blocks) only locate frames; this shared second pass does
    all per-frame work, so the column arrays cross a function boundary once per call rather than
    once per packet. Returns the new row count. The caller guarantees ``n + m <= len(columns)``.

    The IPv6-only columns (``ipv6``, ``flow_label``, ``src_ip6``, ``dst_ip6``) are left alone by
    IPv4 rows until the batch's first IPv6 row: ``mixed[0]`` (per batch, kept across calls) is 0
    until then, when the rows before it are zeroed and it becomes 1; from then on IPv4 rows zero
    them too. A batch that stays IPv4-only thus pays one branch per row, and
    :func:`columns_to_batch` gives it shared zeros.
    """
    for j in range(m):
        r = parse_frame(buf, rec_off[j], rec_len[j], rec_link[j])
        kind = r[0]
        if kind == KIND_IPV6:
            if mixed[0] == 0:
                _zero_ipv6_columns(ipv6, flow_label, src_ip6, dst_ip6, n)
                mixed[0] = 1
            base = r[1]
            v = parse_ipv6(buf, base, r[2])
            ts_ns[n] = rec_ts[j]
            src_ip[n] = 0
            dst_ip[n] = 0
            proto[n] = v[3]
            length[n] = v[4]
            ip_id[n] = v[5]
            ttl[n] = v[6]
            tos[n] = v[7]
            flow_label[n] = v[8]
            src_port[n] = v[9]
            dst_port[n] = v[10]
            tcp_flags[n] = v[11]
            tcp_window[n] = v[12]
            tcp_seq[n] = v[13]
            ipv6[n] = 1
            _copy_ipv6_bytes(buf, base, v[0], v[1], v[2], n, header, src_ip6, dst_ip6)
            hdr_len[n] = IPV6_HEADER_KEEP + v[2]
            if v[0] < v[14]:
                counters[C_SHORT] += 1
            counters[C_IPV6] += 1
            n += 1
            continue
        if kind != KIND_IPV4:
            counters[C_OTHER] += 1
            continue
        base, lim, total = r[1], r[2], r[3]
        if mixed[0]:
            ipv6[n] = 0
            flow_label[n] = 0
            for k in range(16):
                src_ip6[n, k] = 0
                dst_ip6[n, k] = 0
        ts_ns[n] = rec_ts[j]
        src_ip[n] = r[4]
        dst_ip[n] = r[5]
        src_port[n] = r[6]
        dst_port[n] = r[7]
        proto[n] = r[8]
        length[n] = r[9]
        ip_id[n] = r[10]
        ttl[n] = r[11]
        tos[n] = r[12]
        tcp_flags[n] = r[13]
        tcp_window[n] = r[14]
        tcp_seq[n] = r[15]
        keep = min(total, HEADER_BYTES)
        hdr_len[n] = keep
        if lim < total:
            counters[C_SHORT] += 1
        have = min(keep, lim)
        for k in range(have):
            header[n, k] = buf[base + k]
        for k in range(have, HEADER_BYTES):
            header[n, k] = 0
        for k in range(12, 20):
            header[n, k] = 0
        counters[C_IPV4] += 1
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Numba: the classic pcap record walker


@kernel
def _pcap_walk(buf, pos, end, swap, frac_ns, linktype, max_caplen, max_m, rec_off, rec_len,
               rec_link, rec_ts, counters):
    """Locate up to ``max_m`` records in ``buf[pos:end]`` (offset, captured length, ts in ns).

    ``frac_ns`` is 1000 for microsecond files, 1 for nanosecond files. Returns
    ``(offset reached, records found, ST_*)``; on ST_SHORT / ST_BAD the offset is the start of
    the offending record.
    """
    m = 0
    while m < max_m:
        if pos == end:
            return pos, m, ST_END
        if pos + 16 > end:
            return pos, m, ST_SHORT
        caplen = rd32(buf, pos + 8, swap)
        if caplen > max_caplen:
            return pos, m, ST_BAD
        if pos + 16 + caplen > end:
            return pos, m, ST_SHORT
        sec = rd32(buf, pos, swap)
        frac = rd32(buf, pos + 4, swap)
        if caplen < rd32(buf, pos + 12, swap):
            counters[C_TRUNC] += 1
        rec_off[m] = pos + 16
        rec_len[m] = caplen
        rec_link[m] = linktype
        rec_ts[m] = np.uint64(sec) * np.uint64(1000000000) + np.uint64(frac) * np.uint64(frac_ns)
        m += 1
        pos += 16 + caplen
    return pos, m, ST_FULL


# ---------------------------------------------------------------------------------------------
# Python: byte sources and batch columns


class ByteSource:
    """Bytes of a capture as one ``uint8`` array ``buf`` valid over ``[0, end)``.

    A plain file is memory-mapped whole (``eof`` is true from the start). A gzip file is
    decompressed into a window that :meth:`refill` slides forward; ``base`` is the stream offset
    of ``buf[0]``, so ``base + pos`` is the offset reported in errors.

    A damaged gzip stream (cut short, or corrupt) keeps every byte decompressed before the damage:
    ``eof`` becomes true there and ``damage`` holds the message, which :meth:`ensure` and the
    readers raise once the complete records before it have been yielded (zlib directly, not
    ``gzip.GzipFile``, whose ``readinto`` drops what it decompressed in a call that fails).
    """

    WINDOW = 8 * 1024 * 1024
    CHUNK = 256 * 1024  #: compressed bytes read at a time

    def __init__(self, path):
        self.path = os.fspath(path)
        self.base = 0
        self.pos = 0
        self._file = open(self.path, "rb")
        self._mmap = None
        self._gz = None
        self._pending = b""   # compressed input not yet given to the decompressor
        self.damage: str | None = None
        head = self._file.read(2)
        self._file.seek(0)
        self.compressed = head == b"\x1f\x8b"
        if self.compressed:
            self._gz = zlib.decompressobj(31)  # gzip member (header and CRC/length trailer checked)
            self.buf = np.empty(self.WINDOW, np.uint8)
            self.end = 0
            self.eof = False
            self.refill()
        else:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                self.buf = np.empty(0, np.uint8)
            else:
                # ACCESS_COPY gives a writable (never written) array: one Numba specialisation
                # serves both the mmap and the gzip window.
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
                if hasattr(self._mmap, "madvise"):
                    self._mmap.madvise(mmap.MADV_SEQUENTIAL)
                self.buf = np.frombuffer(self._mmap, np.uint8)
            self.end = size
            self.eof = True

    @property
    def offset(self) -> int:
        """Stream offset of ``pos``."""
        return self.base + self.pos

    def refill(self) -> None:
        """Drop ``buf[:pos]``, read more decompressed bytes behind the rest (growing if full)."""
        if self.eof:
            return
        keep = self.end - self.pos
        if self.pos > 0:
            self.buf[:keep] = self.buf[self.pos:self.end]
            self.base += self.pos
            self.pos = 0
            self.end = keep
        if self.end == self.buf.shape[0]:
            grown = np.empty(self.buf.shape[0] * 2, np.uint8)
            grown[: self.end] = self.buf[: self.end]
            self.buf = grown
        while self.end < self.buf.shape[0]:
            try:
                out = self._inflate(self.buf.shape[0] - self.end)
            except (OSError, EOFError, zlib.error) as exc:
                self.eof = True  # keep what came before: the readers yield it, then raise
                self.damage = (f"{self.path}: corrupt gzip stream near decompressed offset "
                               f"{self.base + self.end}: {exc}")
                break
            if not out:
                self.eof = True
                break
            self.buf[self.end:self.end + len(out)] = np.frombuffer(out, np.uint8)
            self.end += len(out)

    def _inflate(self, max_length: int) -> bytes:
        """Up to ``max_length`` decompressed bytes; ``b""`` at the clean end of the last member
        (concatenated members and trailing zero padding are read as ``gzip`` does)."""
        while True:
            if self._gz is None:
                return b""
            if self._gz.eof:  # a member ended: another may follow
                rest = self._gz.unused_data + self._pending
                while not rest.strip(b"\0"):
                    more = self._file.read(self.CHUNK)
                    if not more:
                        self._gz, self._pending = None, b""
                        return b""
                    rest = more
                self._gz, self._pending = zlib.decompressobj(31), rest.lstrip(b"\0")
            data = self._pending or self._file.read(self.CHUNK)
            if not data:
                raise EOFError("the compressed stream is truncated (it ends before its end-of-stream marker)")
            out = self._gz.decompress(data, max_length)
            self._pending = self._gz.unconsumed_tail
            if out:
                return out

    def check(self) -> None:
        """Raise the gzip damage, if any (at the end of what could be decompressed)."""
        if self.damage:
            raise CaptureError(self.damage)

    def ensure(self, nbytes: int) -> bool:
        """Make ``buf[pos:pos+nbytes]`` available if the stream has it; False at end of stream."""
        while self.end - self.pos < nbytes and not self.eof:
            self.refill()
        if self.end - self.pos < nbytes:
            self.check()
        return self.end - self.pos >= nbytes

    def close(self) -> None:
        self.buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # a caller still holds a view; the GC will unmap it
                pass
            self._mmap = None
        self._gz = None
        self._file.close()


def new_columns(size: int) -> list:
    """The uninitialised columns :func:`store_frames` fills, in its argument order (``KERNEL_ORDER``):
    the scalar columns, ``header``, then ``ipv6``, ``flow_label``, ``src_ip6``, ``dst_ip6``."""
    cols = [np.empty(size, dtype) for dtype in KERNEL_COLUMN_DTYPES.values()]
    cols.append(np.empty((size, HEADER_BYTES), np.uint8))
    cols.append(np.empty(size, COLUMN_DTYPES["ipv6"]))
    cols.append(np.empty(size, COLUMN_DTYPES["flow_label"]))
    cols.append(np.empty((size, 16), np.uint8))
    cols.append(np.empty((size, 16), np.uint8))
    return cols


_IPV6_ONLY = ("ipv6", "flow_label", "src_ip6", "dst_ip6")
_ZEROS: dict = {}


def _shared_zeros(like: np.ndarray, n: int) -> np.ndarray:
    """A read-only all-zero array shaped like ``like[:n]``, shared between batches (no memory per batch)."""
    key = (like.dtype.str, like.shape[1:])
    if key not in _ZEROS or _ZEROS[key].shape[0] < n:
        zeros = np.zeros((max(n, 65536),) + like.shape[1:], like.dtype)
        zeros.flags.writeable = False
        _ZEROS[key] = zeros
    return _ZEROS[key][:n]


def columns_to_batch(cols: list, n: int, mixed: bool = True) -> PacketBatch:
    """The first ``n`` rows as a batch (copied when the batch is mostly empty, to free memory).

    ``mixed`` False (no IPv6 row was stored: the IPv6-only columns were never written): those
    columns are shared read-only zeros."""
    shrink = n < cols[0].shape[0] // 2
    arrays = dict(zip(KERNEL_ORDER, [c[:n].copy() if shrink else c[:n] for c in cols]))
    if not mixed:
        for name in _IPV6_ONLY:
            arrays[name] = _shared_zeros(arrays[name], n)
    return PacketBatch.from_columns(**arrays)


class Batcher:
    """Fills one batch's columns from walker calls; the Python half of every reader.

    ``records`` are the per-call frame lists (offset, captured length, link type, ts) a walker
    fills; :meth:`step` runs a walker for at most the rows still free, then :func:`store_frames`.
    """

    def __init__(self, source: ByteSource, batch_size: int, stats: ReadStats):
        self.source, self.size, self.stats = source, batch_size, stats
        self.records = [np.empty(batch_size, np.int64), np.empty(batch_size, np.int64),
                        np.empty(batch_size, np.int64), np.empty(batch_size, np.uint64)]
        self.counters = np.zeros(N_COUNTERS, np.int64)
        self.cols = new_columns(batch_size)
        self.mixed = np.zeros(1, np.int64)  # store_frames: 1 once this batch holds an IPv6 row
        self.n = 0

    def step(self, walk) -> int:
        """``walk(room) -> (pos, m, status)``; parse the ``m`` frames found, return status."""
        pos, m, status = walk(self.size - self.n)
        self.n = store_frames(self.source.buf, *self.records, m, self.n, self.counters, self.mixed, *self.cols)
        self.source.pos = pos
        self.counters[C_RECORDS] += m
        self.stats._add(self.counters)
        self.stats.bytes_read = self.source.offset
        return status

    def full(self) -> bool:
        return self.n == self.size

    def take(self) -> PacketBatch:
        """The rows filled so far as a batch; starts a fresh one."""
        batch = columns_to_batch(self.cols, self.n, bool(self.mixed[0]))
        self.cols, self.n = new_columns(self.size), 0
        self.mixed[0] = 0
        return batch


def check_batch_size(batch_size) -> int:
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return batch_size


# ---------------------------------------------------------------------------------------------
# classic pcap

#: magic (as read little-endian) -> (byte-swapped record fields, nanosecond timestamps)
_MAGICS = {
    0xA1B2C3D4: (False, False),
    0xD4C3B2A1: (True, False),
    0xA1B23C4D: (False, True),
    0x4D3CB2A1: (True, True),
}
PCAP_MAGIC_BYTES = {m.to_bytes(4, "little") for m in _MAGICS}


@dataclass(frozen=True)
class PcapHeader:
    """The 24-byte global header: byte order, resolution, snap length, link type."""

    swap: bool
    nanosecond: bool
    version: tuple
    snaplen: int
    linktype: int


def parse_pcap_header(raw: bytes, path: str) -> PcapHeader:
    """Decode the global header (``raw`` holds its 24 bytes)."""
    if len(raw) < 24:
        raise CaptureError(f"{path}: truncated pcap global header ({len(raw)} of 24 bytes) at offset 0")
    magic = int.from_bytes(raw[:4], "little")
    if magic not in _MAGICS:
        raise CaptureError(f"{path}: not a classic pcap file (magic {raw[:4].hex()})")
    swap, ns = _MAGICS[magic]
    order = "big" if swap else "little"
    major = int.from_bytes(raw[4:6], order)
    minor = int.from_bytes(raw[6:8], order)
    snaplen = int.from_bytes(raw[16:20], order)
    network = int.from_bytes(raw[20:24], order)
    linktype = network & 0x03FFFFFF  # upper bits may carry the FCS length
    if major != 2:
        raise CaptureError(f"{path}: unsupported pcap version {major}.{minor} at offset 4")
    check_link_type(linktype, f"{path}: pcap header")
    return PcapHeader(swap, ns, (major, minor), snaplen, linktype)


def read_pcap(source: ByteSource, batch_size: int, stats: ReadStats):
    """Yield batches from a classic pcap ``source`` (positioned at offset 0)."""
    path = source.path
    if not source.ensure(24):
        raise CaptureError(
            f"{path}: truncated pcap global header ({source.end - source.pos} of 24 bytes) at offset 0"
        )
    hdr = parse_pcap_header(bytes(source.buf[source.pos:source.pos + 24]), path)
    stats.format = "pcap-ns" if hdr.nanosecond else "pcap"
    stats.link_types = [hdr.linktype]
    source.pos += 24
    max_caplen = min(max(hdr.snaplen, _PCAP_MIN_BOUND), MAX_RECORD)
    frac_ns = 1 if hdr.nanosecond else 1000
    batcher = Batcher(source, batch_size, stats)

    def walk(room):
        return _pcap_walk(source.buf, source.pos, source.end, hdr.swap, frac_ns, hdr.linktype,
                          max_caplen, room, *batcher.records, batcher.counters)

    while True:
        status = batcher.step(walk)
        if status == ST_FULL:
            if batcher.full():
                yield batcher.take()
        elif status == ST_END or (status == ST_SHORT and not source.eof):
            if source.eof:
                break
            source.refill()
        else:
            if batcher.n:
                yield batcher.take()
            source.check()  # a cut gzip stream: name that, not the record it cut
            raise CaptureError(_pcap_damage(source, hdr, max_caplen, status))
    if batcher.n:
        yield batcher.take()
    source.check()


def _pcap_damage(source: ByteSource, hdr: PcapHeader, max_caplen: int, status: int) -> str:
    """Message for a truncated or corrupt record at ``source.offset``."""
    path, off, left = source.path, source.offset, source.end - source.pos
    if status == ST_BAD:
        raw = bytes(source.buf[source.pos + 8:source.pos + 12])
        caplen = int.from_bytes(raw, "big" if hdr.swap else "little")
        return (f"{path}: corrupt pcap record at offset {off}: captured length {caplen} exceeds "
                f"the bound {max_caplen} (snaplen {hdr.snaplen})")
    if left < 16:
        return f"{path}: truncated pcap record header at offset {off} ({left} of 16 bytes)"
    raw = bytes(source.buf[source.pos + 8:source.pos + 12])
    caplen = int.from_bytes(raw, "big" if hdr.swap else "little")
    return (f"{path}: truncated pcap record at offset {off}: needs {16 + caplen} bytes, "
            f"{left} left in the file")
