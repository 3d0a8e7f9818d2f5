"""pcapng reader: a small block walker in Numba, the same frame parser as classic pcap.

Handled blocks: Section Header (both byte orders; a new section resets the interfaces), Interface
Description (link type, snap length, ``if_tsresol`` decimal or binary, ``if_tsoffset``), Enhanced
Packet and Simple Packet (interface 0, timestamp 0: the format has none). Every other block type is
skipped by its length. SHB and IDB are rare and parsed in Python; the hot EPB/SPB walk runs in
:func:`_pcapng_walk`, which stops and returns whenever it meets an SHB or IDB, and the frames it
lists are decoded by the same :func:`~telesketch.traces.pcap.store_frames` pass as classic pcap.

A block whose length is not a multiple of 4, is below the minimum for its type, disagrees with its
trailing copy, or runs past the end of the file raises :class:`CaptureError` naming the offset,
after the packets before it have been yielded.
"""
from __future__ import annotations

import numpy as np

from telesketch.jit import kernel
from telesketch.traces.pcap import (
    C_TRUNC,
    MAX_RECORD,
    ST_BAD,
    ST_BADIF,
    ST_END,
    ST_FULL,
    ST_IDB,
    ST_SHB,
    ST_SHORT,
    Batcher,
    ByteSource,
    CaptureError,
    ReadStats,
    check_link_type,
    rd32,
)

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 1
SPB_TYPE = 3
EPB_TYPE = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_MAGIC_BYTES = b"\x0a\x0d\x0d\x0a"

# timestamp conversion modes per interface: units * p, units // p, or binary fraction 2**-p
TS_MUL, TS_DIV, TS_BIN = 0, 1, 2
_NS = np.uint64(1_000_000_000)


@kernel(inline="always")
def _units_to_ns(units, mode, param, offset_ns):
    """Timestamp in interface units -> u64 nanoseconds (+ the interface's ``if_tsoffset``)."""
    if mode == TS_MUL:
        ns = units * np.uint64(param)
    elif mode == TS_DIV:
        ns = units // np.uint64(param)
    else:
        e = np.uint64(param)
        mask = (np.uint64(1) << e) - np.uint64(1)
        ns = (units >> e) * _NS + (((units & mask) * _NS) >> e)
    return ns + np.uint64(offset_ns)


@kernel
def _pcapng_walk(buf, pos, end, swap, if_link, if_snap, if_mode, if_param, if_offset, max_m,
                 rec_off, rec_len, rec_link, rec_ts, counters):
    """Walk blocks in ``buf[pos:end]``, listing up to ``max_m`` EPB/SPB frames in ``rec_*``.

    Returns ``(offset, frames found, ST_*)``; the offset is the block that stopped the walk
    (an SHB or IDB for Python to parse, or a damaged block).
    """
    n_if = if_link.shape[0]
    m = 0
    while m < max_m:
        if pos == end:
            return pos, m, ST_END
        if pos + 8 > end:
            return pos, m, ST_SHORT
        btype = rd32(buf, pos, swap)
        if btype == SHB_TYPE:
            return pos, m, ST_SHB
        blen = rd32(buf, pos + 4, swap)
        if blen < 12 or (blen & 3) != 0 or blen > MAX_RECORD:
            return pos, m, ST_BAD
        if pos + blen > end:
            return pos, m, ST_SHORT
        if rd32(buf, pos + blen - 4, swap) != blen:
            return pos, m, ST_BAD
        if btype == IDB_TYPE:
            return pos, m, ST_IDB
        if btype == EPB_TYPE:
            if blen < 32:
                return pos, m, ST_BAD
            ifid = rd32(buf, pos + 8, swap)
            caplen = rd32(buf, pos + 20, swap)
            if caplen > blen - 32:
                return pos, m, ST_BAD
            if ifid >= n_if:
                return pos, m, ST_BADIF
            units = (np.uint64(rd32(buf, pos + 12, swap)) << np.uint64(32)) | np.uint64(rd32(buf, pos + 16, swap))
            if caplen < rd32(buf, pos + 24, swap):
                counters[C_TRUNC] += 1
            rec_off[m] = pos + 28
            rec_len[m] = caplen
            rec_link[m] = if_link[ifid]
            rec_ts[m] = _units_to_ns(units, if_mode[ifid], if_param[ifid], if_offset[ifid])
            m += 1
        elif btype == SPB_TYPE:
            if blen < 16:
                return pos, m, ST_BAD
            if n_if == 0:
                return pos, m, ST_BADIF
            origlen = rd32(buf, pos + 8, swap)
            caplen = min(origlen, blen - 16)
            if if_snap[0] > 0:
                caplen = min(caplen, if_snap[0])
            if caplen < origlen:
                counters[C_TRUNC] += 1
            rec_off[m] = pos + 12
            rec_len[m] = caplen
            rec_link[m] = if_link[0]
            rec_ts[m] = 0
            m += 1
        pos += blen
    return pos, m, ST_FULL


