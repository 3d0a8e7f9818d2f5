"""Hidden Sketch with its state on a GPU (spec ``shared/specs/hiddensketch.md`` §12).

Same parameters, verbs, queries, serialised state and results as
:class:`telesketch.sketches.hiddensketch.HiddenSketch`: :class:`HiddenSketch` here subclasses it
and replaces only where the four state arrays live and how a batch is ingested, so a snapshot
written by either loads in the other and both give byte-identical state for the same input.

Per batch (§12, "FS gate, exact and parallel"; ``n`` items, ``R = fs_rows``):

1. the batch's key words ``(lo, hi)`` (``uint64[n]`` each, built on the host by the CPU class's
   column packing) are copied to the device; a kernel with one thread per item hashes each key
   with every FS row's seed (device twins of the project hash, :func:`hash64_u32_device` and
   ``hash64_5tuple_device``, equal to :mod:`telesketch.hashing`) and writes the flat cell index
   ``r * fs_width + h_fs[r](key) % fs_width`` (``int64[R * n]``);
2. the cell indices are stably sorted on the device (:func:`~telesketch.gpu.core.stable_argsort`:
   composite keys ``cell << shift | position`` sorted by ``cupy.sort`` or the bitonic kernel),
   which groups every cell's items in arrival order (rows occupy disjoint index ranges, so one
   sort serves all rows); no host round trip;
3. one thread per sorted position finds its rank inside its cell's segment (binary search for the
   segment start) and computes the counter value after its own increment,
   ``min(cap, base + rank + 1)`` (ordered per-cell work: a kernel); the counters themselves are
   then stored by a commutative clamped scatter-add, ``fs[c] = min(cap, fs[c] + count_c)``
   (:func:`telesketch.gpu.xp.add_clamped`: a ``uint64`` scatter-add into a reused scratch, then one
   element-wise ``minimum``; CuPy array operations on a device);
4. one thread per item takes the gate value ``min_r`` of its rows' values and, if it exceeds
   ``thresh``, writes the key's second-stage targets as flat indices (``-1`` when not gated, into
   reused buffers): its Count-Min cells and amount, the bits of its segments in its block's
   packed bitmaps, the bits of its partial keys in the Bloom-filter rows
   (:func:`_ss_targets_kernel`); they are applied as commutative array operations,
   :func:`telesketch.gpu.xp.scatter_add` into the Count-Min and :func:`telesketch.gpu.xp.set_bits`
   into the bitmaps (``cupyx.scatter_add`` / an ``atomicOr`` element-wise kernel on a device,
   ``numpy.add.at`` / ``numpy.bitwise_or.at`` under the simulator). The result equals the serial
   loop's for any order.

Saturated rows: the CPU loop skips a row whose counter is already ``cap``; here that row
contributes ``cap``, which never changes the decision (``thresh < cap``), as §12 notes.
Two-pass mode (§9): pass 1 runs steps 1-3 only; pass 2 gates each item by the FS point query
(one thread per item, FS read-only) and runs step 4.

Bytes (``weight="bytes"``, issue 17): steps 1-2 as above; step 3 takes the exclusive prefix sums
``ex`` of the items' weights in sorted order (``cupy.cumsum`` on the device, else one host round
trip of the sorted order) so a position's counter before its own add is ``min(cap, base + ex[j] -
ex[first])``, after it ``min(cap, before + w)``, a row already saturated before the item dropping
out of its gate as in the CPU loop; the store adds the items' weights, clamped
(:func:`telesketch.gpu.xp.add_clamped` with weights); step 4 inserts ``min(w, g - thresh)`` (``w``
when every row is saturated) into the ``uint64`` Count-Min; zero weights are skipped. Equal to the CPU loop state for
state (tests/test_gpu_hiddensketch.py).

Not on the device: building the key words from the batch columns, ``decode`` /
``heavy_hitters`` / ``heavy_changers`` (the state is copied to the host once and the CPU decode
runs on it), ``point_estimate`` and ``merge`` (host copies of the state, then the CPU
code). Backends as in :mod:`telesketch.gpu.core`: CuPy arrays or Numba device arrays on a
CUDA device, plain numpy arrays under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from telesketch import hashing
from telesketch.gpu.core import (
    GpuUnavailableError,
    backend,
    DeviceBuffers,
    launch,
    stable_argsort,
)
from telesketch.gpu.xp import add_clamped, array_module, scatter_add, set_bits
from telesketch.jit import device, device_twin, gpu_kernel
from telesketch.sketches import hiddensketch as _cpu

__all__ = ["HiddenSketch", "GpuUnavailableError", "device_hash_key_words", "hash64_u32_device",
           "hash_key_device"]

# Every operand of the bit arithmetic below is uint64 so that the CUDA target never mixes signed
# and unsigned integers (Numba would promote the mix to float64); index arithmetic is int64.
_U64 = np.uint64
_I64 = np.int64
_ZERO, _ONE = _U64(0), _U64(1)
_S6, _S8, _S24, _S32, _S48 = _U64(6), _U64(8), _U64(24), _U64(32), _U64(48)
_LOW6, _LOW8, _LOW16 = _U64(63), _U64(0xFF), _U64(0xFFFF)
_LOW32 = _U64(0xFFFFFFFF)
_B1, _B2 = _U64(0xFF00), _U64(0xFF)
_CM_ONE = np.uint32(1)
_FS_INFINITE = _cpu.FS_INFINITE  # "every row saturated": larger than any threshold


# ============================================================================ device hashing
# The device functions of the CPU twins (telesketch.jit.device_twin): the same Python source.
#: ``telesketch.hashing.hash64_u32`` on the device: a 4-byte key given as its big-endian value.
hash64_u32_device = device_twin(hashing.hash64_u32)
#: The CPU ``_hash_key`` on the device: hash of the ``nbytes``-byte (4 or 13) little-endian buffer
#: of the integer ``(hi << 64) | lo`` (``uint64`` words), through the project hash.
hash_key_device = device_twin(_cpu._hash_key)
#: The CPU ``_partial``: bits ``[start, end)`` of the 128-bit key ``(hi, lo)`` moved to bit 0.
_partial = device_twin(_cpu._partial)


@gpu_kernel
def _hash_words_kernel(lo, hi, nbytes, seed, out):
    """``out[i] = hash_key_device(lo[i], hi[i], nbytes, seed)``, one thread per key."""
    i = cuda.grid(1)
    if i < lo.shape[0]:
        out[i] = hash_key_device(lo[i], hi[i], nbytes, seed)


def device_hash_key_words(lo: np.ndarray, hi: np.ndarray, nbytes: int, seed: int) -> np.ndarray:
    """``uint64[n]`` device hashes of keys given as internal words (host arrays in and out); equal
    to ``telesketch.hashing.hash_keys`` of the keys' ``nbytes``-byte little-endian buffers."""
    be = backend()
    lo = np.ascontiguousarray(lo, np.uint64)
    out = be.zeros(lo.shape[0], np.uint64)
    if lo.shape[0]:
        with be.launching():
            launch(_hash_words_kernel, lo.shape[0],
                be.to_device(lo), be.to_device(np.ascontiguousarray(hi, np.uint64)), _I64(nbytes),
                _U64(seed), out)
    return be.to_host(out)


