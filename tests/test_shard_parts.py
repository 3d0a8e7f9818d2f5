"""What the sharded front end sends each shard: only the columns holding data, the same batches."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from telesketch.distributed.cluster import ShardPart, route, route_parts
from telesketch.packets import HEADER_BYTES, PacketBatch
from telesketch.traces.generate import generate_batch


def _without_header(batch: PacketBatch) -> PacketBatch:
    cols = batch.columns()
    cols["header"] = np.zeros((len(batch), HEADER_BYTES), np.uint8)
    cols["hdr_len"] = np.zeros(len(batch), np.uint8)
    cols["tcp_seq"] = np.zeros(len(batch), np.uint32)
    return PacketBatch(**cols)


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("by_source", [False, True])
def test_route_parts_rebuild_the_routed_batches(strip, by_source):
    batch = generate_batch(5_000, 300, seed=4)
    assert batch.header.any()
    if strip:
        batch = _without_header(batch)
    for shards in (1, 3):
        expected, parts = route(batch, shards, 7, by_source), route_parts(batch, shards, 7, by_source)
        assert len(parts) == shards
        for (flow, source), (flow_part, source_part) in zip(expected, parts):
            assert isinstance(flow_part, ShardPart) and len(flow_part) == len(flow)
            assert flow_part.batch().equals(flow)
            assert (source_part is None) == (source is None)
            if source is not None:
                assert source_part.batch().equals(source)
            sent = pickle.loads(pickle.dumps(flow_part, protocol=5))  # what Ray ships
            assert sent.batch().equals(flow)
            assert ("header" in flow_part.columns) == (not strip)


def test_absent_columns_are_not_sent():
    batch = _without_header(generate_batch(20_000, 500, seed=5))
    full = sum(len(pickle.dumps(f, protocol=5)) for f, _ in route(batch, 2, 7, False))
    compact = sum(len(pickle.dumps(f, protocol=5)) for f, _ in route_parts(batch, 2, 7, False))
    assert compact < full * 0.6, (compact, full)


@pytest.mark.parametrize("groups", [1, 2, 3, 16])
def test_group_order_is_the_stable_argsort(groups):
    """The counting sort route_parts groups packets with gives numpy's stable argsort's order and
    the group starts searchsorted finds (issue 21: it replaced them on the sharded front end)."""
    from telesketch.distributed.cluster import group_order

    rng = np.random.default_rng(groups)
    for n in (0, 1, 7, 65_536):
        ids = rng.integers(0, groups, n).astype(np.int64)
        if n > 10:
            ids[: n // 3] = groups - 1  # long runs, as one elephant flow's packets give
        order, bounds = group_order(ids, groups)
        expected = np.argsort(ids, kind="stable")
        assert order.dtype == np.int64 and np.array_equal(order, expected)
        assert bounds.tolist() == np.searchsorted(ids[expected], np.arange(groups + 1)).tolist()


def test_group_order_refuses_ids_out_of_range():
    from telesketch.distributed.cluster import group_order
    from telesketch.sketches.core import SketchError

    with pytest.raises(SketchError, match="shard ids"):
        group_order(np.array([0, 2], np.int64), 2)
    with pytest.raises(SketchError, match="shard ids"):
        group_order(np.array([-1, 0], np.int64), 2)
