"""Replay into a real server: same answers as ``analyze``, pacing, corrupt input, server loss."""
from __future__ import annotations

import copy
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from telesketch.analyze import analyze
from telesketch.client import Client
from telesketch.replay import ReplayOptions, ranges, replay
from telesketch.report import SECTIONS, RemoteSource, ReportOptions, build_report
from telesketch.service.config import DEFAULT_SKETCHES, load_config
from telesketch.service.server import ServiceThread
from telesketch.traces import generate_capture, read_capture

TRACES = ("ndpi_merged_hdr128.pcap", "slips_test-cc-capture-1.pcap", "stopddos_amp.TCP.reflection.SYNACK.pcap",
          "stopddos_amp.dns.RRSIG.fragmented.pcap", "stopddos_pkt.TCP.synflood.spoofed.pcap")


def fast_sketches() -> dict:
    """The embedded sketch set with LLM-Sketch on the constant estimator (the LM costs ~2 ms a flow)."""
    specs = copy.deepcopy(DEFAULT_SKETCHES)
    specs["flows"]["estimator"] = "constant"
    return specs


def service_config(data_dir: str = "", sketches: dict | None = None):
    config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": data_dir})
    config.sketches = sketches if sketches is not None else fast_sketches()
    return config


def answers(report: dict) -> dict:
    window = {k: v for k, v in report["window"].items() if k != "epoch_seconds"}
    return dict({name: report[name] for name in SECTIONS}, window=window)


@pytest.mark.needs_traces
@pytest.mark.parametrize("name", TRACES)
def test_replay_gives_the_same_answers_as_analyze(shared_traces, name):
    path = shared_traces / name
    config = service_config()
    opts = ReportOptions(flows=20)
    local, _ = analyze([path], config, opts, batch_size=16384)
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        summary = replay([path], ReplayOptions(target, batch_size=16384, keep_timestamps=True))
        assert summary.error is None and not summary.interrupted
        assert summary.packets_acked == summary.packets_sent == local["ingest"]["packets"] + local["ingest"]["late_packets"]
        assert summary.acked_sequences == list(range(1, len(summary.batches) + 1))
        with Client(target) as client:
            remote = build_report(RemoteSource(client), opts, mode="service", files=[path])
    assert answers(remote) == answers(local)
    # the sections are real answers, not a pair of identical errors
    assert local["hhh"]["error"] is None and local["gaps"]["error"] is None
    assert local["heavy_hitters"]["error"] is None
    flows_active = any(s["active"] for s in local["sketches"] if s["name"] == "flows")
    assert bool(local["top_flows"]["rows"]) == flows_active


def test_speed_is_honoured_within_ten_percent(tmp_path):
    path = tmp_path / "paced.pcap"
    generate_capture(path, packets=30_000, flows=300, seed=3, duration_s=3.0)
    with ServiceThread(service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})) as svc:
        summary = replay([path], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", speed=2.0))
    assert summary.error is None and summary.packets_acked == 30_000
    from telesketch.traces import read_capture

    ts = [int(b.ts_ns.min()) for b in read_capture(path)] + [int(b.ts_ns.max()) for b in read_capture(path)]
    expected = (max(ts) - min(ts)) / 1e9 / 2.0
    assert abs(summary.seconds - expected) / expected < 0.10, (summary.seconds, expected)
    assert len(summary.batches) > 20  # paced batches are cut into 50 ms groups


def _record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], 24
    while pos + 16 <= len(data):
        offsets.append(pos)
        (caplen,) = struct.unpack_from("<I", data, pos + 8)
        pos += 16 + caplen
    return offsets


