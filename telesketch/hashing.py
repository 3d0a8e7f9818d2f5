"""The seeded 64-bit hash family every sketch uses.

A key is hashed as its canonical byte string (a 4-byte address, the 13-byte 5-tuple, or any short
zero-padded buffer) cut into big-endian 64-bit words, the last one zero-padded on the right. The
words are folded through the murmur3 ``fmix64`` finaliser, starting from a state derived from the
seed and the key length:

    h = fmix64(seed_state(seed) ^ (nbytes * GOLDEN))
    for w in words: h = fmix64(h ^ w) + GOLDEN      (mod 2^64)
    return fmix64(h)

So ``hash_u32(k)`` equals ``hash_bytes(k.to_bytes(4, "big"))`` and ``hash_5tuple(...)`` equals
``hash_bytes`` of the 13-byte flow key: one function, three fast entry points. Different seeds give
independent-looking functions (the seed goes through ``fmix64`` before use).

Scalar ``@njit`` functions (``hash64_u32``, ``hash64_5tuple``, ``hash64_words``) are for use inside
other kernels; those written as :func:`telesketch.jit.twin` (``mix64``, ``fmix64``, ``hash64_u32``,
``hash64_5tuple`` and their helpers) are also compiled, from the same source, as the CUDA device
functions of :mod:`telesketch.gpu` (:func:`telesketch.jit.device_twin`); the vectorised wrappers
(``hash_u32``, ``hash_5tuple``, ``hash_keys``) hash a whole batch and return ``uint64[n]``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from telesketch.jit import kernel, twin

_U64 = np.uint64
GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xFF51AFD7ED558CCD)
_M2 = _U64(0xC4CEB9FE1A85EC53)
_SEED_OFFSET = _U64(0x6A09E667F3BCC909)
_S33 = _U64(33)
_S32 = _U64(32)


MIX_A = _U64(0xBF58476D1CE4E5B9)
MIX_B = _U64(0x94D049BB133111EB)


@twin(nb.uint64(nb.uint64), inline=True)
def mix64(z):
    """splitmix64's finaliser, mod 2^64: the counter-based coins of LLM-Sketch, CocoSketch /
    ResidualSketch and GapFilter's Straw-man PRNG (their specs fix this function, not ``fmix64``)."""
    z = (z ^ (z >> _U64(30))) * MIX_A
    z = (z ^ (z >> _U64(27))) * MIX_B
    return z ^ (z >> _U64(31))


@twin(nb.uint64(nb.uint64), inline=True)
def fmix64(x):
    """murmur3's 64-bit finaliser: a bijection with full avalanche."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@twin(nb.uint64(nb.uint64, nb.uint64), inline=True)
def _initial_state(seed, nbytes):
    return fmix64(fmix64(seed * GOLDEN + _SEED_OFFSET) ^ (nbytes * GOLDEN))


@twin(nb.uint64(nb.uint64, nb.uint64), inline=True)
def _absorb(h, word):
    return fmix64(h ^ word) + GOLDEN


@twin(nb.uint64(nb.uint32, nb.uint64))
def hash64_u32(key, seed):
    """Hash of a 4-byte key given as its numeric (big-endian) value."""
    h = _initial_state(seed, _U64(4))
    h = _absorb(h, _U64(key) << _S32)
    return fmix64(h)


@twin(nb.uint64(nb.uint32, nb.uint32, nb.uint16, nb.uint16, nb.uint8, nb.uint64))
def hash64_5tuple(src_ip, dst_ip, src_port, dst_port, proto, seed):
    """Hash of the 13-byte 5-tuple key ``src_ip dst_ip src_port dst_port proto`` (big-endian)."""
    h = _initial_state(seed, _U64(13))
    w0 = (_U64(src_ip) << _S32) | _U64(dst_ip)
    w1 = (_U64(src_port) << _U64(48)) | (_U64(dst_port) << _S32) | (_U64(proto) << _U64(24))
    h = _absorb(h, w0)
    h = _absorb(h, w1)
    return fmix64(h)


@kernel
def hash64_words(words, nbytes, seed):
    """Hash of a key already cut into big-endian ``uint64`` words (``ceil(nbytes / 8)`` of them)."""
    h = _initial_state(seed, _U64(nbytes))
    for i in range(words.shape[0]):
        h = _absorb(h, words[i])
    return fmix64(h)


@kernel
def _hash_u32_kernel(keys, seed, out):
    for i in range(keys.shape[0]):
        out[i] = hash64_u32(keys[i], seed)


@kernel
def _hash_5tuple_kernel(src_ip, dst_ip, src_port, dst_port, proto, seed, out):
    for i in range(src_ip.shape[0]):
        out[i] = hash64_5tuple(src_ip[i], dst_ip[i], src_port[i], dst_port[i], proto[i], seed)


@kernel
def _hash_rows_kernel(keys, seed, out):
    n, nbytes = keys.shape
    nwords = (nbytes + 7) // 8
    for i in range(n):
        h = _initial_state(seed, _U64(nbytes))
        for w in range(nwords):
            word = _U64(0)
            for b in range(8):
                j = w * 8 + b
                byte = _U64(keys[i, j]) if j < nbytes else _U64(0)
                word = (word << _U64(8)) | byte
            h = _absorb(h, word)
        out[i] = fmix64(h)


def _seed(seed: int) -> np.uint64:
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"hash seed must be in [0, 2**64), got {seed}")
    return np.uint64(int(seed))


def hash_u32(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """``uint64[n]`` hashes of 4-byte keys (``uint32[n]``, e.g. ``batch.src_ip``)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint32)
    out = np.empty(keys.shape[0], np.uint64)
    _hash_u32_kernel(keys, _seed(seed), out)
    return out


def hash_5tuple(batch, seed: int = 0) -> np.ndarray:
    """``uint64[n]`` hashes of the 13-byte flow keys of a :class:`~telesketch.packets.PacketBatch`."""
    out = np.empty(len(batch), np.uint64)
    _hash_5tuple_kernel(
        batch.src_ip, batch.dst_ip, batch.src_port, batch.dst_port, batch.proto, _seed(seed), out
    )
    return out


def hash_keys(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """``uint64[n]`` hashes of byte-string keys given as ``uint8[n, k]`` rows (any ``k``)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    if keys.ndim != 2:
        raise ValueError(f"keys must be uint8[n, k], got shape {keys.shape}")
    out = np.empty(keys.shape[0], np.uint64)
    _hash_rows_kernel(keys, _seed(seed), out)
    return out


def hash_bytes(key: bytes, seed: int = 0) -> int:
    """Pure-Python hash of one byte string: the readable definition, used by ``tests/naive.py``."""
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x ^= x >> 33
        x = (x * 0xFF51AFD7ED558CCD) & mask
        x ^= x >> 33
        x = (x * 0xC4CEB9FE1A85EC53) & mask
        return x ^ (x >> 33)

    golden = 0x9E3779B97F4A7C15
    h = mix(mix((int(seed) * golden + 0x6A09E667F3BCC909) & mask) ^ ((len(key) * golden) & mask))
    padded = key + b"\0" * (-len(key) % 8)
    for i in range(0, len(padded), 8):
        h = (mix(h ^ int.from_bytes(padded[i : i + 8], "big")) + golden) & mask
    return mix(h)
