"""``benchmarks/gpu_check.sh`` (``make gpu-check``): sized under 8 minutes, and its dry run
(``GPU_CHECK_DRY_RUN=1``, the CUDA simulator, no device) passes end to end and prints the table."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _device_steps() -> dict:
    """``{step: limit_s}`` of the device run (the ``else`` branch and the probe)."""
    text = SCRIPT.read_text()
    device_part = text.split("\nelse\n", 1)[1].split("\nfi\n", 1)[0]
    probe = re.search(r"^step probe (\d+) ", text, re.M)
    steps = dict(re.findall(r"^\s*step (\w+) (\d+) ", device_part, re.M))
    return {"probe": int(probe.group(1)), **{k: int(v) for k, v in steps.items()}}


def test_device_run_is_sized_under_8_minutes():
    steps = _device_steps()
    assert set(steps) == {"probe", "tests", "bench"}, steps
    assert sum(steps.values()) + 3 * 10 < 8 * 60, steps  # each limit plus its 10 s kill grace


def test_makefile_gpu_check_runs_the_script():
    make = (REPO / "Makefile").read_text()
    recipe = make.split("\ngpu-check:", 1)[1].split("\n\n", 1)[0]
    assert "benchmarks/gpu_check.sh" in recipe, recipe


def _dry_run(**env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DRY_RUN": "1", **env_extra}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow  # ~75 s on the 2-core VM: three simulator subprocesses
def test_dry_run_passes_and_prints_the_table():
    proc = _dry_run()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "GPU backend: simulator simulator" in out
    assert re.search(r"^[1-9]\d*/\d+ tests collected", out, re.M), out[-2000:]
    rows = re.findall(r"^\| (\w[\w ]*?) \| passed \| \d+ \| \d+ \|$", out, re.M)
    assert rows == ["probe", "tests", "bench"], out[-2000:]
    assert [r.split("|")[1].strip() for r in out.splitlines() if r.startswith("| ") and "| 256 |" in r] == [
        "gapfilter_ao", "hiddensketch", "residualsketch", "llmsketch", "all 4"]


def test_a_failing_step_is_reported_and_exits_non_zero(tmp_path):
    """With an interpreter that fails every step, the table says so and the script exits 1."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    proc = _dry_run(PYTHON=str(fake))
    assert proc.returncode == 1, proc.stdout
    assert re.findall(r"^\| (\w+) \| failed \(exit \d+\) \|", proc.stdout, re.M) == ["probe", "tests", "bench"]