class _Interfaces:
    """Interface table of the current section, as the int64 arrays the kernel takes.

    Columns (link type, snaplen, timestamp mode, mode parameter, offset ns) live in arrays that
    double when full, so adding an interface is amortised O(1): rebuilding the table on every
    interface block made a file of 10,000 of them quadratic (70 s for 200 KB)."""

    def __init__(self):
        self.n = 0
        self._cols = np.zeros((5, 8), np.int64)

    def add(self, linktype, snaplen, mode, param, offset_ns):
        if self.n == self._cols.shape[1]:
            self._cols = np.concatenate([self._cols, np.zeros_like(self._cols)], axis=1)
        self._cols[:, self.n] = (linktype, snaplen, mode, param, offset_ns)
        self.n += 1

    def arrays(self):
        """Views of the first ``n`` rows of each column (contiguous, so the kernel takes them as is)."""
        return [self._cols[i, : self.n] for i in range(5)]


def _ts_mode(tsresol: int, where: str):
    """(mode, param) for an ``if_tsresol`` byte (decimal 10**-k, or binary 2**-k with bit 7)."""
    if tsresol & 0x80:
        e = tsresol & 0x7F
        if e > 32:
            raise CaptureError(f"{where}: unsupported if_tsresol 2**-{e}")
        return TS_BIN, e
    if tsresol <= 9:
        return TS_MUL, 10 ** (9 - tsresol)
    if tsresol <= 19:
        return TS_DIV, 10 ** (tsresol - 9)
    raise CaptureError(f"{where}: unsupported if_tsresol 10**-{tsresol}")


