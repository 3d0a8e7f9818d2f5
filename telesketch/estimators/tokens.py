"""Header features and token sequences for the estimators (spec §3.1-§3.2), vectorised in numpy.

* :func:`header_words`: the 40-byte block as twenty big-endian 16-bit words.
* :func:`tree_features`: those words minus the four zeroed address words (16 features).
* :func:`tiny_tokens`: the paper's tokens, one per 2-byte word (id ``4 + word``) inside
  ``[CLS] .. [SEP]``, padded to 24, with a real attention mask.
* :func:`byte_tokens`: MiniLM input, one token per kept byte (the addresses and checksums dropped),
  mapped through a ``byte -> vocab id`` table, ``[CLS] .. [SEP]`` padded to 32.

IPv6 (issue #18). Every function here reads the IPv4 layout (IPv4 header, addresses zeroed, then the
transport header). An IPv6 row's ``header`` block is taken to be the compact layout of
:mod:`telesketch.packets`: the first 8 bytes of the IPv6 header (version 6, traffic class and flow
label; payload length; next header; hop limit), then the transport header, ``hdr_len`` the valid
bytes (:data:`IPV6_FIXED`; the assumption while the readers' IPv6 layout is being written, see
:func:`ipv6_fields`). Read as IPv4 those bytes would be garbage (the ports would land in the
address and checksum positions), so :func:`ipv4_view` rewrites IPv6 rows, recognised by their
version nibble, into the IPv4 layout the models were trained on, field by field: traffic class ->
TOS, payload length + 40 -> total length, hop limit -> TTL, upper-layer protocol -> protocol,
``DF`` set (IPv6 routers never fragment), then the first 20 transport bytes. IPv4 rows (version 4,
or an all-zero block) are left byte for byte, so every IPv4 score is unchanged.

The identification and header checksum have no IPv6 counterpart, yet the shipped trees split on
them often (814 and 672 of their splits): to a model they are per-flow pseudo-random numbers (the
checksum covers the addresses). Zero there sends every IPv6 row down the same extreme branch
(measured: ARE of IPv6 flows 0.087 against 0.066 for the same flows as IPv4, 100 KiB,
``benchmarks/bench_llmsketch_ipv6.py --quick``). IPv6's per-flow pseudo-random number is the flow
label (RFC 6437), so the view carries its low 16 bits as the identification and a multiplicative
mix of it (``(label * 2654435761 mod 2^32) >> 16``) as the checksum (measured: 0.070); a zero
label gives zeros. :func:`ipv6_fields` exposes every field for models trained on IPv6 traffic.
"""
from __future__ import annotations

import numpy as np

ADDRESS_WORDS = (6, 7, 8, 9)  # IP bytes 12-19
TINY_PAD, TINY_UNK, TINY_CLS, TINY_SEP = 0, 1, 2, 3
TINY_VOCAB = 65536 + 4
TINY_LEN = 24
LM_LEN = 32
PROTO_TCP, PROTO_UDP = 6, 17
#: Bytes of the IPv6 header at the front of an IPv6 row's header block (assumed compact layout).
IPV6_FIXED = 8
IPV4_HEADER = 20
#: The IPv4 view's flags/fragment word: DF set, no fragment offset.
DF_WORD = 0x4000


def ipv6_rows(headers: np.ndarray, hdr_len: np.ndarray) -> np.ndarray:
    """``bool[n]``: rows whose header block is an IPv6 header (version nibble 6, at least one byte)."""
    return ((np.asarray(headers)[:, 0] >> 4) == 6) & (np.asarray(hdr_len) > 0)


def ipv6_fields(headers: np.ndarray) -> dict[str, np.ndarray]:
    """The IPv6 base-header fields of compact-layout blocks (``uint8[n, 40]``; meaningful on
    :func:`ipv6_rows` only): ``traffic_class`` (uint8), ``flow_label`` (uint32, 20 bits),
    ``payload_length`` (uint16), ``next_header`` (uint8), ``hop_limit`` (uint8)."""
    h = np.asarray(headers, np.uint8)
    return {
        "traffic_class": (((h[:, 0] & 0x0F) << 4) | (h[:, 1] >> 4)).astype(np.uint8),
        "flow_label": ((h[:, 1].astype(np.uint32) & 0x0F) << 16) | (h[:, 2].astype(np.uint32) << 8) | h[:, 3],
        "payload_length": ((h[:, 4].astype(np.uint16) << 8) | h[:, 5]).astype(np.uint16),
        "next_header": h[:, 6].copy(),
        "hop_limit": h[:, 7].copy(),
    }


