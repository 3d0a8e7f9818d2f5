"""Issue 17 obs. 5: every numeric CLI option is validated; generate says what it wrote; a closed
pipe ends quietly."""
from __future__ import annotations

import subprocess
import sys

import pytest

from telesketch.cli import main
from telesketch.traces import generate_capture


@pytest.mark.parametrize("argv, message", [
    (["analyze", "x.pcap", "--phi", "-1"], "--phi: must be a fraction in (0, 1), got '-1'"),
    (["analyze", "x.pcap", "--phi", "5"], "--phi: must be a fraction in (0, 1), got '5'"),
    (["analyze", "x.pcap", "--hhh-phi", "0"], "--hhh-phi: must be a fraction in (0, 1), got '0'"),
    (["demo", "--phi", "nan"], "--phi: must be a fraction in (0, 1), got 'nan'"),
    (["generate", "x.pcap", "--zipf", "-1"], "--zipf: must be a number >= 0, got '-1'"),
    (["generate", "x.pcap", "--gap-rate", "5"], "--gap-rate: must be a fraction in [0, 1], got '5'"),
    (["query", "heavy-hitters", "--phi", "2"], "--phi: must be a fraction in (0, 1), got '2'"),
    (["query", "heavy-hitters", "--threshold", "-3"], "--threshold: must be a number >= 0, got '-3'"),
    (["replay", "x.pcap", "--retries", "-1"], "--retries: must be an integer >= 0, got '-1'"),
    (["replay", "x.pcap", "--backoff", "-0.5"], "--backoff: must be a number >= 0, got '-0.5'"),
    (["serve", "--epoch-seconds", "0"], "--epoch-seconds: must be a positive number, got '0'"),
    (["train-estimator", "t.pcap", "--out", "m", "--train-fraction", "1.5"],
     "--train-fraction: must be a fraction in (0, 1), got '1.5'"),
])
def test_numeric_options_are_validated(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a regression would write x.pcap here, not into the checkout
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_generate_reports_the_flows_it_wrote(tmp_path, capsys):
    out = tmp_path / "g.pcap"
    assert main(["generate", str(out), "--packets", "1000"]) == 0  # --flows defaults to 50,000
    line = capsys.readouterr().out
    assert "1,000 packets, 1,000 flows" in line and "50,000" not in line, line


def test_a_closed_pipe_ends_quietly(tmp_path):
    path = tmp_path / "s.pcap"
    generate_capture(path, packets=50, flows=5, seed=1)
    # enough output to overflow the pipe buffer after the reader has gone
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "summary", *[str(path)] * 400],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


@pytest.mark.parametrize("config", ["[1]", '"epochs"', "3"])
def test_train_estimator_config_must_be_a_json_object(config, capsys, tmp_path):
    """Second review (review-sk): ``--config`` that is JSON but not an object ended in a TypeError
    traceback (``argument after ** must be a mapping``); it is a usage error saying so."""
    assert main(["train-estimator", "generated:2000,100,1", "--kind", "trees", "--out", str(tmp_path / "m"),
                 "--no-progress", "--config", config]) == 2
    assert "--config must be a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("config, word", [('{"nope": 1}', "nope"), ('{"pivot": 5}', "pivot"),
                                          ('{"max_iter": 5, "seeed": 1}', "seeed")])
def test_train_estimator_config_keys_are_checked_before_training(config, word, capsys, tmp_path):
    """Second review (review-sk): a ``--config`` key the kind does not take (a typo, or one that
    train-estimator sets itself) ended in a TypeError traceback from the model's fit, after the
    trace was read and split; it is a usage error naming the key and the settings the kind takes."""
    assert main(["train-estimator", "generated:2000,100,1", "--kind", "trees", "--out", str(tmp_path / "m"),
                 "--no-progress", "--config", config]) == 2
    err = capsys.readouterr().err
    assert word in err and "max_iter" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
