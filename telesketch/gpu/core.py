"""What every GPU twin shares: the array backend, launch geometry, reused device buffers, the
device-side sort that segments a batch by bucket, and the device twins of :mod:`telesketch.hashing`.

The device-side segmenting (:func:`sort_composite`, :func:`composite_shift`): a kernel writes one
``uint64`` composite key per item, ``bucket << shift | position``; sorting those keys groups every
bucket's items in arrival order (the keys are distinct, so any sort is a stable sort of the
buckets), and a segment kernel with one thread per sorted position lets the first position of each
bucket (a *head*) run that bucket's items in order. No bounds array, no host round trip. The sort
is CuPy's ``cupy.sort`` on a real device with CuPy (the thin layer), else a bitonic sort written in
``numba.cuda`` (:func:`_bitonic_step_kernel`) -- the one that runs, and is tested, in the simulator.

Every launch goes through :func:`launch`, which can record the argument types of each kernel
(:func:`recording_signatures`): ``tests/test_gpu_compile.py`` compiles exactly those signatures with
the real NVVM compiler for sm_80 and sm_90, without a device. Kernels are compiled with
``cache=True`` (Numba's on-disk cache: a process reuses the previous one's machine code).

Backends (chosen at construction, :func:`backend`): CuPy arrays on a real device when CuPy is
installed, Numba device arrays on a real device otherwise, and plain numpy arrays under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is first imported), which is
how CI (no GPU) runs the very same kernel code on small inputs.

The device hash functions are not ports: they are :func:`telesketch.jit.device_twin` of the CPU
kernels of :mod:`telesketch.hashing`, compiled from the same Python source (every operand ``uint64``
so the arithmetic wraps mod 2^64 on both targets); the equality tests in ``tests/test_gpu_*.py`` pin
the results to the CPU versions.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numba
import numpy as np
from numba import cuda

from telesketch import hashing
from telesketch.jit import THREADS_PER_BLOCK, device_twin, gpu_kernel
from telesketch.sketches.core import SketchError

__all__ = ["THREADS_PER_BLOCK", "DeviceBuffers", "GpuUnavailableError", "backend", "blocks", "composite_shift",
           "device_hash_5tuple", "hash64_5tuple_device", "launch", "mix64_device", "recording_signatures",
           "sort_composite", "stable_argsort"]



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

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        """A page-locked host array (DMA-able, so a host-to-device copy from it runs at full speed
        and needs no driver-side staging); a plain numpy array under the simulator."""
        if self.name == "cupy":
            import cupyx

            return cupyx.empty_pinned(shape, dtype)
        return cuda.pinned_array(shape, dtype)

    def upload(self, dev, host: np.ndarray) -> None:
        """Copy ``host`` into the existing device array ``dev`` (same shape): no allocation."""
        host = np.ascontiguousarray(host, dtype=dev.dtype)
        if self.name == "cupy":
            dev.set(host)
        elif self.name == "numba":
            dev.copy_to_device(host)
        else:
            dev[...] = host

    def fill(self, dev, value) -> None:
        """``dev[:] = value`` on the device (``value`` of ``dev``'s dtype): CuPy's ``fill``, else a kernel."""
        if self.name == "cupy":
            dev.fill(value)
        else:
            with self.launching():
                launch(_fill_kernel, dev.shape[0], dev, value, grid_stride=True)

    def to_host(self, arr) -> np.ndarray:
        if self.name == "cupy":
            return self._cupy.asnumpy(arr)
        if self.name == "numba":
            return arr.copy_to_host()
        return np.array(arr, copy=True)

    def synchronize(self) -> None:
        """Wait for every launched kernel and copy (benchmarks time whole batches with it)."""
        if self.name == "cupy":
            self._cupy.cuda.Device().synchronize()
        elif self.name == "numba":
            cuda.synchronize()

    def device_name(self) -> str:
        """The GPU's name (``simulator`` under the simulator)."""
        if self.name == "simulator":
            return "simulator"
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)

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


