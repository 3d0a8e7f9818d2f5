"""Ground truth for both address families: the exact oracles and the service's ``exact`` kind count
IPv6 flows and sources exactly (37-byte flow keys, 16-byte sources) next to unchanged IPv4 answers."""
from collections import Counter

import numpy as np
import pytest

from telesketch.packets import PacketBatch, parse_ipv6
from telesketch.service.exactsketch import ExactSketch
from telesketch.sketches import exact
from telesketch.sketches.core import pack_state

from test_packets import mixed_batch


def skewed_mixed_batch(n=400, seed=0) -> PacketBatch:
    """``n`` packets of both families from a few heavy sources and flows (so answers are non-empty)."""
    rng = np.random.default_rng(seed)
    v6 = (rng.random(n) < 0.4).astype(np.uint8)
    host = rng.zipf(1.6, n) % 9
    sport = (rng.zipf(1.5, n) % 5 + 1000).astype(np.uint16)
    six = np.zeros((n, 16), np.uint8)
    six[:, :4] = [0x20, 0x01, 0x0D, 0xB8]
    six[:, 15] = host
    return PacketBatch.from_columns(
        ts_ns=np.arange(n, dtype=np.uint64), ipv6=v6,
        src_ip=np.where(v6 == 1, 0, 0x0A000000 + host), dst_ip=np.where(v6 == 1, 0, 0x0A0000FF),
        src_ip6=six * v6[:, None], dst_ip6=np.repeat(v6[:, None] * np.uint8(7), 16, axis=1),
        src_port=sport, dst_port=np.full(n, 443), proto=np.full(n, 6), ip_id=np.arange(n) * 11 % 65536,
    )


def naive_counts(batch: PacketBatch, key: str) -> Counter:
    """Row-by-row Python count: IPv4 keys as int / 13 bytes, IPv6 as 16 / 37 bytes."""
    counts = Counter()
    k13, k37 = batch.flow_keys(), batch.flow_keys37()
    for i in range(len(batch)):
        if batch.ipv6[i]:
            counts[bytes(getattr(batch, key + "6")[i]) if key != "flow" else bytes(k37[i])] += 1
        else:
            counts[int(getattr(batch, key)[i]) if key != "flow" else bytes(k13[i])] += 1
    return counts


@pytest.mark.parametrize("key", ["src_ip", "dst_ip", "flow"])
def test_mixed_heavy_hitters_equal_a_naive_count_with_one_threshold(key):
    batch = skewed_mixed_batch(seed=1)
    counts = naive_counts(batch, key)
    phi = 0.05
    want = {k: c for k, c in counts.items() if c > phi * len(batch)}
    assert exact.mixed_heavy_hitters(batch, key, phi=phi) == want
    assert any(isinstance(k, bytes) and len(k) in (16, 37) for k in want), "no IPv6 heavy key: weak test"
    assert exact.mixed_count_dict(batch, key) == dict(counts)


def test_mixed_heavy_changers_equal_a_naive_difference():
    before, after = skewed_mixed_batch(300, seed=2), skewed_mixed_batch(500, seed=3)
    old, new = naive_counts(before, "src_ip"), naive_counts(after, "src_ip")
    thr = 0.02 * 500
    want = {k: new[k] - old[k] for k in old.keys() | new.keys() if abs(new[k] - old[k]) > thr}
    assert exact.mixed_heavy_changers(before, after, "src_ip", phi=0.02) == want and want


def test_family_keys_shapes_and_order():
    batch = mixed_batch(6, seed=1)
    four, six = exact.family_keys(batch, "flow")
    assert four.shape == (3, 13) and six.shape == (3, 37)
    assert np.array_equal(six, batch.flow_keys37()[1::2])
    src4, src6 = exact.family_keys(batch, "src_ip")
    assert src4.dtype == np.uint32 and src6.shape == (3, 16) and np.array_equal(src6, batch.src_ip6[1::2])
    with pytest.raises(ValueError, match="key must be"):
        exact.family_keys(batch, "ttl")