# ============================================================================ kernels: FS gate
@gpu_kernel
def _fs_cells_kernel(lo, hi, nbytes, fs_seeds, width, cells):
    """Thread ``i`` (one per item): ``cells[r * n + i] = r * width + h_fs[r](key_i) % width``
    (``int64``) for every FS row ``r`` (``width`` is ``int64``)."""
    i = cuda.grid(1)
    n = lo.shape[0]
    if i < n:
        w = _U64(width)
        for r in range(fs_seeds.shape[0]):
            c = hash_key_device(lo[i], hi[i], nbytes, fs_seeds[r]) % w
            cells[r * n + i] = r * width + _I64(c)


@gpu_kernel
def _fs_values_kernel(cells, order, fs, width, cap, values):
    """Thread ``j`` (one per sorted position): the counter value right after item ``order[j]``'s own
    increment, ``min(cap, base + rank + 1)`` with ``base`` the cell's value before the batch and
    ``rank`` the number of earlier batch items in the same cell (``j`` minus its segment start,
    found by binary search: ``cells[order]`` is non-decreasing). Writes ``values[order[j]]``."""
    j = cuda.grid(1)
    if j >= order.shape[0]:
        return
    pos = order[j]
    cell = cells[pos]
    first, last = 0, j  # first sorted position holding `cell`
    while first < last:
        mid = (first + last) // 2
        if cells[order[mid]] < cell:
            first = mid + 1
        else:
            last = mid
    row = cell // width
    base = _I64(fs[row, cell - row * width])
    values[pos] = min(cap, base + (j - first) + 1)


