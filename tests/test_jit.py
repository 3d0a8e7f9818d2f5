"""``telesketch.jit``: the project's kernel flags reach the kernels, Numba's on-disk cache still
works with them, and a twin's device function is the same Python source with the twins it calls
swapped for their device functions (checked under the CUDA simulator, in a subprocess because
``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from telesketch import hashing, jit
from telesketch.sketches import cocosketch, gapfilter

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_kernels_carry_the_project_flags_and_their_own_differences():
    for fn in (hashing.hash64_words, hashing._hash_u32_kernel, hashing.mix64, cocosketch.stream_kernel):
        opts = fn.targetoptions
        assert opts["nogil"] is True and opts["fastmath"] is False, (fn, opts)
        assert type(fn._cache).__name__ == "FunctionCache", fn  # cache=True, not NullCache
    assert hashing.mix64.targetoptions["inline"] == "always"  # a deliberate, explicit difference
    assert "inline" not in hashing.hash64_words.targetoptions


def test_kernel_decorator_forms_compile_alike():
    def add_one(x):
        return x + 1

    bare = jit.kernel(add_one)  # not called: a local function would be cached under tests/
    typed = jit.kernel("int64(int64)", inline="always", cache=False)(add_one)
    assert typed(41) == 42
    assert bare.targetoptions["nogil"] and "inline" not in bare.targetoptions
    assert typed.targetoptions["nogil"] and typed.targetoptions["inline"] == "always"


def test_device_twin_refuses_a_plain_kernel():
    with pytest.raises(TypeError, match="twin"):
        jit.device_twin(hashing.hash64_words)


CACHE_PROBE = """
import json, numpy as np
from telesketch import hashing
hashing.hash_u32(np.arange(10, dtype=np.uint32), 3)
print(json.dumps({"hits": sum(hashing._hash_u32_kernel.stats.cache_hits.values()),
                  "misses": sum(hashing._hash_u32_kernel.stats.cache_misses.values())}))
"""


def test_numba_cache_dir_gets_index_files_and_a_second_process_loads_them(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = _run(CACHE_PROBE, env)
    assert first.returncode == 0, first.stderr[-2000:]
    indexes = [p.name for p in tmp_path.rglob("*.nbi")]
    assert any(name.startswith("hashing._hash_u32_kernel") for name in indexes), indexes
    assert list(tmp_path.rglob("*.nbc")), "no cached machine code"
    assert json.loads(first.stdout.splitlines()[-1])["misses"] >= 1
    second = _run(CACHE_PROBE, env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout.splitlines()[-1]) == {"hits": 1, "misses": 0}


SIMULATOR_PROBE = """
import json, numpy as np
from telesketch import hashing, jit
from telesketch.sketches import cocosketch, gapfilter
out = {}
dev = jit.device_twin(hashing.hash64_5tuple)
out["memoised"] = dev is jit.device_twin(hashing.hash64_5tuple)
scope = dev.fn.__globals__ if hasattr(dev, "fn") else dev.py_func.__globals__
out["calls_device_twins"] = (scope["_initial_state"] is jit.device_twin(hashing._initial_state)
                             and scope["fmix64"] is jit.device_twin(hashing.fmix64))
