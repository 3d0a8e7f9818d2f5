"""Pieces every sketch shares: the serialisation envelope and the error types.

Serialised form (``to_bytes``), versioned so that a reader refuses what it cannot interpret:

    b"TSKS" | u32 header length (LE) | header JSON (utf-8) | array payloads, in header order

The header holds ``format`` (this envelope's version), ``algorithm``, ``version`` (the algorithm's
state layout version), ``params`` (the frozen-dataclass parameters, seeds included), ``epoch`` and
``arrays`` (name, dtype, shape of each payload). Arrays are raw little-endian C-order bytes.
"""
from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, Mapping

import numpy as np

MAGIC = b"TSKS"
ENVELOPE_FORMAT = 1
_MAX_HEADER = 1 << 20


class SketchError(ValueError):
    """Bad parameters, a mismatched merge, or serialised state that does not fit this sketch."""


class NotMergeableError(SketchError):
    """The algorithm's state cannot be merged (e.g. order-dependent GapFilter buckets)."""


def pack_state(
    algorithm: str,
    version: int,
    params: Any,
    arrays: Mapping[str, np.ndarray],
    epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a sketch's parameters and state arrays into the versioned envelope."""
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    entries, payloads = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        payloads.append(arr.tobytes())
    header = {
        "format": ENVELOPE_FORMAT,
        "algorithm": algorithm,
        "version": version,
        "params": params,
        "epoch": int(epoch),
        "arrays": entries,
        "extra": dict(extra or {}),
    }
    blob = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(blob)) + blob + b"".join(payloads)


def envelope_algorithm(data: bytes) -> str | None:
    """The ``algorithm`` named by an envelope's header, or ``None`` if ``data`` is not one."""
    data = bytes(data[:8]) + bytes(data[8:8 + _MAX_HEADER])
    if len(data) < 8 or data[:4] != MAGIC:
        return None
    (hlen,) = struct.unpack_from("<I", data, 4)
    try:
        return json.loads(data[8 : 8 + hlen]).get("algorithm")
    except (ValueError, AttributeError):
        return None


def unpack_state(data: bytes, algorithm: str, version: int) -> tuple[dict, dict[str, np.ndarray], int, dict]:
    """Parse an envelope written by :func:`pack_state` for ``algorithm`` at layout ``version``.

    Returns ``(params, arrays, epoch, extra)``; arrays are writable copies. Raises
    :class:`SketchError` naming what does not match (magic, algorithm, version, sizes).
    """
    data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise SketchError("not a telesketch sketch (bad magic)")
    (hlen,) = struct.unpack_from("<I", data, 4)
    if hlen > _MAX_HEADER or 8 + hlen > len(data):
        raise SketchError(f"corrupt sketch header (length {hlen}, data {len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as exc:
        raise SketchError(f"corrupt sketch header: {exc}") from None
    if header.get("format") != ENVELOPE_FORMAT:
        raise SketchError(f"unsupported envelope format {header.get('format')!r}")
    if header.get("algorithm") != algorithm:
        raise SketchError(f"state is for {header.get('algorithm')!r}, not {algorithm!r}")
    if header.get("version") != version:
        raise SketchError(f"{algorithm} state layout version {header.get('version')!r}, expected {version}")
    arrays, offset = {}, 8 + hlen
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(data):
            raise SketchError(f"sketch state truncated in array {entry['name']!r}")
        arrays[entry["name"]] = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape).copy()
        offset += size
    if offset != len(data):
        raise SketchError(f"{len(data) - offset} unexpected trailing bytes after sketch state")
    return header["params"], arrays, header["epoch"], header.get("extra", {})


def check_same_params(a: Any, b: Any, algorithm: str) -> None:
    """Raise :class:`SketchError` unless two sketches' parameters (seeds included) are equal."""
    if a != b:
        raise SketchError(f"cannot merge {algorithm} sketches with different parameters: {a} vs {b}")