def test_corrupt_file_stops_with_the_offset_after_every_good_packet(tmp_path):
    path = tmp_path / "corrupt.pcap"
    generate_capture(path, packets=12_000, flows=100, seed=5)
    bad_record = 9_000
    offset = _record_offsets(path)[bad_record]
    with open(path, "r+b") as f:
        f.seek(offset + 8)
        f.write(struct.pack("<I", 0x7FFFFFF0))  # an impossible captured length
    with ServiceThread(service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        summary = replay([path], ReplayOptions(target, batch_size=4096))
        with Client(target) as client:
            applied = int(client.stats()["packets"])
    assert summary.error is not None and f"offset {offset}" in summary.error
    assert summary.packets_acked == summary.packets_sent == bad_record == applied
    assert not summary.unacknowledged
    assert "offset" in summary.render()


def _start_server(tmp_path: Path, data_dir: Path) -> tuple[subprocess.Popen, int]:
    cfg = tmp_path / "light.json"
    cfg.write_text('{"sketches": {"gaps": {"kind": "gapfilter_ao"}, "hhh": {"kind": "residualsketch", "phi": 0.001, '
                   '"expected_packets": 2500000}}}')
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "serve", "--config", str(cfg),
                             "--grpc-address", "127.0.0.1:0", "--http-address", "", "--data-dir", str(data_dir),
                             "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("telesketch serving grpc="), line
    return proc, int(line.split("grpc=")[1].split()[0])


def test_server_loss_mid_replay_is_reported_with_the_acknowledged_batches(tmp_path):
    path = tmp_path / "long.pcap"
    generate_capture(path, packets=40_000, flows=400, seed=9, duration_s=8.0)
    data_dir = tmp_path / "data"
    proc, port = _start_server(tmp_path, data_dir)
    opts = ReplayOptions(f"127.0.0.1:{port}", speed=2.0, sender_id="loss-test", retries=3, backoff_s=0.05)
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=replay([path], opts)))
    try:
        worker.start()
        with Client(f"127.0.0.1:{port}") as client:  # kill once some batches are in (not a fixed sleep: load)
            deadline = time.monotonic() + 30
            while int(client.stats()["packets"]) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        worker.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = result["summary"]
    assert summary.error is not None and "no answer from" in summary.error and "after 4 attempts" in summary.error
    acked = summary.acked_sequences
    assert acked and acked == list(range(1, len(acked) + 1))
    assert len(summary.unacknowledged) == 1 and summary.unacknowledged[0].sequence == acked[-1] + 1
    assert summary.packets_acked < summary.packets_sent < 40_000
    text = summary.render()
    assert f"sequences 1-{acked[-1]}" in text and f"NOT acknowledged      sequence {acked[-1] + 1}" in text
    # what was acknowledged survived the kill: a restarted server has applied exactly those batches
    proc, port = _start_server(tmp_path, data_dir)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            # log first, then apply, then acknowledge: the batch in flight at the kill may have been
            # logged (so it is applied after the restart) without its acknowledgement reaching replay
            last = client.last_sequence("loss-test")
            assert last in (acked[-1], acked[-1] + 1)
            in_flight = summary.unacknowledged[0].packets if last == acked[-1] + 1 else 0
            assert int(client.stats()["packets"]) == summary.packets_acked + in_flight
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_unreachable_server_fails_clearly_after_retries(tmp_path):
    path = tmp_path / "small.pcap"
    generate_capture(path, packets=1_000, flows=10, seed=1)
    summary = replay([path], ReplayOptions("127.0.0.1:9", retries=2, backoff_s=0.01))
    assert summary.error and "no answer from 127.0.0.1:9 after 3 attempts" in summary.error
    assert summary.acked_sequences == [] and summary.retries == 2
    assert "NOT acknowledged      sequence 1" in summary.render()


def test_loop_shifts_timestamps_so_nothing_is_late(tmp_path):
    path = tmp_path / "loop.pcap"
    generate_capture(path, packets=5_000, flows=50, seed=2, duration_s=2.0)
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})
    config.epoch_seconds = 0.5  # an unshifted second pass would be entirely late
    with ServiceThread(config) as svc:
        summary = replay([path], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", loop=3, batch_size=2048,
                                               keep_timestamps=True))
        with Client(f"127.0.0.1:{svc.grpc_port}") as client:
            epochs = [int(e["epoch"]) for e in client.stats()["epochs"]]
    assert summary.error is None
    assert summary.packets_acked == 15_000 and summary.packets_late == 0
    assert summary.batches[-1].loop == 2 and summary.batches[-1].where().startswith("loop.pcap pass 3")
    assert epochs[-1] >= 3_400_000_000 + 10  # three passes of 2 s from t = 1.7e9 s, in 0.5 s epochs


