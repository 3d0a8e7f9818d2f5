"""ResidualSketch and CocoSketch with their blocks on a GPU (spec ``shared/specs/residualsketch.md`` §5).

Same parameters, verbs, queries, serialised state and results as
:mod:`telesketch.sketches.residualsketch` / :mod:`telesketch.sketches.cocosketch` (these classes
subclass the CPU ones and replace only where the blocks live and how a batch is run): a snapshot
written by either moves to the other.

**Two update modes** (``ResidualSketch(gpu_update=...)``; config key ``gpu_update``).

``exact`` (default). The update is order-dependent inside a block: the two rows of a block
interact, so per-bucket parallelism does not reproduce the serial result. But the blocks only
depend on one another through F: a Residual Block's insert of packet ``i`` needs nothing but F's
post-update count of packet ``i`` (bypass when ``c > T``, decrement when ``c == T``), and the
replacement coin of block ``j`` at packet ``n`` is a hash of ``(seed, n, j)``. So a batch is two
kernels, each keeping the spec's packet order where it matters:

1. ``_f_kernel``, one thread: F's ``stream_kernel`` loop over the batch, writing each packet's
   action for the blocks (``uint8``: 0 bypass, 1 decrement, 2 plain insert);
2. ``_blocks_kernel``, one thread per Residual Block (``|K|`` threads, in parallel): the block's
   loop over the batch in packet order, following the actions.

The result equals the serial loop's bit for bit (``tests/test_gpu_residualsketch.py``). Its
parallelism is ``|K|`` (4 in byte mode, up to 32 in bit mode), and F stays one serial thread.

``batched`` (opt-in, approximate; spec §5): :mod:`telesketch.sketches.residual_batched`, one whole-batch
update per ``batched_chunk`` packets (16 Ki by default): distinct-key reduction (``xp.unique``), ``_probe_kernel`` (one thread per
distinct key, then per distinct prefix of each block), weighted inserts by sort + segment sums and a
``cupyx.scatter_add``, residual weights and decrements as array operations. Divergence from exact
mode is documented there; its F1 against exact mode is measured in BENCHMARKS.md ("issue 22b") and
tested (``tests/test_residual_batched.py``; under the simulator the twin equals the CPU emulation bit
for bit). Packets only, IPv4 tree only (the IPv6 tree stays exact); needs CuPy on a device.

The lookup2 row hash (``bob_hash``), Lemire's ``fastmod`` and the replacement
coins ``rand32`` are the CPU functions themselves, compiled as device functions
(:func:`telesketch.jit.device_twin`).

State on the device between batches: ``ids`` (``uint32[m, 2, w]``), ``counts`` (``int32[m, 2, w]``)
and ``occ`` (``uint8[m, 2, w]``), ``m = 1 + |K|`` blocks (block 0 = F); separate arrays rather than
the CPU's ``(id, count)`` record array, which CuPy cannot hold. Reading ``cells`` / ``ids`` /
``counts`` / ``occ`` fetches the blocks to the host (the CPU record layout); that host copy then is
the state until the next batch uploads it again, so a query between two batches costs one download
and one upload. **Queries run on the host**: ``layer_estimates``, ``estimate``, ``hhh``,
``hhh_entries``, ``full_keys`` and ``to_bytes`` are the CPU classes' code over the fetched arrays.

**Bytes** (``weight="bytes"``): both kernels take the batch's weights (``int64``; a one-value dummy
and ``unit=True`` when counting packets) and ``_f_kernel`` also writes F's answer ``c`` per packet
(``fcounts``), the Residual Blocks' decrement amount; zero-weight packets are skipped (``_SKIP``).
Counts are int64 on the device then, as on the CPU.

**IPv6 tree.** IPv6 rows of a batch run through ``_f6_kernel`` / ``_blocks6_kernel``, the same two
kernels over 128-bit keys (``hash6_device``, coins ``rand32(seed, n6, 32 + j)``), equal to the CPU's
``stream_kernel6``; their insert is the CPU ``coco_insert6`` itself, compiled as a device function
(:func:`telesketch.jit.device_twin`). Its arrays (``hi6``/``lo6``/``counts6``/``occ6``) stay on the host between
batches and are uploaded and fetched per batch that holds IPv6 rows (simple; a transfer per batch).

Backends (:func:`telesketch.gpu.core.backend`): CuPy arrays on a CUDA device when CuPy is
installed, Numba device arrays otherwise, numpy arrays under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before ``numba.cuda`` is first imported); neither device nor
simulator raises :class:`GpuUnavailableError` at construction.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from telesketch.gpu.core import DeviceBuffers, GpuUnavailableError, backend, launch
from telesketch.gpu.xp import array_module
from telesketch.jit import device, device_twin, gpu_kernel
from telesketch.sketches import cocosketch as _coco
from telesketch.sketches import residual_batched as _batched
from telesketch.sketches.core import SketchError
from telesketch.sketches import residualsketch as _cpu

__all__ = ["ResidualSketch", "CocoSketch", "GPU_UPDATES", "GpuUnavailableError", "bob_hash_device", "rand32_device",
           "device_bob_hash", "hash6_device"]

GPU_UPDATES = _batched.GPU_UPDATES

_U64 = np.uint64
_M32 = _coco._M32
_ROW0, _ROW1 = _coco._ROW0, _coco._ROW1


# ============================================================================ device hash and coins
# The device functions of the CPU twins (telesketch.jit.device_twin): the same Python source, every
# operand uint64 so it wraps mod 2^64 (a signed/unsigned mix would promote to float64 on the device).
#: The CPU ``bob_hash``: lookup2 of the 4 little-endian bytes of ``x`` with ``c = initval + 4``
#: (both uint64); a uint32 value in a uint64.
bob_hash_device = device_twin(_coco.bob_hash)
#: The CPU ``rand32``: the replacement coin of block ``j`` at packet ``n`` (uint64 args).
rand32_device = device_twin(_coco.rand32)
#: The CPU ``fastmod``: ``a mod d`` for 32-bit ``a``, ``d`` (``magic = fastmod_magic(d)``), uint64.
_fastmod = device_twin(_coco.fastmod)


# ============================================================================ device update
@device(inline=True)
def _bump(counts, blk, row, pos, wt, dec, decrement):
    """CPU ``_bump``: ``+wt``, or with ``decrement`` ``max(0, count + wt - dec)`` (int64); returns it."""
    c = np.int64(counts[blk, row, pos]) + wt
    if decrement:
        c = max(np.int64(0), c - dec)
    counts[blk, row, pos] = c
    return c


@device(inline=True)
def _takes_over(coin, c, wt):
    """CPU ``takes_over`` in uint64: ``coin mod c < wt`` while ``c`` fits 32 bits, else the float64
    comparison ``coin * c < wt * 2^32`` (``coin`` a u32 in a uint64, ``c``/``wt`` int64)."""
    if c <= np.int64(0xFFFFFFFF):
        return coin % _U64(c) < _U64(wt)
    return np.float64(coin) * np.float64(c) < np.float64(wt) * 4294967296.0


@device
def _coco_insert(ids, counts, occ, blk, x, w, wmagic, seed_mix, n, wt, dec, decrement):
    """Device port of the CPU ``coco_insert`` into block ``blk`` (int64) of key ``x`` (uint64 holding a
    u32) at packet ``n`` (uint64) with weight ``wt`` (int64): the post-update count (int64) if ``x``
    was held, else 0."""
    p0 = np.int64(_fastmod(bob_hash_device(x, _ROW0), wmagic, w))
    if occ[blk, 0, p0] != 0 and _U64(ids[blk, 0, p0]) == x:
        return _bump(counts, blk, 0, p0, wt, dec, decrement)
    p1 = np.int64(_fastmod(bob_hash_device(x, _ROW1), wmagic, w))
    if occ[blk, 1, p1] != 0 and _U64(ids[blk, 1, p1]) == x:
        return _bump(counts, blk, 1, p1, wt, dec, decrement)
    row, pos = 0, p0
    if counts[blk, 1, p1] < counts[blk, 0, p0]:  # strict: ties go to row 0
        row, pos = 1, p1
    c = np.int64(counts[blk, row, pos]) + wt  # never reset on takeover
    counts[blk, row, pos] = c
    if _takes_over(rand32_device(seed_mix, n, _U64(blk)) & _M32, c, wt):
        ids[blk, row, pos] = x
        occ[blk, row, pos] = 1
    return np.int64(0)


#: Per-packet actions of ``_f_kernel`` for the Residual Blocks (``_SKIP``: a zero-weight packet).
_BYPASS, _DECREMENT, _INSERT, _SKIP = 0, 1, 2, 3


@device(inline=True)
def _weight(weights, unit, i):
    """Packet ``i``'s weight (int64): 1 when ``unit`` (packet counting), else ``weights[i]``."""
    if unit:
        return np.int64(1)
    return np.int64(weights[i])


