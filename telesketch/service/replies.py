"""Query replies built array-at-a-time: the ``entries`` of a ``KeyEstimates`` reply with integer
keys (IPv4 addresses, LLM-Sketch fingerprints) encoded straight into protobuf wire bytes.

A reply of a few hundred rows built one ``KeyEstimate`` message per row (a Python call per row
for the key bytes, the text and the family) cost more server CPU than the query itself; a client
polling queries back to back took that CPU from ingest (issue 16). Here the rows of a reply are
one ``uint8`` matrix (one row per entry, at most :data:`_ROW` bytes, a mask for the bytes used;
the key texts are the presenter's array formatters, :func:`telesketch.presenter.ipv4_texts` and
:func:`~telesketch.presenter.fingerprint_texts`) that the protobuf runtime parses in one call, to the same message the per-row build gives
(``tests/test_query_replies.py`` holds them equal).

Wire form of one entry (field 1 of ``KeyEstimates``, a length-delimited ``KeyEstimate``):
``0x0A len | 0x0A 0x04 key[4] | 0x11 estimate[8, little-endian double] | 0x1A tlen text | 0x20 family``,
every length below 128 (one varint byte).
"""

from __future__ import annotations

import numpy as np

from telesketch.presenter import TEXT_WIDTH, fingerprint_texts, ipv4_texts

_TEXT = TEXT_WIDTH  #: text bytes of an entry (a dotted quad at most; a fingerprint uses 13)
_ROW = 2 + 6 + 9 + 2 + _TEXT + 2  #: entry tag and length, key, estimate, text tag and length, text, family


def int_key_entries(keys, estimates, int_keys: str = "ipv4") -> bytes | None:
    """Wire bytes of the ``entries`` of a ``KeyEstimates`` reply whose keys are all ints in
    ``[0, 2**32)`` (``key``: 4 big-endian bytes; ``text``: a dotted quad, or ``fp:0x%08x`` with
    ``int_keys="fingerprint"``; ``family``: 4, or 0 for a fingerprint); ``None`` when any key is
    not such an int (the caller builds those entries one by one)."""
    if not all(isinstance(k, (int, np.integer)) for k in keys):
        return None
    wide = np.array([int(k) for k in keys], np.int64) if keys else np.zeros(0, np.int64)
    if wide.size and (wide.min() < 0 or wide.max() >= 1 << 32):
        return None
    k32 = wide.astype(np.uint32)
    n = k32.shape[0]
    octets = k32.astype(">u4").view(np.uint8).reshape(n, 4)
    fingerprint = int_keys == "fingerprint"
    text, text_used = fingerprint_texts(k32) if fingerprint else ipv4_texts(octets)
    tlen = text_used.sum(axis=1).astype(np.uint8)
    row = np.zeros((n, _ROW), np.uint8)
    used = np.ones((n, _ROW), bool)
    row[:, 0] = 0x0A
    row[:, 1] = 2 + 6 + 9 + 2 + tlen  # the KeyEstimate's length: everything after these two bytes
    row[:, 2:4] = (0x0A, 4)
    row[:, 4:8] = octets
    row[:, 8] = 0x11
    row[:, 9:17] = np.asarray(estimates, "<f8").reshape(n, 1).view(np.uint8)
    row[:, 17] = 0x1A
    row[:, 18] = tlen
    row[:, 19 : 19 + _TEXT] = text
    used[:, 19 : 19 + _TEXT] = text_used
    row[:, 19 + _TEXT :] = (0x20, 0 if fingerprint else 4)
    return row[used].tobytes()
