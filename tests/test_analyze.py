"""``telesketch analyze``: local report, exact truth and accuracy, JSON schema, plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from telesketch.analyze import analyze, memory_sweep
from telesketch.cli import main
from telesketch.report import SCHEMA, SECTIONS, ReportOptions, render_text
from telesketch.service.config import load_config
from telesketch.sketches import exact
from telesketch.traces import generate_batch, generate_capture

LIGHT = {"gaps": {"kind": "gapfilter_ao"}, "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4},
         "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "phi": 1e-3,
                 "expected_packets": 2_500_000}}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "synth.pcap"
    generate_capture(path, packets=60_000, flows=600, seed=11, duration_s=15.0)
    return path


def light_config(**server):
    config = load_config(None, server)
    config.sketches = dict(LIGHT)
    return config


def test_truth_sections_are_the_exact_oracles(capture):
    config = light_config(epoch_seconds=100.0)  # one epoch: the whole capture
    # phi 1e-2 (600 packets): above the Hidden Sketch's gate of 240 packets an epoch
    report, run = analyze([capture], config, ReportOptions(phi=1e-2, hhh_phi=1e-3), truth=True)
    batch = generate_batch(60_000, 600, seed=11, duration_s=15.0)
    truth = report["truth"]
    assert {r["key"]: r["estimate"] for r in truth["heavy_hitters"]["rows"]} == \
        exact.heavy_hitters(batch.src_ip, phi=1e-2)
    assert {(r["prefix"], r["length"]): r["estimate"] for r in truth["hhh"]["rows"]} == \
        {k: float(v) for k, v in exact.hhh(batch.src_ip, phi=1e-3, mode="byte").items()}
    labels = exact.gap_labels(batch.flow_keys_void(), batch.ip_id, 5, 30)
    assert truth["gaps"]["count"] == int(labels.sum())
    assert report["window"]["packets"] == 60_000 == run.packets
    for name in ("heavy_hitters", "hhh", "gaps"):
        acc = report["accuracy"][name]
        assert 0.9 <= acc["f1"] <= 1.0, (name, acc)
    assert report["heavy_changers"]["error"] and "needs 2 retained epochs" in report["heavy_changers"]["error"]


def test_accuracy_matches_set_accuracy_of_the_rows(capture):
    report, _ = analyze([capture], light_config(), ReportOptions(), truth=True)
    assert len(report["window"]["epochs"]) == 2  # 15 s of traffic, 10 s epochs
    for name, value in (("heavy_hitters", "estimate"), ("heavy_changers", "change")):
        got = {r["key"] for r in report[name]["rows"]}
        true = {r["key"] for r in report["truth"][name]["rows"]}
        expect = exact.set_accuracy(true, got)
        assert report["accuracy"][name]["f1"] == pytest.approx(expect.f1)
        assert report["accuracy"][name]["tp"] == expect.true_positives
    text = render_text(report)
    for title in ("Heavy hitters", "Heavy changers", "Hierarchical heavy hitters", "Flow gaps", "Largest flows"):
        assert title in text
    assert "accuracy: precision" in text


def test_json_report_has_the_documented_schema(capture, tmp_path, capsys):
    cfg = tmp_path / "light.json"
    cfg.write_text(json.dumps({"sketches": LIGHT}))
    assert main(["analyze", str(capture), "--config", str(cfg), "--json", "--exact"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == SCHEMA
    for key in ("source", "window", "ingest", "sketches", "notes", "truth", "accuracy") + SECTIONS:
        assert key in report
    for name in ("heavy_hitters", "heavy_changers", "hhh"):
        assert {"sketch", "combine", "phi", "count", "error", "rows"} <= set(report[name])
    row = report["heavy_hitters"]["rows"][0]
    assert isinstance(row["key"], int) and row["text"].count(".") == 3 and row["estimate"] > 0
    event = report["gaps"]["events"][0]
    assert len(bytes.fromhex(event["key"])) == 13 and {"ts_ns", "text", "jump", "epoch"} <= set(event)
    # no llmsketch configured: the largest-flows section says why, and nothing crashes
    assert report["top_flows"]["error"] and "top_flows" in report["top_flows"]["error"]


def test_inactive_sketch_is_one_note_not_a_crash(capture, capsys):
    config = light_config()
    # a trained-model directory that does not exist: the kind imports but cannot be built here
    config.sketches["flows"] = {"kind": "llmsketch", "estimator": "trees", "estimator_path": "/nonexistent/model"}
    try:
        report, _ = analyze([capture], config)
    except ValueError:  # a kind that imports but refuses the parameters is a configuration error
        pytest.skip("this llmsketch build refuses unknown estimators at configuration time")
    assert len([n for n in report["notes"] if n.startswith("sketch flows")]) == 1
    assert "note       sketch flows" in render_text(report)


def test_corrupt_capture_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"not a capture at all")
    cfg = tmp_path / "light.json"
    cfg.write_text(json.dumps({"sketches": LIGHT}))
    assert main(["analyze", str(path), "--config", str(cfg)]) == 2
    assert "neither pcap nor pcapng" in capsys.readouterr().err


def test_plots_and_memory_sweep(capture, tmp_path):
    pytest.importorskip("matplotlib")
    from telesketch.plots import write_plots

    config = light_config()
    report, _ = analyze([capture], config, truth=True)
    sweep = memory_sweep([capture], config, ReportOptions(), factors=(0.5, 1.0))
    assert {r["query"] for r in sweep} == {"heavy_hitters", "hhh", "gaps"}
    assert all(0.0 <= r["f1"] <= 1.0 for r in sweep)
    written = write_plots(report, tmp_path / "plots", sweep)
    names = {p.name for p in written}
    assert {"hhh_tree.png", "gap_timeline.png", "accuracy_vs_memory.png"} <= names
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_message(monkeypatch):
    import builtins

    from telesketch import plots

    real = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(plots.PlotsUnavailable, match=r"telesketch\[plot\]"):
        plots._pyplot()


def test_analyze_covers_the_whole_capture_by_default(tmp_path, capsys):
    """Issue 17 obs. 3: 60 s of traffic in 2 s epochs is 30 epochs, more than keep_epochs (6)."""
    path = tmp_path / "long.pcap"
    generate_capture(path, packets=6_000, flows=60, seed=4, duration_s=60.0)
    cfg = tmp_path / "gaps.json"
    cfg.write_text(json.dumps({"server": {"epoch_seconds": 2}, "sketches": {"gaps": {"kind": "gapfilter_ao"}}}))
    assert main(["analyze", str(path), "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["window"]["packets"] == report["ingest"]["packets"] == 6_000
    assert report["window"]["whole_capture"] is True and report["window"]["last"] >= 30
    assert main(["analyze", str(path), "--config", str(cfg)]) == 0
    assert "window     whole capture: 3" in capsys.readouterr().out
    # an explicit --keep-epochs still limits it, and the header says what was left out
    assert main(["analyze", str(path), "--config", str(cfg), "--keep-epochs", "3"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert header.startswith("window     last 4 epoch(s)") and "of 6,000 packets" in header, header
    assert "keep_epochs" in header


@pytest.mark.needs_traces
def test_heavy_hitters_by_destination_find_the_syn_flood_victim(shared_traces):
    """Issue 17 obs. 7: spoofed sources, so only a destination key points at 10.10.10.10."""
    path = shared_traces / "stopddos_pkt.TCP.synflood.spoofed.pcap"
    config = light_config(keep_epochs=100)
    config.sketches = {"victims": {"kind": "hiddensketch", "key": "dst_ip", "memory_bytes": 56320, "phi": 1e-4}}
    report, _ = analyze([path], config, ReportOptions(phi=0.05), truth=True)
    rows = report["heavy_hitters"]["rows"]
    assert rows and rows[0]["text"] == "10.10.10.10", rows[:3]
    assert report["truth"]["heavy_hitters"]["rows"][0]["text"] == "10.10.10.10"
    assert report["accuracy"]["heavy_hitters"]["recall"] == 1.0


def test_a_report_threshold_below_the_sketch_floor_says_so(capture):
    """Issue 17 obs. 4: 1e-3 of 60,000 packets is 60, under Hidden Sketch's 240-packet floor."""
    config = light_config(epoch_seconds=100.0)  # one epoch: the floor holds per epoch
    report, _ = analyze([capture], config, ReportOptions(phi=1e-3), truth=True)
    hh = report["heavy_hitters"]
    assert hh["error"] is None and hh["floor"] == 240 and hh["threshold"] == 240.0
    assert hh["asked_threshold"] == pytest.approx(60.0)
    # the truth is asked at the same threshold, so the accuracy is that of what the header says
    assert min(r["estimate"] for r in report["truth"]["heavy_hitters"]["rows"]) > 240
    assert report["accuracy"]["heavy_hitters"]["recall"] == 1.0
    assert "keys above 240 packets, the sketch's floor (phi 0.001 asks > 60;" in render_text(report)


