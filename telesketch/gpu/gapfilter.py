"""GapFilter-SO / -AO with detection state on a GPU (spec ``shared/specs/gapfilter.md`` §8).

Same parameters, verbs, queries, serialised state and results as
:mod:`telesketch.sketches.gapfilter` (these classes subclass the CPU ones and replace only where the
lanes live and how a batch is run): a snapshot written by either moves to the other.

Per batch (§8, "the bucket is the unit of ordering"):

1. one host-to-device copy per key column and of SEQ; a kernel with one thread per item hashes
   it with a device port of the project hash (:func:`hash64_5tuple_device`, equal to
   ``telesketch.hashing.hash64_5tuple``, same constants) and derives ``idx = h mod n_buckets`` and
   the packed item ``v | fp << 16`` exactly as the CPU does (§3);
2. ``idx`` comes back to the host and is stable-sorted (``numpy.argsort(kind="stable")``) into CSR
   segments of the non-empty buckets; the order and segment bounds go back to the device
   (first version: a device sort, e.g. CuPy's, would save these two copies);
3. ONE segment kernel with one thread per non-empty bucket: it loads the bucket's lanes into a
   local array, runs the bucket's items in arrival order with device ports of the CPU step
   functions (``_so_step`` / ``_ao_step``), writes each item's flag and jump and stores the lanes.

Backends (chosen at construction, :func:`backend`): CuPy arrays on a real device when CuPy is
installed, Numba device arrays on a real device otherwise, and plain numpy arrays under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is first imported), which is
how CI (no GPU) runs the very same kernel code on small inputs.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numba
import numpy as np
from numba import cuda

from telesketch.hashing import _M1, _M2, _SEED_OFFSET, GOLDEN, MIX_A, MIX_B
from telesketch.sketches import gapfilter as _cpu
from telesketch.sketches.core import SketchError

__all__ = ["GapFilterSO", "GapFilterAO", "GpuUnavailableError", "backend", "device_hash_5tuple",
           "hash64_5tuple_device"]

THREADS_PER_BLOCK = 128
_NO_MATCH = 1 << 40  # same sentinel as the CPU AO step


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


@cuda.jit
def _items_kernel(src, dst, sport, dport, proto, seq, seed, n_buckets, fp_mask, idx, items):
    """Per item (one thread each): bucket ``idx`` and packed ``v | fp << 16`` (both ``int64``),
    as the CPU ``_rotated_item``: ``idx = h mod nb``, ``v = (seq + (h >> 32 & 0xFFFF)) & 0xFFFF``,
    ``fp = (h >> 48) & fp_mask`` (``n_buckets`` and ``fp_mask`` are ``uint64``)."""
    i = cuda.grid(1)
    if i < src.shape[0]:
        h = hash64_5tuple_device(src[i], dst[i], sport[i], dport[i], proto[i], seed)
        idx[i] = h % n_buckets
        off = (h >> _S32) & _LOW16
        fp = (h >> _S48) & fp_mask
        items[i] = ((seq[i] + off) & _LOW16) | (fp << _S16)


def _blocks(n: int) -> int:
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
            _hash_kernel[_blocks(n), THREADS_PER_BLOCK](*cols, _U64(seed), out)
    return be.to_host(out)


# ============================================================================ device step functions
# Integer arithmetic is int64 throughout (lanes are loaded into an int64 local array), so the CUDA
# target never mixes signed and unsigned operands (which Numba would promote to float64).
@cuda.jit(device=True, inline=True)
def _s16(x):
    """``x mod 2^16`` read as a signed 16-bit value (CPU ``_s16``)."""
    return ((x + 32768) & 0xFFFF) - 32768


@cuda.jit(device=True, inline=True)
def _sat_diff(a, b):
    """``sat16(s16(a) - s16(b))`` (CPU ``_sat_diff``)."""
    d = _s16(a) - _s16(b)
    if d > 32767:
        return 32767
    if d < -32768:
        return -32768
    return d


@cuda.jit(device=True)
def _so_step(lanes, v, t1, t2, modular):
    """One SO item into ``lanes`` (``int64[4]``, lane 0 most recent); returns ``(report, md)``.

    Mirrors the CPU word-level ``_so_step``: the nearest lane (smallest ``|d|``, lowest lane on
    ties) absorbs the item when ``-t2 < md < t2`` (moved to the front, keeping the larger value);
    otherwise lane 3 is evicted and ``v`` is pushed to the front.
    """
    best_key = 1 << 40
    for i in range(4):
        d = _s16(v - lanes[i]) if modular else _sat_diff(v, lanes[i])
        best_key = min(best_key, (abs(d) << 19) | (i << 17) | (d + 32768))
    best = (best_key >> 17) & 3
    md = (best_key & 0xFFFF) - 32768
    absorbed = -t2 < md < t2
    keep = lanes[best] if (absorbed and md <= 0) else v
    top = best if absorbed else 3  # lanes [0, top) move up one; lane top is overwritten
    for i in range(3, 0, -1):
        if i <= top:
            lanes[i] = lanes[i - 1]
    lanes[0] = keep
    return absorbed and md >= t1, md


@cuda.jit(device=True)
def _ao_step(lanes, item, sz, t1, t2, civilian_front):
    """One AO item (``v | fp << 16``) into ``lanes`` (``int64[8]``, ``seq | fp << 16``, 0 = empty);
    returns ``(report, md)``. A line-by-line port of the CPU ``_ao_step`` (fixes A+B)."""
    v = item & 0xFFFF
    fp = item >> 16
    best_key = _NO_MATCH
    empty = 8
    for i in range(7, -1, -1):
        c = lanes[i]
        key = abs(_sat_diff(v, c & 0xFFFF)) * 8 + i
        best_key = min(best_key, key if (c >> 16) == fp else _NO_MATCH)
        empty = i if c == 0 else empty
    lane = best_key & 7
    matched = best_key < _NO_MATCH
    md = _s16(v - (lanes[lane] & 0xFFFF)) if matched else 0
    report = matched and md >= t1 and md < t2
    absorb = matched and md > -t2 and md < t1
    hit = absorb or report
    new_m = empty if empty < sz else (min(empty, 7) if civilian_front else 7)
    new_r = empty if empty < sz else (min(sz, 7) if civilian_front else max(sz - 1, 0))
    m = lane if hit else new_m
    r = (min(lane, sz) if absorb else 0) if hit else new_r
    value = lanes[lane] if (absorb and md <= 0) else item
    for i in range(7, -1, -1):  # downward, so lane i - 1 is still the old value
        shifted = lanes[max(i - 1, 0)] if (r < i and i <= m) else lanes[i]
        lanes[i] = value if i == r else shifted
    return report, md


# ============================================================================ kernels
@cuda.jit
def _so_segments_kernel(table, buckets, starts, order, items, t1, t2, modular, flags, jumps):
    """Thread ``k`` runs non-empty bucket ``buckets[k]``: batch positions
    ``order[starts[k]:starts[k+1]]`` (arrival order), reading ``items`` and writing
    ``flags``/``jumps`` at those positions."""
    k = cuda.grid(1)
    if k >= buckets.shape[0]:
        return
    b = buckets[k]
    lanes = cuda.local.array(4, numba.int64)
    for i in range(4):
        lanes[i] = table[b, i]
    for j in range(starts[k], starts[k + 1]):
        pos = order[j]
        rep, md = _so_step(lanes, items[pos], t1, t2, modular)
        if rep:
            flags[pos] = 1
            jumps[pos] = md
    for i in range(4):
        table[b, i] = lanes[i]


@cuda.jit
def _ao_segments_kernel(cells, buckets, starts, order, items, sz, t1, t2, civilian_front, flags, jumps):
    """AO counterpart of :func:`_so_segments_kernel` (8 lanes per bucket)."""
    k = cuda.grid(1)
    if k >= buckets.shape[0]:
        return
    b = buckets[k]
    lanes = cuda.local.array(8, numba.int64)
    for i in range(8):
        lanes[i] = cells[b, i]
    for j in range(starts[k], starts[k + 1]):
        pos = order[j]
        rep, md = _ao_step(lanes, items[pos], sz, t1, t2, civilian_front)
        if rep:
            flags[pos] = 1
            jumps[pos] = md
    for i in range(8):
        cells[b, i] = lanes[i]


# ============================================================================ host side
def _segments(idx: np.ndarray):
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


class _GpuMixin:
    """Device-side state and the segment-kernel launch shared by SO and AO."""

    LANES: int
    STATE_DTYPE: np.dtype

    def _init_state(self) -> None:
        self._backend = backend()
        self._set_lanes(self._backend.zeros((self.params.n_buckets, self.LANES), self.STATE_DTYPE))

    def _host_lanes(self) -> np.ndarray:
        return self._backend.to_host(self._lanes())

    def _launch(self, kernel, cols, seq, fp_mask, flags, jumps, *step_args) -> None:
        """Hash on the device, partition on the host, run the segment ``kernel``; fills the host
        ``flags`` (``bool[n]``) and ``jumps`` (``int32[n]``, meaningful where flagged)."""
        p, be = self.params, self._backend
        n = flags.shape[0]
        d_cols = [be.to_device(cols[name]) for name in _KEY_FIELDS]
        d_idx, d_items = be.zeros(n, np.int64), be.zeros(n, np.int64)
        d_flags, d_jumps = be.zeros(n, np.uint8), be.zeros(n, np.int32)
        with be.launching():
            _items_kernel[_blocks(n), THREADS_PER_BLOCK](*d_cols, be.to_device(seq), _U64(p.seed),
                                                        _U64(p.n_buckets), _U64(fp_mask), d_idx, d_items)
            buckets, starts, order = _segments(be.to_host(d_idx))
            kernel[_blocks(buckets.shape[0]), THREADS_PER_BLOCK](
                self._lanes(), be.to_device(buckets), be.to_device(starts), be.to_device(order), d_items,
                *step_args, d_flags, d_jumps)
        flags[:] = be.to_host(d_flags).view(np.bool_)
        jumps[:] = be.to_host(d_jumps)

    @property
    def device_backend(self) -> str:
        """``cupy``, ``numba`` or ``simulator``: where this sketch's lanes live."""
        return self._backend.name


