"""The service's answers cover both address families: a real server on loopback, fed mixed
IPv4/IPv6 traffic (wire schema 2) by the real client, answers IPv6 heavy hitters, HHH prefixes of
both trees, flow sizes of 37-byte keys and top flows, per epoch and over a window of several
epochs, equal to exact truth where the sketch is exact (ample memory) and to the ``exact`` kind.
Clients that do not ask for IPv6 prefixes get the IPv4 answer they always got.
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from telesketch.client import Client
from telesketch.packets import FLOW_KEY37_BYTES, FLOW_KEY_BYTES, PacketBatch
from telesketch.service.config import ServiceConfig
from telesketch.service.server import ServiceThread
from telesketch.sketches import exact
from telesketch.sketches.cocosketch import HHHRow
from telesketch.traces.generate import generate_batch
from telesketch.v1 import service_pb2
from workloads import BASE_EPOCH, EPOCH_NS

EPOCHS = 3
PHI = 0.005
HH_T = 100  #: heavy-hitter threshold per epoch (packets): above Hidden Sketch's floor (40) and its own phi x N (79)
HHH_T = 100  #: ResidualSketch's per-epoch threshold (packets)

#: Ample memory: every sketch here answers exactly on this traffic (checked against the truth below).
SKETCHES = {
    "exact": {"kind": "exact", "phi": PHI, "hhh_phi": 0.01},
    "hh": {"kind": "hiddensketch", "memory_bytes": 256 * 1024, "phi": PHI, "expected_epoch_items": 10_000},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 256 * 1024, "threshold": HHH_T},
    "flows": {"kind": "llmsketch", "memory_bytes": 512 * 1024, "task": "flow_size", "estimator": "constant"},
    # TCP sequence gaps cover both families (docs/IPV6.md: ip_id does not exist for IPv6 flows)
    "gaps6": {"kind": "gapfilter_ao", "memory_bytes": 64 * 1024, "seq_field": "tcp_seq"},
}


def mixed_traffic(seed: int = 3) -> PacketBatch:
    """Three one-second epochs of Zipf traffic, 40 % of the flows over IPv6."""
    return generate_batch(30_000, 500, seed=seed, duration_s=float(EPOCHS), start_s=float(BASE_EPOCH),
                          ipv6_share=0.4)


def epoch_parts(batch: PacketBatch) -> dict[int, PacketBatch]:
    eids = batch.ts_ns // np.uint64(EPOCH_NS)
    return {int(e): batch[eids == e] for e in np.unique(eids)}


def config(tmp_path, **overrides) -> ServiceConfig:
    values = dict(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / "data"),
                  epoch_seconds=1.0, keep_epochs=6, sketches=dict(SKETCHES))
    values.update(overrides)
    return ServiceConfig(**values)


def true_hhh(batch: PacketBatch, threshold: float) -> dict:
    """``{(family, prefix bytes, length): discounted}`` of both trees (hierarchies of the sketch)."""
    four = exact.hhh(batch.family(4).src_ip, threshold=threshold)
    six = exact.hhh6(batch.family(6).src_ip6, threshold=threshold)
    return {**{(4, int(p).to_bytes(4, "big"), n): c for (p, n), c in four.items()},
            **{(6, int(p).to_bytes(16, "big"), n): c for (p, n), c in six.items()}}


def answered(rows: list) -> dict:
    return {(r.family, r.prefix, r.length): r.discounted for r in rows}


@pytest.fixture(scope="module")
def traffic() -> PacketBatch:
    return mixed_traffic()


@pytest.fixture(scope="module")
def server(tmp_path_factory, traffic):
    svc = ServiceThread(config(tmp_path_factory.mktemp("svc6"))).start()
    client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="collector-6")
    summary = client.push(traffic.split(4096))
    assert summary.applied_packets == len(traffic)
    yield svc, client
    client.close()
    svc.stop()


def test_traffic_mixes_both_families_over_several_epochs(traffic):
    parts = epoch_parts(traffic)
    assert len(parts) == EPOCHS
    assert all(0 < int(p.ipv6.sum()) < len(p) for p in parts.values())


@pytest.mark.parametrize("sketch", ["hh", "exact"])
def test_heavy_hitters_name_ipv6_sources_exactly(server, traffic, sketch):
    _, client = server
    for eid, part in epoch_parts(traffic).items():
        got = dict(client.heavy_hitters(epoch=eid, sketch=sketch, threshold=HH_T))
        want = exact.mixed_heavy_hitters(part, "src_ip", threshold=HH_T)
        assert got == want
        assert any(isinstance(k, bytes) and len(k) == 16 for k in got)  # IPv6 sources, 16 bytes
        assert any(isinstance(k, int) for k in got)
    # the window: sums of per-epoch estimates, both families in one answer
    threshold = 3 * HH_T
    rows, info = client.heavy_hitters(last=EPOCHS, sketch=sketch, threshold=threshold, details=True)
    assert dict(rows) == exact.mixed_heavy_hitters(traffic, "src_ip", threshold=threshold)
    assert len(info.epochs) == EPOCHS and info.packets == len(traffic)


def test_heavy_hitter_replies_say_each_keys_family(server, traffic):
    svc, client = server
    eid = min(epoch_parts(traffic))
    reply = client._call(client._query.HeavyHitters, service_pb2.HeavyHittersRequest(
        window=service_pb2.Window(epoch=eid), sketch="hh", threshold=HH_T))
    families = {len(e.key): {e.family} for e in reply.entries}
    assert families == {4: {4}, 16: {6}}
    six = next(e for e in reply.entries if e.family == 6)
    assert six.text  # rendered by the presenter


@pytest.mark.parametrize("sketch", ["hhh", "exact"])
def test_hhh_answers_both_trees_per_epoch_and_over_the_window(server, traffic, sketch):
    _, client = server
    for eid, part in epoch_parts(traffic).items():
        rows = client.hhh(epoch=eid, sketch=sketch, threshold=HHH_T, families=(4, 6))
        assert all(isinstance(r, HHHRow) for r in rows)
        assert answered(rows) == true_hhh(part, HHH_T)
        assert {r.family for r in rows} == {4, 6}
        assert [r.family for r in rows] == sorted(r.family for r in rows)  # IPv4 rows first
    # several epochs: each tree's layer estimates summed over the epochs, one pass per family
    threshold = 3 * HHH_T
    rows, info = client.hhh(last=EPOCHS, sketch=sketch, threshold=threshold, families=(4, 6), details=True)
    assert answered(rows) == true_hhh(traffic, threshold)
    assert info.combine == ("summed layer estimates" if sketch == "hhh" else "merged")


def test_hhh_rows_carry_prefix_bytes_text_and_whole_estimates(server, traffic):
    _, client = server
    eid = min(epoch_parts(traffic))
    part = epoch_parts(traffic)[eid]
    reply = client._call(client._query.HierarchicalHeavyHitters, service_pb2.HHHRequest(
        window=service_pb2.Window(epoch=eid), sketch="exact", threshold=HHH_T, families=service_pb2.FAMILIES_IPV6))
    assert reply.entries and {e.family for e in reply.entries} == {6}
    counts6 = exact.prefix_counts6(part.family(6).src_ip6)
    for e in reply.entries:
        assert len(e.prefix_bytes) == 16 and e.prefix == 0
        assert e.text.endswith(f"/{e.length}") and ":" in e.text
        assert e.undiscounted_estimate == counts6[e.length][int.from_bytes(e.prefix_bytes, "big")]
        assert e.estimate <= e.undiscounted_estimate


@pytest.mark.parametrize("sketch", ["hhh", "exact"])
def test_clients_that_do_not_ask_for_ipv6_get_the_ipv4_answer(server, traffic, sketch):
    _, client = server
    for eid, part in epoch_parts(traffic).items():
        old = client.hhh(epoch=eid, sketch=sketch, threshold=HHH_T)  # no families: as before IPv6
        want = exact.hhh(part.family(4).src_ip, threshold=HHH_T)
        assert {(p, n): c for p, n, c in old} == want
        assert old == sorted(old, key=lambda r: (r[1], r[0]))
        v4 = client.hhh(epoch=eid, sketch=sketch, threshold=HHH_T, families=(4,))
        assert [(int.from_bytes(r.prefix, "big"), r.length, r.discounted) for r in v4] == old


def test_unknown_address_families_value_is_refused(server):
    _, client = server
    with pytest.raises(grpc.RpcError) as exc:
        client._call(client._query.HierarchicalHeavyHitters, service_pb2.HHHRequest(sketch="hhh", families=7))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("sketch", ["flows", "exact"])
def test_flow_sizes_of_37_byte_keys_per_epoch_and_over_the_window(server, traffic, sketch):
    _, client = server
    counts = exact.mixed_count_dict(traffic, "flow")
    six = [bytes(k) for k in counts if len(bytes(k)) == FLOW_KEY37_BYTES][:40]
    four = [bytes(k) for k in counts if len(bytes(k)) == FLOW_KEY_BYTES][:40]
    assert six and four
    # both key widths in one request; every IPv4 key also asked in its v4-mapped 37-byte form
    mapped = [bytes(b"\0" * 10 + b"\xff\xff" + k[0:4] + b"\0" * 10 + b"\xff\xff" + k[4:8] + k[8:13]) for k in four]
    keys = six + four + mapped
    rows, info = client.flow_size(keys, last=EPOCHS, sketch=sketch, details=True)
    want = [counts[k] for k in six + four] + [counts[k] for k in four]
    assert [int(v) for v in rows] == want and info.packets == len(traffic)
    for eid, part in epoch_parts(traffic).items():
        per_epoch = exact.mixed_count_dict(part, "flow")
        assert [int(v) for v in client.flow_size(six, epoch=eid, sketch=sketch)] == [per_epoch.get(k, 0) for k in six]


def test_flow_size_refuses_keys_of_other_widths(server):
    _, client = server
    with pytest.raises(grpc.RpcError) as exc:
        client.flow_size([b"\1" * 16], sketch="flows")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "37 bytes" in exc.value.details()


def test_top_flows_name_37_byte_keys(server, traffic):
    _, client = server
    counts = exact.mixed_count_dict(traffic, "flow")
    truth = sorted(((bytes(k), c) for k, c in counts.items()), key=lambda kv: -kv[1])
    rows = client.top_flows(20, last=EPOCHS, sketch="exact")
    assert [c for _, c in rows] == [c for _, c in truth[:20]]
    assert {len(k) for k, _ in rows} == {FLOW_KEY_BYTES, FLOW_KEY37_BYTES}
    assert all(counts[k] == c for k, c in rows)


def test_gap_events_say_their_family(server, traffic):
    _, client = server
    reply = client._call(client._query.FlowGaps, service_pb2.FlowGapsRequest(
        window=service_pb2.Window(last=EPOCHS), sketch="exact"))
    # ip_id is IPv4's sequence: IPv6 flows never gap under it (docs/IPV6.md, GapFilter)
    assert all(e.family == 4 and len(e.key) == FLOW_KEY_BYTES for e in reply.events)


@pytest.mark.parametrize("sketch", ["hh", "exact"])
def test_heavy_changers_name_ipv6_sources(server, traffic, sketch):
    _, client = server
    parts = epoch_parts(traffic)
    ids = sorted(parts)
    threshold = 2 * HH_T
    got = dict(client.heavy_changers(epoch=ids[-1], sketch=sketch, threshold=threshold))
    want = exact.mixed_heavy_changers(parts[ids[-2]], parts[ids[-1]], "src_ip", threshold=threshold)
    assert got == want and any(isinstance(k, bytes) and len(k) == 16 for k in want)


def _event_key(event) -> bytes:
    """The flow key an answer names for a GapFilter event: 13 bytes (IPv4) or 37 (IPv6)."""
    ports = int(event["src_port"]).to_bytes(2, "big") + int(event["dst_port"]).to_bytes(2, "big") + bytes([int(event["proto"])])
    if event["ipv6"]:
        return bytes(event["src_ip6"]) + bytes(event["dst_ip6"]) + ports
    return int(event["src_ip"]).to_bytes(4, "big") + int(event["dst_ip"]).to_bytes(4, "big") + ports


def test_ipv6_gap_events_name_37_byte_flow_keys(server, traffic):
    _, client = server
    from telesketch.sketches.gapfilter import GapFilterAO

    offline = GapFilterAO(memory_bytes=SKETCHES["gaps6"]["memory_bytes"], seq_field="tcp_seq")
    for eid, part in epoch_parts(traffic).items():
        offline.start_epoch(eid)
        offline.update(part)
        want = offline.gap_events()
        reply = client._call(client._query.FlowGaps, service_pb2.FlowGapsRequest(
            window=service_pb2.Window(epoch=eid), sketch="gaps6"))
        assert [(e.ts_ns, bytes(e.key), e.family) for e in reply.events] == [
            (int(ev["ts_ns"]), _event_key(ev), 6 if ev["ipv6"] else 4) for ev in want]
        assert {e.family for e in reply.events} == {4, 6}
        assert all(len(e.key) == (FLOW_KEY37_BYTES if e.family == 6 else FLOW_KEY_BYTES) for e in reply.events)


def test_memory_gauge_and_stats_count_both_address_families(server):
    """ResidualSketch charges its IPv6 tree apart (``ipv6_memory_bytes``); Hidden Sketch counts its
    IPv6 companion in ``memory_bytes`` once made: stats, the gauge and the report hold the sum."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from telesketch.report import LocalSource
    from telesketch.sketches.residualsketch import ResidualSketch

    svc, _ = server
    memory = {s["name"]: s["memory_bytes"] for s in svc.service.stats()["sketches"]}
    hhh = ResidualSketch(**{k: v for k, v in SKETCHES["hhh"].items() if k != "kind"})
    assert hhh.ipv6_memory_bytes > 0
    assert memory["hhh"] == hhh.memory_bytes + hhh.ipv6_memory_bytes
    hh = svc.service.manager.open.states["hh"]
    assert hh.ipv6 is not None and memory["hh"] == hh.memory_bytes > hh.ipv6.memory_bytes > 0
    text = generate_latest(svc.service.metrics.registry).decode()
    gauge = {s.labels["sketch"]: s.value for f in text_string_to_metric_families(text)
             if f.name == "telesketch_sketch_memory_bytes" for s in f.samples}
    assert gauge["hhh"] == memory["hhh"] and gauge["hh"] == memory["hh"]
    report = {s["name"]: s["memory_bytes"] for s in LocalSource(svc.service.manager).stats()["sketches"]}
    assert report["hhh"] == memory["hhh"] and report["hh"] == memory["hh"]
