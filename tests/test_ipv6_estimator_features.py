"""Estimator features of IPv6 rows (issue #18): the compact IPv6 header block read field by field,
the IPv4 view every model reads, IPv4 scores unchanged, per-flow keys of IPv6 flows.

An IPv6 row's ``header`` block: the first 8 bytes of the IPv6 header (version 6 / traffic class /
flow label, payload length, next header, hop limit), then the transport header (tokens.IPV6_FIXED).
"""
import numpy as np
import pytest

from telesketch.estimators import OracleEstimator, check_headers, load_estimator, soft_label
from telesketch.estimators.scoring import FlowScorer
from telesketch.estimators.synthetic import generate_labelled_batch
from telesketch.estimators.tokens import (ipv4_view, ipv6_fields, ipv6_rows, kept_byte_mask, tiny_tokens,
                                          tree_features)
from telesketch.estimators.training import inflow_positions, segment_samples
from telesketch.packets import PacketBatch

TCP = bytes([0x01, 0xBB, 0xC7, 0x38,  # ports 443 -> 51000
             0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,  # seq, ack
             0x50, 0x18, 0xFF, 0xFF,  # data offset 5, PSH|ACK, window 65535
             0xAB, 0xCD, 0x00, 0x00])  # checksum, urgent pointer


def ipv6_block(tc=0xB8, flow_label=0x12345, payload=1000, next_header=6, hop_limit=57, transport=TCP):
    """One compact IPv6 header block and its hdr_len."""
    fixed = bytes([0x60 | tc >> 4, ((tc & 0xF) << 4) | (flow_label >> 16), (flow_label >> 8) & 0xFF,
                   flow_label & 0xFF, payload >> 8, payload & 0xFF, next_header, hop_limit])
    raw = (fixed + transport)[:40]
    block = np.zeros((1, 40), np.uint8)
    block[0, : len(raw)] = np.frombuffer(raw, np.uint8)
    return block, np.array([len(raw)], np.uint8)


def ipv4_equivalent(tos=0xB8, total=1040, ttl=57, proto=6, transport=TCP, flow_label=0x12345):
    """The IPv4 block of the same packet (DF, addresses zeroed; the identification and checksum
    words carry the flow label: its low 16 bits, and the top of ``label * 2654435761 mod 2^32``)."""
    mix = (flow_label * 2654435761) % 2**32 >> 16
    ip = bytes([0x45, tos, total >> 8, total & 0xFF, (flow_label >> 8) & 0xFF, flow_label & 0xFF, 0x40, 0, ttl,
                proto, mix >> 8, mix & 0xFF]) + bytes(8)
    raw = (ip + transport)[:40]
    block = np.zeros((1, 40), np.uint8)
    block[0, : len(raw)] = np.frombuffer(raw, np.uint8)
    return block, np.array([len(raw)], np.uint8)


def test_ipv6_fields_are_read_from_the_compact_block():
    block, n = ipv6_block()
    assert ipv6_rows(block, n).tolist() == [True]
    f = ipv6_fields(block)
    assert {k: int(v[0]) for k, v in f.items()} == {
        "traffic_class": 0xB8, "flow_label": 0x12345, "payload_length": 1000, "next_header": 6, "hop_limit": 57}


def test_ipv4_view_maps_each_field_and_the_transport_header():
    block, n = ipv6_block()
    view, view_len = ipv4_view(block, n)
    want, want_len = ipv4_equivalent()
    np.testing.assert_array_equal(view, want)
    assert view_len.tolist() == want_len.tolist() == [40]
    words = tree_features(view)[0]
    assert words[0] == 0x45B8 and words[1] == 1040 and words[3] == 0x4000 and words[4] == (57 << 8) | 6
    assert words[2] == 0x2345 and words[5] == (0x12345 * 2654435761) % 2**32 >> 16  # the flow label
    assert words[6] == 443 and words[7] == 51000  # the ports, where an IPv4 row has them
    raw_words = tree_features(block)[0]
    assert raw_words[6] != 443  # read as IPv4, the IPv6 block puts other bytes there: why the view exists