@device(inline=True)
def _action(c, wt, T, connection):
    """CPU ``connection_rule`` as an action: bypass if already heavy before the packet (``c - wt >= T``),
    decrement if the packet carried F's count ``c`` to ``T`` or past, else plain insert."""
    if not connection or c == 0:
        return _INSERT
    if c - wt >= T:
        return _BYPASS
    if c >= T:
        return _DECREMENT
    return _INSERT


@gpu_kernel
def _f_kernel(keys, weights, unit, ids, counts, occ, T, seed_mix, n0, connection, w, wmagic, actions, fcounts):
    """Block F's part of the CPU ``stream_kernel`` loop (spec §3) over ``keys`` (``uint32[n]``) for
    packets ``n0 .. n0+n-1``, run by thread 0 only (order-dependent); ``actions[i]`` (``uint8``)
    says what the Residual Blocks do with packet ``i`` (:func:`_action`; ``_SKIP`` for weight 0)
    and ``fcounts[i]`` (int64) is F's answer ``c``, the decrement amount.

    ``weights`` int64 (ignored when ``unit``: every packet weighs 1); ``T`` int64; ``seed_mix``,
    ``n0``, ``w``, ``wmagic`` uint64; ``connection``, ``unit`` bool.
    """
    if cuda.grid(1) != 0:
        return
    for i in range(keys.shape[0]):
        wt = _weight(weights, unit, i)
        if wt <= 0:
            actions[i] = _SKIP
            continue
        c = _coco_insert(ids, counts, occ, 0, _U64(keys[i]), w, wmagic, seed_mix, n0 + _U64(i), wt, np.int64(0),
                         False)
        actions[i] = _action(c, wt, T, connection)
        fcounts[i] = c


