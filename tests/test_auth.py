"""Token roles (issue 16, fault 5 and 11): the ingest token, the admin token, and how they compare.

``tests/test_faults.py`` runs the Admin cases against a server subprocess (RotateEpoch with the
ingest token, none, a wrong one). Here, in one in-process server: every service with every kind of
token, that a refused push changes nothing, the HTTP API's token, and that tokens are compared
with ``hmac.compare_digest`` (constant time), never ``==``.
"""
from __future__ import annotations

import hmac
import json
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from telesketch.client import Client
from telesketch.packets import PacketBatch
from telesketch.service.auth import bearer_matches
from telesketch.service.config import ConfigError, ServiceConfig, load_config
from telesketch.service.server import ServiceThread

INGEST, ADMIN = "ingest-secret", "admin-secret"
EXACT = {"exact": {"kind": "exact"}}


def batch(n: int, seed: int) -> PacketBatch:
    rng = np.random.default_rng(seed)
    return PacketBatch.from_columns(
        ts_ns=np.full(n, time.time_ns() - 10**6, np.uint64),
        src_ip=(0x0A000000 + rng.integers(0, 10, n)).astype(np.uint32), dst_ip=np.full(n, 0xC0A80001, np.uint32),
        src_port=np.full(n, 1000, np.uint16), dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8),
        length=np.full(n, 100, np.uint16))


def code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
                           data_dir=str(tmp_path_factory.mktemp("auth") / "data"), epoch_seconds=3600,
                           sketches=EXACT, durability="none", token=INGEST, admin_token=ADMIN)
    with ServiceThread(config) as service:
        yield service


def client(svc, token: str, **kw) -> Client:
    return Client(f"127.0.0.1:{svc.grpc_port}", token=token, timeout=30, **kw)


def test_each_service_with_each_token(svc):
    """Ingest and Query: the ingest or the admin token; Admin: the admin token only."""
    U, P = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    expected = {  # token -> (Ingest, Query, Admin)
        INGEST: (None, None, P),
        ADMIN: (None, None, None),
        "": (U, U, U),
        "wrong": (U, U, U),
        INGEST + "x": (U, U, U),      # a longer token that starts with the right one
        INGEST[:-1]: (U, U, U),       # all but its last character
        INGEST.upper(): (U, U, U),
    }
    for i, (token, (ingest, query, admin)) in enumerate(expected.items()):
        c = client(svc, token, sender_id=f"s{i}")
        got = (code_of(lambda: c.push_one(batch(10, i), sequence=1)), code_of(c.stats), code_of(c.snapshot))
        assert got == (ingest, query, admin), token


def test_a_refused_push_changes_nothing(svc):
    admin = client(svc, ADMIN)
    before = admin.stats()
    for token in ("", "wrong", INGEST + " "):
        assert code_of(lambda: client(svc, token, sender_id="r").push_one(batch(50, 9), sequence=1)) \
            == grpc.StatusCode.UNAUTHENTICATED
    after = admin.stats()
    assert (after["packets"], after["batches"]) == (before["packets"], before["batches"])
    assert admin.last_sequence("r") == 0


def test_health_needs_no_token_and_http_needs_the_token(svc):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    base = f"http://127.0.0.1:{svc.http_port}"
    assert urllib.request.urlopen(base + "/api/v1/health", timeout=10).status == 200
    for header in (None, "Bearer wrong", f"Bearer {INGEST}x", INGEST):
        request = urllib.request.Request(base + "/api/v1/stats")
        if header:
            request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 401
    request = urllib.request.Request(base + "/api/v1/stats", headers={"Authorization": f"Bearer {INGEST}"})
    assert "packets" in json.loads(urllib.request.urlopen(request, timeout=10).read())


def test_tokens_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert bearer_matches(f"Bearer {INGEST}", INGEST)
    assert bearer_matches(f"Bearer {INGEST}".encode(), INGEST)
    assert not bearer_matches(f"Bearer {INGEST[:-1]}", INGEST)
    assert not bearer_matches("Bearer \udcff", INGEST)  # not UTF-8: refused, no exception
    assert len(calls) == 4 and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    calls.clear()
    assert not bearer_matches("", "") and not bearer_matches("Bearer ", "")  # no token: never a match
    assert calls == []


def test_the_admin_token_must_differ_from_the_ingest_token():
    with pytest.raises(ConfigError, match="admin_token must differ"):
        load_config(None, {"token": "same", "admin_token": "same"})
