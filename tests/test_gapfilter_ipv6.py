"""GapFilter on mixed IPv4/IPv6 traffic (issue 18b): what a gap means for an IPv6 flow.

IPv6 packets are inspected only where the configured sequence exists for them (module docstring of
``telesketch.sketches.gapfilter``): never with ``ip_id`` (no false IPv6 gaps), TCP packets with
``tcp_seq``. Checked against the naive models (tests/naive_gapfilter.py, IPv6 flows under their
folded 37-byte keys) and the exact per-flow labels.
"""
from __future__ import annotations

import numpy as np
import pytest

import naive_gapfilter as naive
from telesketch.packets import PacketBatch
from telesketch.sketches.core import pack_state
from telesketch.sketches.gapfilter import (
    GAP_EVENT_DTYPE,
    GAP_EVENT_DTYPE_V1,
    GapFilterAO,
    GapFilterSO,
    GapFilterStraw,
    ipv6_inspection,
)

MEMORY = 64 * 1024  # far more lanes than flows: the sketch sees every flow's gaps


def mixed_flows(n: int, n_flows: int = 60, share6: float = 0.4, seed: int = 0, p_jump: float = 0.03,
                fragments: int = 0) -> PacketBatch:
    """``n`` packets of ``n_flows`` flows (a ``share6`` fraction IPv6, one in six UDP), each
    flow's sequence stepping +1 with real gaps (+10) at rate ``p_jump``. The sequence is in
    ``tcp_seq`` (every row) and ``ip_id`` (IPv4 rows; IPv6 rows get Fragment-header-like ids
    stepping by 10, a gap every packet were they inspected: a gap detector must ignore them). ``fragments`` extra IPv6 TCP non-first fragments (no
    ports, ``tcp_seq`` 0) land in random flows' streams."""
    rng = np.random.default_rng(seed)
    is6 = rng.random(n_flows) < share6
    proto = np.where(rng.random(n_flows) < 1 / 6, 17, 6)
    addr4 = rng.integers(1, 2**32, (n_flows, 2), dtype=np.uint32)
    addr6 = rng.integers(0, 256, (n_flows, 2, 16), np.uint8)
    addr6[:, :, :4] = (0x20, 0x01, 0x0D, 0xB8)
    ports = rng.integers(1024, 65536, (n_flows, 2))
    flow = rng.integers(0, n_flows, n)
    step = np.where(rng.random(n) < p_jump, 10, 1)
    cur = rng.integers(0, 2**32, n_flows, dtype=np.uint64)
    seq = np.empty(n, np.uint64)
    for i in range(n):
        cur[flow[i]] = (cur[flow[i]] + np.uint64(step[i])) & np.uint64(0xFFFFFFFF)
        seq[i] = cur[flow[i]]
    f6 = is6[flow]
    cols = dict(
        src_ip=np.where(f6, 0, addr4[flow, 0]), dst_ip=np.where(f6, 0, addr4[flow, 1]),
        src_ip6=np.where(f6[:, None], addr6[flow, 0], 0).astype(np.uint8),
        dst_ip6=np.where(f6[:, None], addr6[flow, 1], 0).astype(np.uint8),
        ipv6=f6.astype(np.uint8), proto=proto[flow], src_port=ports[flow, 0], dst_port=ports[flow, 1],
        tcp_seq=seq.astype(np.uint32), ip_id=((seq * np.where(f6, 10, 1).astype(np.uint64)) & np.uint64(0xFFFF)).astype(np.int64),
        ts_ns=np.arange(n, dtype=np.uint64) * 1000,
    )
    batch = PacketBatch.from_columns(**cols)
    if fragments:
        at = np.sort(rng.integers(0, n, fragments))
        tcp6 = np.flatnonzero(is6 & (proto == 6))
        owners = tcp6[rng.integers(0, len(tcp6), fragments)]
        frag = PacketBatch.from_columns(
            src_ip6=addr6[owners, 0], dst_ip6=addr6[owners, 1], ipv6=np.ones(fragments, np.uint8),
            proto=np.full(fragments, 6), ip_id=rng.integers(1, 65536, fragments), ts_ns=batch.ts_ns[at])
        order = np.argsort(np.r_[np.arange(n), at], kind="stable")
        batch = PacketBatch.concat([batch, frag])[order]
    return batch


