"""``benchmarks/bench_gpu.py``: exits 0 with a clear message without a device; runs end to end
(every sketch, CPU and GPU, the table) under the simulator with ``--allow-simulator``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]


def _bench(*args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "bench_gpu.py", *args], cwd=REPO / "benchmarks", env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_a_device_it_says_so_and_exits_0():
    proc = _bench(NUMBA_ENABLE_CUDASIM="0", NUMBA_DISABLE_CUDA="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("bench_gpu: no CUDA device to benchmark, nothing timed")
    assert "pip install 'telesketch[gpu]'" in proc.stdout and "|" not in proc.stdout


@pytest.mark.slow  # ~10 s subprocess; test_without_a_device_it_says_so_and_exits_0 keeps the no-device path
def test_simulator_is_no_device_either():
    proc = _bench("--sizes", "100", NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0 and "the CUDA simulator is no device to time" in proc.stdout


@pytest.mark.slow
def test_smoke_under_the_simulator_prints_the_table():
    proc = _bench("--allow-simulator", "--sizes", "300", "--repeats", "1", "--flows", "50", NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "300" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["gapfilter_ao", "hiddensketch", "residualsketch", "llmsketch",
                                                         "residualsketch_batched", "all 4", "all 4 (batched)"]
