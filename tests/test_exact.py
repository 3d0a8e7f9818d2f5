"""The exact oracles, checked on hand-made cases whose answers are worked out here."""
import numpy as np
import pytest

from telesketch.sketches import exact, hierarchy
from telesketch.packets import PacketBatch, parse_ipv4 as ip


def test_counts_and_heavy_hitters_are_strict():
    keys = np.array([1] * 5 + [2] * 3 + [3] * 2, np.uint32)  # n = 10
    assert exact.count_dict(keys) == {1: 5, 2: 3, 3: 2}
    assert exact.heavy_hitters(keys, phi=0.3) == {1: 5}  # 3 is not > 0.3 * 10
    assert exact.heavy_hitters(keys, threshold=2) == {1: 5, 2: 3}
    with pytest.raises(ValueError, match="exactly one"):
        exact.heavy_hitters(keys)
    with pytest.raises(ValueError, match="phi"):
        exact.heavy_hitters(keys, phi=1.5)


def test_thirteen_byte_keys_come_back_as_bytes():
    batch = PacketBatch.from_columns(src_ip=[1, 1, 2], dst_ip=[9, 9, 9], src_port=[1, 1, 1], dst_port=[2, 2, 2], proto=[6, 6, 6])
    counts = exact.count_dict(batch.flow_keys())
    key = bytes([0, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2, 6])
    assert counts[key] == 2 and len(counts) == 2
    assert exact.count_dict(batch.flow_keys_void()) == counts


def test_heavy_changers_use_phi_of_the_larger_window():
    before = np.array([1] * 10 + [2] * 2 + [3] * 8, np.uint32)  # n = 20
    after = np.array([1] * 2 + [2] * 9 + [4] * 4 + [3] * 7, np.uint32)  # n = 22
    # threshold = 0.2 * 22 = 4.4: key 1 changes -8, key 2 +7, key 3 -1, key 4 +4 (not > 4.4)
    assert exact.heavy_changers(before, after, phi=0.2) == {1: -8, 2: 7}


def test_discounted_hhh_byte_hierarchy_by_hand():
    addresses = np.array(
        [ip("10.0.0.1")] * 6 + [ip("10.0.0.2")] * 5 + [ip("10.1.0.1")] * 3 + [ip("11.0.0.0")] * 2, np.uint32
    )
    # T = 4: both 10.0.0.x hosts are HHH; 10.0.0.0/24 has f = 11 but c = 0; 10.0.0.0/8 has
    # c = 14 - 11 = 3; the root has c = 16 - 11 = 5 > 4, so it is an HHH too.
    assert exact.hhh(addresses, threshold=4) == {(ip("10.0.0.1"), 32): 6, (ip("10.0.0.2"), 32): 5, (0, 0): 5}
    # T = 2: 10.1.0.1 (3) joins; the root is left with 16 - 14 = 2, not > 2.
    assert set(exact.hhh(addresses, threshold=2)) == {(ip("10.0.0.1"), 32), (ip("10.0.0.2"), 32), (ip("10.1.0.1"), 32)}


def test_discounted_hhh_bit_hierarchy_finds_the_tightest_prefix():
    # 10.0.0.0 and 10.0.0.1 (3 packets each) share a /31 of 6 packets; T = 4.
    addresses = np.array([ip("10.0.0.0")] * 3 + [ip("10.0.0.1")] * 3 + [ip("192.168.0.1")], np.uint32)
    assert exact.hhh(addresses, threshold=4, mode="bit") == {(ip("10.0.0.0"), 31): 6}
    assert exact.hhh(addresses, threshold=4, mode="byte") == {(ip("10.0.0.0"), 24): 6}


def test_hhh_from_counts_matches_hhh_and_rejects_bad_modes():
    addresses = np.random.default_rng(0).choice(np.array([ip("1.2.3.4"), ip("1.2.9.9"), ip("5.6.7.8")], np.uint32), 1000)
    counts = exact.prefix_counts(addresses, hierarchy.BIT_LAYERS)
    assert hierarchy.hhh_from_counts(counts, 100) == exact.hhh(addresses, threshold=100, mode="bit")
    with pytest.raises(ValueError, match="mode"):
        exact.hhh(addresses, threshold=1, mode="nibble")


def test_gap_labels_follow_the_spec_recurrence():
    flow = np.zeros(9, np.uint32)
    seq = np.array([100, 101, 103, 110, 109, 111, 160, 165, 100], np.uint16)
    # 101: d=1; 103: minor 2; 110: major 7 -> True; 109: reordered (no update);
    # 111: d=1 from 110; 160: d=49 unrelated; 165: major 5 -> True; 100: far below, no reset (< 10000)
    assert exact.gap_labels(flow, seq).tolist() == [False, False, False, True, False, False, False, True, False]


def test_gap_labels_wrap_around_and_per_flow_state():
    flows = np.array([1, 2, 1, 2, 1], np.uint32)
    seq = np.array([65534, 7, 3, 8, 4], np.uint16)
    # flow 1: 65534 -> 3 is d = 5 mod 2^16 (major, wraps) and resets the max (65531 >= 10000);
    # then 3 -> 4 is in order. Flow 2 is in order.
    assert exact.gap_labels(flows, seq).tolist() == [False, False, True, False, False]


def test_set_and_label_metrics():
    acc = exact.set_accuracy({1, 2, 3, 4}, {2, 3, 5})
    assert (acc.true_positives, acc.false_positives, acc.false_negatives) == (2, 1, 2)
    assert acc.precision == pytest.approx(2 / 3) and acc.recall == pytest.approx(0.5)
    assert acc.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert exact.set_accuracy(set(), set()).f1 == 1.0
    labels = exact.label_accuracy([True, False, True, False], [True, True, False, False])
    assert (labels.precision, labels.recall) == (0.5, 0.5)


def test_are_and_aae_count_misses_as_zero_estimates():
    truth = {"a": 10, "b": 4}
    estimates = {"a": 12}
    assert exact.are(truth, estimates) == pytest.approx((0.2 + 1.0) / 2)
    assert exact.aae(truth, estimates) == pytest.approx((2 + 4) / 2)
    assert exact.are(truth, estimates, keys=["a"]) == pytest.approx(0.2)
