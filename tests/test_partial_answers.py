"""Issue 20: a Hidden Sketch too small for its traffic answers partially, and says so end to end
(query engine, gRPC WindowInfo, HTTP rows, the report, the log and ``/metrics``)."""
from __future__ import annotations

import json
import logging
import urllib.request

import numpy as np
import pytest

from telesketch.client import Client
from telesketch.packets import PacketBatch
from telesketch.report import LocalSource, ReportOptions, build_report, query_sections, render_text
from telesketch.service.server import ServiceThread
from telesketch.sketches import exact
from test_service import BASE_EPOCH, EPOCH_NS, config
from workloads import zipf_addresses

# an undersized second stage (CM of 3 x 30 counters): the peel cannot finish on the traffic below
SMALL_HH = {"kind": "hiddensketch", "memory_bytes": 8192, "blocks": 4, "bf_row_bits": 400, "cm_bytes": 360,
            "phi": 2e-3, "thresh": 10}
BIG_HH = dict(SMALL_HH, memory_bytes=24576, cm_bytes=4800)


def traffic(n: int = 24_000, seed: int = 5) -> list[PacketBatch]:
    """One epoch of Zipf sources (2,000 of them), in time order."""
    rng = np.random.default_rng(seed)
    src = zipf_addresses(n, 2000, 1.1, rng)
    ts = (BASE_EPOCH * EPOCH_NS + np.sort(rng.integers(0, EPOCH_NS // 2, n))).astype(np.uint64)
    batch = PacketBatch.from_columns(ts_ns=ts, src_ip=src, dst_ip=np.full(n, 0xC0A80001, np.uint32),
                                     src_port=np.full(n, 1234, np.uint16), dst_port=np.full(n, 443, np.uint16),
                                     proto=np.full(n, 6, np.uint8), ip_id=np.zeros(n, np.uint16))
    return [batch[i:i + 4096] for i in range(0, n, 4096)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    svc = ServiceThread(config(tmp_path_factory.mktemp("partial"), sketches={"small": SMALL_HH, "big": BIG_HH})).start()
    batches = traffic()
    client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="p")
    client.push(batches)
    yield svc, client, np.concatenate([np.asarray(b.src_ip) for b in batches])
    client.close()
    svc.stop()


def http(svc, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}{path}", timeout=10) as reply:
        return reply.read().decode()


def test_partial_answer_is_flagged_everywhere_and_never_undercounts(served, caplog):
    svc, client, src = served
    counts = exact.count_dict(src)
    with caplog.at_level(logging.WARNING, logger="telesketch.service"):
        rows, window = client.heavy_hitters(sketch="small", details=True)
    assert window.partial and rows
    assert all(est >= counts.get(k, 0) for k, est in rows)                    # never an under-count
    true = exact.heavy_hitters(src, phi=SMALL_HH["phi"])
    assert set(true) <= {k for k, _ in rows}                                  # nothing missed
    assert any("partial answer" in r.getMessage() and "small" in r.getMessage() for r in caplog.records)

    big_rows, big_window = client.heavy_hitters(sketch="big", details=True)
    assert not big_window.partial and big_rows

    body = json.loads(http(svc, "/api/v1/heavy_hitters?sketch=small"))
    assert body and all(row["partial"] is True for row in body)
    assert all(row["partial"] is False for row in json.loads(http(svc, "/api/v1/heavy_hitters?sketch=big")))

    metrics = http(svc, "/metrics")
    assert 'telesketch_partial_answers_total{sketch="small"}' in metrics
    assert 'telesketch_partial_answers_total{sketch="big"}' not in metrics
    loads = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith("telesketch_sketch_load_factor{")}
    assert loads["small"] > 1.0 > loads["big"]


def test_report_marks_partial_sections(served):
    svc, _, _ = served
    source, opts = LocalSource(svc.service.manager), ReportOptions(phi=SMALL_HH["phi"])
    assert query_sections(source, opts, 1, "small")["heavy_hitters"].get("partial") is True
    assert "partial" not in query_sections(source, opts, 1, "big")["heavy_hitters"]
    report = build_report(source, opts, mode="analyze")
    assert report["heavy_hitters"]["sketch"] == "small"          # the first configured answers by default
    assert "PARTIAL: the sketch's decode could not finish" in render_text(report)


def test_query_cli_says_partial(served, capsys):
    from telesketch.cli import main

    svc, _, _ = served
    assert main(["query", "heavy-hitters", "--target", f"127.0.0.1:{svc.grpc_port}", "--sketch", "small"]) == 0
    out = capsys.readouterr()
    assert "PARTIAL answer from sketch small" in out.err and out.out.strip()
    assert main(["query", "heavy-hitters", "--target", f"127.0.0.1:{svc.grpc_port}", "--sketch", "big"]) == 0
    assert "PARTIAL" not in capsys.readouterr().err


def test_overload_watch_warns_once_per_sketch_epoch_and_signal(caplog):
    """Without metrics: one warning per (sketch, epoch, signal); a load under 1 is silent; an
    unknown epoch (``None``) always warns; the oldest remembered epochs are forgotten first."""
    from telesketch.service import overload

    watch = overload.OverloadWatch()
    with caplog.at_level(logging.WARNING, logger="telesketch.service"):
        for _ in range(3):
            watch.epoch_closed("a", 7, 1.5, 1000)
            watch.epoch_closed("a", 8, 0.9, 1000)                     # under the threshold: silent
            watch.epoch_closed("b", 7, 2.0, 1000)                     # another sketch, same epoch
            assert watch.partial_epochs("a", [7, 9]) in ([7, 9], [])  # a signal of its own
        watch.epoch_closed("a", None, 1.5, 1000)
        watch.epoch_closed("a", None, 1.5, 1000)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("load factor" in m for m in messages) == 4 and sum("partial answer" in m for m in messages) == 1
    assert [m for m in messages if "sketch a: load factor" in m and "epoch 7" in m]
    for e in range(overload.REMEMBERED + 1):
        watch.partial_epochs("c", [e])
    assert watch.partial_epochs("c", [0]) == [0] and watch.partial_epochs("c", [overload.REMEMBERED]) == []


def metric(metrics: str, name: str, sketch: str) -> float | None:
    """The value of series ``name{sketch="..."}`` in a /metrics text, ``None`` when absent."""
    for line in metrics.splitlines():
        if line.startswith(f'{name}{{sketch="{sketch}"}} '):
            return float(line.split()[-1])
    return None


def test_each_partial_or_overloaded_epoch_is_warned_once(served, caplog):
    """Runs last in this module: it closes the epoch the other tests read."""
    svc, client, _ = served
    with caplog.at_level(logging.WARNING, logger="telesketch.service"):
        for _ in range(3):  # the same open epoch, read again and again (a dashboard polling it)
            assert client.heavy_hitters(sketch="small", details=True)[1].partial
            http(svc, "/api/v1/heavy_hitters?sketch=small")
    partial_logs = [r for r in caplog.records if "partial answer" in r.getMessage()]
    assert len(partial_logs) <= 1                                  # the first query of the module warned
    metrics = http(svc, "/metrics")
    assert metric(metrics, "telesketch_sketch_partial_epochs_total", "small") == 1.0
    assert metric(metrics, "telesketch_partial_answers_total", "small") >= 6.0   # every answer still counts
    assert metric(metrics, "telesketch_sketch_partial_epochs_total", "big") is None
    assert metric(metrics, "telesketch_sketch_overloaded_epochs_total", "small") is None  # nothing closed yet

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="telesketch.service"):
        closed, old, _ = client.rotate_epoch()
        assert closed
        rows, window = client.heavy_hitters(sketch="small", epoch=old, details=True)
        assert window.partial and rows
    messages = [r.getMessage() for r in caplog.records]
    overload = [m for m in messages if "load factor" in m]
    assert len(overload) == 1 and "small" in overload[0] and f"epoch {old}" in overload[0]
    assert not any("partial answer" in m for m in messages)       # epoch `old` was already warned about
    metrics = http(svc, "/metrics")
    assert metric(metrics, "telesketch_sketch_overloaded_epochs_total", "small") == 1.0
    assert metric(metrics, "telesketch_sketch_overloaded_epochs_total", "big") is None
    assert metric(metrics, "telesketch_sketch_closed_load_factor", "small") > 1.0 > \
        metric(metrics, "telesketch_sketch_closed_load_factor", "big")
    assert metric(metrics, "telesketch_sketch_partial_epochs_total", "small") == 1.0
