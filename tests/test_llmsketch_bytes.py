"""LLM-Sketch counting bytes (``weight = "bytes"``, issue 17): flow sizes in bytes.

Checked against the weighted naive model (state for state, both address families), against the
exact byte truth (``telesketch.sketches.exact`` with weights), for counters past 32 bits and the
Count-Min's saturation at 2^32 - 1, zero weights, snapshots (byte states round-trip; packet states
keep their bytes and old layouts load as packets), refused settings, and a real service (gRPC ingest
and query, HTTP query) answering byte flow sizes equal to the exact truth and saying ``unit=bytes``.
"""
import json
import urllib.request

import numpy as np
import pytest

import naive_llmsketch as naive
from telesketch.sketches import exact
from telesketch.sketches.core import SketchError
from telesketch.sketches.llmsketch import LLMSketch, stored_keys
from telesketch.traces.generate import generate_batch


@pytest.fixture(scope="module")
def mixed():
    """3,000 packets over 300 flows, about 30 % IPv6, real per-flow lengths (40 .. 1560 bytes)."""
    batch = generate_batch(3000, 300, seed=3, ipv6_share=0.3)
    assert batch.has_ipv6() and len(np.unique(batch.length)) > 20
    return batch


def _scores(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 1.5, n)  # clipped to [0, 1]: locks, adds and evictions


def _naive_keys(batch, task):
    keys37 = [k.tobytes() for k in batch.flow_keys37()]
    return [naive.canonical(k) for k in keys37] if task == "flow_size" else keys37


def _assert_same_state(sketch, model):
    for b, bucket in enumerate(model.buckets):
        for s, (key, count, lock, occ) in enumerate(bucket):
            assert sketch.occ[b, s] == occ
            if occ:
                assert sketch.slot_keys[b, s].tobytes() == key
                assert (int(sketch.counts[b, s]), int(sketch.lock[b, s])) == (count, lock)
    if model.light == "countmin":
        np.testing.assert_array_equal(sketch.cm, np.array(model.cm))


@pytest.mark.parametrize("task, memory", [("flow_size", 3000), ("flow_size", 1200), ("heavy_hitters37", 4000)])
def test_byte_weighted_llmsketch_matches_the_naive_model_on_mixed_traffic(mixed, task, memory):
    """Small memories: buckets fill, slots lock and evict, the Count-Min takes adds and max-merges."""
    scores = _scores(len(mixed))
    sketch = LLMSketch(memory, task, seed=5, weight="bytes")
    for part in np.array_split(np.arange(len(mixed)), 3):  # batch boundaries do not matter
        sketch.update(mixed[part], scores[part])
    model = naive.NaiveLLMSketch(memory, task, seed=5, weight="bytes")
    for key, p, w in zip(_naive_keys(mixed, task), scores.tolist(), mixed.length.tolist()):
        model.insert(key, p, w)
    _assert_same_state(sketch, model)
    assert sketch.occ.all() and sketch.lock.any()
    assert sketch.counts.dtype == np.uint64 and sketch.total_weight == int(mixed.length.astype(np.int64).sum())
    if task == "flow_size":
        assert sketch.cm.dtype == np.uint32 and sketch.cm.max() > 255  # past what the packet counters hold
    keys = [k.tobytes() for k in mixed.flow_keys37()[:200]]
    assert sketch.flow_size(keys).tolist() == [model.query(naive.canonical(k) if task == "flow_size" else k)
                                               for k in keys]


def test_byte_weighted_flow_sizes_equal_the_exact_byte_truth_with_room_for_every_flow(mixed):
    """More slots than flows: every flow keeps its slot, so each flow size is its exact byte count
    (IPv4 keys as 13 bytes, IPv6 as 37), heavy hitters are the exact ones at phi of the bytes, and
    the packet sketch of the same traffic answers packets."""
    scores = _scores(len(mixed))
    by_bytes = LLMSketch(512 * 1024, "flow_size", seed=2, weight="bytes")
    by_packets = LLMSketch(512 * 1024, "flow_size", seed=2)
    by_bytes.update(mixed, scores)
    by_packets.update(mixed, scores)
    truth = exact.mixed_count_dict(mixed, "flow", weight="bytes")
    packets = exact.mixed_count_dict(mixed, "flow")
    keys = list(truth)
    assert by_bytes.flow_size(keys).tolist() == [truth[k] for k in keys]
    assert by_packets.flow_size(keys).tolist() == [packets[k] for k in keys]
    total = int(mixed.length.astype(np.int64).sum())
    assert by_bytes.volume == total and by_bytes.unit == "bytes" and by_packets.unit == "packets"
    hh = by_bytes.heavy_hitters(phi=0.02)
    assert sorted(c for _, c in hh) == sorted(c for c in truth.values() if c > int(0.02 * total))


