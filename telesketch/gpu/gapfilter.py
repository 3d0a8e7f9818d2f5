"""GapFilter-SO / -AO with detection state on a GPU (spec ``shared/specs/gapfilter.md`` §8).

Same parameters, verbs, queries, serialised state and results as
:mod:`telesketch.sketches.gapfilter` (these classes subclass the CPU ones and replace only where the
lanes live and how a batch is run): a snapshot written by either moves to the other.

Per batch (§8, "the bucket is the unit of ordering"):

1. one host-to-device copy per key column and of SEQ, into device buffers the sketch reuses from
   batch to batch (:class:`~telesketch.gpu.core.DeviceBuffers`); a kernel with one thread per item
   hashes it with the device twin of the project hash (:func:`hash64_5tuple_device`, equal to
   ``telesketch.hashing.hash64_5tuple``, same constants) and derives ``idx = h mod n_buckets`` and
   the packed item ``v | fp << 16`` exactly as the CPU does (§3); it writes the item and the
   composite key ``idx << shift | position``;
2. the composite keys are sorted on the device (:func:`~telesketch.gpu.core.sort_composite`:
   ``cupy.sort``, or a bitonic sort kernel), which groups each bucket's items in arrival order;
3. ONE segment kernel with one thread per sorted position: the first position of each bucket
   loads the bucket's lanes into a local array, runs the bucket's items in arrival order with
   device ports of the CPU step functions (``_so_step`` / ``_ao_step``, one kernel for both), writes each item's flag
   and jump and stores the lanes; the other threads return at once.

Then the flags and jumps come back (two device-to-host copies): no host round trip inside a batch.
A bucket's items stay serial (the step functions are order-dependent), so an elephant flow's
bucket is one thread's work.

Backends, launch geometry and the device hash twins live in :mod:`telesketch.gpu.core`.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from telesketch.gpu.core import (
    _KEY_FIELDS,
    _LOW16,
    _S16,
    _S32,
    _S48,
    _U64,
    DeviceBuffers,
    GpuUnavailableError,
    backend,
    composite_shift,
    device_hash_5tuple,
    hash64_5tuple_device,
    launch,
    sort_composite,
)
from telesketch.jit import device, device_twin, gpu_kernel
from telesketch.sketches import gapfilter as _cpu
from telesketch.sketches.core import SketchError

__all__ = ["GapFilterSO", "GapFilterAO", "GpuUnavailableError", "backend", "device_hash_5tuple",
           "hash64_5tuple_device"]

_NO_MATCH = 1 << 40  # same sentinel as the CPU AO step


@gpu_kernel
def _items_kernel(src, dst, sport, dport, proto, seq, seed, n_buckets, fp_mask, shift, keys, items):
    """Per item (one thread each): composite key ``idx << shift | i`` (``uint64``) and packed
    ``v | fp << 16`` (``int64``), as the CPU ``_rotated_item``: ``idx = h mod nb``,
    ``v = (seq + (h >> 32 & 0xFFFF)) & 0xFFFF``, ``fp = (h >> 48) & fp_mask`` (``n_buckets``,
    ``fp_mask`` and ``shift`` are ``uint64``)."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):  # grid-stride
        h = hash64_5tuple_device(src[i], dst[i], sport[i], dport[i], proto[i], seed)
        keys[i] = ((h % n_buckets) << shift) | _U64(i)
        off = (h >> _S32) & _LOW16
        fp = (h >> _S48) & fp_mask
        items[i] = ((seq[i] + off) & _LOW16) | (fp << _S16)


# ============================================================================ device step functions
# Integer arithmetic is int64 throughout (lanes are loaded into an int64 local array), so the CUDA
# target never mixes signed and unsigned operands (which Numba would promote to float64).
#: The CPU ``_s16`` and ``_sat_diff`` (telesketch.jit.device_twin: the same Python source).
_s16 = device_twin(_cpu._s16)
_sat_diff = device_twin(_cpu._sat_diff)


@device
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


