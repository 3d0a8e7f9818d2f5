"""LLM-Sketch on mixed IPv4/IPv6 traffic (issue #18): 37-byte keys for IPv6 flows, IPv4 unchanged.

Against the naive model (state), exact ground truth (per-flow counts from ``flow_keys37``), the
13-/37-byte query forms, ``keep_keys`` names and state layouts 1 and 2.
"""
import numpy as np
import pytest

import naive_llmsketch as naive
from telesketch.estimators import soft_label
from telesketch.packets import PacketBatch, flow_key_bytes
from telesketch.sketches.core import SketchError, pack_state
from telesketch.sketches.llmsketch import (
    ALGORITHM, CountMinBaseline, LLMSketch, canonical_flow_keys, flow_fingerprints, stored_keys)
from test_llmsketch import assert_same_state, skewed_batch
from workloads import skewed_flow_columns, skewed_flow_ids


def mixed_batch(n=4000, flows=600, ipv6_share=0.4, seed=0):
    """``n`` packets over ``flows`` Zipf flows; a share ``ipv6_share`` of the flows are IPv6 (random
    2001:db8::/32 addresses), the others IPv4. The IPv6 flows reuse IPv4 flows' ports and protocols,
    so only the 16-byte addresses tell them apart."""
    f = skewed_flow_ids(n, flows, seed)  # the flows of skewed_batch(n, flows, seed)
    is6 = (np.random.default_rng(seed + 1).random(flows) < ipv6_share)[f]
    addr = np.random.default_rng(seed + 2).integers(0, 256, (flows, 2, 16), dtype=np.uint8)
    addr[:, :, 0:4] = (0x20, 0x01, 0x0D, 0xB8)
    cols = skewed_flow_columns(f)
    cols["src_ip"], cols["dst_ip"] = np.where(is6, 0, cols["src_ip"]), np.where(is6, 0, cols["dst_ip"])
    return PacketBatch.from_columns(
        **cols, ipv6=is6.astype(np.uint8), src_ip6=np.where(is6[:, None], addr[f, 0], 0).astype(np.uint8),
        dst_ip6=np.where(is6[:, None], addr[f, 1], 0).astype(np.uint8), ttl=np.full(n, 64))


def truth(batch):
    """Exact packets per flow: ``{canonical key bytes: count}`` (13 bytes IPv4, 37 bytes IPv6)."""
    keys, counts = np.unique(batch.flow_keys37(), axis=0, return_counts=True)
    return {naive.canonical(k.tobytes()): int(c) for k, c in zip(keys, counts)}


def sketch_and_model(batch, memory: int, task: str, seed: int):
    """``(LLMSketch, naive model)`` of ``task`` fed ``batch`` (three updates) with the same scores,
    uniform in [-0.2, 1.2] (scores outside [0, 1] included) and fixed by ``seed``."""
    scores = np.random.default_rng(seed).uniform(-0.2, 1.2, len(batch))
    sketch = LLMSketch(memory, task, seed=seed)
    for part, s in zip(batch.split(1000), np.split(scores, 3)):
        sketch.update(part, s)
    model = naive.NaiveLLMSketch(memory, task, seed=seed)
    for key, p in zip(batch.flow_keys37(), scores.tolist()):
        model.insert(key.tobytes(), p)
    return sketch, model


def test_mixed_traffic_has_both_families():
    batch = mixed_batch()
    share = batch.ipv6.mean()
    assert 0.2 < share < 0.6
    t = truth(batch)
    assert {len(k) for k in t} == {13, 37}


@pytest.mark.parametrize("memory, seed", [(2048, 0), (6000, 3)])
def test_state_equals_naive_model_on_mixed_traffic(memory, seed):
    batch = mixed_batch(3000, 500, seed=seed)
    sketch, model = sketch_and_model(batch, memory, "flow_size", seed)
    assert_same_state(sketch, model)
    assert sketch.occ.all() and sketch.cm.any()  # evictions and the light part happened
    keys = list(truth(batch))
    assert sketch.flow_size(keys).tolist() == [model.query(k) for k in keys]


def test_ipv4_rows_keep_their_13_byte_fingerprints():
    """The IPv4 rows of a mixed batch are stored exactly as in an IPv4-only batch."""
    batch = mixed_batch(2000, 300, seed=5)
    v4 = batch.ipv6 == 0
    words = stored_keys(batch, "flow_size")
    np.testing.assert_array_equal(words[v4], stored_keys(batch[v4].flow_keys(), "flow_size"))
    six = stored_keys(batch[~v4].flow_keys37(), "flow_size")
    np.testing.assert_array_equal(words[~v4], six)
    # the same ports and protocol with the addresses ignored would collide: the addresses count
    assert len(np.unique(words[~v4].view("<u4"))) == len(np.unique(batch[~v4].flow_keys37(), axis=0))