def test_byte_counts_pass_32_bits_and_the_count_min_saturates_at_2_to_the_32():
    """A heavy flow of 70,000 full-size packets counts 4.6e9 bytes exactly (uint64 slot); a flow
    diverted to the Count-Min (every slot locked by score-1 flows) saturates at 2^32 - 1, not wraps."""
    sketch = LLMSketch(1000, "flow_size", heavy_ratio=0.1, seed=1, weight="bytes")  # one bucket of 8 slots
    assert sketch.params.buckets == 1
    keys = stored_keys(generate_batch(2000, 40, seed=4), "flow_size")
    owners = np.unique(keys, axis=0)[:9]
    big = np.repeat(owners[:1], 70_000, axis=0)
    sketch.update_keys(big, np.ones(70_000), np.full(70_000, 65_535))
    for k in owners[1:8]:  # fill and lock the other seven slots
        sketch.update_keys(k[None, :], np.ones(1), np.array([100]))
    diverted = np.repeat(owners[8:9], 3, axis=0)  # score 0: never evicts, adds to the Count-Min
    sketch.update_keys(diverted, np.zeros(3), np.full(3, 2**31))
    got = sketch.query_stored(np.concatenate([owners[:1], owners[8:9]]))
    assert got.tolist() == [70_000 * 65_535, 2**32 - 1]


def test_zero_weight_packets_change_nothing_but_the_packet_index(mixed):
    scores = _scores(len(mixed))
    zero = mixed[np.arange(len(mixed))]  # a copy
    zero.length[:] = 0
    sketch = LLMSketch(3000, "flow_size", seed=5, weight="bytes")
    sketch.update(zero, scores)
    assert not sketch.occ.any() and not sketch.cm.any() and sketch.total_weight == 0
    assert sketch.packets == len(mixed)


def test_packet_counting_and_its_snapshots_are_unchanged_by_the_weight_key(mixed):
    """``weight="packets"`` is the sketch built without the key: same state, same snapshot bytes, no
    ``weight`` in the stored parameters (old readers and the golden files agree)."""
    scores = _scores(len(mixed))
    plain, explicit = LLMSketch(3000, "flow_size", seed=5), LLMSketch(3000, "flow_size", seed=5, weight="packets")
    plain.update(mixed, scores)
    explicit.update(mixed, scores)
    assert plain.to_bytes() == explicit.to_bytes()
    assert b'"weight"' not in plain.to_bytes()[:4096]
    assert plain.counts.dtype == np.uint32 and plain.cm.dtype == np.uint8
    assert LLMSketch.from_bytes(plain.to_bytes()).params.weight == "packets"


def test_byte_weighted_snapshot_round_trips_and_continues_identically(mixed):
    scores = _scores(len(mixed))
    first, second = np.arange(1500), np.arange(1500, len(mixed))
    sketch = LLMSketch(3000, "flow_size", seed=5, weight="bytes", keep_keys=True)
    sketch.update(mixed[first], scores[first])
    back = LLMSketch.from_bytes(sketch.to_bytes())
    assert back.params.weight == "bytes" and back.total_weight == sketch.total_weight
    for s in (sketch, back):
        s.update(mixed[second], scores[second])
    assert back.to_bytes() == sketch.to_bytes()
    assert back.top_flows(5) == sketch.top_flows(5) and all(len(k) in (13, 37) for k, _ in back.top_flows(5))


