"""The streaming service against a real server on loopback (ephemeral ports).

Every query is checked against the same sketch classes run offline on the same packets, epoch by
epoch (and the ``exact`` kind against the ground-truth oracles), plus retries, bad input, auth,
health/reflection and restart after ``kill -9``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from telesketch import wire
from telesketch.client import Client
from telesketch.packets import PacketBatch
from telesketch.service.config import ServiceConfig
from telesketch.service.queries import key_text
from telesketch.service.server import ServiceThread
from telesketch.sketches import exact
from workloads import BASE_EPOCH, EPOCH_NS  # noqa: F401 - BASE_EPOCH: other test modules import it from here
from workloads import service_traffic as generate_batches

REPO = Path(__file__).resolve().parents[1]


def epoch_parts(batches: list[PacketBatch]) -> dict[int, PacketBatch]:
    whole = PacketBatch.concat(batches)
    eids = whole.ts_ns // np.uint64(EPOCH_NS)
    return {int(e): whole[eids == e] for e in np.unique(eids)}


SKETCHES = {
    "exact": {"kind": "exact", "phi": 0.005},
    "gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024},
    "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 0.005, "expected_epoch_items": 30_000},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "threshold": 300},
    "flows": {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size", "estimator": "constant"},
}


def config(tmp_path, **overrides) -> ServiceConfig:
    values = dict(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "data"),
                  epoch_seconds=1.0, keep_epochs=6, sketches=dict(SKETCHES))
    values.update(overrides)
    return ServiceConfig(**values)


@pytest.fixture(scope="module")
def traffic():
    return generate_batches()


@pytest.fixture(scope="module")
def server(tmp_path_factory, traffic):
    """A server that has ingested ``traffic`` through one Push stream."""
    svc = ServiceThread(config(tmp_path_factory.mktemp("svc"), max_message_bytes=4 << 20)).start()
    client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="collector-1")
    summary = client.push(traffic)
    assert summary.batches == len(traffic) and summary.applied_packets == sum(map(len, traffic))
    yield svc, client
    client.close()
    svc.stop()


def active(svc, name: str) -> bool:
    return any(cs.name == name and cs.active for cs in svc.service.sketchset.sketches)


def needs(svc, name):
    if not active(svc, name):
        note = next(cs.note for cs in svc.service.sketchset.sketches if cs.name == name)
        pytest.skip(f"sketch {name} not active here: {note}")


# ---------------------------------------------------------------------------- answers vs offline
def test_exact_kind_answers_the_oracles_per_epoch_and_over_windows(server, traffic):
    svc, client = server
    parts = epoch_parts(traffic)
    for eid, part in parts.items():
        hh = dict(client.heavy_hitters(epoch=eid, sketch="exact"))
        assert hh == exact.heavy_hitters(part.src_ip, phi=0.005) and hh
        hhh = {(p, length): c for p, length, c in client.hhh(epoch=eid, sketch="exact")}
        assert hhh == exact.hhh(part.src_ip, phi=1e-3)
    whole = PacketBatch.concat(traffic)
    rows, info = client.heavy_hitters(last=3, sketch="exact", threshold=500, details=True)
    assert dict(rows) == exact.heavy_hitters(whole.src_ip, threshold=500)
    assert list(info.epochs) == sorted(parts) and info.packets == len(whole) and info.combine == "merged"
    counts = exact.count_dict(whole.flow_keys_void())
    top = client.top_flows(5, last=3, sketch="exact")
    assert top == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    keys = [k for k, _ in top] + [b"\x00" * 13]
    assert client.flow_size(keys, last=3, sketch="exact") == [counts.get(k, 0) for k in keys]


def test_heavy_changers_compare_adjacent_windows(server, traffic):
    svc, client = server
    parts = epoch_parts(traffic)
    ids = sorted(parts)
    got = dict(client.heavy_changers(epoch=ids[-1], sketch="exact"))
    want = exact.heavy_changers(parts[ids[-2]].src_ip, parts[ids[-1]].src_ip, phi=0.005)
    assert got == want and got, "the burst in the last epoch is a heavy changer"
    if active(svc, "hh"):
        from telesketch.sketches.hiddensketch import HiddenSketch

        params = {k: v for k, v in SKETCHES["hh"].items() if k != "kind"}
        before, after = HiddenSketch(**params), HiddenSketch(**params)
        before.update(parts[ids[-2]])
        after.update(parts[ids[-1]])
        assert dict(client.heavy_changers(epoch=ids[-1], sketch="hh")) == dict(after.heavy_changers(before))


def test_hidden_sketch_heavy_hitters_match_offline(server, traffic):
    svc, client = server
    needs(svc, "hh")
    from telesketch.sketches.hiddensketch import HiddenSketch

    params = {k: v for k, v in SKETCHES["hh"].items() if k != "kind"}
    for eid, part in epoch_parts(traffic).items():
        offline = HiddenSketch(**params)
        offline.update(part)
        assert dict(client.heavy_hitters(epoch=eid, sketch="hh")) == dict(offline.heavy_hitters())


def test_residual_sketch_hhh_matches_offline_per_epoch_and_summed(server, traffic):
    svc, client = server
    needs(svc, "hhh")
    from telesketch.sketches.residualsketch import ResidualSketch, merged_hhh

    params = {k: v for k, v in SKETCHES["hhh"].items() if k != "kind"}
    offline = {}
    for eid, part in epoch_parts(traffic).items():
        offline[eid] = ResidualSketch(**params)
        offline[eid].update(part)
        assert sorted(client.hhh(epoch=eid, sketch="hhh")) == sorted((p, n, float(c)) for p, n, c in offline[eid].hhh())
    rows, info = client.hhh(last=3, sketch="hhh", details=True)
    want = merged_hhh([offline[e] for e in sorted(offline)], sum(s.T for s in offline.values()))
    assert sorted(rows) == sorted((e.prefix, e.length, float(e.discounted)) for e in want)
    assert info.combine == "summed layer estimates"


def test_gapfilter_events_match_offline_and_windows_union(server, traffic):
    svc, client = server
    needs(svc, "gaps")
    from telesketch.sketches.gapfilter import GapFilterAO

    offline = GapFilterAO(memory_bytes=SKETCHES["gaps"]["memory_bytes"])
    events = {}
    for eid, part in epoch_parts(traffic).items():
        offline.start_epoch(eid)
        offline.update(part)
        events[eid] = offline.gap_events()
    for eid, ev in events.items():
        got = client.flow_gaps(epoch=eid, sketch="gaps")
        assert [g.ts_ns for g in got] == ev["ts_ns"].tolist() and len(got) > 0
        assert [g.jump for g in got] == ev["jump"].tolist()
    union = client.flow_gaps(last=3, sketch="gaps")
    assert len(union) == sum(len(ev) for ev in events.values())
    assert [g.ts_ns for g in union] == sorted(g.ts_ns for g in union)


def test_llm_sketch_flow_sizes_match_offline(server, traffic):
    svc, client = server
    needs(svc, "flows")
    from telesketch.sketches.llmsketch import LLMSketch

    parts = epoch_parts(traffic)
    eid = sorted(parts)[0]
    offline = LLMSketch(memory_bytes=SKETCHES["flows"]["memory_bytes"], task="flow_size", estimator="constant")
    offline.update(parts[eid])
    assert client.top_flows(10, epoch=eid, sketch="flows") == [(k, float(v)) for k, v in offline.top_flows(10)]
    keys = [bytes(k) for k in parts[eid].flow_keys()[:20]]
    assert client.flow_size(keys, epoch=eid, sketch="flows") == offline.flow_size(np.array([list(k) for k in keys], np.uint8)).tolist()



def test_llm_top_flows_over_a_window_sum_every_epochs_estimate(server, traffic):
    """A flow in any epoch's top k is ranked by its estimates summed over all the window's epochs."""
    svc, client = server
    needs(svc, "flows")
    from telesketch.sketches.llmsketch import LLMSketch

    offline = []
    for eid, part in sorted(epoch_parts(traffic).items()):
        # each epoch's sketch succeeds the previous one (it shares the per-flow score cache)
        sketch = offline[-1].successor() if offline else LLMSketch(
            memory_bytes=SKETCHES["flows"]["memory_bytes"], task="flow_size", estimator="constant")
        sketch.update(part)
        offline.append(sketch)
    k = 5
    candidates = list(dict.fromkeys(key for s in offline for key, _ in s.top_flows(k)))
    totals = {key: sum(int(s.estimate_reported([key])[0]) for s in offline) for key in candidates}
    expected = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    assert client.top_flows(k, last=len(offline), sketch="flows") == [(key, float(v)) for key, v in expected]
    # each total is at least the largest single-epoch figure the sketch reported for that flow
    for key, total in expected:
        assert total >= max(dict(s.top_flows(k)).get(key, 0) for s in offline)

# ---------------------------------------------------------------------------- retries and late packets
def test_retried_batches_are_applied_once(tmp_path):
    batches = generate_batches(n_epochs=1, per_epoch=4000, batch_size=1000, seed=5)
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}})) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        first = client.push(batches)
        assert (first.batches, first.duplicate_batches, first.last_sequence) == (4, 0, 4)
        again = client.push(batches, start_sequence=1)  # the whole stream retried
        assert again.duplicate_batches == 4 and again.applied_packets == 0
        ack = client.push_one(batches[2], sequence=3)
        assert ack.duplicate and ack.applied_packets == 0
        assert client.last_sequence() == 4
        assert sum(v for _, v in client.top_flows(100_000)) == 4000
        stats = client.stats()
        assert int(stats["packets"]) == 4000 and int(stats["duplicate_batches"]) == 5


def test_late_packets_are_counted_and_reported_not_applied(tmp_path):
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}})) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}")
        client.push_one(generate_batches(1, 1000, 1000, first_epoch=BASE_EPOCH + 5)[0])
        late = generate_batches(1, 300, 300, first_epoch=BASE_EPOCH)[0]
        ack = client.push_one(late)
        assert (ack.late_packets, ack.applied_packets, ack.epoch) == (300, 0, BASE_EPOCH + 5)
        assert int(client.stats()["late_packets"]) == 300


# ---------------------------------------------------------------------------- bad input
def _message(**changes):
    message = wire.batch_to_message(generate_batches(1, 64, 64, seed=9)[0], sender_id="bad", sequence=1000)
    for name, value in changes.items():
        setattr(message, name, value)
    return message


BAD_BATCHES = [
    ({"schema_version": 3}, grpc.StatusCode.INVALID_ARGUMENT, "schema_version 3"),
    ({"dst_ip": b"\x00" * 12}, grpc.StatusCode.INVALID_ARGUMENT, "columns must agree"),
    ({"src_port": b"\x00" * 127}, grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of its 2-byte"),
    ({"ts_ns": b""}, grpc.StatusCode.INVALID_ARGUMENT, "'ts_ns' is missing"),
    ({"sequence": 0}, grpc.StatusCode.INVALID_ARGUMENT, "sequence numbers start at 1"),
    ({"count": 2_000_000}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_batch_packets"),
    ({"header": b"\x00" * (5 << 20)}, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),  # over max_message_bytes
]


@pytest.mark.parametrize("changes, code, text", BAD_BATCHES, ids=[next(iter(c)) for c, _, _ in BAD_BATCHES])
def test_malformed_batches_get_precise_status_and_change_nothing(server, changes, code, text):
    svc, client = server
    before = client.stats()
    stub_one = client._ingest.PushOne
    with pytest.raises(grpc.RpcError) as info:
        stub_one(_message(**changes), timeout=10)
    assert info.value.code() == code and text in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client._ingest.Push(iter([_message(**changes)]), timeout=10)
    assert info.value.code() == code
    after = client.stats()
    for field in ("packets", "batches", "open_epoch", "late_packets"):
        assert after[field] == before[field]
    assert client.last_sequence("bad") == 0
    assert client.heavy_hitters(last=1, sketch="exact")  # other requests keep being served


BAD_QUERIES = [
    (lambda c: c.heavy_hitters(epoch=12345), grpc.StatusCode.NOT_FOUND, "not retained"),
    (lambda c: c.heavy_hitters(last=50), grpc.StatusCode.NOT_FOUND, "needs 50 retained epochs"),
    (lambda c: c.heavy_changers(last=2), grpc.StatusCode.NOT_FOUND, "and the one before it"),
    (lambda c: c.heavy_hitters(phi=1.5), grpc.StatusCode.INVALID_ARGUMENT, "phi must be in (0, 1)"),
    (lambda c: c.heavy_hitters(phi=0.1, threshold=3), grpc.StatusCode.INVALID_ARGUMENT, "not both"),
    (lambda c: c.hhh(threshold=-1), grpc.StatusCode.INVALID_ARGUMENT, "threshold must be"),
    (lambda c: c.top_flows(0), None, None),  # k=0 means the default (10): allowed
    (lambda c: c.top_flows(10**6), grpc.StatusCode.INVALID_ARGUMENT, "k must be in"),
    (lambda c: c.flow_size([b"short"]), grpc.StatusCode.INVALID_ARGUMENT, "13 bytes"),
    (lambda c: c.flow_size([]), grpc.StatusCode.INVALID_ARGUMENT, "at least one key"),
    (lambda c: c.heavy_hitters(sketch="nope"), grpc.StatusCode.NOT_FOUND, "no sketch named"),
    (lambda c: c.hhh(sketch="gaps"), grpc.StatusCode.INVALID_ARGUMENT, "does not answer hhh"),
]


@pytest.mark.parametrize("call, code, text", BAD_QUERIES)
def test_bad_queries_get_precise_status(server, call, code, text):
    svc, client = server
    if code is None:  # top_flows(0): the default k, 10 of the traffic's 3000 flows
        flows = call(client)
        assert len(flows) == 10 and flows == client.top_flows(10), flows
        return
    with pytest.raises(grpc.RpcError) as info:
        call(client)
    assert info.value.code() == code and text in info.value.details(), info.value.details()


# ---------------------------------------------------------------------------- auth, health, reflection
def test_bearer_token_is_required_and_nothing_is_applied_without_it(tmp_path):
    batch = generate_batches(1, 500, 500)[0]
    with ServiceThread(config(tmp_path, token="s3cret", sketches={"exact": {"kind": "exact"}})) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        for token, detail in (("", "missing bearer token"), ("wrong", "wrong bearer token")):
            client = Client(target, token=token, sender_id="a")
            for call in (lambda: client.push_one(batch, sequence=1), lambda: client.push([batch], start_sequence=1),
                         lambda: client.stats(), lambda: client.rotate_epoch()):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and info.value.details() == detail
        good = Client(target, token="s3cret", sender_id="a")
        assert int(good.stats()["packets"]) == 0 and good.last_sequence() == 0
        assert good.push_one(batch).applied_packets == 500
        url = f"http://127.0.0.1:{svc.http_port}/api/v1/stats"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url)
        assert info.value.code == 401
        for wrong in ("Bearer s3creT", "Bearer s3cret ", "s3cret", "Bearer \u00e9"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": wrong}))
            assert info.value.code == 401, wrong
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        assert json.load(urllib.request.urlopen(request))["packets"] == 500


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1/localhost, made by the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    key, cert = directory / "server.key", directory / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_with_token_serves_trusted_clients_and_refuses_plaintext(tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    batch = generate_batches(1, 500, 500)[0]
    cfg = config(tmp_path, token="s3cret", tls_cert=str(cert), tls_key=str(key), http_address="",
                 sketches={"exact": {"kind": "exact"}})
    with ServiceThread(cfg) as svc:
        target = f"localhost:{svc.grpc_port}"
        trusted = Client(target, token="s3cret", sender_id="tls", root_certificates=cert.read_bytes(), timeout=10)
        assert trusted.push_one(batch, sequence=1).applied_packets == 500
        assert int(trusted.stats()["packets"]) == 500
        plaintext = Client(target, token="s3cret", sender_id="plain", timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            plaintext.push_one(batch, sequence=1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert int(trusted.stats()["packets"]) == 500  # the plaintext attempt applied nothing


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    svc, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "telesketch.v1.Ingest", "telesketch.v1.Query"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"telesketch.v1.Ingest", "telesketch.v1.Query", "telesketch.v1.Admin", "grpc.health.v1.Health"} <= names


def test_admin_rotate_and_snapshot(tmp_path):
    with ServiceThread(config(tmp_path, sketches={"exact": {"kind": "exact"}})) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}")
        assert client.rotate_epoch() == (False, 0, 0)
        client.push_one(generate_batches(1, 100, 100)[0])
        assert client.rotate_epoch() == (True, BASE_EPOCH, BASE_EPOCH + 1)
        assert (tmp_path / "data" / f"epoch-{BASE_EPOCH:020d}.tsk").exists()
        assert client.snapshot() == [str(tmp_path / "data" / "open.tsk")]
        assert client.heavy_hitters(epoch=BASE_EPOCH, threshold=1)


# ---------------------------------------------------------------------------- restart after kill -9
def _start_subprocess(cfg_path: Path):
    # its own session: kill -9 of the group also takes the local Ray processes a sharded server started
    proc = subprocess.Popen([sys.executable, "-m", "telesketch.cli", "serve", "--config", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("telesketch serving"):
            ports = dict(part.split("=") for part in line.split()[2:])
            return proc, int(ports["grpc"]), int(ports["http"])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stdout.read()}")


@pytest.mark.parametrize("shards", [1, 2], ids=["in-process", "ray-shards"])
def test_restart_after_kill_loses_nothing_acknowledged(tmp_path, shards):
    if shards > 1:
        pytest.importorskip("ray")
    sketches = {"exact": {"kind": "exact", "phi": 0.005}, "hhh": SKETCHES["hhh"]}
    cfg = config(tmp_path, sketches=sketches, shards=shards)
    cfg_path = tmp_path / "telesketch.json"
    cfg_path.write_text(json.dumps({"server": {k: v for k, v in vars(cfg).items() if k != "sketches"},
                                    "sketches": sketches}))
    batches = generate_batches(n_epochs=3, per_epoch=5000, batch_size=2000, seed=11)
    proc, port, _ = _start_subprocess(cfg_path)
    try:
        client = Client(f"127.0.0.1:{port}", sender_id="collector")
        assert client.push(batches[:5]).batches == 5
        acks = [client.push_one(b) for b in batches[5:]]
        assert all(not a.duplicate for a in acks)
        before = {name: query(client) for name, query in _restart_queries(3).items()}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc, port, _ = _start_subprocess(cfg_path)
    try:
        client = Client(f"127.0.0.1:{port}", sender_id="collector")
        after = {name: query(client) for name, query in _restart_queries(3).items()}
        assert after == before
        assert client.last_sequence() == len(batches)
        assert client.push_one(batches[-1], sequence=len(batches)).duplicate  # dedup survives restarts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _restart_queries(n_epochs: int) -> dict:
    queries = {}
    for i in range(n_epochs):
        eid = BASE_EPOCH + i
        queries[f"hh{i}"] = lambda c, e=eid: c.heavy_hitters(epoch=e, sketch="exact")
        queries[f"hhh{i}"] = lambda c, e=eid: c.hhh(epoch=e, sketch="hhh")
    queries["window"] = lambda c: c.top_flows(20, last=n_epochs, sketch="exact")
    queries["stats"] = lambda c: {k: v for k, v in c.stats().items() if k in ("packets", "batches", "epochs")}
    return queries


def test_query_cli_prints_the_servers_key_text_and_json_numbers(server, traffic, capsys):
    """LLM-Sketch keys are fingerprints: the CLI shows ``fp:0x...`` (as the server renders them), not
    a dotted quad, and ``--json`` keeps estimates as numbers."""
    svc, client = server
    needs(svc, "flows")
    from telesketch.cli import main

    eid = sorted(epoch_parts(traffic))[0]
    target = ["--target", f"127.0.0.1:{svc.grpc_port}", "--epoch", str(eid)]
    assert main(["query", "top-flows", *target, "--sketch", "flows", "--k", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    want = client.top_flows(5, epoch=eid, sketch="flows")
    assert [r["flow"] for r in rows] == [f"fp:0x{k:08x}" for k, _ in want]
    assert [r["estimate"] for r in rows] == [v for _, v in want]
    assert main(["query", "heavy-hitters", *target, "--sketch", "exact"]) == 0
    table = capsys.readouterr().out.splitlines()
    hh = client.heavy_hitters(epoch=eid, sketch="exact")
    assert table[0].split() == ["key", "estimate", "(packets)"] and len(table) == 2 + len(hh)  # the unit named
    assert table[2].split() == [key_text(hh[0][0]), f"{hh[0][1]:,.0f}"]


def test_a_second_server_on_the_same_port_or_data_directory_is_refused(tmp_path):
    """Two servers must never share a gRPC port (requests would be split between them) or a data
    directory (two writers of one log); each refusal names what is in use."""
    sketches = {"exact": {"kind": "exact"}}
    with ServiceThread(config(tmp_path / "a", sketches=sketches)) as first:
        clashes = [
            (config(tmp_path / "b", sketches=sketches, grpc_address=f"127.0.0.1:{first.grpc_port}"),
             f"cannot listen for gRPC on 127.0.0.1:{first.grpc_port}"),
            (config(tmp_path / "c", sketches=sketches, http_address=f"127.0.0.1:{first.http_port}"),
             f"cannot listen for HTTP on 127.0.0.1:{first.http_port}"),
            (config(tmp_path / "a", sketches=sketches), "is in use by another telesketch server"),
        ]
        for cfg, message in clashes:
            with pytest.raises(OSError, match=message):
                ServiceThread(cfg).start()
        client = Client(f"127.0.0.1:{first.grpc_port}")
        client.push_one(generate_batches(1, 100, 100)[0])  # the first server is untouched
        assert client.stats()["packets"] == "100"
    with ServiceThread(config(tmp_path / "a", sketches=sketches)) as again:  # released on stop
        assert Client(f"127.0.0.1:{again.grpc_port}").stats()["packets"] == "100"


def test_the_example_config_loads_and_builds_every_sketch():
    from telesketch.service.config import load_config
    from telesketch.service.sketchset import SketchSet

    cfg = load_config(REPO / "examples" / "telesketch.toml")
    assert set(cfg.sketches) == {"gaps", "hh", "victims", "hhh", "flows"} and cfg.wal
    sketches = {**cfg.sketches, "flows": {**cfg.sketches["flows"], "estimator": "constant"}}  # no model load
    built = SketchSet.from_config(sketches).sketches
    assert all(cs.active for cs in built), [(cs.name, cs.note) for cs in built]


def test_the_open_epoch_copies_kept_for_queries_are_a_metric(server):
    """``telesketch_query_open_copy_bytes``: what the query engine holds copied from the open epoch
    (one state per polled sketch), read at scrape time."""
    svc, client = server
    client.heavy_hitters(sketch="exact")
    engine, registry = svc.service.queries, svc.service.metrics.registry
    assert "exact" in engine._open_copies and engine.open_copy_bytes > 0
    assert registry.get_sample_value("telesketch_query_open_copy_bytes") == engine.open_copy_bytes
