"""deploy/: the systemd unit passes ``systemd-analyze verify`` and starts the command it names."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "systemd" / "telesketch.service"
SHIPPED_BINARY = "/opt/telesketch/venv/bin/telesketch"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    binary = Path(sys.executable).with_name("telesketch")
    if not binary.exists():
        binary = shutil.which("telesketch")
    if binary is None:
        pytest.skip("the telesketch console script is not installed (pip install -e .)")
    text = UNIT.read_text()
    assert f"ExecStart={SHIPPED_BINARY} serve " in text
    unit = tmp_path / "telesketch.service"
    unit.write_text(text.replace(SHIPPED_BINARY, str(binary)))  # verify checks ExecStart is executable
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (run.stdout + run.stderr).splitlines() if "telesketch.service" in line]
    assert run.returncode == 0 and not ours, run.stdout + run.stderr
    broken = tmp_path / "broken.service"  # the check can fail: a bad key is reported
    broken.write_text(text.replace(SHIPPED_BINARY, str(binary)).replace("RestartSec=", "RestartSecs="))
    run = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "RestartSecs" in run.stdout + run.stderr


def test_systemd_unit_runs_a_valid_command_line():
    from telesketch.cli import build_parser

    exec_start = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].split()[1:]
    args = build_parser().parse_args(argv)
    assert args.command == "serve" and args.config == "/etc/telesketch/telesketch.toml"