def test_bad_byte_weight_settings_are_refused():
    with pytest.raises(SketchError, match="weight must be 'packets' or 'bytes'"):
        LLMSketch(4096, weight="octets")
    with pytest.raises(SketchError, match="hhh task counts packets"):
        LLMSketch(4096, "hhh", weight="bytes")
    keys = np.zeros((2, 4), np.uint8)
    with pytest.raises(SketchError, match="weights are required by"):
        LLMSketch(4096, weight="bytes").update_keys(keys, np.ones(2))
    with pytest.raises(SketchError, match="weights are required by"):
        LLMSketch(4096).update_keys(keys, np.ones(2), np.ones(2, np.int64))
    with pytest.raises(SketchError, match="non-negative integers"):
        LLMSketch(4096, weight="bytes").update_keys(keys, np.ones(2), np.array([1, -1]))


def test_service_config_takes_llmsketch_bytes_and_refuses_the_hhh_task():
    from telesketch.service.config import ConfigError, ServiceConfig

    ok = {"kind": "llmsketch", "task": "flow_size", "estimator": "constant", "weight": "bytes"}
    ServiceConfig(sketches={"flows": ok}).validate()
    with pytest.raises(ConfigError, match="'f': the llmsketch hhh task counts packets only"):
        ServiceConfig(sketches={"f": {**ok, "task": "hhh"}}).validate()


def test_service_answers_byte_flow_sizes_equal_to_the_exact_truth_and_says_bytes(tmp_path):
    """A real service: gRPC ingest of two epochs; a byte-weighted LLM-Sketch with room for every flow
    answers each flow's exact bytes (gRPC FlowSize and HTTP flow_size, one epoch and the window); the
    replies say ``unit`` bytes, the packet sketch's say packets; top flows are the exact top flows."""
    from telesketch.client import Client
    from telesketch.packets import PacketBatch
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from telesketch.v1 import service_pb2
    from workloads import BASE_EPOCH, EPOCH_NS, service_traffic

    traffic = PacketBatch.concat(service_traffic(n_epochs=2, per_epoch=2000))
    traffic.length[:] = 64 + (traffic.src_port.astype(np.int64) % 23) * 60  # byte ranks != packet ranks
    flows = {"kind": "llmsketch", "memory_bytes": 512 * 1024, "task": "flow_size", "estimator": "constant",
             "keep_keys": True}
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                           epoch_seconds=1.0, sketches={"flow_bytes": {**flows, "weight": "bytes"},
                                                        "flow_packets": flows}).validate()
    svc = ServiceThread(config).start()
    try:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="w")
        client.push(traffic.split(2048))
        in_epoch = (traffic.ts_ns // np.uint64(EPOCH_NS)) == BASE_EPOCH
        for part, window in ((traffic[in_epoch], {"epoch": BASE_EPOCH}), (traffic, {"last": 2})):
            truth = exact.mixed_count_dict(part, "flow", weight="bytes")
            keys = sorted(truth, key=lambda k: -truth[k])[:50]
            rows, info = client.flow_size(keys, sketch="flow_bytes", details=True, **window)
            assert rows == [truth[k] for k in keys] and info.unit == "bytes", window
            _, info = client.flow_size(keys, sketch="flow_packets", details=True, **window)
            assert info.unit == "packets"
            top, info = client.top_flows(5, sketch="flow_bytes", details=True, **window)
            assert [v for _, v in top] == sorted(truth.values(), reverse=True)[:5] and info.unit == "bytes"
        query = "&".join(f"key={bytes(k).hex()}" for k in keys[:3])
        with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/api/v1/flow_size?sketch=flow_bytes&last=2&"
                                    f"{query}", timeout=10) as r:
            http_rows = json.load(r)
        assert [(row["estimate"], row["unit"]) for row in http_rows] == [(truth[k], "bytes") for k in keys[:3]]
        reply = client._call(client._query.TopFlows, service_pb2.TopFlowsRequest(sketch="flow_packets", k=3))
        assert reply.window.unit == "packets"
    finally:
        svc.stop()