def ipv4_view(headers: np.ndarray, hdr_len: np.ndarray, proto: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8[n, 40], uint8[n])``: the blocks with every IPv6 row rewritten in the IPv4 layout
    (module doc); IPv4 rows are returned unchanged (the same arrays when there is no IPv6 row).

    ``proto`` (``uint8[n]``, the batch's column): the upper-layer protocol after extension headers;
    without it the compact layout's next-header byte is used."""
    six = ipv6_rows(headers, hdr_len)
    if not six.any():
        return headers, hdr_len
    src = headers[six]
    f = ipv6_fields(src)
    view = np.zeros_like(src)
    total = np.minimum(f["payload_length"].astype(np.int64) + 40, 0xFFFF)
    view[:, 0] = 0x45
    view[:, 1] = f["traffic_class"]
    view[:, 2], view[:, 3] = total >> 8, total & 0xFF
    view[:, 4], view[:, 5] = (f["flow_label"] >> 8) & 0xFF, f["flow_label"] & 0xFF
    view[:, 6], view[:, 7] = DF_WORD >> 8, DF_WORD & 0xFF
    mixed = (f["flow_label"].astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    view[:, 10], view[:, 11] = (mixed >> np.uint64(24)) & np.uint64(0xFF), (mixed >> np.uint64(16)) & np.uint64(0xFF)
    view[:, 8] = f["hop_limit"]
    view[:, 9] = f["next_header"] if proto is None else np.asarray(proto, np.uint8)[six]
    transport = np.clip(hdr_len[six].astype(np.int64) - IPV6_FIXED, 0, 40 - IPV4_HEADER)
    width = 40 - IPV4_HEADER
    body = src[:, IPV6_FIXED: IPV6_FIXED + width]
    view[:, IPV4_HEADER:] = np.where(np.arange(width)[None, :] < transport[:, None], body, 0)
    out_headers, out_len = headers.copy(), hdr_len.copy()
    out_headers[six] = view
    out_len[six] = IPV4_HEADER + transport
    return out_headers, out_len


def header_words(headers: np.ndarray) -> np.ndarray:
    """``uint16[n, 20]``: big-endian words of the header block."""
    h = np.ascontiguousarray(headers, dtype=np.uint8)
    return (h[:, 0::2].astype(np.uint16) << 8) | h[:, 1::2]


def tree_features(headers: np.ndarray) -> np.ndarray:
    """``float32[n, 16]``: the non-address header words (spec §3.2 (c))."""
    keep = [w for w in range(20) if w not in ADDRESS_WORDS]
    return header_words(headers)[:, keep].astype(np.float32)


def tiny_tokens(headers: np.ndarray, hdr_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64[n, 24], mask int64[n, 24])`` for the tiny transformer (spec §3.2 (b))."""
    n = headers.shape[0]
    words = header_words(headers).astype(np.int64) + 4
    nwords = (hdr_len.astype(np.int64) + 1) // 2
    ids = np.zeros((n, TINY_LEN), np.int64)
    ids[:, 0] = TINY_CLS
    pos = np.arange(20)[None, :]
    ids[:, 1:21] = np.where(pos < nwords[:, None], words, TINY_PAD)
    ids[np.arange(n), nwords + 1] = TINY_SEP
    mask = (np.arange(TINY_LEN)[None, :] < (nwords + 2)[:, None]).astype(np.int64)
    return ids, mask


def kept_byte_mask(headers: np.ndarray, hdr_len: np.ndarray) -> np.ndarray:
    """``bool[n, 40]``: valid bytes minus addresses (IP 12-19) and checksums (IP 10-11, TCP 16-17, UDP 6-7)."""
    n = headers.shape[0]
    pos = np.arange(40)[None, :]
    keep = pos < hdr_len.astype(np.int64)[:, None]
    keep[:, 10:20] = False
    ihl = (headers[:, 0].astype(np.int64) & 0xF) * 4
    proto = headers[:, 9]
    csum = np.where(proto == PROTO_TCP, ihl + 16, np.where(proto == PROTO_UDP, ihl + 6, 99))
    for off in (0, 1):
        at = csum + off
        ok = at < 40
        keep[np.arange(n)[ok], at[ok]] = False
    return keep


def byte_tokens(headers: np.ndarray, hdr_len: np.ndarray, byte_ids: np.ndarray, cls_id: int, sep_id: int,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64[n, 32], mask int64[n, 32])``: MiniLM byte tokens (spec §3.2 (a))."""
    n = headers.shape[0]
    keep = kept_byte_mask(headers, hdr_len)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept positions first, in order
    count = np.minimum(keep.sum(axis=1), LM_LEN - 2)
    body = byte_ids[np.take_along_axis(headers, order, axis=1)][:, : LM_LEN - 2]
    ids = np.full((n, LM_LEN), pad_id, np.int64)
    ids[:, 0] = cls_id
    slot = np.arange(LM_LEN - 2)[None, :]
    ids[:, 1:] = np.concatenate([np.where(slot < count[:, None], body, pad_id), np.full((n, 1), pad_id)], 1)
    ids[np.arange(n), count + 1] = sep_id
    mask = (np.arange(LM_LEN)[None, :] < (count + 2)[:, None]).astype(np.int64)
    return ids, mask