def test_a_raised_floor_over_several_epochs_says_the_floor_is_per_epoch(capture):
    report, _ = analyze([capture], light_config(), ReportOptions(phi=1e-3))  # 15 s: 2 epochs of 10 s
    assert report["heavy_hitters"]["floor"] == 240
    assert "the floor holds per epoch, so a key under it in each of the 2 epochs is missed" in render_text(report)


@pytest.mark.needs_traces
def test_the_report_shows_every_hidden_sketch_so_the_victim_is_in_it(shared_traces, tmp_path, capsys):
    """The example config's 'victims' sketch (keyed by destination) gets its own table."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "telesketch.toml"
    cfg = tmp_path / "cfg.toml"
    text = example.read_text().replace('estimator = "lm"', 'estimator = "constant"')
    cfg.write_text(text)
    path = shared_traces / "stopddos_pkt.TCP.synflood.spoofed.pcap"
    assert main(["analyze", str(path), "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["heavy_hitters"]["sketch"] == "hh" and report["heavy_hitters"]["rows"] == []
    [victims] = report["more_heavy_hitters"]
    assert victims["sketch"] == "victims" and victims["rows"][0]["text"] == "10.10.10.10"
    assert main(["analyze", str(path), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Heavy hitters [sketch victims" in out and "10.10.10.10" in out


def test_byte_weighted_sections_are_scored_against_byte_truth(capture):
    """A sketch that counts bytes is compared with an exact count of bytes (the truth rows are the
    window's byte sums), not with packet counts; packet-counting sections keep packet truth."""
    config = light_config(epoch_seconds=100.0)  # one epoch: the whole capture
    config.sketches = dict(LIGHT, hh=dict(LIGHT["hh"], weight="bytes", memory_bytes=4 * 56320),
                           hhh={k: v for k, v in LIGHT["hhh"].items() if k != "expected_packets"}
                           | {"weight": "bytes", "expected_bytes": 2_500_000 * 600})
    config.sketches.pop("gaps")
    report, _ = analyze([capture], config, ReportOptions(phi=1e-2, hhh_phi=1e-2), truth=True)
    batch = generate_batch(60_000, 600, seed=11, duration_s=15.0)
    weights = batch.length.astype(np.int64)
    truth = report["truth"]
    assert report["heavy_hitters"]["unit"] == truth["heavy_hitters"]["unit"] == "bytes"
    assert {r["key"]: r["estimate"] for r in truth["heavy_hitters"]["rows"]} == \
        exact.heavy_hitters(batch.src_ip, phi=1e-2, weights=weights)
    assert {(r["prefix"], r["length"]): r["estimate"] for r in truth["hhh"]["rows"]} == \
        {k: float(v) for k, v in exact.hhh(batch.src_ip, phi=1e-2, mode="byte", weights=weights).items()}
    for name in ("heavy_hitters", "hhh"):
        assert report["accuracy"][name]["f1"] >= 0.9, (name, report["accuracy"][name])


def test_truth_specs_take_each_kinds_keys_mode_and_thresholds():
    """The ground truth counts what the configured sketches count: the Hidden Sketch key
    (``5tuple`` is the exact kind's ``flow``), the ResidualSketch mode, the GapFilter thresholds;
    the first sketch naming a parameter sets it, a sketch that does not build is skipped, and
    LLM-Sketch or the exact kind add nothing."""
    from telesketch.report import TRUTH, TRUTH_BYTES, truth_specs

    specs = {"hh": {"kind": "hiddensketch", "key": "5tuple", "device": "cpu"},
             "hh2": {"kind": "hiddensketch", "key": "dst_ip"},
             "hhh": {"kind": "residualsketch", "mode": "bit", "weight": "bytes", "threshold": 1000},
             "gaps": {"kind": "gapfilter_ao", "t1": 3, "t2": 20},
             "bad": {"kind": "gapfilter_so", "t1": 40, "t2": 20},
             "fs": {"kind": "llmsketch"}, "ex": {"kind": "exact", "key": "dst_ip"}, "unknown": {"kind": "nope"}}
    params = dict(key="flow", hhh_mode="bit", gap_t1=3, gap_t2=20)
    assert truth_specs(specs) == {TRUTH: dict(kind="exact", **params),
                                  TRUTH_BYTES: dict(kind="exact", weight="bytes", **params)}
    assert truth_specs({"gaps": {"kind": "gapfilter_so"}}) == {TRUTH: dict(kind="exact", gap_t1=5, gap_t2=30)}
    assert truth_specs({}) == {TRUTH: {"kind": "exact"}}


def test_every_kinds_truth_params_are_exact_kind_parameters():
    """``truth_params`` (on the sketch classes, so the report names no kind) gives only fields of
    the exact kind's parameters, each a value that kind accepts, for every kind of the example
    config (the shipped sketches) and every other kind at its defaults."""
    import dataclasses
    import importlib
    from pathlib import Path

    from telesketch.service.exactsketch import ExactSketchParams
    from telesketch.service.sketchset import KINDS

    fields = {f.name for f in dataclasses.fields(ExactSketchParams)}
    specs = list(load_config(Path(__file__).parents[1] / "examples" / "telesketch.toml").sketches.values())
    specs += [{"kind": name} for name in KINDS if name != "residualsketch"]  # it needs a threshold
    for spec in specs:
        kind = KINDS[spec["kind"]]
        cls = getattr(importlib.import_module(kind.module), kind.cls)
        wanted = cls.truth_params({k: v for k, v in spec.items() if k not in ("kind", "device")})
        assert set(wanted) <= fields, spec
        ExactSketchParams(**wanted)
    assert {s["kind"] for s in specs} == set(KINDS)
