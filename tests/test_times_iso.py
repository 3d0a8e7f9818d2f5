"""Issue 17 obs. 6: times print as ISO-8601 UTC, not raw nanoseconds."""
from __future__ import annotations

import json

from telesketch.client import Client
from telesketch.cli import main
from telesketch.report import ReportOptions, render_text
from telesketch.analyze import analyze
from telesketch.service.config import load_config
from telesketch.service.queries import time_text
from telesketch.service.server import ServiceThread
from telesketch.traces import generate_batch, generate_capture


def test_time_text_is_iso_8601_utc():
    assert time_text(1_700_000_019_521_010_123) == "2023-11-14T22:13:39.521010Z"
    assert time_text(0) == "1970-01-01T00:00:00.000000Z"


def test_query_gaps_prints_iso_times_and_json_keeps_nanoseconds(capsys):
    config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": ""})
    config.sketches = {"gaps": {"kind": "gapfilter_ao"}}
    batch = generate_batch(20_000, 100, seed=4, duration_s=2.0, gap_rate=0.05)
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        with Client(target, sender_id="t") as client:
            client.push_one(batch, 1)
        assert main(["query", "gaps", "--target", target, "--k", "3"]) == 0
        text = capsys.readouterr().out
        assert main(["query", "gaps", "--target", target, "--k", "3", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
    assert text.splitlines()[0].split()[:2] == ["time", "(UTC)"]
    assert "2023-11-14T22:1" in text and "17000000" not in text, text
    assert len(rows) == 3 and all(isinstance(r["ts_ns"], int) and r["time"].endswith("Z") for r in rows)


def test_report_gap_table_prints_iso_times(tmp_path):
    path = tmp_path / "g.pcap"
    generate_capture(path, packets=20_000, flows=100, seed=4, duration_s=2.0, gap_rate=0.05)
    config = load_config(None, {})
    config.sketches = {"gaps": {"kind": "gapfilter_ao"}}
    report, _ = analyze([path], config, ReportOptions())
    text = render_text(report)
    assert "time (UTC)" in text and "2023-11-14T22:1" in text
    assert report["gaps"]["events"][0]["time"].endswith("Z")