def test_ranges():
    assert ranges([1, 2, 3, 5, 7, 8]) == [[1, 3], [5, 5], [7, 8]]
    assert ranges([]) == []


# ---------------------------------------------------------------------- issue 17: replay semantics
def _two_captures(tmp_path: Path) -> tuple[Path, Path]:
    """A newer and an older capture (the older one starts a day before the newer one)."""
    newer, older = tmp_path / "newer.pcap", tmp_path / "older.pcap"
    generate_capture(newer, packets=2_000, flows=20, seed=1, duration_s=30.0, start_s=1.7e9)
    generate_capture(older, packets=1_000, flows=20, seed=2, duration_s=1.0, start_s=1.7e9 - 86_400)
    return newer, older


def test_replay_retimes_to_now_so_an_older_capture_after_a_newer_one_is_applied(tmp_path):
    newer, older = _two_captures(tmp_path)
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})
    config.epoch_seconds, config.keep_epochs = 1.0, 100
    before = time.time_ns()
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        first = replay([newer], ReplayOptions(target))       # as fast as possible: 30 s of stamps ahead
        second = replay([older], ReplayOptions(target))
        with Client(target) as client:
            epochs = [int(e["epoch"]) for e in client.stats()["epochs"]]
    assert first.error is None and second.error is None
    assert (first.packets_applied, first.packets_late) == (2_000, 0)
    assert (second.packets_applied, second.packets_late) == (1_000, 0)
    assert second.warnings == []
    # stamps are now, not 2023: the first epoch starts at the replay's wall-clock time
    assert before // 10**9 - 1 <= min(epochs) <= time.time_ns() // 10**9 + 1
    # the second capture went after the first one's last (future) packet, gaps kept
    assert max(epochs) >= min(epochs) + 29


def test_keep_timestamps_reports_late_packets_with_the_count_and_reason(tmp_path):
    newer, older = _two_captures(tmp_path)
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        replay([newer], ReplayOptions(target, keep_timestamps=True))
        summary = replay([older], ReplayOptions(target, keep_timestamps=True))
    assert summary.error is None and summary.packets_late == 1_000
    assert summary.too_late  # past the default threshold: the CLI exits non-zero
    text = summary.render()
    assert "WARNING 1,000 of 1,000 acknowledged packets (100.0%) were refused as late" in text
    assert "older than the service's open epoch" in text and "--keep-timestamps" in text


def test_cli_replay_exits_non_zero_when_packets_are_late(tmp_path):
    newer, older = _two_captures(tmp_path)
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        run = lambda *files, extra=(): subprocess.run(  # noqa: E731
            [sys.executable, "-m", "telesketch.cli", "replay", *map(str, files), "--target", target, "--no-progress",
             *extra], capture_output=True, text=True, timeout=120)
        ok = run(newer, extra=("--keep-timestamps",))
        late = run(older, extra=("--keep-timestamps",))
        tolerated = run(older, extra=("--keep-timestamps", "--max-late", "1"))
        retimed = run(older)
    assert ok.returncode == 0, ok.stderr
    assert late.returncode == 3, (late.stdout, late.stderr)
    assert "1,000 of 1,000" in late.stderr and "late" in late.stderr
    assert tolerated.returncode == 0 and "WARNING" in tolerated.stdout
    assert retimed.returncode == 0 and "applied / late        1,000 / 0" in retimed.stdout