class GapFilterSO(_GpuMixin, _cpu.GapFilterSO):
    """GPU GapFilter-SO: ``table`` is a device ``uint16[n_buckets, 4]`` (lane 0 most recent).

    Same parameters, verbs, state format and flags as :class:`telesketch.sketches.GapFilterSO`;
    ``update``'s ``parallel`` argument is accepted and ignored (always the segment kernel).
    """

    LANES = 4
    STATE_DTYPE = np.dtype(np.uint16)

    def _lanes(self):
        return self.table

    def _set_lanes(self, arr) -> None:
        self.table = arr

    def _state_arrays(self):
        return {"table": self._host_lanes()}

    def _load_state(self, arrays):
        self._check_arrays(arrays, self._state_arrays())
        self.table = self._backend.to_device(arrays["table"])

    def _kernel(self, cols, seq, flags, jumps, parallel):
        p = self.params
        self._launch(_so_segments_kernel, cols, seq, 0, flags, jumps, p.t1, p.t2, p.so_diff == "modular")


class GapFilterAO(_GpuMixin, _cpu.GapFilterAO):
    """GPU GapFilter-AO: ``cells`` is a device ``uint32[n_buckets, 8]`` (``seq | fp << 16``, 0 = empty).

    Same parameters, verbs, state format and flags as :class:`telesketch.sketches.GapFilterAO`.
    """

    LANES = 8
    STATE_DTYPE = np.dtype(np.uint32)

    def _lanes(self):
        return self.cells

    def _set_lanes(self, arr) -> None:
        self.cells = arr

    @property
    def seq_lanes(self) -> np.ndarray:
        """Host ``uint16[n_buckets, 8]``: stored (rotated) SEQ values."""
        return (self._host_lanes() & 0xFFFF).astype(np.uint16)

    @property
    def fp_lanes(self) -> np.ndarray:
        """Host ``uint16[n_buckets, 8]``: stored fingerprints."""
        return (self._host_lanes() >> 16).astype(np.uint16)

    def _load_state(self, arrays):
        self._check_arrays(arrays, self._state_arrays())
        if int(arrays["fp"].max(initial=0)) >= 1 << self.params.fp_bits:
            raise SketchError(f"{self.ALGORITHM} state holds fingerprints wider than fp_bits={self.params.fp_bits}")
        cells = arrays["seq"].astype(np.uint32) | (arrays["fp"].astype(np.uint32) << 16)
        self.cells = self._backend.to_device(cells)

    def _kernel(self, cols, seq, flags, jumps, parallel):
        p = self.params
        self._launch(_ao_segments_kernel, cols, seq, (1 << p.fp_bits) - 1, flags, jumps,
                     p.suspects, p.t1, p.t2, p.ao_new_flow_pos == "civilian_front")