@gpu_kernel
def _blocks_kernel(keys, weights, unit, ids, counts, occ, masks, n_masks, seed_mix, n0, widths, wmagics, actions,
                   fcounts):
    """Thread ``j`` runs Residual Block ``j + 1`` (prefix mask ``masks[j]``, ``uint32``; ``widths[j + 1]``
    buckets per row, ``wmagics[j + 1]`` its fastmod magic, ``uint64`` arrays) over the batch in packet
    order, following F's ``actions``; blocks share no state, so they run at once."""
    j = cuda.grid(1)
    if j >= n_masks:
        return
    mask = _U64(masks[j])
    w = _U64(widths[j + 1])
    wmagic = _U64(wmagics[j + 1])
    for i in range(keys.shape[0]):
        action = actions[i]
        if action == _INSERT or action == _DECREMENT:
            _coco_insert(ids, counts, occ, j + 1, _U64(keys[i]) & mask, w, wmagic, seed_mix, n0 + _U64(i),
                         _weight(weights, unit, i), fcounts[i], action == _DECREMENT)


# ============================================================================ device update, IPv6 tree
_ROW6_0, _ROW6_1 = _coco._ROW6_0, _coco._ROW6_1


#: The CPU ``hash6``: row hash of a 128-bit key ``(hi, lo)`` (uint64 args), a uint32 in a uint64.
hash6_device = device_twin(_coco.hash6)


#: The CPU ``coco_insert6`` itself as a device function (a twin): key ``(xh, xl)`` (uint64) into IPv6 block
#: ``blk``; the post-update count (int64) if the key was held, else 0.
_coco_insert6 = device_twin(_coco.coco_insert6)


