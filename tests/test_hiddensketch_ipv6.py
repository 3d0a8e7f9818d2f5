"""Hidden Sketch on IPv6 (issue 18b): exact recovery of IPv6 addresses on mixed traffic.

Checked against the exact per-key counts (ground truth) and the naive model of each family's
sketch (tests/naive_hiddensketch.py): the 4-byte address sketch takes the IPv4 rows, its 16-byte
companion the IPv6 rows; a ``src_ip6`` sketch takes every row (IPv4 v4-mapped).
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

import naive_hiddensketch as naive
from telesketch.hashing import hash_keys
from telesketch.packets import PacketBatch, parse_ipv6
from telesketch.presenter import key_text
from telesketch.sketches.core import SketchError, pack_state
from telesketch.sketches.hiddensketch import (
    ALGORITHM,
    HiddenSketch,
    HiddenSketchParams,
    address16,
    hash64_u128,
    keys_to_words,
    words_to_keys,
)
from test_hiddensketch import assert_same_state
from workloads import zipf_ranks

# small configurations: the 4-byte SMALL of test_hiddensketch.py; its IPv6 companion with the
# default 16-byte layout over that CM: ss_bytes = 1200 + 36300 + 20480 = 57980
SMALL = dict(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3, thresh=30)
MIXED = dict(SMALL, ipv6_memory_bytes=64 * 1024)
# a 16-byte sketch small enough for the naive model: 4 blocks, 300-bit filters of 3 rows
SMALL16 = dict(key="src_ip6", memory_bytes=16 * 1024, blocks=4, bf_rows=3, bf_row_bits=300, cm_bytes=1200,
               phi=2e-3, thresh=20)


def mixed_traffic(n: int, share6: float, seed: int, universe: int = 400, skew: float = 1.2) -> PacketBatch:
    """``n`` packets, a ``share6`` fraction IPv6, sources from a Zipf law over IPv4 addresses and
    IPv6 addresses in a few /64s (realistic: many hosts share a prefix)."""
    rng = np.random.default_rng(seed)
    v4 = rng.choice(2**32, universe, replace=False).astype(np.uint32)
    v6 = rng.integers(0, 256, (universe, 16), np.uint8)
    v6[:, :8] = np.frombuffer(parse_ipv6("2001:db8:0:1::"), np.uint8)[:8]
    v6[::3, 6:8] = (7, 0)  # a second /64
    rank = zipf_ranks(n, universe, skew, rng)
    is6 = rng.random(n) < share6
    return PacketBatch.from_columns(
        src_ip=np.where(is6, 0, v4[rank]).astype(np.uint32),
        dst_ip=np.where(is6, 0, v4[::-1][rank]).astype(np.uint32),
        src_ip6=np.where(is6[:, None], v6[rank], 0).astype(np.uint8),
        dst_ip6=np.where(is6[:, None], v6[::-1][rank], 0).astype(np.uint8),
        ipv6=is6.astype(np.uint8),
        proto=np.full(n, 6),
    )


def truth_of(batch: PacketBatch, side: str = "src") -> Counter:
    """Exact per-key counts in the sketch's public key form: ``int`` IPv4, 16-byte IPv6."""
    v6 = batch.ipv6.astype(bool)
    addr4, addr6 = getattr(batch, side + "_ip"), getattr(batch, side + "_ip6")
    counts = Counter(np.asarray(addr4)[~v6].tolist())
    counts.update(bytes(row) for row in addr6[v6])
    return counts


def feed(sketch: HiddenSketch, batch: PacketBatch, size: int = 1000) -> HiddenSketch:
    for part in batch.split(size):
        sketch.update(part)
    return sketch


def assert_exact(result, truth: Counter, n_total: int, phi: float, thresh: int) -> None:
    """Complete decode: every true heavy hitter reported, each estimate within ``[f, f + thresh]``."""
    assert result.decode_ok and not result.partial
    reported = dict(result.items)
    heavy = {k for k, c in truth.items() if c > phi * n_total + thresh}
    assert heavy <= set(reported), f"missed {heavy - set(reported)}"
    for k, est in reported.items():
        assert truth[k] <= est <= truth[k] + thresh, (key_text(k), truth[k], est)


