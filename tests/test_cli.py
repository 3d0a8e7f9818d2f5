"""The command line: every sub-command parses; input errors are one line and status 2."""
from __future__ import annotations

import sys

import pytest

from telesketch.cli import build_parser, main
from telesketch.traces import generate_capture


@pytest.mark.parametrize("command", ["demo", "analyze", "replay", "serve", "query", "generate", "summary",
                                     "train-estimator"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: telesketch " + command in capsys.readouterr().out


def test_generate_and_summary_still_work(tmp_path, capsys):
    path = tmp_path / "g.pcap"
    assert main(["generate", str(path), "--packets", "2000", "--flows", "20", "--seed", "1"]) == 0
    assert main(["summary", str(path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "2,000 packets" in out and "top 3 flows" in out


def test_replay_of_a_missing_file_is_status_2(capsys):
    assert main(["replay", "/nonexistent.pcap", "--target", "127.0.0.1:9"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_replay_cli_to_an_unreachable_server_is_status_1(tmp_path, capsys):
    path = tmp_path / "r.pcap"
    generate_capture(path, packets=500, flows=5, seed=1)
    code = main(["replay", str(path), "--target", "127.0.0.1:9", "--retries", "1", "--backoff", "0.01",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "NOT acknowledged      sequence 1" in captured.out
    assert "error: batch 1" in captured.err and "no answer from 127.0.0.1:9" in captured.err


def test_speed_and_max_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "x.pcap", "--speed", "2", "--max"])


def test_serve_with_shards_but_no_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = main(["serve", "--shards", "2", "--data-dir", str(tmp_path), "--grpc-address", "127.0.0.1:0",
                 "--http-address", ""])
    assert code == 2
    assert "pip install 'telesketch[ray]'" in capsys.readouterr().err


def test_serve_rejects_zero_shards(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--shards", "0"])
    assert "--shards" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["query", "flow-size", "--key", "zz"], "--key: not a flow key: 'zz'"),
    (["query", "flow-size", "--key", "[2001:db8::g]:1 > [::1]:2 udp"], "--key: not an IPv6 address"),
    (["query", "top-flows", "--k", "-1"], "--k: must be an integer >= 0, got '-1'"),
    (["replay", "x.pcap", "--loop", "abc"], "--loop: must be a positive integer, got 'abc'"),
])
def test_bad_option_values_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_top_flows_needs_at_least_one(capsys):
    assert main(["query", "top-flows", "--k", "0", "--target", "127.0.0.1:9"]) == 2
    assert "top-flows needs --k >= 1" in capsys.readouterr().err