def test_short_and_udp_ipv6_blocks():
    udp = bytes([0x00, 0x35, 0xD4, 0x31, 0x00, 0x40, 0x12, 0x34])  # 53 -> 54321, length 64, checksum
    block, n = ipv6_block(tc=0, flow_label=0, payload=64, next_header=17, hop_limit=255, transport=udp)
    view, view_len = ipv4_view(block, n)
    assert view_len.tolist() == [28] and view[0, 9] == 17 and view[0, 8] == 255 and view[0, 1] == 0
    assert not view[0, 4:6].any() and not view[0, 10:12].any()  # no flow label: zero ID and checksum words
    assert view[0, 20:28].tobytes() == udp and not view[0, 28:].any()
    keep = kept_byte_mask(view, view_len)[0]
    assert not keep[26:28].any() and keep[20:26].all()  # the UDP checksum is dropped, as for IPv4
    ids, mask = tiny_tokens(view, view_len)
    assert mask[0].sum() == 14 + 2


def test_ipv4_rows_pass_unchanged():
    batch = generate_labelled_batch(3000, 200, seed=4)
    headers, hdr_len = batch.header, batch.hdr_len
    assert not ipv6_rows(headers, hdr_len).any()
    view, view_len = ipv4_view(headers, hdr_len)
    assert view is headers and view_len is hdr_len
    checked = check_headers(headers, hdr_len)
    np.testing.assert_array_equal(checked[0], headers)


@pytest.fixture(scope="module")
def trees():
    return load_estimator("trees")


def test_shipped_trees_score_ipv6_like_the_same_ipv4_packet(trees):
    six, n6 = ipv6_block()
    four, n4 = ipv4_equivalent()
    assert trees.score(six, n6).tolist() == trees.score(four, n4).tolist()
    # a different hop limit / traffic class / length reaches the model (the features are live)
    variants = [ipv6_block(hop_limit=h, tc=t, payload=p) for h, t, p in ((57, 0xB8, 1000), (64, 0, 0), (255, 0x20, 20))]
    preds = {float(trees.predict(*v)[0]) for v in variants}
    assert len(preds) > 1


def test_shipped_trees_score_ipv4_rows_of_a_mixed_batch_as_before(trees):
    batch = generate_labelled_batch(2000, 100, seed=3)
    alone = trees.score_packets(batch, np.arange(len(batch)))
    block, n = ipv6_block(next_header=44)  # a fragment header first: the batch's proto (17) must win
    extra = PacketBatch.from_columns(ipv6=[1], proto=[17], header=block, hdr_len=n, src_port=[1], dst_port=[2])
    mixed = PacketBatch.concat([batch, extra])
    scores = trees.score_packets(mixed, np.arange(len(mixed)))
    np.testing.assert_array_equal(scores[:-1], alone)
    want, want_len = ipv4_equivalent(proto=17)
    assert scores[-1] == trees.score(want, want_len)[0]


def ipv6_flows_sharing_ports(n_flows=3, sizes=(5, 2, 1)):
    """IPv6 flows that differ only in their source address (same ports and protocol)."""
    rows = []
    for f, size in enumerate(sizes[:n_flows]):
        src = np.zeros((size, 16), np.uint8)
        src[:, 0], src[:, 15] = 0x20, f + 1
        block, n = ipv6_block(hop_limit=60 + f)
        rows.append(PacketBatch.from_columns(
            ipv6=np.ones(size, np.uint8), src_ip6=src, dst_ip6=np.full((size, 16), 7, np.uint8), src_port=np.full(size, 443),
            dst_port=np.full(size, 51000), proto=np.full(size, 6), header=np.repeat(block, size, 0),
            hdr_len=np.repeat(n, size)))
    return PacketBatch.concat(rows)


def test_training_samples_of_ipv6_flows():
    batch = ipv6_flows_sharing_ports()
    pos, inv, counts = inflow_positions(batch)
    assert sorted(counts.tolist()) == [1, 2, 5]  # three flows, not one
    samples = segment_samples(batch, rescore=False)
    assert sorted(samples.size.tolist()) == [1, 2, 5]
    assert (samples.headers[:, 0] == 0x45).all() and (samples.headers[:, 9] == 6).all()  # the IPv4 view
    assert sorted(samples.headers[:, 8].tolist()) == [60, 61, 62]


def test_oracle_and_scorer_tell_ipv6_flows_apart():
    batch = ipv6_flows_sharing_ports()
    oracle = OracleEstimator.from_batch(batch)
    got = oracle.score_packets(batch, np.arange(len(batch)))
    np.testing.assert_allclose(got, soft_label([5] * 5 + [2] * 2 + [1]))
    scorer = FlowScorer(oracle, mode="sync")
    np.testing.assert_allclose(scorer.scores(batch), soft_label([5] * 5 + [2] * 2 + [1]))
    assert scorer.model_calls == 3  # one scoring point per flow