def test_ipv4_answers_identical_with_ipv6_rows_present():
    """With room for every flow, each IPv4 flow's estimate is its exact count whether or not IPv6
    flows share the sketch, and so is each IPv6 flow's."""
    batch = mixed_batch(4000, 400, seed=2)
    sketch = LLMSketch(64 * 1024, "flow_size")
    sketch.update(batch, np.full(len(batch), 0.9))
    t = truth(batch)
    assert sketch.flow_size(list(t)).tolist() == list(t.values())


def test_exact_oracle_on_mixed_traffic_40_percent_ipv6():
    """At a tight memory the error on IPv6 flows is that on IPv4 flows (same fingerprint mechanism)."""
    batch = mixed_batch(20000, 3000, ipv6_share=0.4, seed=7)
    t = truth(batch)
    keys = list(t)
    true = np.array(list(t.values()))
    _, inverse, sizes = np.unique(batch.flow_keys37(), axis=0, return_inverse=True, return_counts=True)
    sketch = LLMSketch(12 * 1024, "flow_size")
    sketch.update(batch, soft_label(sizes[inverse.ravel()], pivot=16))  # oracle scores (true flow sizes)
    est = sketch.flow_size(keys)
    assert (est >= 1).all()
    six = np.array([len(k) == 37 for k in keys])
    are = np.abs(est - true) / true
    assert 0.3 < six.mean() < 0.5
    assert are[six].mean() < 3 * are[~six].mean() + 0.05 and are[~six].mean() < 3 * are[six].mean() + 0.05
    big = true >= 50
    assert big.sum() > 5 and (are[big] < 0.5).all()  # the large flows of both families are in the heavy part


def test_query_key_forms_agree():
    batch = mixed_batch(3000, 400, seed=4)
    sketch = LLMSketch(8 * 1024, "flow_size")
    sketch.update(batch, np.full(len(batch), 0.7))
    k37 = batch.flow_keys37()
    by37 = sketch.flow_size(k37)
    v4 = batch.ipv6 == 0
    np.testing.assert_array_equal(sketch.flow_size(batch[v4].flow_keys()), by37[v4])  # 13-byte form
    np.testing.assert_array_equal(sketch.flow_size(np.ascontiguousarray(k37).view("V37").ravel()), by37)
    mixed = [batch.flow_keys()[i].tobytes() if v4[i] else k37[i].tobytes() for i in range(50)]
    np.testing.assert_array_equal(sketch.flow_size(mixed), by37[:50])
    with pytest.raises(SketchError, match="13 or 37 bytes"):
        sketch.flow_size([b"\0" * 20])
    with pytest.raises(SketchError, match="uint8"):
        sketch.flow_size(np.zeros((2, 20), np.uint8))


def test_v4_mapped_ipv6_row_is_the_ipv4_flow():
    key = flow_key_bytes(0x0A000001, 0x0A000002, 1234, 80, 6)
    v4 = PacketBatch.from_columns(src_ip=[0x0A000001] * 3, dst_ip=[0x0A000002] * 3, src_port=[1234] * 3,
                                  dst_port=[80] * 3, proto=[6] * 3)
    mapped = v4.flow_keys37()
    as6 = PacketBatch.from_columns(src_port=[1234] * 2, dst_port=[80] * 2, proto=[6] * 2, ipv6=[1, 1],
                                   src_ip6=mapped[:2, 0:16].copy(), dst_ip6=mapped[:2, 16:32].copy())
    sketch = LLMSketch(4096, "flow_size", keep_keys=True)
    sketch.update(PacketBatch.concat([v4, as6]), np.full(5, 0.9))
    assert sketch.flow_size([key, mapped[0].tobytes()]).tolist() == [5, 5]
    assert sketch.top_flows(5) == [(key, 5)]
    assert sketch.slot_names.shape[-1] == 13  # no IPv6 flow: the names did not widen


def test_keep_keys_names_ipv6_flows_with_37_byte_keys():
    batch = mixed_batch(6000, 300, seed=9)
    t = truth(batch)
    sketch = LLMSketch(64 * 1024, "flow_size", keep_keys=True)
    narrow = sketch.memory_bytes
    ipv4_first = batch[batch.ipv6 == 0]
    sketch.update(ipv4_first, np.full(len(ipv4_first), 0.9))
    assert sketch.slot_names.shape[-1] == 13
    six = batch[batch.ipv6 == 1]
    sketch.update(six, np.full(len(six), 0.9))
    assert sketch.slot_names.shape[-1] == 37
    assert sketch.memory_bytes == narrow + sketch.slot_names.size // 37 * 24
    top = sketch.top_flows(40)
    want = sorted(t.items(), key=lambda kv: -kv[1])[:40]
    assert sorted(c for _, c in top) == sorted(c for _, c in want)
    assert all(t[k] == c for k, c in top)  # every reported key is a real flow with its exact count
    assert {len(k) for k, _ in top} == {13, 37}
    assert sketch.estimate_reported([k for k, _ in top]).tolist() == [c for _, c in top]


