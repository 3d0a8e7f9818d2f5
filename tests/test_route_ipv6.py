"""Routing of both address families in the sharded front end (no Ray: the pure routing functions).

IPv4 rows keep their routing (the same shard for the same IPv4 key as before IPv6); IPv6 rows are
routed by a hash of their 37-byte flow key / 16-byte source, so they spread over the shards instead
of all landing where the zero IPv4 columns hash."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.distributed.cluster import key_shard_ids, route_parts, shard_ids, source_shard_ids
from telesketch.hashing import hash_5tuple, hash_u32
from telesketch.traces.generate import generate_batch

SEED = 11


@pytest.fixture(scope="module")
def mixed():
    batch = generate_batch(12_000, 1_500, seed=3, ipv6_share=0.5)
    assert 0 < batch.ipv6_count() < len(batch)
    return batch


def _owners(keys: list, ids: np.ndarray) -> dict:
    owners: dict = {}
    for key, shard in zip(keys, ids.tolist()):
        assert owners.setdefault(key, shard) == shard  # every packet of a key on one shard
    return owners


def test_ipv4_rows_route_as_before(mixed):
    v4 = mixed.ipv6 == 0
    for shards in (2, 3):
        flow, source = shard_ids(mixed, shards, SEED), source_shard_ids(mixed, shards, SEED)
        assert np.array_equal(flow[v4], (hash_5tuple(mixed, SEED) % np.uint64(shards)).astype(np.int64)[v4])
        assert np.array_equal(source[v4], (hash_u32(mixed.src_ip, SEED) % np.uint64(shards)).astype(np.int64)[v4])


@pytest.mark.parametrize("shards", [2, 4])
def test_ipv6_flows_and_sources_spread_and_stay_whole(mixed, shards):
    v6 = mixed.ipv6.astype(bool)
    flows = _owners(mixed.flow_keys37_void()[v6].tolist(), shard_ids(mixed, shards, SEED)[v6])
    sources = _owners([bytes(a) for a in mixed.src_ip6[v6]], source_shard_ids(mixed, shards, SEED)[v6])
    for owners in (flows, sources):
        per_shard = np.bincount(list(owners.values()), minlength=shards)
        assert len(owners) > 50 and per_shard.min() > 0.5 * len(owners) / shards, per_shard  # balanced within reason
    packets = np.bincount(shard_ids(mixed, shards, SEED)[v6], minlength=shards)
    assert packets.min() > 0, packets  # before: every IPv6 packet of a port pair on one shard


def test_key_owner_matches_packet_routing(mixed):
    ids = shard_ids(mixed, 3, SEED)
    assert np.array_equal(key_shard_ids(mixed.flow_keys37(), 3, SEED), ids)  # both families, 37 bytes
    v4 = mixed.ipv6 == 0
    assert np.array_equal(key_shard_ids(mixed.flow_keys()[v4], 3, SEED), ids[v4])  # 13-byte IPv4 keys
    assert np.array_equal(key_shard_ids([bytes(k) for k in mixed.flow_keys37()[:50]], 3, SEED), ids[:50])


def test_route_parts_carry_ipv6_rows_whole(mixed):
    parts = route_parts(mixed, 2, SEED, by_source=True)
    rebuilt = [(f.batch(), s.batch()) for f, s in parts]
    assert sum(len(f) for f, _ in rebuilt) == sum(len(s) for _, s in rebuilt) == len(mixed)
    assert sum(f.ipv6_count() for f, _ in rebuilt) == mixed.ipv6_count()
    for shard, (flow_part, source_part) in enumerate(rebuilt):
        assert (shard_ids(flow_part, 2, SEED) == shard).all()
        assert (source_shard_ids(source_part, 2, SEED) == shard).all()


def test_an_ipv6_row_with_v4_mapped_addresses_routes_as_its_ipv4_flow():
    """The sketches count such a row as the IPv4 flow (its 37-byte key is that flow's), so it must
    land on that flow's shard, and the key owner must agree."""
    from telesketch.packets import V4_MAPPED_PREFIX, PacketBatch

    src, dst = np.array([0x0A000001, 0x0A000002], np.uint32), np.array([0xC0A80001, 0xC0A80002], np.uint32)

    def mapped(addresses):
        return np.array([list(V4_MAPPED_PREFIX + int(a).to_bytes(4, "big")) for a in addresses], np.uint8)

    ports = dict(src_port=[1000, 2000], dst_port=[443, 80], proto=[6, 17])
    four = PacketBatch.from_columns(src_ip=src, dst_ip=dst, **ports)
    six = PacketBatch.from_columns(ipv6=[1, 1], src_ip6=mapped(src), dst_ip6=mapped(dst), **ports)
    for shards in (2, 3, 5):
        assert np.array_equal(shard_ids(six, shards, SEED), shard_ids(four, shards, SEED))
        assert np.array_equal(key_shard_ids(six.flow_keys37(), shards, SEED), shard_ids(four, shards, SEED))
