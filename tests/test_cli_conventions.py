"""CLI conventions: --version, help on every option, --json on every command that prints a result,
exit statuses (0 success, 1 runtime failure, 2 usage error), progress that follows what was done."""
from __future__ import annotations

import argparse
import ast
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from telesketch import __version__
from telesketch.cli import build_parser, main
from telesketch.progress import ProgressBar
from telesketch.traces import generate_capture

REPO = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"telesketch {__version__}"


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in _subparsers(build_parser()).items() for a in sub._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"options without help: {missing}"


def test_every_command_that_prints_a_result_takes_json():
    printing = {"demo", "analyze", "replay", "query", "generate", "summary"}
    for name in printing:
        options = {o for a in _subparsers(build_parser())[name]._actions for o in a.option_strings}
        assert "--json" in options, name


def test_generate_and_summary_json(tmp_path, capsys):
    path = tmp_path / "g.pcap"
    assert main(["generate", str(path), "--packets", "3000", "--flows", "30", "--seed", "2", "--json"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["packets"] == 3000 and generated["flows"] == 30 and generated["path"] == str(path)
    assert main(["summary", str(path), str(path), "--top", "2", "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert len(summaries) == 2 and summaries[0]["packets"] == 3000
    assert len(summaries[0]["top_flows"]) == 2 and isinstance(summaries[0]["top_flows"][0]["packets"], int)


# ---------------------------------------------------------------------------- exit statuses
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runtime_failures_are_status_1(tmp_path, capsys):
    assert main(["query", "stats", "--target", f"127.0.0.1:{_closed_port()}"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    light = tmp_path / "light.json"  # one small sketch: the failure, not model loading, is under test
    light.write_text(json.dumps({"sketches": {"gaps": {"kind": "gapfilter_ao"}}}))
    with socket.socket() as taken:  # serve on a port that is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--config", str(light), "--grpc-address", "127.0.0.1:0", "--http-address",
                     f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), "--log-level", "error"]) == 1
    assert "cannot listen for HTTP" in capsys.readouterr().err


def test_usage_errors_are_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary"])
    assert exc.value.code == 2
    assert main(["summary", str(tmp_path / "missing.pcap")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nepoch_seconds = -1\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "epoch_seconds must be positive" in capsys.readouterr().err


def test_status_in_a_real_subprocess(tmp_path):
    run = subprocess.run([sys.executable, "-m", "telesketch.cli", "query", "stats", "--target",
                          f"127.0.0.1:{_closed_port()}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr


# ---------------------------------------------------------------------------- progress
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    tty = _Tty()
    with ProgressBar("job", total=100, stream=tty) as bar:
        bar.update(40)
    assert bar.mode == "bar" and "\r" in tty.getvalue() and "40%|" in tty.getvalue()
    log = io.StringIO()
    bar = ProgressBar("job", total=100, stream=log, interval_s=0.0)
    for _ in range(5):
        bar.update(20, "late 0")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 5 and lines[-1].startswith("job: 100/100 pkt (100%)")
    quiet = io.StringIO()
    bar = ProgressBar("job", total=100, stream=quiet, enabled=False)
    bar.update(100)
    assert quiet.getvalue() == ""


def test_replay_progress_follows_what_was_acknowledged(tmp_path):
    """Paced replay of one read batch: the shown share grows with the parts sent, not jumps to 100 %."""
    from telesketch.replay import Progress, ReplayOptions, replay
    from telesketch.service.server import ServiceThread
    from test_service import config

    path = tmp_path / "paced.pcap"
    generate_capture(path, packets=4_000, flows=40, seed=3, duration_s=1.0)
    seen: list[tuple[float, int]] = []

    class Recorder(Progress):
        def update(self, fraction, summary, note="", force=False):
            if fraction is not None:
                seen.append((fraction, summary.packets_acked))

    with ServiceThread(config(tmp_path, http_address="", sketches={"exact": {"kind": "exact"}})) as svc:
        summary = replay([path], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", speed=4.0, batch_size=65536),
                         progress=Recorder(enabled=False))
    assert summary.packets_acked == 4_000 and len(seen) > 3
    assert seen[0][0] < 0.5 and seen[-1][0] == pytest.approx(1.0)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    for fraction, acked in seen:  # the share shown tracks the packets acknowledged
        assert fraction == pytest.approx(acked / 4_000, abs=0.05)


# ---------------------------------------------------------------------------- packaging
def test_scapy_is_not_imported_at_runtime_and_is_a_test_dependency():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("scapy") for d in project["dependencies"])
    assert any(d.startswith("scapy") for d in project["optional-dependencies"]["dev"])
    for source in (REPO / "telesketch").rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "scapy" for n in names), f"{source} imports scapy"


def test_data_directory_is_ignored_by_git():
    assert "telesketch-data/" in (REPO / ".gitignore").read_text().split()


def test_every_config_key_appears_in_the_example_config():
    """examples/telesketch.toml claims every key: each server setting is written there (set or as a
    commented line), with its default value when it is set."""
    import re
    from dataclasses import fields

    from telesketch.service.config import ServiceConfig, load_config

    text = (REPO / "examples" / "telesketch.toml").read_text()
    written = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    keys = {f.name for f in fields(ServiceConfig)} - {"sketches"}
    assert keys <= written, f"keys missing from examples/telesketch.toml: {sorted(keys - written)}"
    example, default = load_config(REPO / "examples" / "telesketch.toml"), ServiceConfig()
    for key in keys:
        assert getattr(example, key) == getattr(default, key), f"{key}: the example differs from the default"
    # the example runs the embedded default's sketches, plus extras it explains (the destination-keyed 'victims')
    assert set(default.sketches) <= set(example.sketches)
    for name, spec in default.sketches.items():
        assert {k: example.sketches[name].get(k) for k in spec} == spec, name


def test_train_estimator_kind_choices_are_the_trained_kinds():
    """``cli.py`` writes the ``--kind`` choices out (importing ``telesketch.estimators`` would load numpy at
    start-up); they must stay ``TRAINED_KINDS``, in its order (the help lists them so)."""
    from telesketch.estimators import TRAINED_KINDS

    (kind,) = [a for a in _subparsers(build_parser())["train-estimator"]._actions if a.dest == "kind"]
    assert tuple(kind.choices) == TRAINED_KINDS


def test_cli_parser_starts_without_numpy():
    """Why the choices are written out: building the parser imports neither numpy nor numba."""
    code = ("import sys, telesketch.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('numpy', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
