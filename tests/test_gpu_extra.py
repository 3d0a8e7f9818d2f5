"""The ``[gpu]`` extra is one consistent CUDA 12 toolchain (no CUDA 13 bindings beside cupy-cuda12x),
and the dev extra brings the same compiler for the compile check."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _extras() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_gpu_extra_pins_one_cuda_major():
    gpu = _extras()["gpu"]
    assert any(re.match(r"numba-cuda\[cu12\]>=", r) for r in gpu), gpu
    assert any(r.startswith("cupy-cuda12x") for r in gpu), gpu
    assert not any("cu13" in r or "cuda13" in r for r in gpu), gpu
    assert any(r.startswith("numba-cuda[cu12]") for r in _extras()["dev"]), "the compile check needs NVVM in dev"


def test_installed_cuda_bindings_match_the_extra():
    try:
        version = metadata.version("cuda-bindings")
    except metadata.PackageNotFoundError:
        pytest.skip("cuda-bindings is not installed")
    assert version.split(".")[0] == "12", f"cuda-bindings {version} installed beside a CUDA 12 toolchain"


@pytest.mark.slow
def test_gpu_extra_resolves_with_pip():
    """``pip install --dry-run --ignore-installed '.[gpu]'`` resolves as on a clean machine (needs the
    package index; skips when unreachable) to ONE CUDA major: cuda-bindings 12.x and no ``*-cu13``
    wheel beside cupy-cuda12x and the ``nvidia-*-cu12`` compiler pieces numba-cuda needs."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", "-", f"{REPO}[gpu]"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if proc.returncode != 0 and re.search(r"(?i)connection|network|resolve host|index", proc.stderr):
        pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1][:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                 for i in json.loads(proc.stdout[proc.stdout.index("{"):])["install"]}
    assert installed.get("cuda-bindings", "").startswith("12."), installed
    assert "cupy-cuda12x" in installed and "numba-cuda" in installed, installed
    assert not [name for name in installed if re.search(r"cu(da)?13", name)], installed
    cu12 = [name for name in installed if name.startswith("nvidia-") and name.endswith("-cu12")]
    assert {"nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvrtc-cu12"} <= set(cu12), installed
    print(f"\n[gpu] extra resolves clean: cuda-bindings {installed['cuda-bindings']}, "
          f"cupy-cuda12x {installed['cupy-cuda12x']}, numba-cuda {installed['numba-cuda']}, {len(cu12)} nvidia-*-cu12")