# ---------------------------------------------------------------------------- 16-byte keys
def test_sixteen_byte_hash_is_the_project_hash():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (300, 16), np.uint8)
    lo, hi = keys_to_words(keys, 16)
    assert [bytes(k) for k in keys] == words_to_keys(lo, hi, 16)
    be = keys.view(">u8").astype(np.uint64)
    for seed in (0, 7, 2**64 - 1):
        got = np.array([hash64_u128(np.uint64(a), np.uint64(b), np.uint64(seed)) for a, b in be], np.uint64)
        np.testing.assert_array_equal(got, hash_keys(keys, seed))


def test_address16_maps_ipv4_rows():
    batch = mixed_traffic(200, 0.5, seed=3)
    addr = address16(batch, "src")
    v6 = batch.ipv6.astype(bool)
    np.testing.assert_array_equal(addr[v6], batch.src_ip6[v6])
    np.testing.assert_array_equal(addr, batch.flow_keys37()[:, :16])  # v4-mapped as packets.py


def test_src_ip6_matches_naive_on_mixed_traffic():
    batch = mixed_traffic(3000, 0.4, seed=5, universe=150)
    sketch = feed(HiddenSketch(**SMALL16), batch, 700)
    model = naive.NaiveHiddenSketch(sketch.params)
    model.update([bytes(k) for k in address16(batch, "src")])
    assert_same_state(sketch, model)
    want = model.decode()
    got = sketch.decode()
    assert got.items == want["items"] and got.decode_ok == want["decode_ok"] and got.items
    assert got.ss_counts == want["ss_counts"]
    probe = [bytes(k) for k in address16(batch[:50], "src")]
    assert sketch.point_estimate(probe).tolist() == [model.query(k) for k in probe]
    truth = Counter(bytes(k) for k in address16(batch, "src"))
    assert_exact(got, truth, len(batch), SMALL16["phi"], SMALL16["thresh"])
    assert any(key_text(k).startswith("::ffff:") for k, _ in got.items)  # IPv4 heavy hitters, v4-mapped
    assert any(key_text(k).startswith("2001:db8:") for k, _ in got.items)


# ---------------------------------------------------------------------------- the family split
def test_mixed_traffic_split_equals_naive_per_family_and_truth():
    batch = mixed_traffic(4000, 0.4, seed=7, universe=150)
    sketch = feed(HiddenSketch(**MIXED), batch)
    v6 = batch.ipv6.astype(bool)
    model4 = naive.NaiveHiddenSketch(sketch.params)
    model4.update(batch.src_ip[~v6].tolist())
    model6 = naive.NaiveHiddenSketch(sketch.params.ipv6_companion())
    model6.update([bytes(k) for k in batch.src_ip6[v6]])
    # n_items counts both families (phi * N is over all traffic); each family's state is its model's
    assert sketch.n_items == len(batch) and sketch.ipv6.n_items == int(v6.sum())
    sketch.n_items, n_total = int((~v6).sum()), sketch.n_items
    assert_same_state(sketch, model4)
    sketch.n_items = n_total
    assert_same_state(sketch.ipv6, model6)
    result = sketch.decode()
    limit = SMALL["phi"] * len(batch)
    want = {**{k: c for k, c in model4.decode()["ss_counts"].items()},
            **{k: c for k, c in model6.decode()["ss_counts"].items()}}
    assert result.ss_counts == want
    assert dict(result.items) == {k: c + SMALL["thresh"] for k, c in want.items() if c + SMALL["thresh"] > limit}
    assert_exact(result, truth_of(batch), len(batch), SMALL["phi"], SMALL["thresh"])
    kinds = {type(k) for k, _ in result.items}
    assert kinds == {int, bytes}, "both families among the heavy hitters"