def keys13_for_naive(batch: PacketBatch, seed: int) -> list[bytes]:
    """The key the sketch hashes per packet: the 5-tuple (IPv4), the folded 37-byte key (IPv6)."""
    k13, k37 = batch.flow_keys(), batch.flow_keys37()
    return [naive.ipv6_key13(bytes(k37[i]), seed) if batch.ipv6[i] else bytes(k13[i]) for i in range(len(batch))]


def expected(batch: PacketBatch, seq_field: str, model) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(model flags, exact labels, skipped)`` over the packets the naive rule inspects."""
    seq = getattr(batch, seq_field).astype(np.int64) & 0xFFFF
    keep, skipped = [], {}
    for i in range(len(batch)):
        ok, reason = naive.inspected(bool(batch.ipv6[i]), int(batch.proto[i]), int(batch.src_port[i]),
                                     int(batch.dst_port[i]), seq_field)
        keep.append(ok)
        if not ok:
            skipped[reason] = skipped.get(reason, 0) + 1
    rows = np.flatnonzero(keep)
    keys = [k for k, ok in zip(keys13_for_naive(batch, model.seed), keep) if ok]
    flags, labels = np.zeros(len(batch), bool), np.zeros(len(batch), bool)
    flags[rows] = [r for r, _ in model.update(keys, seq[rows].tolist())]
    key37 = batch.flow_keys37()
    labels[rows] = naive.gap_labels([bytes(key37[i]) for i in rows], seq[rows].tolist())
    return flags, labels, skipped


def feed(sketch, batch: PacketBatch, size: int = 700) -> np.ndarray:
    return np.concatenate([sketch.update(part) for part in batch.split(size)])


# ---------------------------------------------------------------------------- ip_id: IPv6 never inspected
@pytest.mark.parametrize("cls", [GapFilterSO, GapFilterAO, GapFilterStraw])
def test_ip_id_never_reports_an_ipv6_gap_and_ipv4_is_unchanged(cls):
    batch = mixed_flows(6000, seed=1)
    v6 = batch.ipv6.astype(bool)
    sketch, alone = cls(MEMORY), cls(MEMORY)
    flags = feed(sketch, batch)
    assert not flags[v6].any()
    np.testing.assert_array_equal(flags[~v6], feed(alone, batch[~v6]))  # IPv4 answers as without IPv6
    assert flags[~v6].any()
    assert sketch.coverage() == {"covered_packets": int((~v6).sum()), "skipped_packets": {"no_ip_id": int(v6.sum())}}
    assert sketch.to_bytes() != alone.to_bytes()  # only the coverage counters differ:
    for name, arr in alone._state_arrays().items():
        np.testing.assert_array_equal(sketch._state_arrays()[name], arr)


# ---------------------------------------------------------------------------- tcp_seq: IPv6 TCP inspected
@pytest.mark.parametrize("cls, make_model", [
    (GapFilterSO, lambda: naive.NaiveSO(MEMORY, seed=3)),
    (GapFilterAO, lambda: naive.NaiveAO(MEMORY, seed=3)),
])
def test_tcp_seq_detects_real_ipv6_gaps_as_the_naive_model(cls, make_model):
    batch = mixed_flows(5000, seed=2, fragments=40)
    sketch = cls(MEMORY, seq_field="tcp_seq", seed=3)
    flags = feed(sketch, batch)
    want, labels, skipped = expected(batch, "tcp_seq", make_model())
    np.testing.assert_array_equal(flags, want)
    v6 = batch.ipv6.astype(bool)
    assert labels[v6].sum() > 20, "the workload has real IPv6 gaps"
    np.testing.assert_array_equal(flags[v6], labels[v6])  # every real IPv6 gap, no false one
    assert skipped.keys() == {"not_tcp", "fragment"} and skipped["fragment"] == 40
    assert sketch.coverage() == {"covered_packets": len(batch) - sum(skipped.values()), "skipped_packets": skipped}


@pytest.mark.parametrize("cls", [GapFilterSO, GapFilterAO, GapFilterStraw])
def test_in_order_ipv6_flows_get_no_false_gap(cls):
    """No real gap anywhere, fragments with sequence 0 in the mix: no report at all."""
    batch = mixed_flows(5000, seed=4, p_jump=0.0, fragments=60)
    for field in ("tcp_seq", "ip_id", "length"):
        assert not feed(cls(MEMORY, seq_field=field), batch).any(), field


def test_ipv6_events_carry_addresses_and_37_byte_counts():
    batch = mixed_flows(5000, seed=5)
    sketch = GapFilterSO(MEMORY, seq_field="tcp_seq")
    flags = feed(sketch, batch)
    events = sketch.gap_events()
    assert events.dtype == GAP_EVENT_DTYPE and len(events) == flags.sum()
    hit = np.flatnonzero(flags)
    np.testing.assert_array_equal(events["ipv6"], batch.ipv6[hit])
    np.testing.assert_array_equal(events["src_ip6"], batch.src_ip6[hit])
    np.testing.assert_array_equal(events["dst_ip6"], batch.dst_ip6[hit])
    np.testing.assert_array_equal(events["src_ip"], batch.src_ip[hit])
    counts = sketch.gap_counts()
    k13, k37 = batch.flow_keys(), batch.flow_keys37()
    want = {}
    for i in hit:
        key = bytes(k37[i]) if batch.ipv6[i] else bytes(k13[i])
        want[key] = want.get(key, 0) + 1
    assert counts == want and {len(k) for k in counts} == {13, 37}


def test_inspection_rule_per_field():
    batch = mixed_flows(600, seed=6, fragments=10)
    v6 = batch.ipv6.astype(bool)
    for field in ("ip_id", "src_ip", "tcp_seq", "tcp_window", "ttl", "length"):
        inspect, skipped = ipv6_inspection(batch, field)
        assert inspect[~v6].all() and sum(skipped.values()) == int((~inspect).sum())
    assert ipv6_inspection(batch, "ttl")[0].all() and ipv6_inspection(batch, "src_ip")[1] == {"no_ipv4_address": int(v6.sum())}


# ---------------------------------------------------------------------------- epochs and state
def test_coverage_is_per_epoch_and_survives_a_round_trip():
    batch = mixed_flows(2000, seed=7)
    sketch = GapFilterAO(MEMORY)
    feed(sketch, batch)
    restored = GapFilterAO.from_bytes(sketch.to_bytes())
    assert restored.coverage() == sketch.coverage() and restored.coverage()["skipped_packets"]
    np.testing.assert_array_equal(restored.gap_events(), sketch.gap_events())
    restored.start_epoch(1)
    assert restored.coverage() == {"covered_packets": 0, "skipped_packets": {}}


@pytest.mark.parametrize("cls", [GapFilterSO, GapFilterAO, GapFilterStraw])
def test_layout_1_state_still_loads(cls):
    """A snapshot as main wrote it before IPv6 (layout 1, 29-byte events) loads and continues."""
    batch = mixed_flows(3000, share6=0.0, seed=8)
    sketch = cls(MEMORY)
    feed(sketch, batch[:2000])
    events = sketch.gap_events()
    assert len(events)
    old_events = np.zeros(len(events), GAP_EVENT_DTYPE_V1)
    for name in GAP_EVENT_DTYPE_V1.names:
        old_events[name] = events[name]
    arrays = dict(sketch._state_arrays(), events=old_events.view(np.uint8).reshape(-1))
    old = pack_state(cls.ALGORITHM, 1, sketch.params, arrays, 2, {"dropped": 0, "items_seen": 2000})
    loaded = cls.from_bytes(old)
    np.testing.assert_array_equal(loaded.gap_events(), events)
    assert loaded.epoch == 2 and loaded.items_seen == 2000
    np.testing.assert_array_equal(feed(loaded, batch[2000:]), feed(sketch, batch[2000:]))