out["cpu_module_untouched"] = hashing.hash64_5tuple.py_func.__globals__["fmix64"] is hashing.fmix64
rng = np.random.default_rng(5)
u64 = rng.integers(0, 2**63, 20, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
with np.errstate(over="ignore"):
    out["mix64"] = all(int(jit.device_twin(hashing.mix64)(x)) == int(hashing.mix64(x)) for x in u64)
    out["bob_hash"] = all(int(jit.device_twin(cocosketch.bob_hash)(x & np.uint64(0xFFFFFFFF), cocosketch._ROW1))
                          == int(cocosketch.bob_hash(x & np.uint64(0xFFFFFFFF), cocosketch._ROW1)) for x in u64)
    out["sat_diff"] = all(jit.device_twin(gapfilter._sat_diff)(a, b) == gapfilter._sat_diff(a, b)
                          for a, b in [(0, 65535), (40000, 3), (32767, 32768), (5, 5)])
print(json.dumps(out))
"""


@pytest.mark.gpu
def test_device_twins_swap_called_twins_and_match_the_cpu_under_the_simulator():
    proc = _run(SIMULATOR_PROBE, {"NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = json.loads(proc.stdout.splitlines()[-1])
    assert verdict == {key: True for key in verdict} and len(verdict) == 6, verdict


def test_twins_are_plain_cpu_kernels_in_this_process():
    """Without a GPU module imported, the twins are ordinary CPU kernels giving the hash's values."""
    keys = np.array([0, 1, 0xFFFFFFFF], np.uint32)
    assert [hashing.hash64_u32(k, np.uint64(9)) for k in keys] == hashing.hash_u32(keys, 9).tolist()
    assert gapfilter._s16(40000) == 40000 - 65536


# ---------------------------------------------------------------------------- every kernel, not a sample
def _telesketch_modules() -> list:
    """Every CPU module of the package, imported (``telesketch.gpu`` holds only CUDA kernels and
    ``telesketch.v1`` generated protobuf code, neither of which defines a CPU kernel)."""
    import importlib
    import pkgutil

    import telesketch

    names = [m.name for m in pkgutil.walk_packages(telesketch.__path__, "telesketch.")
             if not m.name.startswith(("telesketch.gpu", "telesketch.v1"))]
    return [importlib.import_module(name) for name in names]


def _cpu_kernels(modules) -> dict:
    """``(module, qualname) -> dispatcher`` of every ``numba`` CPU dispatcher defined in ``modules``."""
    from numba.core.registry import CPUDispatcher

    found = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__:
                found[(module.__name__, value.py_func.__qualname__)] = value
    return found


def _flag_violations(kernels: dict) -> list:
    """The kernels without ``nogil=True``, ``cache=True`` (an on-disk ``FunctionCache``) or with
    ``fastmath`` on: each one either holds the GIL against the concurrent pipeline's threads, or
    recompiles in every process, or may differ from its GPU twin bit for bit."""
    return [(key, {k: fn.targetoptions.get(k) for k in ("nogil", "fastmath")}, type(fn._cache).__name__)
            for key, fn in kernels.items()
            if fn.targetoptions.get("nogil") is not True or fn.targetoptions.get("fastmath")
            or type(fn._cache).__name__ != "FunctionCache"]


def test_every_cpu_kernel_in_the_package_is_nogil_and_cached():
    """Issue 21: the sketches of one batch run on several threads, which only overlap if every
    kernel on the path releases the GIL; a module-level ``numba.njit`` that bypasses
    :func:`telesketch.jit.kernel` would silently serialise them."""
    kernels = _cpu_kernels(_telesketch_modules())
    assert len(kernels) >= 100, len(kernels)  # 126 when written: the walk really finds them
    for probe in ("telesketch.hashing", "telesketch.sketches.gapfilter", "telesketch.sketches.llmsketch",
                  "telesketch.estimators.scoring", "telesketch.traces.pcap"):
        assert any(mod == probe for mod, _ in kernels), probe
    assert _flag_violations(kernels) == []


def test_the_flag_check_catches_a_kernel_without_the_flags():
    import numba as nb

    def add_one(x):
        return x + 1

    holds_gil = nb.njit(nogil=False, cache=True)(add_one)
    uncached = nb.njit(nogil=True, cache=False)(add_one)
    fast = nb.njit(nogil=True, cache=True, fastmath=True)(add_one)
    good = jit.kernel(add_one)  # never called, so nothing is written to the cache
    flagged = _flag_violations({("t", "holds_gil"): holds_gil, ("t", "uncached"): uncached,
                                ("t", "fast"): fast, ("t", "good"): good})
    assert [key for key, _, _ in flagged] == [("t", "holds_gil"), ("t", "uncached"), ("t", "fast")]


def test_no_module_calls_numba_njit_directly():
    """Kernels get their flags from :mod:`telesketch.jit` only (a direct ``njit`` inside a function,
    which the module walk above cannot see, would escape the check)."""
    import re

    offenders = []
    for path in (REPO / "telesketch").rglob("*.py"):
        if path.name == "jit.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(nb|numba)\.njit\b|^\s*@njit\b|\bfrom numba import .*\bnjit\b", code):
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert offenders == []
