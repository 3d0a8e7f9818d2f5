"""LLM-Sketch with its score cache charged to ``memory_bytes`` (``scorer_memory = "charged"``, issue
#19 row 7): the total never exceeds the configured bytes, bad splits are refused with a clear error,
states round-trip, and the service builds, reports and reloads it."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.estimators import ConstantEstimator
from telesketch.estimators.scoring import (CACHE_ENTRY_BYTES, DEFAULT_SCORER_SHARE, MIN_CHARGED_CACHE_FLOWS,
                                           ScoredLLMSketch, charged_split)
from telesketch.estimators.synthetic import generate_labelled_batch
from telesketch.packets import PacketBatch
from telesketch.sketches.core import SketchError
from telesketch.sketches.llmsketch import LLMSketch, LLMSketchParams


class CountingEstimator(ConstantEstimator):
    """constant(0.5) that counts the rows it scores."""

    def __init__(self):
        super().__init__(0.5)
        self.rows = 0

    def score(self, headers, hdr_len):
        self.rows += len(headers)
        return super().score(headers, hdr_len)


def ipv6_batch(n: int = 64) -> PacketBatch:
    """``n`` IPv6 packets of ``n`` flows (they make a keep_keys sketch widen its names to 37 bytes)."""
    src6 = np.zeros((n, 16), np.uint8)
    src6[:, 0], src6[:, 15] = 0x20, np.arange(n) % 251 + 1
    dst6 = np.zeros((n, 16), np.uint8)
    dst6[:, 0] = 0x20
    return PacketBatch.from_columns(ts_ns=np.arange(n, dtype=np.uint64), src_ip=np.zeros(n, np.uint32),
                                    dst_ip=np.zeros(n, np.uint32), src_port=np.arange(n, dtype=np.uint16) + 1000,
                                    dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8),
                                    ip_id=np.zeros(n, np.uint16), ipv6=np.ones(n, np.uint8), src_ip6=src6,
                                    dst_ip6=dst6)


@pytest.mark.parametrize("task", ["flow_size", "heavy_hitters", "hhh"])
@pytest.mark.parametrize("memory", [4 * 1024, 16 * 1024 + 7, 400 * 1024, 1 << 20])
@pytest.mark.parametrize("size", [{}, {"scorer_share": 0.1}, {"scorer_share": 0.6}, {"cache_flows": 100}])
def test_charged_total_never_exceeds_memory_bytes(task, memory, size):
    sketch = LLMSketch(memory, task, estimator=0.5, scorer_memory="charged", **size)
    assert isinstance(sketch, ScoredLLMSketch) and sketch.scorer_charged
    assert sketch.memory_bytes == sketch.sketch_memory_bytes + sketch.scorer_bytes <= memory
    assert sketch.scorer_bytes == sketch.scorer.cache.capacity * CACHE_ENTRY_BYTES
    if "cache_flows" in size:
        assert sketch.scorer.cache.capacity == 104  # rounded up to whole sets of 8
    else:
        share = size.get("scorer_share", DEFAULT_SCORER_SHARE)
        assert memory * share - 8 * CACHE_ENTRY_BYTES < sketch.scorer_bytes <= memory * share
        assert sketch.memory_bytes > memory - 8 * CACHE_ENTRY_BYTES - 64  # the sketch gets the rest, not less
    if task != "hhh":
        sketch.update(generate_labelled_batch(20_000, 2_000, seed=1))
        assert sketch.memory_bytes <= memory


def test_charged_keep_keys_budgets_the_widest_names():
    """keep_keys names widen from 13 to 37 bytes per heavy slot at the first IPv6 flow: charged, they
    are budgeted at 37, so IPv6 traffic cannot push the total past memory_bytes."""
    memory = 64 * 1024
    sketch = LLMSketch(memory, estimator=0.5, scorer_memory="charged", keep_keys=True, scoring="sync")
    sketch.update(generate_labelled_batch(5_000, 500, seed=2))
    narrow = sketch.memory_bytes
    sketch.update(ipv6_batch())
    assert sketch.slot_names.shape[-1] == 37 and sketch.memory_bytes > narrow
    assert sketch.memory_bytes <= memory
    assert sketch.params.charged_bytes(37) + sketch.scorer_bytes > memory - 37 * 8 * 2  # no budget left idle


@pytest.mark.parametrize("task,weight,names", [("flow_size", "packets", 0), ("flow_size", "bytes", 13),
                                               ("heavy_hitters", "packets", 0), ("hhh", "packets", 0)])
def test_params_charged_bytes_is_what_the_sketch_charges(task, weight, names):
    sketch = LLMSketch(50_000, task, weight=weight, keep_keys=bool(names))
    assert sketch.params.charged_bytes(names) == sketch.memory_bytes


@pytest.mark.parametrize("kwargs,message", [
    ({"scorer_share": 1.0}, r"scorer_share must be a fraction in \(0, 1\)"),
    ({"scorer_share": 0}, r"scorer_share must be a fraction in \(0, 1\)"),
    ({"scorer_share": True}, r"scorer_share must be a fraction"),
    ({"scorer_share": "half"}, r"scorer_share must be a fraction"),
    ({"cache_flows": MIN_CHARGED_CACHE_FLOWS - 1}, r"cache_flows must be an integer >= 8 \(one cache set\)"),
    ({"cache_flows": 1000, "scorer_share": 0.1}, "by cache_flows or by scorer_share, not both"),
    ({"cache_flows": 10_000}, r"\(cache_flows=10000: 10000 flows x 33 B = 330000 bytes\) leaves nothing for the sketch"),
    ({"scorer_share": 0.001}, r"scorer_share=0.001 of memory_bytes=65536 is 65 bytes: under the smallest score "
                              r"cache, 8 flows of 33 bytes \(264 bytes\)"),
    ({"scorer_memory": "shared"}, r"scorer_memory must be one of \('separate', 'charged'\)"),
])
def test_charged_config_errors(kwargs, message):
    kwargs = {"scorer_memory": "charged", **kwargs}
    with pytest.raises(SketchError, match=message):
        LLMSketch(64 * 1024, estimator=0.5, **kwargs)


def test_charged_sketch_part_too_small_and_other_refusals():
    with pytest.raises(SketchError, match=r"leaves 35 bytes for the sketch, too few: .*leaves no heavy bucket"):
        LLMSketch(299, estimator=0.5, scorer_memory="charged", cache_flows=8)
    with pytest.raises(SketchError, match="scorer_share=0.2 sizes a charged score cache: it needs scorer_memory"):
        LLMSketch(64 * 1024, estimator=0.5, scorer_share=0.2)
    with pytest.raises(SketchError, match="needs an estimator"):
        LLMSketch(64 * 1024, scorer_memory="charged")
    state = LLMSketch(64 * 1024, estimator=0.5, scorer_memory="charged").to_bytes()
    with pytest.raises(SketchError, match="needs memory_bytes, the total"):
        LLMSketch.from_bytes(state, estimator=0.5, scorer_memory="charged")
    assert isinstance(LLMSketch(64 * 1024, estimator=0.5, scorer_share=None), ScoredLLMSketch)  # None: not given


def test_separate_is_the_default_and_unchanged():
    sketch = LLMSketch(64 * 1024, estimator=0.5)
    assert not sketch.scorer_charged and sketch.charged_memory_bytes is None
    assert sketch.params.memory_bytes == 64 * 1024 and sketch.scorer.cache.capacity == 1 << 20
    assert sketch.memory_bytes == sketch.sketch_memory_bytes == LLMSketch(64 * 1024).memory_bytes
    assert sketch.scorer_bytes == 33 * (1 << 20)


def test_charged_round_trip_successor_and_copy():
    memory = 32 * 1024
    settings = {"estimator": 0.5, "scorer_memory": "charged", "scorer_share": 0.3, "scoring": "sync"}
    sketch = LLMSketch(memory, **settings)
    batch = generate_labelled_batch(20_000, 2_000, seed=3)
    sketch.update(batch)
    loaded = LLMSketch.from_bytes(sketch.to_bytes(), memory_bytes=memory, **settings)
    assert loaded.to_bytes() == sketch.to_bytes() and loaded.params == sketch.params
    assert loaded.memory_bytes == sketch.memory_bytes <= memory and loaded.scorer_charged
    assert loaded.scorer.cache.capacity == sketch.scorer.cache.capacity
    keys = batch.flow_keys()[:500]
    assert (loaded.flow_size(keys) == sketch.flow_size(keys)).all()
    nxt = sketch.successor()  # the next epoch shares the cache, so charges the same total
    assert nxt.scorer is sketch.scorer and nxt.scorer_charged and nxt.memory_bytes == sketch.memory_bytes
    clone = sketch.copy()  # a copy holds the sketch state only
    assert clone.scorer is None and clone.memory_bytes == sketch.sketch_memory_bytes
    pure = LLMSketch.from_bytes(sketch.to_bytes())  # a closed epoch loads without its scorer
    assert type(pure) is LLMSketch and pure.memory_bytes == sketch.sketch_memory_bytes


def test_charged_loads_an_old_state_with_the_state_parameters():
    """An old snapshot (tests/golden) loads with the charged settings: its own parameters win, so
    answers are the same; memory_bytes reports what is held."""
    from pathlib import Path

    data = (Path(__file__).parent / "golden" / "llmsketch.tsk").read_bytes()
    plain = LLMSketch.from_bytes(data)
    loaded = LLMSketch.from_bytes(data, estimator=0.5, scorer_memory="charged", memory_bytes=400 * 1024)
    assert loaded.params == plain.params and loaded.to_bytes() == plain.to_bytes()
    assert loaded.memory_bytes == plain.memory_bytes + loaded.scorer_bytes


def test_charged_split_uses_the_rest_for_the_sketch():
    params, flows = charged_split(100_000, scorer_share=0.2)
    assert flows == 20_000 // 33 // 8 * 8 and params == LLMSketchParams(100_000 - flows * 33)


def test_an_evicted_flow_is_scored_again_as_new():
    """What a small cache costs: a flow evicted from it and seen again is a new flow to the scorer
    (one more model call, position 1 again), so the cache size changes model calls and the floor,
    never the sketch's own state for the same scores."""
    flows = 64
    batch = generate_labelled_batch(4_000, flows, seed=4)
    calls = {}
    for cache_flows in (8, 1024):
        est = CountingEstimator()
        sketch = LLMSketch(64 * 1024, estimator=est, scoring="sync", scorer_memory="charged", cache_flows=cache_flows)
        for part in batch.split(256):
            sketch.update(part)
        calls[cache_flows] = est.rows
    assert calls[1024] == len(np.unique(batch.flow_keys_void()))  # one call per flow
    assert calls[8] > 4 * calls[1024]  # 64 flows through 8 entries: most packets find theirs evicted


