"""ResidualSketch and CocoSketch over mixed IPv4/IPv6 traffic: the IPv6 prefix tree beside the IPv4 one.

Checks against the naive model (state for state), the exact oracle (``exact.hhh6``), shards, old
(version 1) snapshots and the presenter's row format.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import naive_residualsketch as naive
from telesketch.packets import PacketBatch, parse_ipv6
from telesketch.presenter import format_prefix
from telesketch.sketches import exact
from telesketch.sketches.cocosketch import hash6, mix64
from telesketch.sketches.core import SketchError
from telesketch.sketches.residualsketch import (
    CocoSketch,
    HHHRow,
    ResidualSketch,
    merged_hhh,
    shard_threshold,
)

DATA = Path(__file__).parent / "data"


def ipv6_pool(rng, size: int) -> np.ndarray:
    """``uint8[size, 16]`` hosts in an operator-shaped hierarchy: 3 /32s, a few /48 sites each, /56s,
    /64 subnets; half the interface ids are small (``::1``-style), half random (privacy addresses)."""
    allocations = np.array([list(parse_ipv6(t)) for t in ("2001:db8::", "2a00:1450::", "2600:1f00::")], np.uint8)
    pool = np.zeros((size, 16), np.uint8)
    pool[:, :4] = allocations[rng.integers(0, 3, size), :4]
    pool[:, 5] = rng.integers(0, 4, size)  # site /48
    pool[:, 6] = rng.integers(0, 3, size)  # /56
    pool[:, 7] = rng.integers(0, 3, size)  # /64
    random_iid = rng.random(size) < 0.5
    pool[random_iid, 8:] = rng.integers(0, 256, (int(random_iid.sum()), 8), dtype=np.uint8)
    pool[~random_iid, 15] = rng.integers(1, 20, int((~random_iid).sum()))
    pool[0] = 0  # the all-zero key must not be taken for an empty bucket
    return pool


def mixed_batch(n: int, seed: int, ipv6_share: float = 0.4, pool_size: int = 300) -> PacketBatch:
    """``n`` packets, ``ipv6_share`` of them IPv6: Zipf over host pools of both families, plus a
    "privacy subnet" (2001:db8:0:ff::/64) of one-packet hosts that is heavy only as a /64."""
    rng = np.random.default_rng(seed)
    v6 = rng.random(n) < ipv6_share
    n6 = int(v6.sum())
    pool6 = ipv6_pool(rng, pool_size)
    src6 = pool6[np.minimum(rng.zipf(1.2, n6) - 1, pool_size - 1)]
    privacy = rng.random(n6) < 0.1
    src6[privacy, :8] = np.frombuffer(parse_ipv6("2001:db8:0:ff::"), np.uint8)[:8]
    src6[privacy, 8:] = rng.integers(0, 256, (int(privacy.sum()), 8), dtype=np.uint8)
    top = rng.integers(1, 224, 4, dtype=np.uint32) << np.uint32(24)
    pool4 = top[rng.integers(0, 4, pool_size)] | (rng.integers(0, 6, pool_size, dtype=np.uint32) << np.uint32(16)) \
        | rng.integers(0, 1 << 16, pool_size, dtype=np.uint32)
    src4 = pool4[np.minimum(rng.zipf(1.2, n - n6) - 1, pool_size - 1)]
    src_ip = np.zeros(n, np.uint32)
    src_ip[~v6] = src4
    src_ip6 = np.zeros((n, 16), np.uint8)
    src_ip6[v6] = src6
    dst_ip6 = np.zeros((n, 16), np.uint8)
    dst_ip6[v6] = src6[::-1]  # some other IPv6 address per IPv6 row
    dst_ip = np.where(v6, 0, src_ip ^ np.uint32(0x01010101)).astype(np.uint32)
    return PacketBatch.from_columns(src_ip=src_ip, dst_ip=dst_ip, src_ip6=src_ip6, dst_ip6=dst_ip6,
                                    ipv6=v6.astype(np.uint8))


def v6_rows(batch: PacketBatch, column: str = "src_ip6") -> np.ndarray:
    return getattr(batch, column)[batch.ipv6.astype(bool)]


def v4_rows(batch: PacketBatch, column: str = "src_ip") -> np.ndarray:
    return getattr(batch, column)[~batch.ipv6.astype(bool)]


def entries(naive_out):
    return sorted((p, L, e, c) for L, p, e, c in naive_out)


def assert_same_state6(sketch, model):
    hi, lo, counts, occ = model.state()
    np.testing.assert_array_equal(sketch.hi6, np.array(hi, np.uint64))
    np.testing.assert_array_equal(sketch.lo6, np.array(lo, np.uint64))
    np.testing.assert_array_equal(sketch.counts6, np.array(counts, np.int32))
    np.testing.assert_array_equal(sketch.occ6, np.array(occ, np.uint8))


# ---------------------------------------------------------------------------- primitives
def test_hash6_matches_the_pure_python_definition():
    for x in (0, 1, 1 << 127, int.from_bytes(parse_ipv6("2001:db8::1"), "big"), (1 << 128) - 1):
        for row, init in enumerate((181, 5197)):
            assert hash6(np.uint64(x >> 64), np.uint64(x & naive.M64), np.uint64(init)) == naive.hash6(x, row)
    assert int(mix64(np.uint64(12345))) == naive.mix64(12345)


# ---------------------------------------------------------------------------- Numba == naive, both trees
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(crucial6=(64,), memory6=4000, T=25),
        dict(crucial6=(32, 64), memory6=6000, T=25, addback="ge"),
        dict(crucial6=(48,), memory6=3000, T=20, connection=False),
    ],
)
def test_residualsketch_ipv6_tree_equals_naive_model_on_mixed_traffic(kwargs):
    batch = mixed_batch(6000, seed=3)
    extra = {k: kwargs[k] for k in ("addback", "connection") if k in kwargs}
    rs = ResidualSketch(memory_bytes=2048, threshold=kwargs["T"], seed=9, ipv6_memory_bytes=kwargs["memory6"],
                        ipv6_crucial_layers=kwargs["crucial6"], **extra)
    for part in batch.split(1700):  # batch boundaries must not matter
        rs.update(part)
    model6 = naive.NaiveResidualSketch6(kwargs["memory6"], kwargs["T"], kwargs["crucial6"], 9, **extra)
    model6.update(bytes(row) for row in v6_rows(batch))
    model4 = naive.NaiveResidualSketch(2048, kwargs["T"], (16,), "byte", 9, **extra)
    model4.update(v4_rows(batch).tolist())

    assert_same_state6(rs, model6)
    ids, counts, occ = model4.state()
    np.testing.assert_array_equal(rs.ids, np.array(ids, np.uint32))
    np.testing.assert_array_equal(rs.counts, np.array(counts, np.int32))
    assert rs.layer_estimates6() == model6.layer_estimates()
    assert sorted(rs.hhh6_entries()) == entries(model6.hhh())
    assert sorted(rs.hhh6_entries(threshold=50)) == entries(model6.hhh(50))
    assert sorted(rs.hhh_entries()) == entries(model4.hhh())
    assert rs.packets6 == len(v6_rows(batch)) and rs.packets == len(v4_rows(batch))
    assert any(length == 64 for _, length, _, _ in rs.hhh6_entries())  # not vacuous: a heavy /64


def test_cocosketch_ipv6_tree_equals_naive_model():
    batch = mixed_batch(5000, seed=4)
    cs = CocoSketch(memory_bytes=1600, ipv6_memory_bytes=3000, threshold=30, seed=4)
    for part in batch.split(2000):
        cs.update(part)
    model = naive.NaiveResidualSketch6(3000, 30, (), 4)
    model.update(bytes(row) for row in v6_rows(batch))
    assert_same_state6(cs, model)
    assert cs.layer_estimates6() == model.layer_estimates()
    assert sorted(cs.hhh6_entries()) == entries(model.hhh())


def test_ipv4_answers_do_not_change_with_ipv6_rows_in_the_batch():
    batch = mixed_batch(8000, seed=5)
    only_v4 = batch[~batch.ipv6.astype(bool)]
    for cls in (ResidualSketch, CocoSketch):
        mixed, plain = cls(memory_bytes=2048, threshold=30, seed=2), cls(memory_bytes=2048, threshold=30, seed=2)
        mixed.update(batch)
        plain.update(only_v4)
        np.testing.assert_array_equal(mixed.cells, plain.cells)
        np.testing.assert_array_equal(mixed.occ, plain.occ)
        assert mixed.hhh_entries() == plain.hhh_entries() and mixed.hhh() == plain.hhh()
        assert plain.packets6 == 0 and not plain.occ6.any() and mixed.packets6 > 0


# ---------------------------------------------------------------------------- against the exact oracle
@pytest.mark.parametrize("dimension", ["src", "dst"])
def test_ample_memory_is_exact_for_both_families(dimension):
    batch = mixed_batch(10000, seed=6)
    T = 60
    rs = ResidualSketch(memory_bytes=1 << 18, ipv6_memory_bytes=1 << 19, threshold=T, addback="ge",
                        dimension=dimension)
    cs = CocoSketch(memory_bytes=1 << 18, ipv6_memory_bytes=1 << 19, threshold=T, dimension=dimension)
    rs.update(batch)
    cs.update(batch)
    truth6 = exact.hhh6(v6_rows(batch, f"{dimension}_ip6"), threshold=T)
    truth4 = exact.hhh(v4_rows(batch, f"{dimension}_ip"), threshold=T)
    assert any(length < 128 for _, length in truth6) and len(truth6) > 3
    for sketch in (rs, cs):
        assert {(e.prefix, e.length): e.discounted for e in sketch.hhh6_entries()} == truth6
        assert {(e.prefix, e.length): e.discounted for e in sketch.hhh_entries()} == truth4
    counts6 = exact.prefix_counts6(v6_rows(batch, f"{dimension}_ip6"))
    for (prefix, length) in list(truth6)[:5]:
        assert rs.estimate6(prefix, length) == counts6[length][prefix]
        assert cs.estimate6(prefix.to_bytes(16, "big"), length) == counts6[length][prefix]


def test_f1_against_the_oracle_with_little_memory():
    """With a few KiB the IPv6 tree is approximate; ResidualSketch stays accurate and beats CocoSketch."""
    batch = mixed_batch(30000, seed=7, pool_size=2000)
    T = 150
    truth = {k for k, _ in exact.hhh6(v6_rows(batch), threshold=T).items() if k[1] < 128}
    f1 = {}
    for name, sketch in (("residual", ResidualSketch(memory_bytes=2048, ipv6_memory_bytes=6000, threshold=T)),
                         ("coco", CocoSketch(memory_bytes=2048, ipv6_memory_bytes=6000, threshold=T))):
        sketch.update(batch)
        reported = {(e.prefix, e.length) for e in sketch.hhh6_entries() if e.length < 128}
        f1[name] = exact.set_accuracy(truth, reported).f1
    assert len(truth) >= 5
    assert f1["residual"] >= 0.8, f1
    assert f1["residual"] >= f1["coco"], f1


def test_two_shards_give_the_same_ipv6_hhh_as_one_sketch():
    batch = mixed_batch(12000, seed=8)
    T, shards = 80, 2
    one = ResidualSketch(memory_bytes=1 << 16, ipv6_memory_bytes=1 << 18, threshold=T, addback="ge")
    one.update(batch)
    parts = []
    for s in range(shards):
        sk = ResidualSketch(memory_bytes=1 << 16, ipv6_memory_bytes=1 << 18,
                            threshold=shard_threshold(T, shards), seed=s, addback="ge")
        sk.update(batch[s::shards])
        parts.append(sk)
    assert merged_hhh(parts, T, family=6) == one.hhh6_entries()
    assert merged_hhh(parts, T) == one.hhh_entries()
    with pytest.raises(SketchError, match="family"):
        merged_hhh(parts, T, family=5)


# ---------------------------------------------------------------------------- answers and snapshots
def test_hhh_rows_answer_both_families_with_exact_prefixes_and_rfc5952_text():
    batch = mixed_batch(10000, seed=9)
    rs = ResidualSketch(memory_bytes=1 << 16, ipv6_memory_bytes=1 << 18, threshold=100)
    rs.update(batch)
    rows = rs.hhh_rows()
    families = [r.family for r in rows]
    assert families == sorted(families) and {4, 6} <= set(families)  # IPv4 first, then IPv6
    for row in rows:
        assert isinstance(row, HHHRow) and len(row.prefix) == (4 if row.family == 4 else 16)
    six = [r for r in rows if r.family == 6]
    assert [(int.from_bytes(r.prefix, "big"), r.length, r.estimate, r.discounted) for r in six] == \
        [tuple(e) for e in rs.hhh6_entries()]
    text = {format_prefix(r.prefix, r.length) for r in six}  # the presenter prints the rows
    assert "2001:db8:0:ff::/64" in text  # the privacy subnet: heavy only as a /64
    assert format_prefix(parse_ipv6("2001:db8::"), 32) == "2001:db8::/32"
    assert format_prefix(bytes(16), 0) == "::/0"
    assert format_prefix(bytes([10, 1, 0, 0]), 16) == "10.1.0.0/16"
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        format_prefix(bytes(5), 0)


@pytest.mark.parametrize("cls", [ResidualSketch, CocoSketch])
def test_version_1_snapshot_from_main_still_loads_and_answers_the_same(cls):
    name = cls.ALGORITHM
    old = cls.from_bytes((DATA / f"{name}_v1.snapshot").read_bytes())
    want = json.loads((DATA / "residualsketch_v1_hhh.json").read_text())[name]
    assert [list(e) for e in old.hhh()] == want
    assert old.packets6 == 0 and not old.occ6.any()
    old.update(mixed_batch(2000, seed=1))  # and it goes on counting both families
    assert old.packets6 > 0


@pytest.mark.parametrize("cls", [ResidualSketch, CocoSketch])
def test_round_trip_keeps_the_ipv6_tree_and_continues_identically(cls):
    batch = mixed_batch(6000, seed=10)
    a = cls(memory_bytes=2048, ipv6_memory_bytes=4000, threshold=30, seed=6)
    a.update(batch[:3000])
    b = cls.from_bytes(a.to_bytes())
    a.update(batch[3000:])
    b.update(batch[3000:])
    for name in ("hi6", "lo6", "counts6", "occ6"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.hhh_rows() == b.hhh_rows() and a.packets6 == b.packets6
    blob = bytearray(a.to_bytes())
    with pytest.raises(SketchError):
        cls.from_bytes(bytes(blob).replace(b'"packets6"', b'"packetsX"'))


def test_bad_ipv6_inputs_and_parameters_raise_clear_errors():
    rs = ResidualSketch(threshold=10)
    with pytest.raises(SketchError, match=r"uint8\[n, 16\]"):
        rs.update_addresses6(np.zeros((3, 4), np.uint8))
    with pytest.raises(SketchError, match="host bits"):
        rs.estimate6(parse_ipv6("2001:db8::1"), 64)
    with pytest.raises(SketchError, match="length"):
        rs.estimate6(0, 129)
    with pytest.raises(SketchError, match="IPv6 crucial layers"):
        ResidualSketch(threshold=10, ipv6_crucial_layers=(60,))
    with pytest.raises(SketchError, match="IPv6 bucket"):
        CocoSketch(threshold=10, ipv6_memory_bytes=39)
    assert rs.packets6 == 0 and not rs.occ6.any()
    p = ResidualSketch(threshold=10).params
    assert p.ipv6_memory_bytes == p.memory_bytes and p.ipv6_crucial_layers == (32, 64)


def test_exact_ipv6_oracle_equals_the_pure_python_hhh_definition():
    """``exact.hhh6`` / ``prefix_counts6`` against per-layer counts written out with Python ints."""
    batch = mixed_batch(4000, seed=12)
    rows = v6_rows(batch)
    counts = {L: {} for L in naive.IPV6_LAYERS}
    for row in rows:
        x = int.from_bytes(bytes(row), "big")
        for L in naive.IPV6_LAYERS:
            p = naive.prefix(x, L, 128)
            counts[L][p] = counts[L].get(p, 0) + 1
    assert exact.prefix_counts6(rows) == counts
    for T in (20, 80):
        want = {(p, L): c for L, p, _, c in naive.hhh(counts, naive.IPV6_LAYERS, T, width=128)}
        assert exact.hhh6(rows, threshold=T) == want and len(want) > 3
    assert exact.ipv6_ints(np.array([list(parse_ipv6("2001:db8::1"))], np.uint8)) == [0x20010DB8 << 96 | 1]
    assert exact.prefix_mask(32, 128) == 0xFFFFFFFF << 96 and exact.prefix_mask(16) == 0xFFFF0000
