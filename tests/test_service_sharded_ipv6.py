"""The sharded service (``shards = 2``, a real local Ray cluster, on loopback) answers both address
families as one process does: IPv6 heavy hitters (Hidden Sketch's IPv6 companion on the shard
owning the source), both HHH trees (layer estimates summed over shards and epochs, one pass per
family: equal to the same sketches run offline on each shard's packets, since a shard promotes at
its share of the threshold) and flow sizes of 37-byte keys (each from the shard owning the flow), equal to exact truth
on mixed traffic with ample memory (HHH: the ``exact`` kind).
"""
from __future__ import annotations

import numpy as np
import pytest
from local_ray import start_local_ray

ray = pytest.importorskip("ray")

from telesketch.client import Client  # noqa: E402
from telesketch.distributed import shard_spec, shard_specs, split_by_shard  # noqa: E402
from telesketch.distributed.cluster import key_shard_ids, shard_ids  # noqa: E402
from telesketch.packets import FLOW_KEY37_BYTES  # noqa: E402
from telesketch.service.server import ServiceThread  # noqa: E402
from telesketch.sketches import exact  # noqa: E402
from telesketch.sketches.cocosketch import hhh_rows, merged_hhh  # noqa: E402
from telesketch.sketches.residualsketch import ResidualSketch  # noqa: E402
from test_service_ipv6 import (EPOCHS, HH_T, HHH_T, SKETCHES, answered, config, epoch_parts,  # noqa: E402
                               mixed_traffic, true_hhh)

SHARDS = 2
SHARD_SPECS = shard_specs(SKETCHES, SHARDS)


def test_37_byte_keys_are_owned_by_the_shard_their_packets_went_to():
    batch = mixed_traffic()[:5000]
    assert batch.ipv6.any() and not batch.ipv6.all()
    for shards in (2, 3):
        want = shard_ids(batch, shards)
        assert np.array_equal(key_shard_ids(batch.flow_keys37(), shards), want)
        v4 = ~batch.ipv6.astype(bool)
        assert np.array_equal(key_shard_ids(batch.family(4).flow_keys(), shards), want[v4])


def offline_hhh(parts: list, threshold: float) -> list:
    """ResidualSketch run offline on each shard's packets of each epoch (the shards' parameters),
    each tree's layer estimates summed over all of them, one HHH pass per family."""
    states = []
    for part in parts:
        for shard, packets in enumerate(split_by_shard(part, SHARDS)):
            params = {k: v for k, v in shard_spec(SHARD_SPECS, shard)["hhh"].items() if k != "kind"}
            sketch = ResidualSketch(**params)
            sketch.update(packets)
            states.append(sketch)
    return hhh_rows(merged_hhh(states, threshold, family=4), merged_hhh(states, threshold, family=6))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    traffic = mixed_traffic()
    svc = ServiceThread(config(tmp_path_factory.mktemp("sharded6"), shards=SHARDS)).start()
    client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="collector-6")
    assert client.push(traffic.split(4096)).applied_packets == len(traffic)
    assert svc.service.sketchset.pool.shards == SHARDS
    yield client, traffic
    client.close()
    svc.stop()
    ray.shutdown()


@pytest.mark.slow
def test_sharded_service_answers_both_families_exactly(sharded):
    client, traffic = sharded
    for eid, part in epoch_parts(traffic).items():
        for sketch in ("hh", "exact"):
            got = dict(client.heavy_hitters(epoch=eid, sketch=sketch, threshold=HH_T))
            assert got == exact.mixed_heavy_hitters(part, "src_ip", threshold=HH_T)
        rows = client.hhh(epoch=eid, sketch="exact", threshold=HHH_T, families=(4, 6))
        assert answered(rows) == true_hhh(part, HHH_T) and {r.family for r in rows} == {4, 6}
        rows = client.hhh(epoch=eid, sketch="hhh", threshold=HHH_T, families=(4, 6))
        assert answered(rows) == answered(offline_hhh([part], HHH_T)) and {r.family for r in rows} == {4, 6}
    # over the window: both families, summed over epochs and shards
    rows, info = client.hhh(last=EPOCHS, sketch="hhh", threshold=3 * HHH_T, families=(4, 6), details=True)
    assert answered(rows) == answered(offline_hhh(list(epoch_parts(traffic).values()), 3 * HHH_T))
    assert len(info.epochs) == EPOCHS and info.combine == "summed layer estimates"
    rows = client.hhh(last=EPOCHS, sketch="exact", threshold=3 * HHH_T, families=(4, 6))
    assert answered(rows) == true_hhh(traffic, 3 * HHH_T)
    hh = dict(client.heavy_hitters(last=EPOCHS, sketch="hh", threshold=3 * HH_T))
    assert hh == exact.mixed_heavy_hitters(traffic, "src_ip", threshold=3 * HH_T)
    assert any(isinstance(k, bytes) for k in hh)
    counts = exact.mixed_count_dict(traffic, "flow")
    keys = [bytes(k) for k in counts if len(bytes(k)) == FLOW_KEY37_BYTES][:40] + [bytes(k) for k in counts][:20]
    for sketch in ("flows", "exact"):
        assert [int(v) for v in client.flow_size(keys, last=EPOCHS, sketch=sketch)] == [counts[k] for k in keys]
    top = client.top_flows(10, last=EPOCHS, sketch="exact")
    assert [c for _, c in top] == sorted(counts.values(), reverse=True)[:10]