def test_state_layouts_old_snapshot_loads_and_new_roundtrips():
    ipv4 = skewed_batch(3000, 300, seed=1)
    sketch = LLMSketch(4096, "flow_size", keep_keys=True)
    sketch.update(ipv4, np.full(len(ipv4), 0.8))
    old = sketch.to_bytes()
    assert b'"version": 1' in old or b'"version":1' in old  # IPv4-only: still layout 1, byte for byte
    # a layout-1 snapshot as today's main writes it (built with the envelope directly)
    arrays = sketch._arrays() | {"slot_names": sketch.slot_names}
    fields = {k: v for k, v in sketch.params.__dict__.items() if k != "weight"}  # the parameters before bytes
    legacy = pack_state(ALGORITHM, 1, fields, arrays, sketch.epoch,
                        extra={"packets": sketch.packets})
    assert legacy == old
    back = LLMSketch.from_bytes(legacy)
    assert back.top_flows(20) == sketch.top_flows(20)
    six = mixed_batch(2000, 200, ipv6_share=1.0, seed=3)
    back.update(six, np.full(len(six), 0.9))
    new = back.to_bytes()
    assert b'"version": 2' in new or b'"version":2' in new
    again = LLMSketch.from_bytes(new)
    assert again.slot_names.shape[-1] == 37 and again.to_bytes() == new
    assert again.top_flows(30) == back.top_flows(30)
    assert any(len(k) == 37 for k, _ in again.top_flows(30))


@pytest.mark.parametrize("task", ["heavy_hitters", "hhh"])
def test_ipv4_only_tasks_refuse_ipv6_rows_and_change_nothing(task):
    sketch = LLMSketch(4096, task)
    ipv4 = skewed_batch(500, 50)
    sketch.update(ipv4, np.full(len(ipv4), 0.9))
    before = sketch.to_bytes()
    with pytest.raises(SketchError, match="IPv6"):
        sketch.update(mixed_batch(500, 50, seed=1), np.full(500, 0.9))
    assert sketch.to_bytes() == before


def test_fingerprints_helper_matches_naive():
    batch = mixed_batch(300, 60, seed=11)
    keys37, v4 = canonical_flow_keys(batch.flow_keys37())
    got = flow_fingerprints(keys37, v4)
    want = [naive.mmh3_32(naive.canonical(k.tobytes()), 123123).to_bytes(4, "little") for k in keys37]
    assert [g.tobytes() for g in got] == want


def test_countmin_baseline_counts_ipv6_flows_apart():
    batch = mixed_batch(3000, 300, seed=6)
    base = CountMinBaseline(256 * 1024)
    base.update(batch)
    t = truth(batch)
    assert base.flow_size(list(t)).tolist() == list(t.values())


@pytest.mark.parametrize("memory, seed", [(3000, 1), (8000, 4)])
def test_heavy_hitters37_stores_37_byte_keys_like_the_naive_model(memory, seed):
    batch = mixed_batch(3000, 400, seed=seed)
    sketch, model = sketch_and_model(batch, memory, "heavy_hitters37", seed)
    assert sketch.params.buckets == int(memory / 8 / 41)
    assert_same_state(sketch, model)
    np.testing.assert_array_equal(stored_keys(batch, "heavy_hitters37"), batch.flow_keys37())
    t = truth(batch)
    keys = list(t)
    assert sketch.flow_size(keys).tolist() == [model.query(k) for k in keys]
    top = sketch.top_flows(20)
    assert {len(k) for k, _ in top} == {13, 37} and all(k in t for k, _ in top)
    assert sketch.estimate_reported([k for k, _ in top]).tolist() == [c for _, c in top]
    back = LLMSketch.from_bytes(sketch.to_bytes())
    assert back.top_flows(20) == top


def test_heavy_hitters37_exact_with_room_for_every_flow():
    batch = mixed_batch(5000, 300, seed=8)
    t = truth(batch)
    sketch = LLMSketch(200 * 1024, "heavy_hitters37")
    sketch.update(batch, np.full(len(batch), 0.9))
    assert dict(sketch.heavy_hitters(threshold=0)) == t


def test_flow_key_parts_for_the_presenter():
    from telesketch.packets import parse_ipv6
    from telesketch.sketches.llmsketch import flow_key_parts, key37_of

    k13 = flow_key_bytes(0x0A000001, 0xC0A80102, 1234, 80, 6)
    assert flow_key_parts(k13) == ("10.0.0.1", "192.168.1.2", 1234, 80, 6)
    assert flow_key_parts(key37_of(np.frombuffer(k13, np.uint8))[0].tobytes()) == flow_key_parts(k13)
    k37 = parse_ipv6("2001:db8::1") + parse_ipv6("2001:db8:0:1::2") + bytes([0x01, 0xBB, 0xC7, 0x38, 17])
    assert flow_key_parts(k37) == ("2001:db8::1", "2001:db8:0:1::2", 443, 51000, 17)
    with pytest.raises(SketchError, match="13 or 37"):
        flow_key_parts(b"\0" * 5)