class DeviceBuffers:
    """Device arrays reused from batch to batch (one set per sketch): ``get(name, n, dtype)`` is a
    length-``n`` view of a buffer whose capacity grows to the next power of two (so a stream of
    similar batch sizes allocates once); ``put(name, host)`` is one host-to-device copy into it,
    staged through a page-locked host buffer of the same capacity, also reused."""

    def __init__(self, be: "_Backend"):
        self._be = be
        self._bufs: dict[str, object] = {}
        self._staging: dict[str, np.ndarray] = {}

    def capacity(self, name: str, n: int, dtype, tail: tuple = ()) -> object:
        """The whole buffer ``name``: ``dtype[cap, *tail]``, ``cap`` a power of two >= ``n``."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n or buf.dtype != np.dtype(dtype) or tuple(buf.shape[1:]) != tuple(tail):
            buf = self._be.zeros((1 << max(0, int(n) - 1).bit_length(),) + tuple(tail), dtype)
            self._bufs[name] = buf
        return buf

    def get(self, name: str, n: int, dtype, tail: tuple = ()):
        """The first ``n`` rows of buffer ``name`` (contents: whatever the last batch left)."""
        return self.capacity(name, n, dtype, tail)[:n]

    def put(self, name: str, host: np.ndarray):
        """``host`` (any shape) copied into buffer ``name`` (its dtype and trailing shape); returns
        the device view of its ``len(host)`` rows."""
        n = host.shape[0]
        dev = self.get(name, n, host.dtype, host.shape[1:])
        stage = self.staging(name, n, host.dtype, host.shape[1:])[:n]
        np.copyto(stage, host)
        self._be.upload(dev, stage)
        return dev

    def staging(self, name: str, n: int, dtype, tail: tuple = ()) -> np.ndarray:
        """The page-locked host buffer of ``name``: ``dtype[cap, *tail]``, grown like :meth:`capacity`."""
        stage = self._staging.get(name)
        if stage is None or stage.shape[0] < n or stage.dtype != np.dtype(dtype) or stage.shape[1:] != tuple(tail):
            stage = self._be.pinned_empty((1 << max(0, int(n) - 1).bit_length(),) + tuple(tail), dtype)
            self._staging[name] = stage
        return stage


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
# The device functions of ``telesketch.hashing``'s twins: the same Python source as the CPU kernels.
_U64 = np.uint64
_S16, _S32, _S48 = _U64(16), _U64(32), _U64(48)
_LOW16 = _U64(0xFFFF)

_fmix64 = device_twin(hashing.fmix64)
#: splitmix64's finaliser (``telesketch.hashing.mix64``), mod 2^64: the twins' random coins.
mix64_device = device_twin(hashing.mix64)
#: ``telesketch.hashing.hash64_5tuple`` on the device: the 13-byte big-endian 5-tuple key.
hash64_5tuple_device = device_twin(hashing.hash64_5tuple)


@gpu_kernel
def _hash_kernel(src, dst, sport, dport, proto, seed, out):
    """``out[i] = hash64_5tuple_device(key i, seed)`` (``uint64``), one thread per item."""
    i = cuda.grid(1)
    if i < src.shape[0]:
        out[i] = hash64_5tuple_device(src[i], dst[i], sport[i], dport[i], proto[i], seed)


def blocks(n: int) -> int:
    """Blocks of :data:`THREADS_PER_BLOCK` threads that cover ``n`` items (at least one)."""
    return max(1, math.ceil(n / THREADS_PER_BLOCK))


# ============================================================================ launching
_recorded: set | None = None  # (module, kernel name, argument types) while recording


def _kernel_function(kernel):
    """The Python function behind a ``cuda.jit`` kernel (a dispatcher, or the simulator's kernel)."""
    return getattr(kernel, "py_func", None) or kernel.fn


#: Threads of a grid-stride launch under the simulator, which runs every GPU thread as a Python
#: thread: one block, each thread looping over many items, keeps the tests' launches cheap.
SIMULATOR_THREADS = 32


def launch(kernel, n: int, *args, grid_stride: bool = False) -> None:
    """Launch ``kernel`` with enough :data:`THREADS_PER_BLOCK`-thread blocks for ``n`` threads.

    ``grid_stride``: the kernel loops ``for i in range(cuda.grid(1), n, cuda.gridsize(1))``, so any
    grid covers the work; under the simulator it then gets :data:`SIMULATOR_THREADS` threads.
    """
    if _recorded is not None:
        fn = _kernel_function(kernel)
        _recorded.add((fn.__module__, fn.__name__, tuple(numba.typeof(a) for a in args)))
    if grid_stride and _simulator_enabled():
        kernel[1, min(max(n, 1), SIMULATOR_THREADS)](*args)
    else:
        kernel[blocks(n), THREADS_PER_BLOCK](*args)


@contextlib.contextmanager
def recording_signatures():
    """Within the block, collect ``(module, kernel name, numba argument types)`` of every launch
    into the yielded set (how the compile check learns the signatures the sketches use)."""
    global _recorded
    previous, _recorded = _recorded, set()
    try:
        yield _recorded
    finally:
        _recorded = previous


@gpu_kernel
def _fill_kernel(out, value):
    """``out[i] = value`` for every ``i`` (Numba device arrays have no ``fill``); grid-stride."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


# ============================================================================ device-side segmenting
_U64_MAX = _U64(0xFFFFFFFFFFFFFFFF)


def composite_shift(n: int, n_buckets: int) -> int:
    """Bits of the position field of a composite key ``bucket << shift | position`` for ``n``
    items and buckets below ``n_buckets``; :class:`ValueError` when the two do not fit 64 bits."""
    shift = max(1, (max(n, 1) - 1).bit_length())
    if shift + max(1, (n_buckets - 1).bit_length()) > 64:
        raise ValueError(f"{n} items over {n_buckets} buckets do not fit a 64-bit composite key")
    return shift


@gpu_kernel
def _bitonic_step_kernel(keys, j, k):
    """One compare-exchange step of the bitonic sort of ``keys`` (``uint64[2^m]``, ascending):
    pair ``t`` (grid-stride over ``2^(m-1)`` pairs) orders ``(i, i | j)``, ``i`` = ``t`` with a
    zero bit inserted at ``j``, ascending where ``i & k == 0`` (``j``, ``k``: ``int64`` powers of two)."""
    low = j - 1
    for t in range(cuda.grid(1), keys.shape[0] >> 1, cuda.gridsize(1)):
        i = ((t & ~low) << 1) | (t & low)
        partner = i | j
        a, b = keys[i], keys[partner]
        if (a > b) == ((i & k) == 0):
            keys[i] = b
            keys[partner] = a


def sort_composite(be: "_Backend", buffers: DeviceBuffers, name: str, n: int):
    """Sort the first ``n`` keys of ``buffers``' ``uint64`` buffer ``name`` ascending, on the device;
    returns the sorted length-``n`` view. CuPy: ``cupy.sort``; otherwise (Numba device arrays, the
    simulator) a bitonic sort over the power-of-two capacity, its tail padded with ``2^64 - 1``."""
    if be.name == "cupy":
        keys = buffers.get(name, n, np.uint64)
        keys[...] = be._cupy.sort(keys)
        return keys
    whole = buffers.capacity(name, n, np.uint64)
    cap = whole.shape[0]
    if cap > n:
        be.fill(whole[n:], _U64_MAX)
    k = 2
    while k <= cap:
        j = k >> 1
        while j > 0:
            launch(_bitonic_step_kernel, cap >> 1, whole, np.int64(j), np.int64(k), grid_stride=True)
            j >>= 1
        k <<= 1
    return whole[:n]


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
            launch(_hash_kernel, n, *cols, _U64(seed), out)
    return be.to_host(out)


@gpu_kernel
def _composite_kernel(values, shift, keys):
    """``keys[i] = values[i] << shift | i`` (``values`` non-negative ``int64``; ``uint64`` keys); grid-stride."""
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        keys[i] = (_U64(values[i]) << shift) | _U64(i)


@gpu_kernel
def _positions_kernel(keys, shift, order):
    """``order[j] = keys[j] & (2^shift - 1)``: the positions of the sorted composite keys; grid-stride."""
    mask = (_U64(1) << shift) - _U64(1)
    for j in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        order[j] = np.int64(keys[j] & mask)


def stable_argsort(be: "_Backend", buffers: DeviceBuffers, values, bound: int):
    """Device ``int64[n]`` order that stably sorts the device array ``values`` (``int64``, each in
    ``[0, bound)``): ``numpy.argsort(values, kind="stable")`` without leaving the device. It sorts
    the composite keys ``value << shift | position`` (:func:`sort_composite`), in ``buffers``'
    ``argsort_keys`` and ``argsort_order``."""
    n = values.shape[0]
    shift = composite_shift(n, bound)
    keys = buffers.get("argsort_keys", n, np.uint64)
    with be.launching():
        launch(_composite_kernel, n, values, _U64(shift), keys, grid_stride=True)
        keys = sort_composite(be, buffers, "argsort_keys", n)
        order = buffers.get("argsort_order", n, np.int64)
        launch(_positions_kernel, n, keys, _U64(shift), order, grid_stride=True)
    return order
