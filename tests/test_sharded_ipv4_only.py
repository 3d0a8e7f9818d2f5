"""A sharded service treats an IPv4-only sketch (LLM-Sketch's IPv4-keyed ``heavy_hitters`` task) as
one process does: each shard withholds the IPv6 rows from it, and the driver counts them once in
``ipv6_withheld`` (the one-process rule is in tests/test_ipv4_only_sketches.py). Before this, a
shard handed it IPv6 rows and the whole batch failed with a SketchError."""
from telesketch.distributed import split_by_shard
from telesketch.distributed.cluster import ShardWorker
from telesketch.distributed.service import ShardedSketchSet
from telesketch.service.sketchset import SketchSet

from test_exact_ipv6 import skewed_mixed_batch

SPECS = {"hh": {"kind": "llmsketch", "task": "heavy_hitters", "estimator": "constant", "memory_bytes": 64 * 1024},
         "truth": {"kind": "exact"}}


def test_a_shard_withholds_ipv6_rows_from_an_ipv4_only_sketch():
    batch = skewed_mixed_batch(600, seed=3)
    assert 0 < batch.ipv6_count() < len(batch)
    worker = ShardWorker(SPECS)
    worker.advance(0)
    worker.update(batch)  # raised SketchError: IPv6 rows reached the IPv4-keyed task
    one = SketchSet.from_config(SPECS)
    states = one.new_states(0)
    one.update(states, batch)
    assert worker.states["hh"].heavy_hitters(threshold=5) == states["hh"].heavy_hitters(threshold=5)
    assert worker.states["truth"].heavy_hitters(threshold=5) == states["truth"].heavy_hitters(threshold=5)
    assert worker.count() == len(batch)


class _Pool:
    """Stands in for the Ray shard pool: routes like it and applies each part on a local worker."""

    def __init__(self, shards: int = 2):
        self.workers = [ShardWorker(SPECS, shard) for shard in range(shards)]
        for worker in self.workers:
            worker.advance(0)

    def update(self, batch):
        for worker, part in zip(self.workers, split_by_shard(batch, len(self.workers))):
            worker.update(part)


def test_the_sharded_set_counts_withheld_ipv6_rows_once_per_batch():
    configured = SketchSet.from_config(SPECS)
    sharded = ShardedSketchSet()
    sharded.sketches = configured.sketches
    sharded.pool = _Pool()
    batch = skewed_mixed_batch(500, seed=4)
    sharded.update({}, batch)
    sharded.update({}, batch)
    assert sharded.ipv6_withheld == {"hh": 2 * batch.ipv6_count()}


def test_a_shard_filters_each_part_once_for_all_its_ipv4_only_sketches(monkeypatch):
    from telesketch.packets import PacketBatch

    specs = {**SPECS, "hh2": dict(SPECS["hh"])}
    worker = ShardWorker(specs)
    worker.advance(0)
    assert worker.ipv4_only == {"hh", "hh2"}
    calls = []
    family = PacketBatch.family

    def counted(self, version):
        calls.append(version)
        return family(self, version)

    monkeypatch.setattr(PacketBatch, "family", counted)
    worker.update(skewed_mixed_batch(600, seed=5))
    assert calls == [4]  # one IPv4 filter of the part, shared by both IPv4-only sketches
