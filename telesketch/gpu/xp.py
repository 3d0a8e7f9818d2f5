"""Commutative state updates as array operations (the ``xp`` shim): CuPy on a device, numpy under
Numba's CUDA simulator, small atomic kernels on Numba device arrays (a device without CuPy).

The sketches' *commutative* updates -- adding to counters, OR-ing bits into packed bitmaps,
adding clamped at a cap -- give the same state in any order, so they need no per-bucket
ordering and run as whole-array scatter operations; the ordered per-bucket work (a bucket's items
in arrival order) stays in the segment kernels. Every function here works on a flat (1-D,
contiguous) view of a state array and one array of flat indices, where a **negative index
means "skip this entry"** (so a kernel can mark items that do not take part without the host
compacting the arrays: no host round trip, no data-dependent output size):

* :func:`scatter_add` -- ``target[idx[k]] += values[k]``: ``cupyx.scatter_add`` (CUDA
  ``atomicAdd``: ``uint32`` and ``uint64`` targets), ``numpy.add.at``, or ``cuda.atomic.add``;
* :func:`set_bits` -- bit ``pos & 63`` of word ``pos >> 6`` set in a ``uint64`` bitmap: a CuPy
  ``ElementwiseKernel`` with ``atomicOr``, ``numpy.bitwise_or.at``, or ``cuda.atomic.or_``;
* :func:`add_clamped` -- ``target[c] = min(cap, target[c] + (count | sum of weights) at c)``: a
  ``uint64`` scatter-add into a reused scratch array, then one element-wise ``minimum``.

Which implementation runs is the backend's (:func:`telesketch.gpu.core.backend`): ``cupy``,
``simulator`` (numpy) or ``numba`` (the kernels; the simulator tests run them directly on numpy
arrays, ``tests/test_gpu_core.py``). All three give identical results (integer arithmetic).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from telesketch.gpu.core import launch
from telesketch.jit import gpu_kernel

__all__ = ["add_clamped", "array_module", "scatter_add", "set_bits"]

_U64 = np.uint64


def array_module(be):
    """``cupy`` for the CuPy backend, else ``numpy`` (the simulator's arrays are numpy arrays)."""
    return be._cupy if be.name == "cupy" else np


# ---------------------------------------------------------------------------- kernels (Numba arrays)
@gpu_kernel
def _scatter_add_kernel(target, idx, values):
    """``target[idx[k]] += values[k]`` (atomic) for every ``idx[k] >= 0``; grid-stride."""
    for k in range(cuda.grid(1), idx.shape[0], cuda.gridsize(1)):
        c = idx[k]
        if c >= 0:
            cuda.atomic.add(target, c, values[k])


@gpu_kernel
def _set_bits_kernel(words, pos):
    """``words[pos[k] >> 6] |= 1 << (pos[k] & 63)`` (atomic, ``uint64`` words) for ``pos[k] >= 0``."""
    for k in range(cuda.grid(1), pos.shape[0], cuda.gridsize(1)):
        p = pos[k]
        if p >= 0:
            cuda.atomic.or_(words, p >> 6, _U64(1) << _U64(p & 63))


@gpu_kernel
def _clamp_add_kernel(target, added, cap):
    """``target[c] = min(cap, target[c] + added[c])`` (``added``: ``uint64``, ``cap``: ``uint64``)."""
    for c in range(cuda.grid(1), target.shape[0], cuda.gridsize(1)):
        if added[c] != 0:
            target[c] = min(cap, _U64(target[c]) + added[c])


# ---------------------------------------------------------------------------- the operations
_OR_KERNEL = None


def _cupy_or_kernel(cupy):
    global _OR_KERNEL
    if _OR_KERNEL is None:
        _OR_KERNEL = cupy.ElementwiseKernel(
            "int64 pos", "raw uint64 words",
            "if (pos >= 0) atomicOr(&words[pos >> 6], 1ull << (pos & 63));",
            "telesketch_set_bits")
    return _OR_KERNEL


def scatter_add(be, target, idx, values) -> None:
    """``target[idx[k]] += values[k]`` for every ``idx[k] >= 0`` (``target``: a flat ``uint32`` or
    ``uint64`` device array; ``idx``: ``int64``; ``values``: ``target``'s dtype). Duplicates add up."""
    if be.name == "cupy":
        import cupyx

        cp = be._cupy
        valid = idx >= 0
        cupyx.scatter_add(target, cp.where(valid, idx, 0), cp.where(valid, values, 0).astype(target.dtype))
    elif be.name == "simulator":
        valid = idx >= 0
        np.add.at(target, idx[valid], np.asarray(values)[valid].astype(target.dtype))
    else:
        launch(_scatter_add_kernel, idx.shape[0], target, idx, values, grid_stride=True)


def set_bits(be, words, pos) -> None:
    """Set bit ``pos[k] & 63`` of ``words[pos[k] >> 6]`` for every ``pos[k] >= 0`` (``words``: flat
    ``uint64`` device array; ``pos``: ``int64`` flat bit positions). Idempotent, any order."""
    if be.name == "cupy":
        _cupy_or_kernel(be._cupy)(pos, words)  # one thread per position (pos sets the size)
    elif be.name == "simulator":
        p = pos[pos >= 0]
        np.bitwise_or.at(words, p >> 6, np.left_shift(_U64(1), (p & 63).astype(np.uint64)))
    else:
        launch(_set_bits_kernel, pos.shape[0], words, pos, grid_stride=True)


def add_clamped(be, buffers, target, idx, cap: int, weights=None) -> None:
    """``target[c] = min(cap, target[c] + a_c)`` for every cell ``c``, ``a_c`` the number of entries
    ``idx[k] == c`` (or the sum of their ``weights``, non-negative ``int64``/``uint64``); negative
    ``idx`` are skipped. ``target``: a flat unsigned counter array (``uint8``/``uint16``/``uint32``);
    the per-cell sums go through ``buffers``' reused ``uint64`` scratch ``clamped_add``. This is the
    Frequency-Sketch store of a batch: the final value of a saturating counter does not depend on
    the order of its increments."""
    added = buffers.get("clamped_add", target.shape[0], np.uint64)
    be.fill(added, _U64(0))
    amounts = weights
    if amounts is None:
        amounts = buffers.get("clamped_ones", idx.shape[0], np.uint64)
        be.fill(amounts, _U64(1))
    elif amounts.dtype != np.uint64:
        amounts = amounts.astype(np.uint64)
    scatter_add(be, added, idx, amounts)
    if be.name == "numba":
        launch(_clamp_add_kernel, target.shape[0], target, added, _U64(cap), grid_stride=True)
        return
    xp = array_module(be)
    target[...] = xp.minimum(target.astype(np.uint64) + added, _U64(cap)).astype(target.dtype)