def test_service_builds_reports_and_reloads_a_charged_sketch(tmp_path):
    """Through gRPC: memory_bytes is the total (at most the configured bytes) and a restart reloads the
    open epoch's state with the same split (memory_bytes passed to from_bytes as a load parameter)."""
    from telesketch.client import Client
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from workloads import service_traffic

    memory = 64 * 1024
    spec = {"kind": "llmsketch", "memory_bytes": memory, "task": "flow_size", "estimator": "constant",
            "scorer_memory": "charged", "scorer_share": 0.25}
    cfg = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / "data"),
                        epoch_seconds=1.0, keep_epochs=6, sketches={"flows": spec})
    traffic = service_traffic(per_epoch=5_000)
    answers = []
    for run in range(2):
        svc = ServiceThread(cfg).start()
        try:
            client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
            if run == 0:
                client.push(traffic)
            stats = svc.service.stats()
            (flows,) = stats["sketches"]
            assert flows["active"] and flows["scorer_charged"]
            assert flows["memory_bytes"] <= memory and flows["scorer_bytes"] == (memory // 4) // 33 // 8 * 8 * 33
            (info,) = client.stats()["sketches"]
            assert int(info["memory_bytes"]) == flows["memory_bytes"]
            answers.append(client.top_flows(10, last=3))
            client.close()
        finally:
            svc.stop()
    assert answers[0] == answers[1] and answers[0]


def test_config_refuses_a_bad_split_and_shards_keep_the_charged_settings():
    """The service's config names the sketch on a bad split (ConfigError); each Ray shard builds the
    same charged sketch from its spec (the split is per shard, as memory_bytes is)."""
    from telesketch.distributed.cluster import shard_spec, shard_specs
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import configure

    spec = {"kind": "llmsketch", "memory_bytes": 64 * 1024, "estimator": "constant", "scorer_memory": "charged"}
    with pytest.raises(ConfigError, match=r"sketch 'flows' \(llmsketch\): bad parameters: scorer_share must be"):
        configure({"flows": {**spec, "scorer_share": 1.5}})
    (cs,) = configure({"flows": spec})
    built = cs.build()
    assert cs.active and built.scorer_charged and built.memory_bytes <= 64 * 1024
    for shard in (0, 1):
        (shard_cs,) = configure(shard_spec(shard_specs({"flows": spec}, 2), shard))
        on_shard = shard_cs.build()
        assert on_shard.params == built.params and on_shard.memory_bytes == built.memory_bytes


@pytest.mark.parametrize("task,memory,settings", [
    ("heavy_hitters", 560, {"scorer_share": 0.5}),  # 296 bytes for the sketch: 2 heavy buckets of 136
    ("hhh", 560, {"scorer_share": 0.5}),
    ("flow_size", 560, {"scorer_share": 0.5, "heavy_ratio": 1.0}),  # no light part: 4 heavy buckets of 64
])
def test_a_small_charged_sketch_of_another_task_loads_its_own_state(task, memory, settings):
    """from_bytes re-splits memory_bytes to size the cache; it split for the default task and shape
    (flow_size, heavy_ratio 0.2), not the state's, so a charged sketch whose part fits its own task
    failed to load ("leaves 296 bytes for the sketch, too few ... heavy_ratio=0.2"): at a restart,
    and in the service's probe, which then skipped the sketch. Fails on main a9dd002."""
    from telesketch.service.sketchset import configure

    sketch = LLMSketch(memory, task, estimator=0.5, scorer_memory="charged", **settings)
    assert sketch.memory_bytes <= memory
    load = {k: v for k, v in settings.items() if k != "heavy_ratio"}  # the service's load parameters
    loaded = LLMSketch.from_bytes(sketch.to_bytes(), memory_bytes=memory, estimator=0.5, scorer_memory="charged",
                                  **load)
    assert loaded.params == sketch.params and loaded.memory_bytes == sketch.memory_bytes
    (cs,) = configure({"small": {"kind": "llmsketch", "memory_bytes": memory, "task": task, "estimator": "constant",
                                 "scorer_memory": "charged", **settings}})
    assert cs.active, cs.note

@pytest.mark.parametrize("kwargs,message", [
    ({"task": "flows"}, r"^unknown LLM-Sketch task 'flows'"),
    ({"weight": "bits"}, r"^weight must be 'packets' or 'bytes', got 'bits'"),
    ({"heavy_ratio": 0}, r"^heavy_ratio must be in \(0, 1\], got 0"),
    ({"seed": -1}, r"^seed must be in \[0, 2\*\*63\), got -1"),
    ({"task": "hhh", "weight": "bytes"}, r"^weight='bytes' is for the flow_size and heavy_hitters tasks"),
])
def test_a_bad_sketch_setting_is_not_called_too_little_memory(kwargs, message):
    """A bad task, weight, heavy_ratio or seed fails at any size: charged, its error read "memory_bytes=65536
    with the score cache charged ... leaves 59200 bytes for the sketch, too few: unknown LLM-Sketch task"
    (it blamed the split). It is now the same error as the separate cache's. Fails on main a9dd002."""
    with pytest.raises(SketchError, match=message):
        LLMSketch(64 * 1024, estimator=0.5, **kwargs)
    with pytest.raises(SketchError, match=message) as charged:
        LLMSketch(64 * 1024, estimator=0.5, scorer_memory="charged", **kwargs)
    assert "too few" not in str(charged.value)


@pytest.mark.parametrize("scorer_memory", ["separate", "charged"])
def test_a_sharded_llmsketch_reports_its_shards_score_caches(scorer_memory):
    """With Ray shards the service's stats read ``scorer_bytes`` / ``scorer_charged`` off the open
    epoch's :class:`OpenShardedState`, which had neither: every shard's cache was reported as 0 bytes
    (33 MiB a shard by default) and a charged one as not charged, while memory_bytes (the shards' sum)
    did hold it. Each shard allocates the configured cache up front, so the front end's own build
    tells its size without asking the actors. Fails on main a9dd002 (AttributeError)."""
    from types import SimpleNamespace

    from telesketch.distributed.cluster import shard_spec, shard_specs
    from telesketch.distributed.service import OpenShardedState, ShardedConfiguredSketch
    from telesketch.service.sketchset import configure

    spec = {"kind": "llmsketch", "memory_bytes": 64 * 1024, "estimator": "constant", "cache_flows": 1000,
            "scorer_memory": scorer_memory}
    shards = 3
    (cs,) = configure(shard_spec(shard_specs({"flows": spec}, shards), 0))
    one = cs.build()
    sharded = ShardedConfiguredSketch(cs.name, cs.kind_name, cs.params, cs.kind, cs.cls, cs.active, cs.note)
    sharded.pool = SimpleNamespace(shards=shards, memory=lambda name: shards * one.memory_bytes)
    state = OpenShardedState(sharded)
    assert one.scorer_bytes == 1000 * CACHE_ENTRY_BYTES
    assert state.scorer_bytes == shards * one.scorer_bytes
    assert state.scorer_charged is (scorer_memory == "charged")
    assert state.memory_bytes == shards * (one.sketch_memory_bytes + (state.scorer_charged and one.scorer_bytes))
    plain = ShardedConfiguredSketch("plain", "llmsketch", {"memory_bytes": 64 * 1024}, cs.kind, cs.cls, True, "")
    plain.pool = sharded.pool
    assert OpenShardedState(plain).scorer_bytes == 0 and not OpenShardedState(plain).scorer_charged
