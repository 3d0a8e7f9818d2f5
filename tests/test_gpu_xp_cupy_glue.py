"""The CuPy branch of :mod:`telesketch.gpu.xp` as glue, without CuPy or a device: ``cupy`` stood in
by numpy and ``cupyx.scatter_add`` by ``numpy.add.at`` (CuPy documents that it behaves identically).
This checks the branch's own logic -- the skipped negative indices, the dtype casts, the clamped
store -- not CuPy itself (that needs a device: ``make gpu-check``). ``set_bits``'s CuPy branch is a
CUDA C ``ElementwiseKernel`` and is not covered here."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy_like(monkeypatch):
    from telesketch.gpu.core import DeviceBuffers, _Backend

    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(scatter_add=np.add.at))
    be = _Backend("simulator")
    be.name, be._cupy = "cupy", np
    return be, DeviceBuffers(be)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_scatter_add_skips_negative_indices_and_accumulates(cupy_like, dtype):
    from telesketch.gpu import xp

    be, _ = cupy_like
    target = np.array([5, 0, 7, 1], dtype)
    xp.scatter_add(be, target, np.array([2, -1, 2, 0, -4, 3], np.int64), np.array([1, 100, 2, 3, 100, 4], dtype))
    assert target.tolist() == [8, 0, 10, 5]


@pytest.mark.parametrize("weighted", [False, True])
def test_add_clamped_counts_or_weighs_then_clamps(cupy_like, weighted):
    from telesketch.gpu import xp

    be, buffers = cupy_like
    rng = np.random.default_rng(7)
    target = rng.integers(0, 250, 30).astype(np.uint8)
    idx = rng.integers(-2, 30, 200).astype(np.int64)
    weights = rng.integers(0, 9, 200).astype(np.uint64) if weighted else None
    sums = np.zeros(30, np.int64)
    for k, c in enumerate(idx):
        if c >= 0:
            sums[c] += int(weights[k]) if weighted else 1
    want = np.minimum(255, target.astype(np.int64) + sums)
    xp.add_clamped(be, buffers, target, idx, 255, weights=weights)
    assert target.dtype == np.uint8 and target.tolist() == want.tolist()
    assert xp.array_module(be) is np
