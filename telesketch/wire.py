"""Conversion between :class:`PacketBatch` and the protobuf ``telesketch.v1.PacketBatch`` message.

Each column travels as one ``bytes`` field (little-endian, dtype as in ``COLUMN_DTYPES``); decoding
is ``np.frombuffer`` per column, no per-packet work. Decoding validates everything a remote sender
controls and raises :class:`~telesketch.packets.BatchError` with a precise message, so the service
can answer ``INVALID_ARGUMENT`` and apply nothing.
"""
from __future__ import annotations

import numpy as np

from telesketch.packets import COLUMN_DTYPES, HEADER_BYTES, BatchError, PacketBatch
from telesketch.v1 import batch_pb2

#: The wire schema version this code writes and accepts.
SCHEMA_VERSION = 1

#: Columns a non-empty batch must carry; the others default to zeros when absent.
REQUIRED_COLUMNS = ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto")

#: Scalar columns that schema version 1 carries (IPv4 only).
V1_COLUMNS = tuple(name for name in COLUMN_DTYPES if name not in ("ipv6", "flow_label"))


def batch_to_message(batch: PacketBatch, sender_id: str = "", sequence: int = 0) -> batch_pb2.PacketBatch:
    """Encode a batch as a protobuf message (one ``bytes`` field per column)."""
    if batch.has_ipv6():
        raise BatchError("IPv6 packets need wire schema version 2, which this build does not speak yet")
    fields = {name: getattr(batch, name).tobytes() for name in V1_COLUMNS}
    return batch_pb2.PacketBatch(
        schema_version=SCHEMA_VERSION,
        sender_id=sender_id,
        sequence=sequence,
        count=len(batch),
        header=np.ascontiguousarray(batch.header).tobytes(),
        **fields,
    )


def _decode_column(name: str, raw: bytes, count: int) -> np.ndarray | None:
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


def message_to_batch(message: batch_pb2.PacketBatch) -> PacketBatch:
    """Decode and validate a message; raises :class:`BatchError` naming the first problem."""
    if message.schema_version != SCHEMA_VERSION:
        raise BatchError(
            f"unsupported schema_version {message.schema_version}; this server speaks {SCHEMA_VERSION}"
        )
    count = int(message.count)
    columns = {}
    for name in V1_COLUMNS:
        column = _decode_column(name, getattr(message, name), count)
        if column is not None:
            columns[name] = column
    if message.header:
        if len(message.header) != count * HEADER_BYTES:
            raise BatchError(
                f"column 'header' has {len(message.header)} bytes, expected count * {HEADER_BYTES} = {count * HEADER_BYTES}"
            )
        columns["header"] = np.frombuffer(message.header, np.uint8).reshape(count, HEADER_BYTES)
    if "hdr_len" in columns and count and int(columns["hdr_len"].max()) > HEADER_BYTES:
        raise BatchError(f"column 'hdr_len' has values above {HEADER_BYTES}")
    return PacketBatch.from_columns(**columns)