class _Reader:
    """State of one pcapng walk: byte order, interfaces, counters, the batch being filled."""

    def __init__(self, source: ByteSource, batch_size: int, stats: ReadStats):
        self.src = source
        self.batch_size = batch_size
        self.stats = stats
        self.swap = False
        self.ifaces = _Interfaces()
        self.if_arrays = self.ifaces.arrays()

    def _u(self, rel: int, size: int) -> int:
        s = self.src
        raw = bytes(s.buf[s.pos + rel:s.pos + rel + size])
        return int.from_bytes(raw, "big" if self.swap else "little")

    def _damage(self, what: str) -> CaptureError:
        return CaptureError(f"{self.src.path}: {what} at offset {self.src.offset}")

    def section_header(self) -> None:
        """Parse the SHB at ``pos``: byte order, version; resets the interface table."""
        s = self.src
        if not s.ensure(12):
            raise self._damage("truncated section header block")
        bom = bytes(s.buf[s.pos + 8:s.pos + 12])
        if bom == b"\x4d\x3c\x2b\x1a":
            self.swap = False
        elif bom == b"\x1a\x2b\x3c\x4d":
            self.swap = True
        else:
            raise self._damage(f"bad byte-order magic {bom.hex()} in section header block")
        blen = self._u(4, 4)
        if blen < 28 or blen & 3 or blen > MAX_RECORD:
            raise self._damage(f"bad section header block length {blen}")
        if not s.ensure(blen):
            raise self._damage(f"truncated section header block (length {blen})")
        if self._u(blen - 4, 4) != blen:
            raise self._damage("section header block trailing length mismatch")
        major = self._u(12, 2)
        if major != 1:
            raise self._damage(f"unsupported pcapng version {major}")
        self.ifaces = _Interfaces()
        self.if_arrays = self.ifaces.arrays()
        s.pos += blen

    def interface(self) -> None:
        """Parse the IDB at ``pos`` (already length-checked by the kernel)."""
        s = self.src
        blen = self._u(4, 4)
        if blen < 20:
            raise self._damage(f"interface description block too short ({blen} bytes)")
        linktype = self._u(8, 2)
        snaplen = self._u(12, 4)
        where = f"{s.path}: interface {self.ifaces.n} at offset {s.offset}"
        check_link_type(linktype, where)
        mode, param, offset_ns = TS_MUL, 1000, 0
        p = 16
        while p + 4 <= blen - 4:
            code, olen = self._u(p, 2), self._u(p + 2, 2)
            if code == 0:
                break
            if p + 4 + olen > blen - 4:
                raise self._damage(f"interface option {code} overruns its block")
            if code == 9 and olen >= 1:
                mode, param = _ts_mode(int(s.buf[s.pos + p + 4]), where)
            elif code == 14 and olen == 8:
                offset_ns = ((self._u(p + 4, 8) ^ (1 << 63)) - (1 << 63)) * 1_000_000_000
            p += 4 + ((olen + 3) & ~3)
        offset_ns = (offset_ns + (1 << 63)) % (1 << 64) - (1 << 63)  # wrap into int64
        self.ifaces.add(linktype, snaplen, mode, param, offset_ns)
        self.if_arrays = self.ifaces.arrays()
        self.stats.link_types.append(linktype)
        s.pos += blen

    def batches(self):
        """Yield batches; raise CaptureError after the last good one on damage."""
        s = self.src
        batcher = Batcher(s, self.batch_size, self.stats)

        def walk(room):
            return _pcapng_walk(s.buf, s.pos, s.end, self.swap, *self.if_arrays, room,
                                *batcher.records, batcher.counters)

        while True:
            status = batcher.step(walk)
            try:
                if status == ST_FULL:
                    if batcher.full():
                        yield batcher.take()
                elif status == ST_SHB:
                    self.section_header()
                elif status == ST_IDB:
                    self.interface()
                elif status == ST_END or (status == ST_SHORT and not s.eof):
                    if s.eof:
                        break
                    s.refill()
                else:
                    s.check()  # a cut gzip stream: name that, not the block it cut
                    raise self._block_error(status)
            except CaptureError:
                if batcher.n:
                    yield batcher.take()
                raise
        if batcher.n:
            yield batcher.take()
        s.check()

    def _block_error(self, status: int) -> CaptureError:
        s = self.src
        left = s.end - s.pos
        if status == ST_BADIF:
            return self._damage("packet block names an interface with no description block")
        if left < 8:
            return self._damage(f"truncated block header ({left} of 8 bytes)")
        btype, blen = self._u(0, 4), self._u(4, 4)
        if status == ST_SHORT:
            return self._damage(f"truncated block type 0x{btype:08x}: length {blen}, {left} bytes left")
        return self._damage(f"corrupt block type 0x{btype:08x} (length {blen})")


def read_pcapng(source: ByteSource, batch_size: int, stats: ReadStats):
    """Yield batches from a pcapng ``source`` (positioned at its first SHB)."""
    stats.format = "pcapng"
    reader = _Reader(source, batch_size, stats)
    reader.section_header()
    yield from reader.batches()