@device
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
@gpu_kernel
def _heads_kernel(table, keys, shift, items, ao, sz, t1, t2, option, flags, jumps):
    """Thread ``j`` of the sorted composite ``keys`` (``bucket << shift | position``, ``uint64``):
    if ``j`` is its bucket's first position, run the bucket's items (``items[position]``) in
    arrival order, writing ``flags`` (``uint8``) and ``jumps`` (``int32``, 0 unless flagged) at
    each position. SO (``ao`` false): 4 lanes of ``table`` (``uint16[nb, 4]``), :func:`_so_step`
    with ``option`` = modular differences (``sz`` unused). AO (``ao`` true): 8 lanes of ``table``
    (``uint32[nb, 8]``), :func:`_ao_step` with ``sz`` suspects and ``option`` = civilian_front."""
    n = keys.shape[0]
    mask = (_U64(1) << shift) - _U64(1)
    width = 8 if ao else 4
    lanes = cuda.local.array(8, numba.int64)
    for head in range(cuda.grid(1), n, cuda.gridsize(1)):  # grid-stride over sorted positions
        b = keys[head] >> shift
        if head > 0 and (keys[head - 1] >> shift) == b:
            continue
        row = np.int64(b)
        for i in range(width):
            lanes[i] = table[row, i]
        j = head
        while j < n and (keys[j] >> shift) == b:
            pos = np.int64(keys[j] & mask)
            if ao:
                rep, md = _ao_step(lanes, items[pos], sz, t1, t2, option)
            else:
                rep, md = _so_step(lanes, items[pos], t1, t2, option)
            flags[pos] = 1 if rep else 0
            jumps[pos] = md if rep else 0
            j += 1
        for i in range(width):
            table[row, i] = lanes[i]


# ============================================================================ host side
class _GpuMixin:
    """Device-side state and the batch pipeline shared by SO and AO."""

    caller_thread_only = True  #: kernels launch from the calling thread only (one device queue)

    LANES: int
    STATE_DTYPE: np.dtype

    def _init_state(self) -> None:
        self._backend = backend()
        self._buffers = DeviceBuffers(self._backend)
        self._set_lanes(self._backend.zeros((self.params.n_buckets, self.LANES), self.STATE_DTYPE))

    def _host_lanes(self) -> np.ndarray:
        return self._backend.to_host(self._lanes())

    def _launch(self, cols, seq, fp_mask, flags, jumps, *step_args) -> None:
        """Hash, sort and run :func:`_heads_kernel` with ``step_args`` (``ao, sz, t1, t2, option``)
        on the device (module docstring); fills the host ``flags`` (``bool[n]``) and ``jumps``
        (``int32[n]``, meaningful where flagged)."""
        p, be, buf = self.params, self._backend, self._buffers
        n = flags.shape[0]
        shift = composite_shift(n, p.n_buckets)
        d_cols = [buf.put(name, np.asarray(cols[name])) for name in _KEY_FIELDS]
        d_seq = buf.put("seq", np.asarray(seq))
        d_keys, d_items = buf.get("keys", n, np.uint64), buf.get("items", n, np.int64)
        d_flags, d_jumps = buf.get("flags", n, np.uint8), buf.get("jumps", n, np.int32)
        with be.launching():
            launch(_items_kernel, n, *d_cols, d_seq, _U64(p.seed), _U64(p.n_buckets), _U64(fp_mask), _U64(shift),
                   d_keys, d_items, grid_stride=True)
            d_keys = sort_composite(be, buf, "keys", n)
            launch(_heads_kernel, n, self._lanes(), d_keys, _U64(shift), d_items, *step_args, d_flags, d_jumps,
                   grid_stride=True)
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
        self._launch(cols, seq, 0, flags, jumps, False, 0, p.t1, p.t2, p.so_diff == "modular")


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
        self._launch(cols, seq, (1 << p.fp_bits) - 1, flags, jumps,
                     True, p.suspects, p.t1, p.t2, p.ao_new_flow_pos == "civilian_front")
