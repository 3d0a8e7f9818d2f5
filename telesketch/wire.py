"""Conversion between telesketch records and their protobuf messages; the one place that knows both.

:class:`~telesketch.packets.PacketBatch` <-> ``telesketch.v1.PacketBatch``: each column travels as
one ``bytes`` field (little-endian, dtype as in ``COLUMN_DTYPES``; blocks row-major); decoding is
``np.frombuffer`` per column, no per-packet work. Decoding validates everything a remote sender
controls, once, and raises :class:`~telesketch.packets.BatchError` with a precise message, so the
service can answer ``INVALID_ARGUMENT`` and apply nothing.

Schema versions (``schema_version``):

* 1: IPv4 only (the fields up to ``header``). Still accepted: every row is read as IPv4.
* 2: adds ``ipv6`` (u8 flag per row), ``flow_label`` (u32) and the ``src_ip6``/``dst_ip6`` blocks
  (16 bytes per row). They may be absent (all IPv4); an IPv4-only batch is encoded without them,
  so IPv4 traffic costs the same bytes as in version 1. The row invariants of
  :mod:`telesketch.packets` are checked: an IPv6 row has ``src_ip``/``dst_ip`` 0, an IPv4 row
  all-zero ``src_ip6``/``dst_ip6`` and flow label 0, and flow labels fit 20 bits.

:class:`Ack` <-> ``telesketch.v1.Ack``: what applying one batch did, the one record the service,
the server and the client share.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from telesketch.packets import BLOCK_COLUMNS, COLUMN_DTYPES, HEADER_BYTES, BatchError, PacketBatch
from telesketch.v1 import batch_pb2, service_pb2

#: The wire schema version this code writes.
SCHEMA_VERSION = 2

#: Every schema version this code accepts.
SUPPORTED_VERSIONS = (1, 2)

#: Columns a non-empty batch must carry; the others default to zeros when absent.
REQUIRED_COLUMNS = ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto")

#: Scalar and block columns added by schema version 2 (IPv6).
V2_SCALAR_COLUMNS = ("ipv6", "flow_label")
V2_BLOCK_COLUMNS = ("src_ip6", "dst_ip6")

#: Scalar columns that schema version 1 carries (IPv4 only).
V1_COLUMNS = tuple(name for name in COLUMN_DTYPES if name not in V2_SCALAR_COLUMNS)

#: Largest IPv6 flow label (20 bits).
MAX_FLOW_LABEL = (1 << 20) - 1


# ---------------------------------------------------------------------------------------------
# PacketBatch


def _encodable_has_ipv6(batch: PacketBatch, schema_version: int) -> bool:
    """Whether ``batch`` has an IPv6 row, once it is checked that ``schema_version`` can carry it
    (:class:`BatchError` otherwise): the checks :func:`batch_to_message` and :func:`batch_to_bytes`
    share, so both refuse the same batches with the same errors."""
    if schema_version not in SUPPORTED_VERSIONS:
        raise BatchError(f"cannot encode schema_version {schema_version}; supported: {SUPPORTED_VERSIONS}")
    has_ipv6 = batch.has_ipv6()
    if has_ipv6 and schema_version < 2:
        raise BatchError("IPv6 packets need wire schema version 2; version 1 carries IPv4 only")
    return has_ipv6


def batch_to_message(batch: PacketBatch, sender_id: str = "", sequence: int = 0,
                     schema_version: int = SCHEMA_VERSION) -> batch_pb2.PacketBatch:
    """Encode a batch as a protobuf message (one ``bytes`` field per column).

    ``schema_version=1`` speaks to servers that predate IPv6 and refuses batches with IPv6 rows.
    In version 2 the IPv6 columns are left out when the batch has no IPv6 row.
    """
    has_ipv6 = _encodable_has_ipv6(batch, schema_version)
    columns = {name: getattr(batch, name).tobytes() for name in V1_COLUMNS}
    if has_ipv6:
        columns.update({name: getattr(batch, name).tobytes() for name in V2_SCALAR_COLUMNS})
        columns.update({name: np.ascontiguousarray(getattr(batch, name)).tobytes() for name in V2_BLOCK_COLUMNS})
    return batch_pb2.PacketBatch(
        schema_version=schema_version,
        sender_id=sender_id,
        sequence=sequence,
        count=len(batch),
        header=np.ascontiguousarray(batch.header).tobytes(),
        **columns,
    )


def batch_to_bytes(batch: PacketBatch, sender_id: str = "", sequence: int = 0,
                   schema_version: int = SCHEMA_VERSION) -> bytes:
    """The serialized ``telesketch.v1.PacketBatch`` of a batch, which decodes (:func:`message_to_batch`)
    to the same batch as ``batch_to_message(...)`` (same checks, same errors): byte for byte its
    ``SerializeToString()`` less the optional columns that are all zero (absent columns decode as
    zeros in every schema version; an IPv4 collector's zero ``header`` block is 40 of its ~75 bytes a
    packet). Written without the message: each column's protobuf tag and length, then its numpy
    buffer, joined into one ``bytes`` (one copy of the packet data, where the message costs a
    ``tobytes`` per column, the message's own copy and the serialization's; issue 21 (a), the
    client's CPU per batch). The client sends it through a pass-through serializer."""
    has_ipv6 = _encodable_has_ipv6(batch, schema_version)
    count = len(batch)
    parts = []
    if schema_version:
        parts.append(_SCALAR_TAGS["schema_version"] + _varint(schema_version))
    if sender_id:
        raw = sender_id.encode("utf-8")
        parts += (_SCALAR_TAGS["sender_id"], _varint(len(raw)), raw)
    if sequence:
        parts.append(_SCALAR_TAGS["sequence"] + _varint(sequence))
    if count:
        parts.append(_SCALAR_TAGS["count"] + _varint(count))
    for name, tag in (_ENCODE_TAGS_V6 if has_ipv6 else _ENCODE_TAGS):
        column = getattr(batch, name)
        if column.nbytes:
            if not column.flags.c_contiguous:
                column = np.ascontiguousarray(column)
            if name in _OPTIONAL_COLUMNS and _all_zero(column):
                continue  # decoded as zeros when absent: the same batch, fewer bytes
            parts += (tag, _varint(column.nbytes), column)
    return b"".join(parts)


#: Columns a decoder reads as zeros when absent (every version): :func:`batch_to_bytes` leaves them
#: out when all zero (the 40-byte ``header`` rows of a collector that captures none, above all).
_OPTIONAL_COLUMNS = frozenset(COLUMN_DTYPES) - set(REQUIRED_COLUMNS) | set(BLOCK_COLUMNS)


def _all_zero(column: np.ndarray) -> bool:
    """True when a C-contiguous column holds only zero bytes: a ``memcmp`` against
    :data:`_ZERO_BYTES` (~7 µs for an 8 Ki batch's 320 KiB ``header``, ~0.4 µs for a 1-byte
    column; ``ndarray.any`` takes 15 and 2)."""
    global _ZERO_BYTES
    zeros = _ZERO_BYTES
    if column.nbytes > len(zeros):
        zeros = _ZERO_BYTES = bytes(1 << (column.nbytes - 1).bit_length())  # a race keeps either: both valid
    return zeros.startswith(column.data.cast("B"))


#: Zero bytes as long as the largest column seen (a power of two, from 1 MiB): :func:`_all_zero`.
_ZERO_BYTES = bytes(1 << 20)


def _varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_tags() -> tuple[dict, tuple, tuple]:
    """Protobuf tags (field number and wire type, as a varint) of ``PacketBatch``'s fields, from its
    descriptor: the scalar fields by name, and the column fields in field-number order (the order
    ``SerializeToString`` writes), without and with the IPv6 columns."""
    fields_by_name = batch_pb2.PacketBatch.DESCRIPTOR.fields_by_name
    scalar = {name: _varint(fields_by_name[name].number << 3 | (2 if name == "sender_id" else 0))
              for name in ("schema_version", "sender_id", "sequence", "count")}
    v4 = V1_COLUMNS + ("header",)
    v6 = v4 + V2_SCALAR_COLUMNS + V2_BLOCK_COLUMNS

    def tags(names):
        return tuple((name, _varint(fields_by_name[name].number << 3 | 2))
                     for name in sorted(names, key=lambda n: fields_by_name[n].number))
    return scalar, tags(v4), tags(v6)


_SCALAR_TAGS, _ENCODE_TAGS, _ENCODE_TAGS_V6 = _field_tags()


def _decode_column(name: str, raw: bytes, count: int) -> np.ndarray | None:
    """One scalar column as a read-only ``frombuffer`` view, or None when absent."""
    dtype = COLUMN_DTYPES[name]
    if not raw:
        if count and name in REQUIRED_COLUMNS:
            raise BatchError(f"column {name!r} is missing but the batch has {count} packets")
        return None
    if len(raw) % dtype.itemsize:
        raise BatchError(
            f"column {name!r} has {len(raw)} bytes, not a multiple of its {dtype.itemsize}-byte dtype {dtype}"
        )
    values = len(raw) // dtype.itemsize
    if values != count:
        raise BatchError(f"column {name!r} holds {values} values but count is {count} (columns must agree)")
    return np.frombuffer(raw, dtype)


def _decode_block(name: str, raw: bytes, count: int) -> np.ndarray | None:
    """One ``uint8[count, width]`` block column, or None when absent."""
    if not raw:
        return None
    width = BLOCK_COLUMNS[name]
    if len(raw) != count * width:
        raise BatchError(f"column {name!r} has {len(raw)} bytes, expected count * {width} = {count * width}")
    return np.frombuffer(raw, np.uint8).reshape(count, width)


def _check_version(message: batch_pb2.PacketBatch) -> int:
    version = int(message.schema_version)
    if version not in SUPPORTED_VERSIONS:
        raise BatchError(
            f"unsupported schema_version {version}; this server speaks {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    if version == 1:
        extra = [name for name in V2_SCALAR_COLUMNS + V2_BLOCK_COLUMNS if getattr(message, name)]
        if extra:
            raise BatchError(f"schema_version 1 message carries version-2 column(s) {extra}; send schema_version 2")
    return version


def _check_families(columns: dict[str, np.ndarray]) -> None:
    """The IPv4/IPv6 row invariants (see the module docstring); ``columns`` hold what was sent."""
    ipv6 = columns.get("ipv6")
    if ipv6 is not None and ipv6.size and int(ipv6.max()) > 1:
        bad = int(np.flatnonzero(ipv6 > 1)[0])
        raise BatchError(f"column 'ipv6' must hold 0 (IPv4) or 1 (IPv6); row {bad} holds {int(ipv6[bad])}")
    is_v6 = ipv6.astype(bool) if ipv6 is not None else None
    label = columns.get("flow_label")
    if label is not None and label.size and int(label.max()) > MAX_FLOW_LABEL:
        raise BatchError(f"column 'flow_label' has values above {MAX_FLOW_LABEL} (flow labels are 20 bits)")
    if is_v6 is None or not is_v6.any():
        for name in V2_BLOCK_COLUMNS + ("flow_label",):
            if name in columns and columns[name].any():
                raise BatchError(f"column {name!r} is non-zero but no row is IPv6 (column 'ipv6' all 0)")
        return
    for name in ("src_ip", "dst_ip"):
        if columns[name][is_v6].any():
            raise BatchError(f"column {name!r} must be 0 on IPv6 rows (their address is in {name}6)")
    is_v4 = ~is_v6
    for name in V2_BLOCK_COLUMNS + ("flow_label",):
        if name in columns and columns[name][is_v4].any():
            raise BatchError(f"column {name!r} must be zero on IPv4 rows")


def message_to_batch(message: batch_pb2.PacketBatch) -> PacketBatch:
    """Decode and validate a version-1 or version-2 message; raises :class:`BatchError` naming the
    first problem. The batch is built from the validated arrays directly (no second pass)."""
    version = _check_version(message)
    count = int(message.count)
    sent: dict[str, np.ndarray] = {}
    for name in V1_COLUMNS + (V2_SCALAR_COLUMNS if version >= 2 else ()):
        column = _decode_column(name, getattr(message, name), count)
        if column is not None:
            sent[name] = column
    for name in ("header",) + (V2_BLOCK_COLUMNS if version >= 2 else ()):
        block = _decode_block(name, getattr(message, name), count)
        if block is not None:
            sent[name] = block
    if "hdr_len" in sent and count and int(sent["hdr_len"].max()) > HEADER_BYTES:
        raise BatchError(f"column 'hdr_len' has values above {HEADER_BYTES}")
    if count:
        _check_families(sent)
    return _trusted_batch(sent, count)


def _trusted_batch(columns: dict[str, np.ndarray], count: int) -> PacketBatch:
    """A batch from arrays already of the right dtype and length, absent ones zero-filled.

    An absent column is a view of a shared read-only zero buffer (:func:`_zeros`), not fresh zeros: the
    decoded columns are read-only ``frombuffer`` views already, and an IPv4-only message leaves out
    the IPv6 columns (``src_ip6``/``dst_ip6`` alone are 32 bytes a packet), whose fresh zeros cost
    the no-sketch server allocation and page faults on every batch (issue 18)."""
    return PacketBatch(**{**_absent_columns(count), **columns})


#: :func:`_absent_columns` by row count: every column as a :func:`_zeros` view; emptied whenever a
#: zero buffer grows (so it does not keep the smaller ones alive) and at 16 counts. Thread-safe as
#: :func:`_zeros` is: a race can only keep one older zero buffer alive until the next emptying.
_ABSENT_COLUMNS: dict[int, dict[str, np.ndarray]] = {}


def _absent_columns(count: int) -> dict[str, np.ndarray]:
    """Every column of a ``count``-row batch as a read-only zero view (:func:`_zeros`), built once
    per count: the per-batch cost of the absent columns is one dict merge, not one ``_zeros`` call
    each (issue 21 (a): a few microseconds of every small batch's decode)."""
    absent = _ABSENT_COLUMNS.get(count)
    if absent is None:
        absent = {name: _zeros(count, dtype.str, 0) for name, dtype in COLUMN_DTYPES.items()}
        absent.update({name: _zeros(count, "|u1", width) for name, width in BLOCK_COLUMNS.items()})
        if len(_ABSENT_COLUMNS) >= 16:
            _ABSENT_COLUMNS.clear()
        _ABSENT_COLUMNS[count] = absent
    return absent


#: One read-only zero buffer per (dtype, width) for :func:`_zeros`, as long as the largest batch
#: seen so far (rounded up to a power of two), so the memory held is bounded by the largest batch.
_ZERO_BUFFERS: dict[tuple[str, int], np.ndarray] = {}


def _zeros(count: int, dtype: str, width: int) -> np.ndarray:
    """A read-only C-contiguous zero array of ``count`` rows (``width`` 0: shape ``(count,)``, else
    ``(count, width)``) of ``dtype``: the first rows of one buffer shared by every batch that lacks
    such a column (any count, so varying batch sizes do not multiply the memory held).

    Read-only, so no holder can change another's batch. Held once, not per batch: at most 71 B a
    packet of the largest batch over all dtypes, and ``calloc``'s fresh pages stay unwritten
    (only a buffer carved from the heap is cleared and resident). Safe without a
    lock: two threads growing it at once each get a valid buffer, one of which is kept."""
    key = (dtype, width)
    buffer = _ZERO_BUFFERS.get(key)
    if buffer is None or len(buffer) < count:
        rows = 1 << max(count - 1, 1023).bit_length()
        buffer = np.zeros((rows, width) if width else rows, np.dtype(dtype))
        buffer.flags.writeable = False
        _ZERO_BUFFERS[key] = buffer
        _ABSENT_COLUMNS.clear()  # its views would keep the smaller buffer alive
    return buffer[:count]


# ---------------------------------------------------------------------------------------------
# Ack


@dataclass(frozen=True)
class Ack:
    """What applying one batch did: the service returns it, the server sends it as
    ``telesketch.v1.Ack``, the client hands it back. Counts are packets."""

    sender_id: str
    sequence: int
    duplicate: bool       #: already applied earlier: nothing changed
    packets: int          #: packets in the batch
    applied_packets: int  #: packets counted into an epoch
    late_packets: int     #: packets older than the open epoch: counted, not applied
    epoch: int            #: the open epoch after this batch


def ack_to_message(ack: Ack) -> service_pb2.Ack:
    """The protobuf ``telesketch.v1.Ack`` of an :class:`Ack`."""
    return service_pb2.Ack(**{f.name: getattr(ack, f.name) for f in fields(Ack)})


def ack_from_message(message: service_pb2.Ack) -> Ack:
    """The :class:`Ack` of a protobuf ``telesketch.v1.Ack``."""
    return Ack(**{f.name: getattr(message, f.name) for f in fields(Ack)})
