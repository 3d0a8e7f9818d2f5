"""Every GPU kernel, with every argument signature the sketches launch it with, compiles with the
real NVVM compiler for sm_80 and sm_90 -- no device needed (``numba.cuda.compile_ptx``).

The simulator runs the same kernel code as Python, so it cannot catch what only the compiler sees
(a typing error, a signed/unsigned mix promoted to float64, an unsupported call). This test closes
that gap in CI:

1. a subprocess under the CUDA simulator runs a small workload through every GPU sketch and hash
   helper inside :func:`telesketch.gpu.core.recording_signatures`, which notes each launched
   kernel's argument types, and pickles them;
2. a second subprocess (no simulator) compiles each ``(kernel, signature)`` to PTX for both
   architectures, and checks that no kernel of ``telesketch.gpu`` went unlaunched.

The compiler comes from the ``nvidia-cuda-nvcc-cu12`` wheel (``numba-cuda[cu12]``, in the ``dev``
and ``gpu`` extras); without it the test skips saying so.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_harness import needs_device

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
ARCHES = ((8, 0), (9, 0))
GPU_MODULES = ("telesketch.gpu.core", "telesketch.gpu.gapfilter", "telesketch.gpu.hiddensketch",
               "telesketch.gpu.llmsketch", "telesketch.gpu.residualsketch", "telesketch.gpu.xp")


def _xp_kernel_workload() -> None:
    """Launch telesketch.gpu.xp's atomic kernels (the path of a device without CuPy) with the dtypes
    the sketches give them: FS counters uint8/uint16/uint32, Count-Min uint32/uint64."""
    from telesketch.gpu import xp
    from telesketch.gpu.core import DeviceBuffers, _Backend

    be = _Backend("simulator")
    be.name = "numba"  # the simulator's arrays through the Numba-array code path
    buffers = DeviceBuffers(be)
    idx = np.array([0, 1, -1, 1], np.int64)
    with be.launching():
        for dtype in (np.uint32, np.uint64):
            xp.scatter_add(be, np.zeros(4, dtype), idx, np.ones(4, dtype))
        xp.set_bits(be, np.zeros(2, np.uint64), idx)
        for dtype in (np.uint8, np.uint16, np.uint32):
            xp.add_clamped(be, buffers, np.zeros(4, dtype), idx, 200)
            xp.add_clamped(be, buffers, np.zeros(4, dtype), idx, 200, weights=np.ones(4, np.uint64))


def record_workload(out: str) -> None:
    """(Simulator process.) Launch every kernel on tiny inputs; pickle the recorded signatures."""
    from telesketch import gpu
    from telesketch.estimators import ConstantEstimator
    from telesketch.gpu.core import recording_signatures
    from telesketch.gpu.llmsketch import device_mmh3_words
    from telesketch.sketches.hiddensketch import keys_to_words
    from telesketch.traces import generate_batch

    batch = generate_batch(200, 30, seed=3, duration_s=1.0)
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, len(batch))
    addrs = rng.integers(0, 2**32, 50).astype(np.uint32)
    with recording_signatures() as seen:
        _xp_kernel_workload()
        gpu.device_hash_5tuple(batch, 7)
        gpu.device_bob_hash(addrs, 0)
        gpu.device_hash_key_words(*keys_to_words(addrs, 4), 4, 5)
        device_mmh3_words(rng.integers(0, 2**32, (20, 4)).astype(np.uint32), 13, 5)
        gpu.GapFilterSO(memory_bytes=1024).update(batch)
        gpu.GapFilterAO(memory_bytes=1024).update(batch)
        for mode in ("one_pass", "two_pass"):
            hs = gpu.HiddenSketch(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3,
                                  thresh=2, mode=mode)
            hs.update(batch)
            if mode == "two_pass":
                hs.begin_second_pass()
                hs.update(batch)
            hs.heavy_hitters()
        hs = gpu.HiddenSketch(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3,
                              thresh=2, weight="bytes")  # the byte-weighted kernels
        hs.update(batch)
        hs.heavy_hitters()
        gpu.ResidualSketch(memory_bytes=4096, mode="byte", threshold=5).update(batch)
        gpu.ResidualSketch(memory_bytes=4096, mode="byte", threshold=5, gpu_update="batched").update(batch)  # §5
        gpu.CocoSketch(memory_bytes=4096).update(batch)
        addrs6 = rng.integers(0, 256, (50, 16)).astype(np.uint8)  # the IPv6 trees' kernels
        gpu.ResidualSketch(memory_bytes=4096, threshold=5).update_addresses6(addrs6)
        gpu.CocoSketch(memory_bytes=4096).update_addresses6(addrs6)
        for task in ("flow_size", "hhh"):
            gpu.LLMSketch(memory_bytes=2048, task=task, seed=2).update(batch, scores)
        gpu.LLMSketch(memory_bytes=4096, task="flow_size", seed=2, weight="bytes").update(batch, scores)  # bytes
        gpu.LLMSketch(memory_bytes=4096, estimator=ConstantEstimator(1.0), scoring="sync").update(batch)
    Path(out).write_bytes(pickle.dumps(sorted(seen, key=str)))


def compile_recorded(path: str) -> None:
    """(Compiler process.) Compile every recorded signature for :data:`ARCHES`; print a JSON verdict."""
    import importlib

    from numba import cuda
    from numba.cuda.dispatcher import CUDADispatcher

    import numba.cuda.dispatcher as dispatcher

    class TargetDevice:
        """Stands in for the absent device where Numba asks for the current one: a kernel's call of
        a ``device=True`` function compiles that function for the current device's capability."""

        compute_capability = ARCHES[0]

    dispatcher.get_current_device = lambda: TargetDevice
    recorded = pickle.loads(Path(path).read_bytes())
    compiled, failures = [], []
    for module, name, argtypes in recorded:
        fn = getattr(importlib.import_module(module), name).py_func
        for cc in ARCHES:
            TargetDevice.compute_capability = cc
            try:
                ptx, _ = cuda.compile_ptx(fn, argtypes, cc=cc)
                assert f".target sm_{cc[0]}{cc[1]}" in ptx
                compiled.append(f"{module}.{name}{argtypes} sm_{cc[0]}{cc[1]}")
            except Exception as exc:  # noqa: BLE001 - report every failure, not just the first
                failures.append(f"{module}.{name}{argtypes} sm_{cc[0]}{cc[1]}: {type(exc).__name__}: {exc}"[:2000])
    kernels = {f"{m}.{k}" for m in GPU_MODULES for k, v in vars(importlib.import_module(m)).items()
               if isinstance(v, CUDADispatcher) and not v.targetoptions.get("device") and v.__module__ == m}
    launched = {f"{m}.{k}" for m, k, _ in recorded}
    # cache=True reached every kernel: its dispatcher holds numba-cuda's on-disk CUDACache (a
    # NullCache otherwise). Saving into it needs a device context (the cubin is linked there), so
    # the second-process reuse itself is test_kernel_compile_cache_reused_in_process (device only).
    from numba.cuda.dispatcher import CUDACache

    uncached = sorted(f"{m}.{k}" for m in GPU_MODULES for k, v in vars(importlib.import_module(m)).items()
                      if f"{m}.{k}" in kernels and not isinstance(v._cache, CUDACache))
    print(json.dumps({"compiled": compiled, "failures": failures, "unlaunched": sorted(kernels - launched),
                      "kernels": sorted(kernels), "uncached": uncached}))