@pytest.mark.parametrize("seed", [0, 1])
def test_forty_percent_ipv6_recovers_exactly_against_truth(seed):
    batch = mixed_traffic(20_000, 0.4, seed=seed, universe=600)
    params = dict(memory_bytes=24 * 1024, phi=1e-3, thresh=10, ipv6_memory_bytes=96 * 1024, seed=seed)
    sketch = feed(HiddenSketch(**params), batch, 4096)
    assert_exact(sketch.decode(), truth_of(batch), len(batch), 1e-3, 10)
    sketch.estimate(next(k for k, _ in sketch.heavy_hitters() if isinstance(k, bytes)))  # 16-byte point query


def test_destination_key_recovers_ipv6_destinations():
    batch = mixed_traffic(4000, 0.4, seed=9, universe=150)
    sketch = feed(HiddenSketch(**dict(MIXED, key="dst_ip")), batch)
    assert sketch.ipv6.params.key == "dst_ip6"
    assert_exact(sketch.decode(), truth_of(batch, "dst"), len(batch), SMALL["phi"], SMALL["thresh"])


def test_ipv4_only_traffic_is_unchanged():
    """No IPv6 row: no companion, the same state and answers as the 4-byte key path, same memory."""
    batch = mixed_traffic(4000, 0.0, seed=11, universe=150)
    via_batch = feed(HiddenSketch(**MIXED), batch)
    via_keys = HiddenSketch(**MIXED)
    via_keys.update_keys(batch.src_ip)
    assert via_batch.ipv6 is None and via_batch.memory_bytes == HiddenSketch(**SMALL).memory_bytes
    for name in ("fs", "seg", "bf", "cm"):
        np.testing.assert_array_equal(getattr(via_batch, name), getattr(via_keys, name))
    assert via_batch.decode().items == via_keys.decode().items and via_batch.decode().items


def test_heavy_changers_over_both_families():
    first = mixed_traffic(4000, 0.4, seed=13, universe=150)
    second = mixed_traffic(4000, 0.4, seed=14, universe=150)  # other addresses: everything changes
    a, b = feed(HiddenSketch(**MIXED), first), feed(HiddenSketch(**MIXED), second)
    changes = dict(b.heavy_changers(a))
    before, after = truth_of(first), truth_of(second)
    thr = SMALL["phi"] * 4000
    must = {k for k in before.keys() | after.keys() if abs(after[k] - before[k]) > thr + SMALL["thresh"]}
    assert must <= set(changes) and any(isinstance(k, bytes) for k in must)
    for k, d in changes.items():
        assert abs(d - (after[k] - before[k])) <= SMALL["thresh"], key_text(k)


def test_partial_ipv6_family_is_flagged_and_never_undercounts():
    """An overloaded IPv6 companion (far more distinct IPv6 keys than its CM peels) gives a partial
    answer; every reported estimate is still >= the truth, and IPv4 keys keep exact counts."""
    rng = np.random.default_rng(17)
    heavy = mixed_traffic(6000, 0.4, seed=17, universe=150)
    # 400 distinct IPv6 sources of 35 packets (above thresh: all reach the second stage), against
    # a CM of 3 x 50 counters that peels at most ~120 keys
    flood6 = np.repeat(rng.integers(0, 256, (400, 16), np.uint8), 35, axis=0)
    flood = PacketBatch.from_columns(src_ip6=flood6, ipv6=np.ones(len(flood6), np.uint8))
    batch = PacketBatch.concat([heavy, flood])
    sketch = feed(HiddenSketch(**dict(MIXED, cm_bytes=600)), batch)
    result = sketch.decode()
    assert result.partial and not result.decode_ok
    truth = truth_of(batch)
    reported = dict(result.items)
    assert reported
    for k, est in reported.items():
        assert est >= truth[k], key_text(k)
    assert not any(isinstance(k, int) for k in result.bounded), "the IPv4 family decoded completely"
    v4_heavy = {k for k, c in truth.items() if isinstance(k, int) and c > SMALL["phi"] * len(batch) + 30}
    assert v4_heavy and v4_heavy <= set(reported)