@device
def _segment_start(cells, order, j):
    """The first sorted position holding ``cells[order[j]]`` (binary search: ``cells[order]`` is
    non-decreasing)."""
    cell = cells[order[j]]
    first, last = 0, j
    while first < last:
        mid = (first + last) // 2
        if cells[order[mid]] < cell:
            first = mid + 1
        else:
            last = mid
    return first


@gpu_kernel
def _fs_values_weighted_kernel(cells, order, ex, fs, width, cap, values):
    """Byte weighting, thread ``j``: the gate contribution of item ``order[j]``'s row: its counter
    after the item's own add, ``min(cap, before + w)`` with ``before = min(cap, base + ex[j] -
    ex[first])`` (``ex``: exclusive prefix sums of the sorted weights, ``int64[m + 1]``), or
    ``FS_INFINITE`` when the row was saturated before the item (the CPU loop skips such a row)."""
    j = cuda.grid(1)
    if j >= order.shape[0]:
        return
    pos = order[j]
    cell = cells[pos]
    first = _segment_start(cells, order, j)
    row = cell // width
    base = _I64(fs[row, cell - row * width])
    before = min(cap, base + ex[j] - ex[first])
    if before >= cap:
        values[pos] = _FS_INFINITE
    else:
        values[pos] = min(cap, before + ex[j + 1] - ex[j])


@gpu_kernel
def _fs_query_kernel(lo, hi, nbytes, fs, fs_seeds, width, cap, out):
    """Thread ``i``: the FS point query of key ``i`` (CPU ``_fs_query_one``): minimum over the rows
    whose counter is below ``cap``, ``FS_INFINITE`` if every row is saturated."""
    i = cuda.grid(1)
    if i < lo.shape[0]:
        w = _U64(width)
        est = _FS_INFINITE
        for r in range(fs_seeds.shape[0]):
            v = _I64(fs[r, hash_key_device(lo[i], hi[i], nbytes, fs_seeds[r]) % w])
            if v < cap and v < est:
                est = v
        out[i] = est


