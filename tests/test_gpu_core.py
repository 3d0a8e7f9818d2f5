"""The device-side sort path of ``telesketch.gpu.core`` against numpy, under the CUDA simulator.

:func:`~telesketch.gpu.core.stable_argsort` (composite keys, the bitonic sort kernel, positions)
must equal ``numpy.argsort(kind="stable")`` for any length -- powers of two or not, empty, one
item -- and heavy duplicates (where stability matters); the reused buffers must not leak one
batch's data into the next. Run as a script under the simulator by ``tests/gpu_harness.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_harness

pytestmark = pytest.mark.gpu
pytest_generate_tests = gpu_harness.pytest_generate_tests

CASES = ["argsort_lengths", "argsort_duplicates", "buffers_shrink_and_grow", "staging_reused", "composite_shift_limits",
         "fill", "xp_ops", "xp_kernels"]


def _argsort(values: np.ndarray, bound: int, buffers=None) -> np.ndarray:
    from telesketch.gpu.core import DeviceBuffers, backend, stable_argsort

    be = backend()
    buffers = buffers or DeviceBuffers(be)
    return be.to_host(stable_argsort(be, buffers, buffers.put("values", values.astype(np.int64)), bound))


def check_argsort_lengths() -> str:
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 3, 7, 64, 100, 257):
        values = rng.integers(0, 50, n)
        got, want = _argsort(values, 50), np.argsort(values, kind="stable")
        if not np.array_equal(got, want):
            return f"n={n}: {got[:20]} != {want[:20]}"
    return ""


def check_argsort_duplicates() -> str:
    rng = np.random.default_rng(2)
    for bound in (1, 2, 5, 1 << 30):
        values = rng.integers(0, bound, 300)
        if not np.array_equal(_argsort(values, bound), np.argsort(values, kind="stable")):
            return f"bound={bound}: order differs"
    return ""


def check_buffers_shrink_and_grow() -> str:
    """One DeviceBuffers across batches of changing sizes (padding and stale tails must not leak)."""
    from telesketch.gpu.core import DeviceBuffers, backend

    buffers = DeviceBuffers(backend())
    rng = np.random.default_rng(3)
    for n in (200, 5, 130, 300, 1, 64):
        values = rng.integers(0, 9, n)
        if not np.array_equal(_argsort(values, 9, buffers), np.argsort(values, kind="stable")):
            return f"batch of {n}: order differs"
    return ""


def check_staging_reused() -> str:
    """``put`` copies through one page-locked staging buffer per name, allocated once for a stream
    of batches that fit its capacity, and the device rows equal the host rows of each batch."""
    from telesketch.gpu.core import DeviceBuffers, backend

    be = backend()
    buffers = DeviceBuffers(be)
    rng = np.random.default_rng(4)
    first = None
    for n in (1000, 700, 1024, 3):
        host = rng.integers(0, 2**40, (n, 2)).astype(np.uint64)
        dev = buffers.put("keys", host)
        if not np.array_equal(be.to_host(dev), host):
            return f"batch of {n}: device rows differ from the host rows"
        stage = buffers.staging("keys", n, np.uint64, (2,))
        first = stage if first is None else first
        if stage is not first or stage.shape != (1024, 2):
            return f"batch of {n}: the staging buffer was reallocated ({stage.shape})"
    if buffers.put("keys", np.zeros((1025, 2), np.uint64)).shape != (1025, 2) or \
            buffers.staging("keys", 1025, np.uint64, (2,)).shape[0] != 2048:
        return "a larger batch did not grow the staging buffer to the next power of two"
    return ""


def check_composite_shift_limits() -> str:
    from telesketch.gpu.core import composite_shift

    if composite_shift(1, 1) != 1 or composite_shift(1024, 10) != 10 or composite_shift(1025, 10) != 11:
        return "composite_shift bits wrong"
    try:
        composite_shift(1 << 32, 1 << 33)
    except ValueError:
        return ""
    return "a key that does not fit 64 bits was accepted"


def check_fill() -> str:
    from telesketch.gpu.core import backend

    be = backend()
    dev = be.to_device(np.arange(70, dtype=np.uint64))
    be.fill(dev[10:], np.uint64(2**64 - 1))
    host = be.to_host(dev)
    ok = np.array_equal(host[:10], np.arange(10)) and (host[10:] == np.uint64(2**64 - 1)).all()
    return "" if ok else "fill wrote the wrong range"


def _numba_path_backend():
    """The simulator backend told it holds Numba device arrays: :mod:`telesketch.gpu.xp` then runs
    its atomic kernels (the path of a device without CuPy), here on the simulator's arrays."""
    from telesketch.gpu.core import _Backend

    be = _Backend("simulator")
    be.name = "numba"
    return be