def test_replay_target_needs_a_port_and_an_unknown_host_fails_fast(tmp_path):
    path = tmp_path / "small.pcap"
    generate_capture(path, packets=100, flows=5, seed=1)
    with pytest.raises(ValueError, match="HOST:PORT"):
        ReplayOptions("127.0.0.1")
    with pytest.raises(ValueError, match="port"):
        ReplayOptions("127.0.0.1:99999")
    start = time.perf_counter()
    summary = replay([path], ReplayOptions("no-such-host.invalid:50051"))
    assert time.perf_counter() - start < 3.0
    assert summary.error and "no-such-host.invalid" in summary.error and "resolve" in summary.error
    cli = subprocess.run([sys.executable, "-m", "telesketch.cli", "replay", str(path), "--target", "127.0.0.1",
                          "--no-progress"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "HOST:PORT" in cli.stderr


@pytest.mark.needs_traces
def test_the_issue_17_sequence_of_captures_is_applied_in_full(shared_traces):
    """Obs. 1: nDPI (2020), SYN flood (2021), slips (2024), then SYN-ACK (2021) and RRSIG (2021)."""
    order = ("ndpi_merged_hdr128.pcap", "stopddos_pkt.TCP.synflood.spoofed.pcap", "slips_test-cc-capture-1.pcap",
             "stopddos_amp.TCP.reflection.SYNACK.pcap", "stopddos_amp.dns.RRSIG.fragmented.pcap")
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}, "hh": DEFAULT_SKETCHES["hh"]})
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        for name in order:
            summary = replay([shared_traces / name], ReplayOptions(target))
            assert summary.error is None and summary.packets_late == 0 and not summary.too_late, name
            assert summary.packets_applied == summary.packets_sent > 0, name


def test_a_long_capture_replayed_at_full_speed_is_held_within_the_lead_of_the_clock(tmp_path):
    """A 30-minute capture sent as fast as possible would be stamped up to 30 min ahead of the clock,
    past the service's max_future_skew_seconds, and refused: its stamps stay within RETIME_LEAD_NS."""
    from telesketch.replay import RETIME_LEAD_NS

    path = tmp_path / "long.pcap"
    generate_capture(path, packets=6_000, flows=40, seed=3, duration_s=1800.0)
    config = service_config(sketches={"hh": DEFAULT_SKETCHES["hh"]})
    with ServiceThread(config) as svc:
        before = time.time_ns()
        summary = replay([path], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", batch_size=500))
        with Client(f"127.0.0.1:{svc.grpc_port}") as client:
            newest_end = max(int(e["end_ns"]) for e in client.stats()["epochs"])
    assert summary.error is None and summary.packets_rejected == 0 and summary.packets_late == 0
    assert summary.packets_applied == 6_000 and summary.held_back
    assert any("squeezed out" in w for w in summary.warnings)
    assert newest_end <= time.time_ns() + RETIME_LEAD_NS + 10 * 10**9 and newest_end > before


def test_retimed_loop_passes_follow_each_other(tmp_path):
    path = tmp_path / "loop.pcap"
    generate_capture(path, packets=3_000, flows=30, seed=2, duration_s=2.0)
    config = service_config(sketches={"gaps": {"kind": "gapfilter_ao"}})
    config.epoch_seconds, config.keep_epochs = 0.5, 100
    with ServiceThread(config) as svc:
        summary = replay([path], ReplayOptions(f"127.0.0.1:{svc.grpc_port}", loop=3, batch_size=1024))
        with Client(f"127.0.0.1:{svc.grpc_port}") as client:
            epochs = [int(e["epoch"]) for e in client.stats()["epochs"]]
    assert summary.error is None and summary.packets_applied == 9_000 and summary.packets_late == 0
    # three passes back to back (not on top of each other) span at least 3x the capture: in 0.5 s
    # epochs that is floor(3 * span / 0.5) epoch boundaries, wherever the re-timing anchor falls
    stamps = np.concatenate([b.ts_ns for b in read_capture(path)])
    span_s = (int(stamps.max()) - int(stamps.min())) / 1e9
    assert epochs[-1] - epochs[0] >= int(3 * span_s / 0.5) >= 9


def test_replay_cli_exits_1_when_the_service_refuses_batches(tmp_path, capsys):
    """Refused packets are lost to the answers: replay must not report success (it exited 0)."""
    from telesketch.cli import main

    path = tmp_path / "ahead.pcap"  # recorded a day ahead of this clock: refused as future_timestamp
    generate_capture(path, packets=2_000, flows=20, seed=4, start_s=time.time() + 86_400)
    with ServiceThread(service_config(sketches={"hh": DEFAULT_SKETCHES["hh"]})) as svc:
        code = main(["replay", str(path), "--target", f"127.0.0.1:{svc.grpc_port}", "--keep-timestamps",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "refused by the service and not counted" in err