def test_grpc_hhh_reply_and_cli_tables_name_the_unit(tmp_path, capsys):
    """The gRPC HHH reply carries ``window.unit`` (bytes for a byte-weighted ResidualSketch, packets
    otherwise), and ``telesketch query`` tables name it in the count column's header (``--json``
    rows carry ``unit``): hhh, top-flows, flow-size and heavy-hitters."""
    from telesketch.cli import main
    from telesketch.client import Client
    from telesketch.packets import PacketBatch
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from workloads import service_traffic

    traffic = PacketBatch.concat(service_traffic(n_epochs=1, per_epoch=3000))
    traffic.length[:] = 64 + (traffic.src_ip % 23) * 60
    sketches = {"hhh_bytes": {"kind": "residualsketch", "memory_bytes": 64 * 1024, "threshold": 10**5, "weight": "bytes"},
                "hhh": {"kind": "residualsketch", "memory_bytes": 64 * 1024, "threshold": 100},
                "flow_bytes": {"kind": "llmsketch", "memory_bytes": 256 * 1024, "estimator": "constant",
                               "keep_keys": True, "weight": "bytes"},
                "exact": {"kind": "exact"}}
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / "d"),
                           epoch_seconds=1.0, sketches=sketches).validate()
    svc = ServiceThread(config).start()
    try:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="u")
        client.push(traffic.split(2048))
        rows, info = client.hhh(sketch="hhh_bytes", phi=0.05, details=True, families=(4, 6))
        assert rows and info.unit == "bytes"
        rows, info = client.hhh(sketch="hhh", phi=0.05, details=True)
        assert rows and info.unit == "packets"
        target = ["--target", f"127.0.0.1:{svc.grpc_port}"]

        def table(*args):
            assert main(["query", *args, *target]) == 0
            return capsys.readouterr().out.splitlines()

        assert table("hhh", "--sketch", "hhh_bytes", "--phi", "0.05")[0].split() == [
            "family", "prefix", "discounted", "estimate", "(bytes)"]
        assert table("hhh", "--sketch", "hhh", "--phi", "0.05")[0].split()[-1] == "(packets)"
        top = table("top-flows", "--sketch", "flow_bytes", "--k", "3")
        assert top[0].split() == ["flow", "estimate", "(bytes)"] and len(top) == 5
        assert table("heavy-hitters", "--sketch", "exact", "--phi", "0.05")[0].split() == ["key", "estimate", "(packets)"]
        key = traffic.flow_keys()[0].tobytes().hex()
        assert table("flow-size", "--sketch", "flow_bytes", "--key", key)[0].split() == ["flow", "estimate", "(bytes)"]
        assert main(["query", "hhh", *target, "--sketch", "hhh_bytes", "--phi", "0.05", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert rows and all(r["unit"] == "bytes" and "discounted estimate" in r for r in rows)
    finally:
        svc.stop()


def test_report_tables_of_byte_weighted_sections_say_bytes():
    """``render_text``: a byte-weighted section's count column reads ``estimate (bytes)`` and its heavy
    hitters head says phi of the window's bytes (not a packet threshold); packet sections as before."""
    from telesketch.report import render_text

    report = {"source": {"mode": "analyze", "files": ["x"], "target": None},
              "window": {"last": 1, "epochs": [0], "packets": 100, "epoch_seconds": 10.0},
              "ingest": {"packets": 100, "late_packets": 0, "batches": 1}, "sketches": [], "notes": []}
    for what in ("heavy_changers", "gaps", "hhh"):
        report[what] = {"error": "not configured"}
    report["heavy_hitters"] = {"sketch": "hh", "combine": "single", "error": None, "phi": 0.01, "threshold": None,
                               "count": 1, "unit": "bytes", "rows": [{"key": 1, "text": "0.0.0.1", "estimate": 9e5}]}
    report["top_flows"] = {"sketch": "flows", "combine": "single", "error": None, "unit": "packets",
                           "rows": [{"key": 7, "text": "fp:0x00000007", "estimate": 12.0}]}
    lines = render_text(report).splitlines()
    assert any("keys above phi 0.01 of the window's bytes" in line for line in lines)
    assert any(line.split() == ["key", "estimate", "(bytes)"] for line in lines)
    assert any(line.split() == ["flow", "estimate"] for line in lines)
