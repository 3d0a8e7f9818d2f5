"""Capture readers and synthetic captures.

``read_capture(path)`` yields :class:`~telesketch.packets.PacketBatch` objects from classic pcap
(either byte order, micro- or nanosecond), pcapng, or gzip-compressed either, detected by magic
bytes. ``generate_capture(path, ...)`` writes a synthetic classic pcap (or pcapng) whose flows
follow a Zipf law, with IPv4-ID gaps for gap detection (and, with ``ipv6_share``, IPv6 flows with
extension headers and fragments); ``generate_batch(...)`` returns the same packets as a batch
without touching the disk.
"""
from __future__ import annotations

from telesketch.traces.pcap import (
    PCAP_MAGIC_BYTES,
    ByteSource,
    CaptureError,
    ReadStats,
    check_batch_size,
    read_pcap,
)
from telesketch.traces.generate import GenerateStats, generate_batch, generate_capture
from telesketch.traces.pcapng import PCAPNG_MAGIC_BYTES, read_pcapng

__all__ = [
    "read_capture",
    "detect_format",
    "CaptureError",
    "ReadStats",
    "generate_capture",
    "generate_batch",
    "GenerateStats",
]


def detect_format(path) -> str:
    """``"pcap"``, ``"pcapng"``, ``"pcap.gz"`` or ``"pcapng.gz"`` from the magic bytes."""
    source = ByteSource(path)
    try:
        kind = _kind(source)
        return kind + (".gz" if source.compressed else "")
    finally:
        source.close()


def _kind(source: ByteSource) -> str:
    source.ensure(4)
    magic = bytes(source.buf[source.pos:source.pos + 4])
    if magic in PCAP_MAGIC_BYTES:
        return "pcap"
    if magic == PCAPNG_MAGIC_BYTES:
        return "pcapng"
    if len(magic) < 4:
        raise CaptureError(f"{source.path}: file too short to be a capture ({len(magic)} bytes)")
    what = "gzip-compressed data" if source.compressed else "file"
    raise CaptureError(f"{source.path}: {what} is neither pcap nor pcapng (magic {magic.hex()})")


def read_capture(path, batch_size: int = 65536, stats: ReadStats | None = None):
    """Yield ``PacketBatch`` objects (at most ``batch_size`` IPv4 and IPv6 packets each) from a capture.

    Memory stays bounded: the file is memory-mapped (gzip input decompressed through a sliding
    window) and each batch is parsed straight into its columns by a Numba kernel. IPv6 packets are
    rows with ``ipv6 == 1`` (``batch.family(4)`` keeps the IPv4 ones; docs/IPV6.md); non-IP
    packets are skipped and counted in ``stats`` (a :class:`ReadStats`, updated in place as
    batches are yielded). Unknown formats or link types, and truncated or corrupt data, raise
    :class:`CaptureError`; for damage mid-file the good packets before it are yielded first.
    """
    batch_size = check_batch_size(batch_size)
    stats = ReadStats() if stats is None else stats
    source = ByteSource(path)
    try:
        kind = _kind(source)
        stats.compressed = source.compressed
        reader = read_pcap if kind == "pcap" else read_pcapng
        yield from reader(source, batch_size, stats)
    finally:
        source.close()