def _xp_ops_against_naive(be) -> str:
    """scatter_add / set_bits / add_clamped of :mod:`telesketch.gpu.xp` on backend ``be`` equal
    plain loops (negative indices skipped, duplicates accumulated, counters clamped at the cap)."""
    from telesketch.gpu import xp
    from telesketch.gpu.core import DeviceBuffers

    rng = np.random.default_rng(5)
    buffers = DeviceBuffers(be)
    for dtype in (np.uint32, np.uint64):
        target = rng.integers(0, 1000, 37).astype(dtype)
        idx = rng.integers(-5, 37, 400).astype(np.int64)
        values = rng.integers(0, 2**20, 400).astype(dtype)
        want = target.copy()
        for c, v in zip(idx, values):
            if c >= 0:
                want[c] += v
        dev = be.to_device(target)
        xp.scatter_add(be, dev, be.to_device(idx), be.to_device(values))
        if not np.array_equal(be.to_host(dev), want):
            return f"{be.name}: scatter_add {np.dtype(dtype).name} differs"
    words = rng.integers(0, 2**63, 9, dtype=np.uint64)
    pos = rng.integers(-70, 9 * 64, 500).astype(np.int64)
    want = words.copy()
    for q in pos:
        if q >= 0:
            want[q >> 6] |= np.uint64(1) << np.uint64(q & 63)
    dev = be.to_device(words)
    xp.set_bits(be, dev, be.to_device(pos))
    if not np.array_equal(be.to_host(dev), want):
        return f"{be.name}: set_bits differs"
    for dtype, cap in ((np.uint8, 255), (np.uint16, 1000), (np.uint32, 2**32 - 1)):
        for weighted in (False, True):
            target = rng.integers(0, min(cap, 900), 23).astype(dtype)
            idx = rng.integers(-3, 23, 300).astype(np.int64)
            weights = rng.integers(0, 2**26, 300).astype(np.uint64) if weighted else None
            sums = np.zeros(23, np.int64)
            for k, c in enumerate(idx):
                if c >= 0:
                    sums[c] += int(weights[k]) if weighted else 1
            want = np.minimum(cap, target.astype(np.int64) + sums).astype(dtype)
            dev = be.to_device(target)
            xp.add_clamped(be, buffers, dev, be.to_device(idx), cap,
                           weights=None if weights is None else be.to_device(weights))
            if not np.array_equal(be.to_host(dev), want):
                return f"{be.name}: add_clamped {np.dtype(dtype).name} weighted={weighted} differs"
    return ""


def check_xp_ops() -> str:
    from telesketch.gpu.core import backend

    be = backend()
    with be.launching():
        return _xp_ops_against_naive(be)


def check_xp_kernels() -> str:
    be = _numba_path_backend()
    with be.launching():
        return _xp_ops_against_naive(be)


def run_case(name: str) -> str:
    return globals()[f"check_{name}"]()


class TestDeviceSort(gpu_harness.TwinChecks):
    script, cases, run_case = __file__, CASES, staticmethod(run_case)


if __name__ == "__main__":
    from telesketch.gpu.core import backend

    gpu_harness.script_main(TestDeviceSort.cases, run_case, [backend])