# ---------------------------------------------------------------------------- not sketched: loud
def test_five_tuple_sketch_counts_skipped_ipv6_rows(caplog):
    batch = mixed_traffic(2000, 0.4, seed=19, universe=100)
    with caplog.at_level(logging.WARNING, logger="telesketch.sketches.hiddensketch"):
        sketch = feed(HiddenSketch(key="5tuple", memory_bytes=128 * 1024, phi=2e-3, thresh=5), batch, 500)
    n6 = int(batch.ipv6.sum())
    assert sketch.skipped_ipv6 == n6 and sketch.n_items == len(batch) - n6
    assert sum("skipped_ipv6" in r.getMessage() for r in caplog.records) == 1  # once, not per batch
    assert HiddenSketch.from_bytes(sketch.to_bytes()).skipped_ipv6 == n6
    off = feed(HiddenSketch(**dict(SMALL, ipv6_memory_bytes=0)), batch, 500)
    assert off.ipv6 is None and off.skipped_ipv6 == n6


def test_ipv6_memory_parameter_checks():
    with pytest.raises(SketchError, match="ipv6_memory_bytes"):
        HiddenSketch(**dict(SMALL, ipv6_memory_bytes=-1))
    with pytest.raises(SketchError, match="no IPv6 companion"):
        HiddenSketch(key="5tuple", ipv6_memory_bytes=1 << 17)
    with pytest.raises(SketchError, match="ipv6_memory_bytes 1000: the IPv6 companion: .*leaves no room"):
        HiddenSketch(**dict(SMALL, ipv6_memory_bytes=1000))  # at construction, not at the first IPv6 row
    assert HiddenSketchParams(key="src_ip6").key_bytes == 16
    assert HiddenSketchParams().ipv6_companion().memory_bytes == 128 * 1024
    big_cm = HiddenSketchParams(cm_bytes=100_000, memory_bytes=200_000)  # its 16-byte SS alone > 128 KiB
    assert big_cm.ipv6_companion().fs_bytes == big_cm.fs_bytes


# ---------------------------------------------------------------------------- state
def test_layout_1_snapshot_still_loads():
    """A snapshot as main wrote it before IPv6 (layout 1, no ipv6_memory_bytes) loads and continues."""
    batch = mixed_traffic(3000, 0.0, seed=23, universe=150)
    sketch = feed(HiddenSketch(**SMALL), batch[:2000])
    params = {k: v for k, v in HiddenSketchParams(**SMALL).__dict__.items() if k != "ipv6_memory_bytes"}
    arrays = {"fs": sketch.fs, "seg": sketch.seg, "bf": sketch.bf, "cm": sketch.cm,
              "n_items": np.array([sketch.n_items], np.int64)}
    old = pack_state(ALGORITHM, 1, params, arrays, 3, {"phase": "one_pass"})
    loaded = HiddenSketch.from_bytes(old)
    assert loaded.epoch == 3 and loaded.ipv6 is None and loaded.skipped_ipv6 == 0
    feed(loaded, batch[2000:])
    feed(sketch, batch[2000:])
    assert loaded.decode().items == sketch.decode().items
    with pytest.raises(SketchError, match="layout version"):
        HiddenSketch.from_bytes(pack_state(ALGORITHM, 99, params, arrays, 3, {"phase": "one_pass"}))


def test_round_trip_with_companion_continues_identically():
    batch = mixed_traffic(4000, 0.4, seed=29, universe=150)
    sketch = feed(HiddenSketch(**MIXED), batch[:2500])
    restored = HiddenSketch.from_bytes(sketch.to_bytes())
    assert restored.ipv6 is not None and restored.memory_bytes == sketch.memory_bytes
    feed(sketch, batch[2500:])
    feed(restored, batch[2500:])
    assert restored.to_bytes() == sketch.to_bytes()
    assert restored.decode().items == sketch.decode().items


