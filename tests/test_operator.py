"""Operator-facing behaviour of a live server on loopback: metrics, gRPC health while draining,
compression, keepalive, the HTTP port's TLS, token warning, window notes, bounded concurrency and
the status page."""
from __future__ import annotations

import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telesketch import wire
from telesketch.client import Client
from telesketch.service import http as service_http
from telesketch.service.server import ServiceThread, grpc_server_options
from telesketch.service.status_page import StatusSource
from telesketch.v1 import service_pb2, service_pb2_grpc
from test_service import EPOCH_NS, _message, _self_signed_certificate, config, generate_batches

SMALL = {"exact": {"kind": "exact", "phi": 0.01}, "gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024}}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    svc = ServiceThread(config(tmp_path_factory.mktemp("op"), sketches=SMALL, max_message_bytes=1 << 20)).start()
    Client(f"127.0.0.1:{svc.grpc_port}", sender_id="op").push(generate_batches(2, 5_000, 2_500))
    yield svc
    svc.stop()


def fetch(svc, path: str, scheme: str = "http", context=None, headers=None):
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{svc.http_port}{path}", headers=headers or {})
    return urllib.request.urlopen(request, timeout=10, context=context)


def samples(svc) -> dict[str, list]:
    text = fetch(svc, "/metrics").read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


# ---------------------------------------------------------------------------- metrics
def test_metrics_have_build_info_process_metrics_and_epoch_start_time_without_created(live):
    got = samples(live)
    info = got["telesketch_build_info"][0]
    from telesketch import __version__

    assert info.labels["version"] == __version__ and info.value == 1
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info"):
        assert name in got, name
    open_epoch = int(got["telesketch_epoch"][0].value)
    assert got["telesketch_epoch_start_seconds"][0].value == pytest.approx(open_epoch * EPOCH_NS / 1e9)
    assert 1.6e9 < got["telesketch_epoch_start_seconds"][0].value < 1.8e9  # a time, not an id
    assert not [name for name in got if name.endswith("_created")]


def test_oversized_messages_are_refused_and_counted(live):
    def oversized():
        return sum(s.value for s in samples(live)["telesketch_batches_rejected_total"] if s.labels["reason"] == "oversized")

    before, packets = oversized(), json.load(fetch(live, "/api/v1/stats"))["packets"]
    big = _message(header=b"\x00" * (1 << 20) + b"\x00" * 4096)  # over max_message_bytes (1 MiB)
    stub = Client(f"127.0.0.1:{live.grpc_port}")._ingest
    with pytest.raises(grpc.RpcError) as info:
        stub.PushOne(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Push(iter([big]), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert oversized() == before + 2
    assert json.load(fetch(live, "/api/v1/stats"))["packets"] == packets


# ---------------------------------------------------------------------------- gRPC
def test_gzip_compressed_batches_are_accepted(tmp_path):
    batch = generate_batches(1, 2_000, 2_000)[0]
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}}, http_address="")) as svc:
        with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}", compression=grpc.Compression.Gzip) as channel:
            ingest = service_pb2_grpc.IngestStub(channel)
            ack = ingest.PushOne(wire.batch_to_message(batch, sender_id="gz", sequence=1), timeout=10,
                                 compression=grpc.Compression.Gzip)
            assert ack.applied_packets == 2_000
            stats = service_pb2_grpc.QueryStub(channel).Stats(service_pb2.StatsRequest(), timeout=10)
            assert stats.packets == 2_000


def test_keepalive_options_are_set():
    from telesketch.service.config import ServiceConfig

    options = dict(grpc_server_options(ServiceConfig()))
    assert options["grpc.keepalive_time_ms"] > 0 and options["grpc.keepalive_timeout_ms"] > 0
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] <= 10_000


def test_health_turns_not_serving_while_draining(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    svc = ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}}, http_address="")).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="telesketch.v1.Ingest"),
                                                     timeout=30)
    seen = [next(watch).status]
    import threading

    stopper = threading.Thread(target=svc.stop)
    stopper.start()
    try:
        for reply in watch:
            seen.append(reply.status)
    except grpc.RpcError:
        pass  # the server closed the stream after draining
    stopper.join(30)
    channel.close()
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen[1:], seen