@gpu_kernel
def _f6_kernel(key_hi, key_lo, weights, unit, hi6, lo6, counts6, occ6, T, seed_mix, n0, connection, w, wmagic,
               actions, fcounts):
    """``_f_kernel`` for the IPv6 tree's F over 128-bit keys ``(key_hi, key_lo)`` (thread 0 only)."""
    if cuda.grid(1) != 0:
        return
    for i in range(key_hi.shape[0]):
        wt = _weight(weights, unit, i)
        if wt <= 0:
            actions[i] = _SKIP
            continue
        c = _coco_insert6(hi6, lo6, counts6, occ6, 0, key_hi[i], key_lo[i], w, wmagic, seed_mix, n0 + _U64(i), wt,
                          np.int64(0), False)
        actions[i] = _action(c, wt, T, connection)
        fcounts[i] = c


@gpu_kernel
def _blocks6_kernel(key_hi, key_lo, weights, unit, hi6, lo6, counts6, occ6, mask_hi, mask_lo, n_masks, seed_mix,
                    n0, w, wmagic, actions, fcounts):
    """``_blocks_kernel`` for the IPv6 Residual Blocks: thread ``j`` runs block ``j + 1`` (mask
    ``(mask_hi[j], mask_lo[j])``) over the batch in packet order, following F's ``actions``."""
    j = cuda.grid(1)
    if j >= n_masks:
        return
    mh, ml = mask_hi[j], mask_lo[j]
    for i in range(key_hi.shape[0]):
        action = actions[i]
        if action == _INSERT or action == _DECREMENT:
            _coco_insert6(hi6, lo6, counts6, occ6, j + 1, key_hi[i] & mh, key_lo[i] & ml, w, wmagic, seed_mix,
                          n0 + _U64(i), _weight(weights, unit, i), fcounts[i], action == _DECREMENT)


# ============================================================================ batched mode (spec §5)
#: :func:`telesketch.sketches.residual_batched.probe_key` as a device function (the same Python source).
_probe_key_device = device_twin(_batched.probe_key)


@gpu_kernel
def _probe_kernel(keys, nidx, ids, counts, occ, blk, w, wmagic, seed_mix, seed_mix2, coin_j, code, coin, coin2):
    """Batched mode's per-key probe: thread ``i`` (grid-stride) runs ``probe_key`` for distinct key ``i``
    of the batch (``uint32``) against block ``blk``'s batch-start state, in parallel over the keys."""
    for i in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        _probe_key_device(i, keys, nidx, ids, counts, occ, blk, w, wmagic, seed_mix, seed_mix2, coin_j, code, coin,
                          coin2)


class _DeviceOps:
    """The array operations of :func:`telesketch.sketches.residual_batched.batched_update` on the device:
    ``xp`` is CuPy (numpy under the simulator), the probe is :func:`_probe_kernel`, the scatter-add is
    ``cupyx.scatter_add`` (``np.add.at`` under the simulator). Sort, unique, segment sums (``bincount``)
    and the winners' writes are ``xp`` array operations on the device: no host round trip for data,
    only the sizes ``xp.unique`` / ``flatnonzero`` return."""

    def __init__(self, be):
        self.be = be
        self.xp = array_module(be)

    def probe(self, keys, nidx, state, blk: int, w, wmagic, seed_mix, seed_mix2, coin_j: int):
        xp, n = self.xp, keys.shape[0]
        code, coin, coin2 = xp.empty(n, np.int64), xp.empty(n, np.uint64), xp.empty(n, np.uint64)
        with self.be.launching():
            launch(_probe_kernel, n, keys, nidx, *state, np.int64(blk), _U64(w), _U64(wmagic), _U64(seed_mix),
                   _U64(seed_mix2), _U64(coin_j), code, coin, coin2, grid_stride=True)
        return code, coin, coin2

    def scatter_add(self, target, idx, values) -> None:
        if self.be.name == "cupy":
            import cupyx

            cupyx.scatter_add(target, idx, values)
        else:
            np.add.at(target, idx, values)


@gpu_kernel
def _bob_hash_kernel(keys, c, out):
    """``out[i] = bob_hash_device(keys[i], c)`` (uint64), one thread per key (exposed for the tests)."""
    i = cuda.grid(1)
    if i < keys.shape[0]:
        out[i] = bob_hash_device(_U64(keys[i]), c)