def test_two_pass_shards_merge_with_ipv6():
    batch = mixed_traffic(4000, 0.4, seed=31, universe=150)
    params = dict(MIXED, mode="two_pass")
    shards = [batch[:1500], batch[1500:]]
    parts = [feed(HiddenSketch(**params), s) for s in shards]
    merged = HiddenSketch.from_bytes(parts[0].to_bytes())
    merged.merge(parts[1])
    for part, s in zip(parts, shards):
        part.begin_second_pass(merged)
        feed(part, s)
    parts[0].merge(parts[1])
    single = feed(HiddenSketch(**params), batch)
    single.begin_second_pass()
    feed(single, batch)
    assert parts[0].to_bytes() == single.to_bytes()
    result = single.decode()
    assert result.decode_ok and any(isinstance(k, bytes) for k, _ in result.items)
    truth = truth_of(batch)
    assert all(truth[k] == c for k, c in result.items)  # two-pass counts are exact


def test_point_estimates_of_mixed_keys():
    batch = mixed_traffic(3000, 0.4, seed=37, universe=150)
    sketch = feed(HiddenSketch(**MIXED), batch)
    truth = truth_of(batch)
    keys = [k for k, _ in truth.most_common(20)]
    est = sketch.point_estimate(keys)
    assert all(e >= truth[k] for k, e in zip(keys, est.tolist()))
    fresh = HiddenSketch(**MIXED)
    assert fresh.estimate(bytes(16)) == 0  # no IPv6 seen yet: no companion, estimate 0
    assert key_text(parse_ipv6("2001:db8::1")) == "2001:db8::1" and key_text(0x0A000001) == "10.0.0.1"


def test_service_window_rules_take_both_families():
    """The service's window rules (two epochs, summed estimates) over mixed states: IPv4 and IPv6
    keys side by side, ties between an IPv4 and an IPv6 key sorted without error."""
    from telesketch.service import sketchset as ss

    cs = ss.configure({"hh": dict(kind="hiddensketch", **MIXED)})[0]
    assert cs.active
    v4, v6 = 0x0A000001, parse_ipv6("2001:db8::1")
    src6 = np.zeros((120, 16), np.uint8)
    src6[60:] = np.frombuffer(v6, np.uint8)
    tie = PacketBatch.from_columns(src_ip=[v4] * 60 + [0] * 60, src_ip6=src6, ipv6=[0] * 60 + [1] * 60)
    states = []
    for seed in (41, 42):
        state = cs.build()
        feed(state, PacketBatch.concat([mixed_traffic(3000, 0.4, seed=seed, universe=150), tie]))
        states.append(cs.load(state.to_bytes(), live=False))
    n = sum(s.n_items for s in states)
    rows = ss.heavy_hitters(cs, states, n, threshold=100).rows
    found = dict(rows)
    assert found[v4] == found[v6] >= 120  # a tie across the families
    changes = ss.heavy_changers(cs, states[:1], states[1:], states[0].n_items, states[1].n_items, threshold=40).rows
    assert any(isinstance(k, bytes) for k, _ in changes) and any(isinstance(k, int) for k, _ in changes)


@pytest.mark.parametrize("key", ["src_ip6", "dst_ip6"])
def test_sixteen_byte_keys_cannot_be_sharded_yet(key):
    """Shards route Hidden Sketch packets by IPv4 source (src_ip) or flow: a 16-byte key's packets
    would spread over shards, so the config refuses it (as for dst_ip)."""
    from telesketch.service.config import ConfigError, load_config

    config = load_config(None, {"shards": 2})
    config.sketches = {"v6": {"kind": "hiddensketch", "key": key}}
    with pytest.raises(ConfigError, match=f"sketch 'v6'.*{key}.*shards"):
        config.validate()