# ============================================================================ kernels: SS targets
@gpu_kernel
def _ss_targets_kernel(lo, hi, values, weights, weighted, n_rows, thresh, nbytes, n_blocks, blk_seed, seg_layout,
                       bf_layout, bf_seeds, cm_seeds, w_cm, seg_words, bf_words, cm_idx, cm_val, seg_pos, bf_pos):
    """Thread ``i`` (one per item): the second-stage targets of ``ss_insert(key, amount)`` (spec §6)
    as flat indices for the commutative array operations of :mod:`telesketch.gpu.xp`, ``-1`` when
    the item does not pass the gate (entry ``k * n + i`` for target ``k``):

    * ``cm_idx`` / ``cm_val`` (``3 n``): Count-Min cell ``r * w_cm + h_r(key) % w_cm`` and the
      amount, 1 per packet, or ``min(w, g - thresh)`` (``w`` when every row was saturated) for a
      non-zero byte weight ``w`` (``weighted``: 1; packets pass a one-value dummy ``weights``);
    * ``seg_pos`` (``S n``): bit ``(b * seg_words + word) * 64 + bit`` of the key's segments in
      its block ``b``'s packed bitmaps;
    * ``bf_pos`` (``sum(bf_layout[:, 3]) n``): bit of each Bloom-filter row a partial key sets.

    The gate value ``g`` is ``min_r values[r * n + i]`` over ``n_rows`` rows, inserted if ``> thresh``."""
    i = cuda.grid(1)
    n = lo.shape[0]
    if i >= n:
        return
    g = values[i]
    for r in range(1, n_rows):
        g = min(g, values[r * n + i])
    amount = _U64(1)
    gated = g > thresh
    if weighted:
        w = weights[i]
        if w <= 0:
            gated = False
        elif g == _FS_INFINITE:
            amount = _U64(w)
        else:
            amount = _U64(min(w, g - thresh))
    if not gated:  # no targets: mark them skipped, hash nothing
        for r in range(cm_seeds.shape[0]):
            cm_idx[r * n + i] = -1
        for s in range(seg_layout.shape[0]):
            seg_pos[s * n + i] = -1
        for k in range(bf_pos.shape[0] // n):
            bf_pos[k * n + i] = -1
        return
    klo, khi = lo[i], hi[i]
    for r in range(cm_seeds.shape[0]):
        cm_idx[r * n + i] = r * w_cm + _I64(hash_key_device(klo, khi, nbytes, cm_seeds[r]) % _U64(w_cm))
        cm_val[r * n + i] = amount
    b = _I64(hash_key_device(klo, khi, nbytes, blk_seed) % _U64(n_blocks))
    for s in range(seg_layout.shape[0]):
        a, _ = _partial(klo, khi, seg_layout[s, 0], seg_layout[s, 0] + seg_layout[s, 1])
        seg_pos[s * n + i] = (b * seg_words + seg_layout[s, 2] + _I64(a >> _S6)) * 64 + _I64(a & _LOW6)
    k = 0
    for j in range(bf_layout.shape[0]):
        plo, phi_ = _partial(klo, khi, bf_layout[j, 0], bf_layout[j, 1])
        row0, bits = bf_layout[j, 2], _U64(bf_layout[j, 4])
        for r in range(bf_layout[j, 3]):
            h = hash_key_device(plo, phi_, nbytes, bf_seeds[row0 + r]) % bits
            bf_pos[k * n + i] = ((row0 + r) * bf_words + _I64(h >> _S6)) * 64 + _I64(h & _LOW6)
            k += 1


# ============================================================================ the sketch
def _device_state(name: str, doc: str) -> property:
    """A state attribute kept on the device (``_d_<name>``): reading it gives a HOST copy (so the
    CPU class's queries, merge and serialisation work unchanged on every backend), assigning it
    uploads the assigned array. In-place edits of a read copy do not reach the device."""
    attr = "_d_" + name

    def get(self) -> np.ndarray:
        return self._backend.to_host(getattr(self, attr))

    def put(self, value) -> None:
        setattr(self, attr, self._backend.to_device(np.asarray(value)))

    return property(get, put, doc=doc)


class HiddenSketch(_cpu.HiddenSketch):
    """GPU Hidden Sketch: ``fs``, ``seg``, ``bf`` and ``cm`` live on the device.

    Same constructor (keyword parameters or ``params=``), verbs (``update``, ``update_keys``,
    ``merge`` in two-pass mode, ``begin_second_pass``, ``to_bytes`` / ``from_bytes``, ``copy``),
    queries (``decode``, ``heavy_hitters``, ``heavy_changers``, ``point_estimate``, ``estimate``)
    and serialised state as :class:`telesketch.sketches.hiddensketch.HiddenSketch`. Reading
    ``fs`` / ``seg`` / ``bf`` / ``cm`` returns host copies; the device arrays are ``device_state``.
    ``update`` runs on the device (see the module docstring); ``decode`` copies the state to the
    host once and runs the CPU decode; ``point_estimate`` and ``merge`` use host copies too.
    Raises :class:`GpuUnavailableError` when neither a CUDA device nor the simulator is available.
    """

    caller_thread_only = True  #: kernels launch from the calling thread only (one device queue)

    fs = _device_state("fs", "``uint8|uint16[fs_rows, fs_width]`` FS counters (``uint32`` byte-weighted; host copy).")
    seg = _device_state("seg", "``uint64[blocks, words]`` packed segment bitmaps (host copy).")
    bf = _device_state("bf", "``uint64[total_bf_rows, words]`` packed Bloom-filter rows (host copy).")
    cm = _device_state("cm", "``uint32[3, cm_width]`` Count-Min counters (``uint64`` byte-weighted; host copy).")

    def __init__(self, params: _cpu.HiddenSketchParams | None = None, **kwargs):
        self._backend = backend()
        self._buffers = DeviceBuffers(self._backend)  # a batch's key words, cells, sort keys: reused
        super().__init__(params, **kwargs)
        lay, be = self._layout, self._backend
        self._d_layout = {name: be.to_device(getattr(lay, name))
                          for name in ("fs_seeds", "cm_seeds", "bf_seeds", "seg_layout", "bf_layout")}

    @property
    def device_backend(self) -> str:
        """``cupy``, ``numba`` or ``simulator``: where this sketch's state lives."""
        return self._backend.name

    @property
    def device_state(self) -> dict:
        """The device arrays themselves: ``{"fs", "seg", "bf", "cm"}`` (no copy)."""
        return {"fs": self._d_fs, "seg": self._d_seg, "bf": self._d_bf, "cm": self._d_cm}

    # ------------------------------------------------------------------ update on the device
    def _ingest(self, lo: np.ndarray, hi: np.ndarray, weights: np.ndarray | None = None) -> None:
        n = lo.shape[0]
        if n == 0:
            return
        self._decoded = None
        be = self._backend
        d_lo = self._buffers.put("lo", np.asarray(lo, np.uint64))
        d_hi = self._buffers.put("hi", np.asarray(hi, np.uint64))
        if weights is not None:  # byte weighting (one-pass only); packets keep the kernels below
            with be.launching():
                self._ingest_weighted(d_lo, d_hi, np.ascontiguousarray(weights, np.int64))
            self.n_items += int(n)
            self.total_weight += int(weights.sum())
            return
        with be.launching():
            if self.phase == "second":  # two-pass, pass 2: gate by the (merged) FS, FS unchanged
                estimates = self._fs_query(d_lo, d_hi, n)
                self._insert(d_lo, d_hi, estimates, 1)
                return
            values = self._fs_update(d_lo, d_hi, n)
            self.n_items += int(n)
            if self.phase == "one_pass":
                self._insert(d_lo, d_hi, values, self.params.fs_rows)

    def _fs_update(self, d_lo, d_hi, n: int):
        """Steps 1-3 of the module docstring: update the FS counters of ``n`` items; returns the
        device ``int64[fs_rows * n]`` counter values right after each item's increment (row-major)."""
        p, be, buf = self.params, self._backend, self._buffers
        m = p.fs_rows * n
        d_cells = buf.get("cells", m, np.int64)
        launch(_fs_cells_kernel, n, d_lo, d_hi, _I64(p.key_bytes), self._d_layout["fs_seeds"],
                                                        _I64(p.fs_width), d_cells)
        d_order = stable_argsort(be, buf, d_cells, p.fs_rows * p.fs_width)  # on the device
        d_values = buf.get("values", m, np.int64)
        launch(_fs_values_kernel, m, d_cells, d_order, self._d_fs, _I64(p.fs_width),
                                                         _I64(p.fs_cap), d_values)
        add_clamped(be, buf, self._d_fs.reshape(-1), d_cells, p.fs_cap)  # cells are flat fs indices
        return d_values

    def _ingest_weighted(self, d_lo, d_hi, weights: np.ndarray) -> None:
        """Byte weighting: steps 1-4 of the module docstring with the weights' prefix sums."""
        p, d, be, buf = self.params, self._d_layout, self._backend, self._buffers
        n = weights.shape[0]
        m = p.fs_rows * n
        d_w = buf.put("weights", weights)
        d_cells = buf.get("cells", m, np.int64)
        launch(_fs_cells_kernel, n, d_lo, d_hi, _I64(p.key_bytes), d["fs_seeds"], _I64(p.fs_width), d_cells)
        d_order = stable_argsort(be, buf, d_cells, p.fs_rows * p.fs_width)
        d_ex = self._sorted_prefix_sums(d_order, d_w, weights, n)
        d_values = buf.get("values", m, np.int64)
        launch(_fs_values_weighted_kernel, m, d_cells, d_order, d_ex, self._d_fs, _I64(p.fs_width),
               _I64(p.fs_cap), d_values)
        if be.name == "numba":  # no CuPy: the cell weights (item i's weight in every row) tiled on the host
            d_cell_w = buf.put("cell_weights", np.tile(weights.astype(np.uint64), p.fs_rows))
        else:
            d_cell_w = array_module(be).tile(d_w, p.fs_rows).astype(np.uint64)
        add_clamped(be, buf, self._d_fs.reshape(-1), d_cells, p.fs_cap, weights=d_cell_w)
        self._insert(d_lo, d_hi, d_values, p.fs_rows, d_w)

    def _sorted_prefix_sums(self, d_order, d_w, weights: np.ndarray, n: int):
        """``int64[m + 1]`` exclusive prefix sums of the weights in sorted order (position ``j``
        holds item ``order[j] % n``): on the device with CuPy, else from a host copy of the order."""
        be = self._backend
        if be.name == "cupy":
            import cupy

            ex = cupy.zeros(d_order.shape[0] + 1, cupy.int64)
            cupy.cumsum(d_w[d_order % n], out=ex[1:])
            return ex
        order = be.to_host(d_order)
        ex = np.zeros(order.shape[0] + 1, np.int64)
        np.cumsum(weights[order % n], out=ex[1:])
        return be.to_device(ex)

    def _fs_query(self, d_lo, d_hi, n: int):
        """Device ``int64[n]`` FS point queries (read-only), the two-pass second-pass gate."""
        p = self.params
        d_out = self._buffers.get("query", n, np.int64)
        launch(_fs_query_kernel, n, d_lo, d_hi, _I64(p.key_bytes), self._d_fs,
                                                        self._d_layout["fs_seeds"], _I64(p.fs_width),
                                                        _I64(p.fs_cap), d_out)
        return d_out

    def _insert(self, d_lo, d_hi, d_values, n_rows: int, d_weights=None) -> None:
        """Step 4: gate every item by ``min`` of its ``n_rows`` values; the gated keys' Count-Min
        adds, segment bits and Bloom-filter bits as flat targets (:func:`_ss_targets_kernel`, in
        reused buffers), then applied as commutative array operations (:mod:`telesketch.gpu.xp`:
        ``scatter_add`` into the CM, ``set_bits`` into the packed bitmaps). ``d_weights``: the
        batch's byte weights (``int64``), ``None`` counting packets."""
        p, lay, d, be, buf = self.params, self._layout, self._d_layout, self._backend, self._buffers
        n = d_lo.shape[0]
        cm, seg, bf = self._d_cm, self._d_seg, self._d_bf
        n_bf = int(lay.bf_layout[:, 3].sum())
        cm_idx = buf.get("cm_idx", cm.shape[0] * n, np.int64)
        cm_val = buf.get("cm_val", cm.shape[0] * n, cm.dtype)
        seg_pos = buf.get("seg_pos", lay.seg_layout.shape[0] * n, np.int64)
        bf_pos = buf.get("bf_pos", n_bf * n, np.int64)
        weighted = d_weights is not None
        if not weighted:
            d_weights = buf.get("no_weights", 1, np.int64)
        launch(_ss_targets_kernel, n, d_lo, d_hi, d_values, d_weights, weighted, _I64(n_rows), _I64(p.thresh),
               _I64(p.key_bytes), _I64(p.blocks), _U64(lay.blk_seed), d["seg_layout"], d["bf_layout"],
               d["bf_seeds"], d["cm_seeds"], _I64(p.cm_width), _I64(seg.shape[1]), _I64(bf.shape[1]),
               cm_idx, cm_val, seg_pos, bf_pos)
        scatter_add(be, cm.reshape(-1), cm_idx, cm_val)
        set_bits(be, seg.reshape(-1), seg_pos)
        set_bits(be, bf.reshape(-1), bf_pos)

    # ------------------------------------------------------------------ host-side parts
    def to_cpu(self) -> _cpu.HiddenSketch:
        """A CPU :class:`~telesketch.sketches.hiddensketch.HiddenSketch` with a copy of this state."""
        return _cpu.HiddenSketch.from_bytes(self.to_bytes())

    def _decode(self, threads: int | None, partial: bool = True) -> _cpu.HHResult:
        """The CPU decode (§7, with its partial answer) on one host copy of the state (not on the device)."""
        return self.to_cpu()._decode(threads, partial)

    def unpacked_state(self) -> dict:
        return self.to_cpu().unpacked_state()

    def copy(self) -> "HiddenSketch":
        return type(self).from_bytes(self.to_bytes())