# ---------------------------------------------------------------------------- HTTP
def test_last_n_beyond_what_is_retained_answers_what_is_kept_with_a_note(live):
    reply = fetch(live, "/api/v1/gap_counts?last=50")
    rows = json.load(reply)
    assert len(rows) == 2 and all(r["gaps"] > 0 for r in rows)
    assert "last=50" in reply.headers[service_http.NOTE_HEADER] and "last 2" in reply.headers[service_http.NOTE_HEADER]
    assert json.load(fetch(live, "/api/v1/heavy_hitters?last=9&sketch=exact")) == \
        json.load(fetch(live, "/api/v1/heavy_hitters?last=2&sketch=exact"))
    changers = fetch(live, "/api/v1/heavy_changers?last=5&sketch=exact")  # 2 retained: one window each way
    assert "answered over the last 1" in changers.headers[service_http.NOTE_HEADER]
    plain = fetch(live, "/api/v1/gap_counts?last=1")
    assert service_http.NOTE_HEADER not in plain.headers
    with pytest.raises(urllib.error.HTTPError) as info:  # an epoch by id is not guessed
        fetch(live, "/api/v1/heavy_hitters?epoch=5")
    assert info.value.code == 404


def test_clock_now_moves_times_so_the_newest_epoch_ends_now(live):
    before = time.time() * 1000
    shifted = json.load(fetch(live, "/api/v1/gap_counts?last=2&clock=now"))
    packet = json.load(fetch(live, "/api/v1/gap_counts?last=2"))
    assert [r["packet_time"] for r in shifted] == [r["time"] for r in packet]
    newest_end = shifted[-1]["time"] + EPOCH_NS // 1_000_000
    assert before - 1000 <= newest_end <= time.time() * 1000 + 1000
    assert [r["gaps"] for r in shifted] == [r["gaps"] for r in packet]
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(live, "/api/v1/epochs?clock=yesterday")
    assert info.value.code == 400 and "clock" in json.load(info.value)["error"]


def test_https_with_the_grpc_certificate(tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    cfg = config(tmp_path, tls_cert=str(cert), tls_key=str(key), token="s3cret", sketches={"exact": {"kind": "exact"}})
    with ServiceThread(cfg) as svc:
        Client(f"localhost:{svc.grpc_port}", token="s3cret", root_certificates=cert.read_bytes()).push_one(
            generate_batches(1, 300, 300)[0])
        context = ssl.create_default_context(cafile=str(cert))
        reply = fetch(svc, "/api/v1/stats", "https", context, {"Authorization": "Bearer s3cret"})
        assert json.load(reply)["packets"] == 300
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
            fetch(svc, "/api/v1/health")


def test_a_token_over_plain_http_off_loopback_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="telesketch.service")
    cfg = config(tmp_path, http_address="0.0.0.0:0", token="s3cret", sketches={"exact": {"kind": "exact"}})
    with ServiceThread(cfg):
        pass
    assert any("travels in clear" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with ServiceThread(config(tmp_path / "b", token="s3cret", sketches={"exact": {"kind": "exact"}})):
        pass  # loopback: no warning
    assert not any("travels in clear" in r.getMessage() for r in caplog.records)


def test_http_concurrency_is_bounded_and_idle_connections_time_out(tmp_path, monkeypatch):
    monkeypatch.setattr(service_http, "MAX_CONCURRENT_REQUESTS", 3)
    monkeypatch.setattr(service_http._Handler, "timeout", 1.0)
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}})) as svc:
        idle = [socket.create_connection(("127.0.0.1", svc.http_port), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as info:
            fetch(svc, "/api/v1/health")
        assert info.value.code == 503
        for conn in idle:  # the server closes each idle connection after its timeout
            assert conn.recv(1024) == b""
            conn.close()
        time.sleep(0.2)
        assert json.load(fetch(svc, "/api/v1/health")) == {"status": "ok"}


def test_status_page_shows_the_current_answers(live):
    page = fetch(live, "/").read().decode()
    assert page.startswith("<!doctype html>") and "<svg" in page and 'http-equiv="refresh"' in page
    for row in json.load(fetch(live, "/api/v1/heavy_hitters?last=1"))[:3]:
        assert row["key"] in page
    hhh = sorted(json.load(fetch(live, "/api/v1/hhh?last=1")), key=lambda r: -r["estimate"])
    for row in hhh[:5]:
        assert f'>{row["prefix"]}<' in page and (not row["parent"] or f'>{row["parent"]}<' in page)
    assert "2023-11-14" in page  # the packet clock as a date
    assert "gap-checked (gaps)" in page  # the GapFilter's coverage, read through StatusSource.manager
    assert isinstance(live.service, StatusSource)


def test_status_page_of_an_empty_service_says_why(tmp_path):
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}})) as svc:
        page = fetch(svc, "/").read().decode()
    assert "nothing has been ingested" in page
