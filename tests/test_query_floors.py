"""Issue 17 obs. 4: a threshold a sketch cannot meet is refused with its floor; defaults follow phi."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.analyze import manager_for
from telesketch.cli import main
from telesketch.client import Client
from telesketch.packets import PacketBatch
from telesketch.service.config import load_config
from telesketch.service.queries import QueryEngine, WindowSpec
from telesketch.service.server import ServiceThread
from telesketch.errors import Precondition, QueryError
from telesketch.traces import generate_batch

SKETCHES = {"hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4},  # floor: 240 packets an epoch
            "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "phi": 1e-3,
                    "expected_packets": 2_500_000}}


@pytest.fixture(scope="module")
def engine():
    config = load_config(None, {"epoch_seconds": 100.0})
    manager = manager_for(SKETCHES, config)
    first = generate_batch(60_000, 600, seed=3, duration_s=10.0)
    second = dict(first.columns(), ts_ns=first.ts_ns + np.uint64(100 * 10**9))  # the next epoch
    manager.apply(first)
    manager.apply(PacketBatch(**second))
    return QueryEngine(manager)


def test_a_threshold_below_the_hidden_sketch_floor_is_refused_naming_it(engine):
    with pytest.raises(QueryError) as exc:
        engine.heavy_hitters(WindowSpec(last=1), threshold=10)
    assert isinstance(exc.value, Precondition)  # answered FAILED_PRECONDITION / HTTP 409
    text = str(exc.value)
    assert "threshold 10 packets is below" in text and "floor of 240 packets" in text
    assert "expected_epoch_items" in text and "[sketches.hh]" in text
    with pytest.raises(QueryError, match="floor of 240 packets"):
        engine.heavy_hitters(WindowSpec(last=1), phi=1e-3)  # 60 packets
    with pytest.raises(QueryError, match="floor of 240 packets"):
        engine.heavy_changers(WindowSpec(last=1), threshold=100)
    # at or above the floor: answered
    assert engine.heavy_hitters(WindowSpec(last=1), threshold=240).rows


def test_hhh_default_threshold_follows_phi_of_the_window(engine):
    default = engine.hhh(WindowSpec(last=1))
    by_phi = engine.hhh(WindowSpec(last=1), phi=1e-3)  # 60 packets, not the 2,500 of expected_packets
    assert default.rows == by_phi.rows
    assert min(r.discounted for r in default.rows) < 2_500


def test_query_cli_prints_the_floor_and_exits_non_zero(capsys):
    config = load_config(None, {"grpc_address": "127.0.0.1:0", "http_address": "", "data_dir": ""})
    config.sketches = SKETCHES
    with ServiceThread(config) as svc:
        target = f"127.0.0.1:{svc.grpc_port}"
        with Client(target, sender_id="t") as client:
            client.push_one(generate_batch(5_000, 50, seed=1, duration_s=1.0), 1)
        code = main(["query", "heavy-hitters", "--target", target, "--threshold", "10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "floor of 240 packets" in err
