"""What every GPU twin shares: the array backend, launch geometry, host-side segmenting, and the
device ports of :mod:`telesketch.hashing`.

Backends (chosen at construction, :func:`backend`): CuPy arrays on a real device when CuPy is
installed, Numba device arrays on a real device otherwise, and plain numpy arrays under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is first imported), which is
how CI (no GPU) runs the very same kernel code on small inputs.

The device hash ports cast every operand to ``uint64`` so the arithmetic wraps mod 2^64 exactly as
the CPU ``@njit`` originals do (a signed/unsigned mix would promote to float64 on the device); the
equality tests in ``tests/test_gpu_*.py`` pin them to the CPU versions.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numba
import numpy as np
from numba import cuda

from telesketch.hashing import _M1, _M2, _SEED_OFFSET, GOLDEN, MIX_A, MIX_B
from telesketch.sketches.core import SketchError

__all__ = ["THREADS_PER_BLOCK", "GpuUnavailableError", "backend", "blocks", "device_hash_5tuple",
           "hash64_5tuple_device", "mix64_device", "segments"]

THREADS_PER_BLOCK = 128


class GpuUnavailableError(SketchError):
    """Neither a CUDA device nor Numba's CUDA simulator is available."""


# ============================================================================ backend
class _Backend:
    """Where state arrays live: ``name`` is ``cupy``, ``numba`` (device arrays) or ``simulator``."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "cupy":
            import cupy

            self._cupy = cupy

    def zeros(self, shape, dtype):
        """A zeroed device array (numpy under the simulator)."""
        return self.to_device(np.zeros(shape, dtype))

    def to_device(self, host: np.ndarray):
        host = np.ascontiguousarray(host)
        if self.name == "cupy":
            return self._cupy.asarray(host)
        if self.name == "numba":
            return cuda.to_device(host)
        return host.copy()

    def to_host(self, arr) -> np.ndarray:
        if self.name == "cupy":
            return self._cupy.asnumpy(arr)
        if self.name == "numba":
            return arr.copy_to_host()
        return np.array(arr, copy=True)

    @contextlib.contextmanager
    def launching(self):
        """Context for kernel launches: under the simulator, silence numpy's scalar-overflow
        warnings (the hash relies on ``uint64`` wrap-around, exactly as on the device)."""
        if self.name != "simulator":
            yield
            return
        with warnings.catch_warnings():  # filters are process-wide: they reach the simulator's threads
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            yield


def _simulator_enabled() -> bool:
    return bool(getattr(numba.config, "ENABLE_CUDASIM", 0))


def backend() -> _Backend:
    """The backend this process can use, or :class:`GpuUnavailableError` saying how to get one."""
    if _simulator_enabled():
        return _Backend("simulator")
    if not cuda.is_available():
        raise GpuUnavailableError(
            "telesketch.gpu needs a CUDA device (install the GPU extra: pip install 'telesketch[gpu]') "
            "or Numba's CUDA simulator (set NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported)"
        )
    try:
        import cupy  # noqa: F401
    except ImportError:
        return _Backend("numba")
    return _Backend("cupy")


# ============================================================================ device hash
# ``telesketch.hashing``'s constants; every operand below is uint64 so the arithmetic wraps mod 2^64.
_U64 = np.uint64
_S16, _S24, _S32, _S33, _S48 = _U64(16), _U64(24), _U64(32), _U64(33), _U64(48)
_S27, _S30, _S31 = _U64(27), _U64(30), _U64(31)
_LOW16 = _U64(0xFFFF)
_LEN13 = _U64((13 * int(GOLDEN)) & (2**64 - 1))  # the 13-byte key length, folded into the initial state


@cuda.jit(device=True, inline=True)
def _fmix64(x):
    """murmur3's 64-bit finaliser (``telesketch.hashing.fmix64``)."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@cuda.jit(device=True, inline=True)
def mix64_device(z):
    """splitmix64's finaliser (``telesketch.hashing.mix64``), mod 2^64: the twins' random coins."""
    z = (z ^ (z >> _S30)) * MIX_A
    z = (z ^ (z >> _S27)) * MIX_B
    return z ^ (z >> _S31)


@cuda.jit(device=True)
def hash64_5tuple_device(src_ip, dst_ip, src_port, dst_port, proto, seed):
    """Device port of ``telesketch.hashing.hash64_5tuple``: the 13-byte big-endian 5-tuple key."""
    h = _fmix64(_fmix64(seed * GOLDEN + _SEED_OFFSET) ^ _LEN13)
    w0 = (_U64(src_ip) << _S32) | _U64(dst_ip)
    w1 = (_U64(src_port) << _S48) | (_U64(dst_port) << _S32) | (_U64(proto) << _S24)
    h = _fmix64(h ^ w0) + GOLDEN
    h = _fmix64(h ^ w1) + GOLDEN
    return _fmix64(h)


@cuda.jit
def _hash_kernel(src, dst, sport, dport, proto, seed, out):
    """``out[i] = hash64_5tuple_device(key i, seed)`` (``uint64``), one thread per item."""
    i = cuda.grid(1)
    if i < src.shape[0]:
        out[i] = hash64_5tuple_device(src[i], dst[i], sport[i], dport[i], proto[i], seed)


def blocks(n: int) -> int:
    """Blocks of :data:`THREADS_PER_BLOCK` threads that cover ``n`` items (at least one)."""
    return max(1, math.ceil(n / THREADS_PER_BLOCK))


_KEY_FIELDS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto")


def device_hash_5tuple(batch, seed: int = 0) -> np.ndarray:
    """``uint64[n]`` hashes of a batch's 5-tuples computed by the device kernel (host result);
    equal to ``telesketch.hashing.hash_5tuple(batch, seed)``."""
    be = backend()
    n = len(batch)
    out = be.zeros(n, np.uint64)
    if n:
        cols = [be.to_device(getattr(batch, name)) for name in _KEY_FIELDS]
        with be.launching():
            _hash_kernel[blocks(n), THREADS_PER_BLOCK](*cols, _U64(seed), out)
    return be.to_host(out)


def segments(idx: np.ndarray):
    """Stable partition of the batch by bucket (``idx``: ``int64[n]`` host array).

    Returns host ``int64`` arrays: ``buckets`` (the ``m`` non-empty buckets, ascending), ``starts``
    (``m + 1`` CSR bounds into ``order``) and ``order`` (batch positions grouped by bucket, arrival
    order inside a bucket).
    """
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    first = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    starts = np.r_[first, sorted_idx.shape[0]].astype(np.int64)
    return sorted_idx[first], starts, order.astype(np.int64)
