"""Header features and token sequences for the estimators (spec §3.1-§3.2), vectorised in numpy.

* :func:`header_words`: the 40-byte block as twenty big-endian 16-bit words.
* :func:`tree_features`: those words minus the four zeroed address words (16 features).
* :func:`tiny_tokens`: the paper's tokens, one per 2-byte word (id ``4 + word``) inside
  ``[CLS] .. [SEP]``, padded to 24, with a real attention mask.
* :func:`byte_tokens`: MiniLM input, one token per kept byte (the addresses and checksums dropped),
  mapped through a ``byte -> vocab id`` table, ``[CLS] .. [SEP]`` padded to 32.
"""
from __future__ import annotations

import numpy as np

ADDRESS_WORDS = (6, 7, 8, 9)  # IP bytes 12-19
TINY_PAD, TINY_UNK, TINY_CLS, TINY_SEP = 0, 1, 2, 3
TINY_VOCAB = 65536 + 4
TINY_LEN = 24
LM_LEN = 32
PROTO_TCP, PROTO_UDP = 6, 17


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