def _nvvm_missing() -> str:
    """Why the real compiler cannot run here ("" when it can)."""
    probe = ("from numba.cuda.cudadrv import nvvm\n"
             "nvvm.NVVM()\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    return "" if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1][:300]


def _run(args: list, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, __file__, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=480)


def test_every_kernel_signature_compiles_for_sm80_and_sm90(tmp_path):
    why = _nvvm_missing()
    if why:
        pytest.skip(f"NVVM is not installed (pip install 'numba-cuda[cu12]', in the dev extra): {why}")
    signatures = tmp_path / "signatures.pkl"
    rec = _run(["record", str(signatures)], {"NUMBA_ENABLE_CUDASIM": "1"})
    assert rec.returncode == 0, rec.stderr[-3000:]
    comp = _run(["compile", str(signatures)], {"NUMBA_ENABLE_CUDASIM": "0", "NUMBA_CACHE_DIR": str(tmp_path / "cache")})
    assert comp.returncode == 0, comp.stderr[-3000:]
    verdict = json.loads(comp.stdout.strip().splitlines()[-1])
    assert not verdict["failures"], "\n".join(verdict["failures"])
    assert not verdict["unlaunched"], f"kernels the workload never launched (add them): {verdict['unlaunched']}"
    assert len(verdict["kernels"]) >= 19 and len(verdict["compiled"]) >= 2 * len(verdict["kernels"])
    assert not verdict["uncached"], f"kernels without the on-disk cache (use telesketch.jit.gpu_kernel): {verdict}"
    print(f"\ncompile check: {len(verdict['kernels'])} kernels of telesketch.gpu, "
          f"{len(verdict['compiled'])} (kernel, signature, arch) PTX compilations for sm_80 and sm_90, 0 failures")


CACHE_PROBE = """
import json
from numba.cuda.dispatcher import CUDADispatcher
from telesketch import gpu
from telesketch.traces import generate_batch
import importlib
batch = generate_batch(5000, 300, seed=1, duration_s=1.0)
gpu.GapFilterAO(memory_bytes=4096).update(batch)
gpu.HiddenSketch(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3, thresh=2).update(batch)
hits = misses = 0
for m in %r:
    for v in vars(importlib.import_module(m)).values():
        if isinstance(v, CUDADispatcher) and not v.targetoptions.get("device"):
            hits += sum(v._cache_hits.values())
            misses += sum(v._cache_misses.values())
print(json.dumps({"hits": hits, "misses": misses}))
""" % (GPU_MODULES,)


@needs_device
def test_kernel_compile_cache_reused_in_process(tmp_path):
    """(Device only: numba-cuda saves a kernel to its cache after linking it in a device context.)
    A first process with an empty ``NUMBA_CACHE_DIR`` compiles and saves the kernels it launches;
    a second process loads every one of them from the cache: hits, no misses, no recompilation."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_ENABLE_CUDASIM": "0"}
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CACHE_PROBE], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, **env, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["misses"] > 0, runs
    assert second == {"hits": first["misses"] + first["hits"], "misses": 0}, runs


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record_workload(sys.argv[2])
    else:
        compile_recorded(sys.argv[2])