@pytest.mark.parametrize("key", ["src_ip", "flow"])
def test_exact_kind_counts_both_families_and_keeps_ipv4_answers(key):
    batch = skewed_mixed_batch(seed=4)
    sketch = ExactSketch(key=key, phi=0.05)
    sketch.update(batch[:150])
    sketch.update(batch[150:])
    counts = naive_counts(batch, key)
    assert dict(sketch.heavy_hitters()) == {k: c for k, c in counts.items() if c > 0.05 * len(batch)}
    assert sketch.flow_counts() == dict(naive_counts(batch, "flow"))
    # the IPv4 answers of a mixed window are the IPv4-only answers at the same absolute threshold
    only4 = ExactSketch(key=key)
    only4.update(batch.family(4))
    thr = 0.05 * len(batch)
    assert [e for e in sketch.heavy_hitters() if not (isinstance(e[0], bytes) and len(e[0]) in (16, 37))] == \
        only4.heavy_hitters(threshold=thr)


def test_exact_kind_flow_size_takes_13_and_37_byte_keys():
    batch = skewed_mixed_batch(seed=5)
    sketch = ExactSketch(key="flow")
    sketch.update(batch)
    truth = naive_counts(batch, "flow")
    k37 = batch.flow_keys37()
    assert sketch.flow_size(k37).tolist() == [truth[bytes(k) if batch.ipv6[i] else bytes(batch.flow_keys()[i])]
                                              for i, k in enumerate(k37)]
    v4 = batch.family(4)
    assert sketch.flow_size(v4.flow_keys()).tolist() == sketch.flow_size(v4.flow_keys37()).tolist()
    assert sketch.flow_size(np.zeros((1, 37), np.uint8)).tolist() == [0]


def test_exact_kind_gap_events_and_hhh_cover_ipv4_rows_only():
    batch = skewed_mixed_batch(seed=6)
    sketch = ExactSketch(key="src_ip", hhh_phi=0.05)
    sketch.update(batch)
    v4 = batch.family(4)
    want = exact.gap_labels(v4.flow_keys(), v4.ip_id)
    events = sketch.gap_events()
    assert len(events) == int(want.sum()) > 0 and np.array_equal(events["ts_ns"], v4.ts_ns[want])
    found = {(p, length): c for p, length, c in sketch.hhh()}
    assert found == exact.hhh(v4.src_ip, threshold=0.05 * len(batch))


def _layout_version(data: bytes) -> int:
    import json
    import struct

    (hlen,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8:8 + hlen])["version"]


def test_state_layout_v1_while_ipv4_only_v2_with_ipv6_and_both_load():
    four = ExactSketch()
    four.update(skewed_mixed_batch(seed=7).family(4))
    data = four.to_bytes()
    assert _layout_version(data) == 1
    assert ExactSketch.from_bytes(data).batch().equals(four.batch())
    mixed = ExactSketch()
    mixed.update(skewed_mixed_batch(seed=7))
    mixed.merge(four)
    assert _layout_version(mixed.to_bytes()) == 2
    loaded = ExactSketch.from_bytes(mixed.to_bytes())
    assert loaded.batch().equals(mixed.batch()) and loaded.batch().ipv6_count() > 0
    assert loaded.heavy_hitters() == mixed.heavy_hitters()


def test_state_written_by_the_ipv4_only_layout_loads():
    """A version-1 state as today's main writes it (seven columns, no IPv6)."""
    batch = skewed_mixed_batch(seed=8).family(4)
    cols = {n: np.array(getattr(batch, n)) for n in ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "ip_id")}
    params = {k: v for k, v in vars(ExactSketch().params).items() if k != "weight"}  # as written before bytes
    old = pack_state("exact-service", 1, params, cols)
    sketch = ExactSketch.from_bytes(old)
    assert sketch.batch().equals(batch) and sketch.to_bytes() == old


def test_v4_mapped_text_is_a_flow_key37_address():
    batch = mixed_batch(2)
    assert bytes(batch.flow_keys37()[0][:16]) == parse_ipv6(f"::ffff:{int(batch.src_ip[0]) >> 24}.{int(batch.src_ip[0]) >> 16 & 255}."
                                                              f"{int(batch.src_ip[0]) >> 8 & 255}.{int(batch.src_ip[0]) & 255}")