def device_bob_hash(keys: np.ndarray, row: int) -> np.ndarray:
    """``uint64[n]`` lookup2 row hashes (row 0 or 1) of ``uint32`` keys, computed by the device kernel
    (host result); equal to the CPU ``bob_hash(x, ROW_INITS[row] + 4)``."""
    be = backend()
    keys = np.ascontiguousarray(keys, dtype=np.uint32)
    out = be.zeros(keys.shape[0], np.uint64)
    if keys.shape[0]:
        with be.launching():
            launch(_bob_hash_kernel, keys.shape[0], be.to_device(keys), (_ROW0, _ROW1)[row], out)
    return be.to_host(out)


# ============================================================================ state placement
class _DeviceBlock:
    """``cells`` / ``occ``: reading gives the host copy (the whole state is fetched from the device if
    the device holds it), which is then the state until the next batch; assigning replaces it."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        obj._fetch()
        return obj._host[self.name]

    def __set__(self, obj, value):
        obj._fetch()
        obj._host[self.name] = value


class _DeviceBlocks:
    """Device-resident blocks and the single-thread stream launch shared by both sketches."""

    caller_thread_only = True  #: kernels launch from the calling thread only (one device queue)

    cells = _DeviceBlock()
    occ = _DeviceBlock()

    def __init__(self, *args, **kwargs):
        self._backend = backend()  # before anything else: GpuUnavailableError without device or simulator
        self._buffers = DeviceBuffers(self._backend)  # the batch's keys and actions, reused
        self._host: dict[str, np.ndarray] = {}
        self._dev: tuple | None = None  # (ids, counts, occ) when the device holds the state
        super().__init__(*args, **kwargs)

    @property
    def device_backend(self) -> str:
        """``cupy``, ``numba`` or ``simulator``: where the blocks live."""
        return self._backend.name

    def _fetch(self) -> None:
        """Make the host copy the state (download it if the device holds it)."""
        if self._dev is None:
            return
        be = self._backend
        ids, counts, occ = (be.to_host(arr) for arr in self._dev)
        cells = np.empty(ids.shape, _coco.BUCKET_DTYPE_BYTES if self.params.weight == "bytes" else _coco.BUCKET_DTYPE)
        cells["id"], cells["count"] = ids, counts
        self._host = {"cells": cells, "occ": occ}
        self._dev = None

    def _device_state(self) -> tuple:
        """The device ``(ids, counts, occ)`` (uploaded from the host copy if that is the state); the
        kernel about to run writes them, so the host copy is dropped."""
        if self._dev is None:
            be, cells = self._backend, self._host["cells"]
            self._dev = (be.to_device(cells["id"]), be.to_device(cells["count"]), be.to_device(self._host["occ"]))
            self._host = {}
        return self._dev

    def _weights_on_device(self, name: str, weights: np.ndarray) -> tuple:
        """``(device weights, unit)``: an empty ``weights`` (packet counting) travels as one dummy value."""
        unit = weights.shape[0] == 0
        return self._buffers.put(name, np.ones(1, np.int64) if unit else weights), bool(unit)

    def _stream(self, keys: np.ndarray, masks: np.ndarray, T: int, connection: bool, weights: np.ndarray) -> None:
        """Run ``keys`` (checked ``uint32[n]``) with ``weights`` (checked ``int64[n]``, or empty: weight 1)
        through F's kernel then the blocks' kernel; advance ``packets``."""
        n = keys.shape[0]
        if n == 0:
            return
        be, buf = self._backend, self._buffers
        padded = np.zeros(max(1, masks.shape[0]), np.uint32)  # never a zero-length device array
        padded[:masks.shape[0]] = masks
        d_keys, d_masks = buf.put("keys", keys), buf.put("masks", padded)
        d_weights = self._weights_on_device("weights", weights)
        d_actions, d_fcounts = buf.get("actions", n, np.uint8), buf.get("fcounts", n, np.int64)
        state = self._device_state()
        with be.launching():
            common = (_U64(self._seed_mix), _U64(self.packets))
            widths, wmagics = self._geometry  # per block (F first): an unequal split narrows some
            launch(_f_kernel, 1, d_keys, *d_weights, *state, np.int64(T), *common, bool(connection),
                   _U64(widths[0]), _U64(wmagics[0]), d_actions, d_fcounts)
            if masks.shape[0]:
                launch(_blocks_kernel, masks.shape[0], d_keys, *d_weights, *state, d_masks,
                       np.int64(masks.shape[0]), *common, buf.put("widths", widths), buf.put("wmagics", wmagics),
                       d_actions, d_fcounts)
        self.packets += n

    def _stream6(self, hi: np.ndarray, lo: np.ndarray, weights: np.ndarray) -> None:
        """Run IPv6 keys ``(hi, lo)`` (``uint64[n]``, n > 0) through the IPv6 tree's two kernels.

        The IPv6 tree's arrays stay on the host between batches (uploaded and fetched per batch):
        correct and simple, at the price of a transfer per batch; the caller advances ``packets6``.
        """
        be, buf = self._backend, self._buffers
        T, connection, _ = self._tree_rule()
        mask_hi, mask_lo = self._masks6
        m = mask_hi.shape[0]
        padded = np.zeros((2, max(1, m)), np.uint64)  # never a zero-length device array
        padded[0, :m], padded[1, :m] = mask_hi, mask_lo
        d_hi, d_lo = buf.put("keys6_hi", hi), buf.put("keys6_lo", lo)
        d_mask_hi, d_mask_lo = buf.put("masks6_hi", padded[0].copy()), buf.put("masks6_lo", padded[1].copy())
        d_weights = self._weights_on_device("weights6", weights)
        d_actions, d_fcounts = buf.get("actions6", hi.shape[0], np.uint8), buf.get("fcounts6", hi.shape[0], np.int64)
        state = tuple(be.to_device(arr) for arr in (self.hi6, self.lo6, self.counts6, self.occ6))
        common = (_U64(self._seed_mix), _U64(self.packets6))
        geometry = (_U64(self.width6), _U64(_coco.fastmod_magic(self.width6)))
        with be.launching():
            launch(_f6_kernel, 1, d_hi, d_lo, *d_weights, *state, np.int64(T), *common, bool(connection), *geometry,
                   d_actions, d_fcounts)
            if m:
                launch(_blocks6_kernel, m, d_hi, d_lo, *d_weights, *state, d_mask_hi, d_mask_lo, np.int64(m), *common,
                       *geometry, d_actions, d_fcounts)
        self.hi6, self.lo6, self.counts6, self.occ6 = (be.to_host(arr) for arr in state)


class ResidualSketch(_DeviceBlocks, _cpu.ResidualSketch):
    """GPU ResidualSketch: the CPU class's parameters, verbs, queries and state format.

    The blocks (F and one Residual Block per crucial layer) live on the device; queries fetch the
    blocks and run on the host. ``merge`` raises :class:`NotMergeableError` as on the CPU.

    ``gpu_update`` (not a sketch parameter: it is not serialised, a snapshot loads in either mode):

    * ``"exact"`` (default): F's single-thread kernel, then the blocks' kernel; the CPU state bit for bit.
    * ``"batched"``: spec §5's approximate batched update
      (:mod:`telesketch.sketches.residual_batched`): distinct-key reduction, one thread per distinct key
      and per distinct prefix, weighted inserts; answers within F1 0.02 of exact mode (mean of 3 seeds,
      BENCHMARKS.md "issue 22b") but dependent on batch boundaries. IPv4 keys counted in packets only
      (``weight="bytes"`` is an error); the IPv6 tree stays exact. Needs CuPy on a device.

    ``batched_chunk`` (batched mode): packets per batched update (default
    :data:`~telesketch.sketches.residual_batched.CHUNK_PACKETS`); a batch is applied as consecutive chunks.
    Larger chunks mean fewer launches and more parallel work per launch, and a larger error.
    """

    @property
    def batch_invariant(self) -> bool:
        """Exact mode streams packets in order (the CPU state bit for bit): joined batches leave the
        same state. Batched mode's chunks start at each batch's first packet, so its state depends
        on where batches are cut: ``False`` (the service then never joins this sketch's batches)."""
        return self.gpu_update == "exact"

    def __init__(self, params=None, *, gpu_update: str = "exact", batched_chunk: int = _batched.CHUNK_PACKETS,
                 **kwargs):
        self._check_update_args(gpu_update, batched_chunk)  # before any device allocation
        super().__init__(params, **kwargs)
        self._set_update(gpu_update, batched_chunk)

    @staticmethod
    def _check_update_args(gpu_update: str, batched_chunk: int) -> None:
        """Clear :class:`SketchError` for a ``gpu_update`` / ``batched_chunk`` value out of range."""
        if gpu_update not in GPU_UPDATES:
            raise SketchError(f"gpu_update must be one of {list(GPU_UPDATES)}, got {gpu_update!r}")
        if isinstance(batched_chunk, bool) or not isinstance(batched_chunk, (int, np.integer)) or batched_chunk < 1:
            raise SketchError(f"batched_chunk (packets per batched update) must be a positive integer, "
                              f"got {batched_chunk!r}")

    def _set_update(self, gpu_update: str, batched_chunk: int) -> None:
        """Check the update mode against this sketch's parameters and backend, then set it (the
        checks of ``__init__`` and ``from_bytes``; no device allocation)."""
        self._check_update_args(gpu_update, batched_chunk)
        if gpu_update == "batched":
            if self.params.weight != "packets":
                raise SketchError("gpu_update = \"batched\" counts packets only: use weight = \"packets\" or "
                                  "gpu_update = \"exact\"")
            if self._backend.name == "numba":
                raise GpuUnavailableError("gpu_update = \"batched\" needs CuPy on the device (its sort, unique and "
                                          "segment sums): pip install 'telesketch[gpu]', or use gpu_update = \"exact\"")
        self.gpu_update, self.batched_chunk = gpu_update, int(batched_chunk)

    @classmethod
    def from_bytes(cls, data: bytes, gpu_update: str = "exact", batched_chunk: int = _batched.CHUNK_PACKETS):
        """A snapshot (written in either mode, or by the CPU class) continuing in ``gpu_update`` mode."""
        cls._check_update_args(gpu_update, batched_chunk)  # a bad value fails before the snapshot is loaded
        sketch = super().from_bytes(data)
        sketch._set_update(gpu_update, batched_chunk)
        return sketch

    def copy(self):
        out = super().copy()
        out.gpu_update, out.batched_chunk = self.gpu_update, self.batched_chunk
        return out

    def update_addresses(self, addresses, weights=None) -> None:
        """Process a raw ``uint32[n]`` address array (with ``weights``: byte-weighted) on the device, in
        order (``exact``) or as one batched update (``batched``)."""
        keys = _coco.as_addresses(addresses)
        weights = self._take_weights(weights, keys.shape[0])
        if self.gpu_update == "batched":
            self._stream_batched(keys)
        else:
            self._stream(keys, self._masks, self.T, self.params.connection, weights)

    def _stream_batched(self, keys: np.ndarray) -> None:
        """Spec §5 batched update of the IPv4 blocks by ``keys`` (checked ``uint32[n]``), one update per
        ``batched_chunk`` packets; advance ``packets``."""
        if keys.shape[0] == 0:
            return
        widths, wmagics = self._geometry
        geometry = ([int(m) for m in self._masks], [int(v) for v in widths], [int(v) for v in wmagics])
        ops, state, chunk = _DeviceOps(self._backend), self._device_state(), self.batched_chunk
        d_keys = self._buffers.put("keys", keys)  # one host-to-device copy; the chunks are views
        for k in range(0, keys.shape[0], chunk):
            part = d_keys[k:k + chunk]
            _batched.batched_update(ops, state, part, self.packets, self.T, self.params.connection, *geometry,
                                    self._seed_mix)
            self.packets += part.shape[0]


class CocoSketch(_DeviceBlocks, _cpu.CocoSketch):
    """GPU CocoSketch (d = 2, exact mode): the CPU class's parameters, verbs, queries and state format.

    The block lives on the device; a batch is one single-thread kernel; queries run on the host.
    """

    def update_addresses(self, addresses, weights=None) -> None:
        """Count a raw ``uint32[n]`` address array (with ``weights``: byte-weighted) in order on the device."""
        keys = _coco.as_addresses(addresses)
        self._stream(keys, np.zeros(0, np.uint32), 0, True, self._take_weights(weights, keys.shape[0]))
