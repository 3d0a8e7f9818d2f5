"""Scale-out on a real local Ray cluster: sharded answers vs single-process / offline-sharded ones."""
import numpy as np
import pytest
from local_ray import start_local_ray

ray = pytest.importorskip("ray")

from telesketch.distributed import (  # noqa: E402
    ShardedSketches,
    shard_ids,
    shard_spec,
    shard_specs,
    source_shard_ids,
    split_by_shard,
    split_by_source,
)
from telesketch.service import sketchset as ss  # noqa: E402
from telesketch.sketches import cocosketch, exact, hiddensketch  # noqa: E402
from telesketch.traces import generate_batch  # noqa: E402

SHARDS = 2
SKETCHES = {
    "exact": {"kind": "exact", "phi": 0.005, "hhh_phi": 0.01},
    "gaps": {"kind": "gapfilter_so", "memory_bytes": 16 * 1024},
    "gaps_big": {"kind": "gapfilter_so", "memory_bytes": 4 * 1024 * 1024},
    "hh_flow": {"kind": "hiddensketch", "key": "5tuple", "memory_bytes": 128 * 1024, "phi": 0.005,
                "expected_epoch_items": 25_000},
    "hh_src": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 0.005, "expected_epoch_items": 25_000},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "threshold": 500},
    "flows": {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size", "estimator": "constant"},
}


@pytest.fixture(scope="module")
def batch():
    return generate_batch(packets=50_000, flows=2_000, seed=7)


@pytest.fixture(scope="module")
def cluster(batch):
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    try:
        sharded = ShardedSketches(SKETCHES, shards=SHARDS)
        for part in batch.split(12_500):  # several batches: state carries across ingest calls
            sharded.ingest(part)
        yield sharded
        sharded.shutdown()
    finally:
        ray.shutdown()


def offline(name, parts):
    """One sketch per shard partition, built from that shard's config and fed that partition."""
    specs = shard_specs({name: SKETCHES[name]}, SHARDS)
    out = []
    for shard, part in enumerate(parts):
        cs = ss.SketchSet.from_config(shard_spec(specs, shard)).get(name)
        assert cs.active, cs.note
        sketch = cs.build()
        for chunk in part.split(12_500):
            sketch.update(chunk)
        out.append(sketch)
    return out


def single(name, batch):
    cs = ss.SketchSet.from_config({name: SKETCHES[name]}).get(name)
    sketch = cs.build()
    sketch.update(batch)
    return sketch


def test_routing_keeps_flows_whole_and_order(batch, cluster):
    ids = shard_ids(batch, SHARDS)
    keys = batch.flow_keys_void()
    owners = {}
    for k, s in zip(keys.tolist(), ids.tolist()):
        assert owners.setdefault(k, s) == s
    assert set(ids.tolist()) == set(range(SHARDS))
    parts = split_by_shard(batch, SHARDS)
    assert sum(map(len, parts)) == len(batch)
    assert all(np.all(np.diff(p.ts_ns.astype(np.int64)) >= 0) for p in parts)
    assert cluster.shard_packets() == [len(p) for p in parts]


def test_exact_sharded_equals_single_process(batch, cluster):
    one = single("exact", batch)
    assert cluster.heavy_hitters("exact") == one.heavy_hitters()
    assert cluster.heavy_hitters("exact", threshold=100) == one.heavy_hitters(threshold=100)
    assert cluster.hhh("exact") == one.hhh()
    assert cluster.top_flows("exact", 50) == one.top_flows(50)
    keys = np.unique(batch.flow_keys(), axis=0)[:300]
    np.testing.assert_array_equal(cluster.flow_size("exact", keys), one.flow_size(keys))
    merged = ss.merged_state(ss.SketchSet.from_config({"exact": SKETCHES["exact"]}).get("exact"), cluster.states("exact"))
    assert merged.flow_counts() == one.flow_counts()
    got, want = cluster.gap_events("exact"), one.gap_events()
    assert len(want) > 0
    np.testing.assert_array_equal(np.sort(got, order=["ts_ns", "src_ip", "src_port"]),
                                  np.sort(want, order=["ts_ns", "src_ip", "src_port"]))


def _events_sorted(events):
    return np.sort(events, order=["ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto"])


def test_gapfilter_sharded_equals_per_partition_runs(batch, cluster):
    parts = split_by_shard(batch, SHARDS)
    want = np.concatenate([s.gap_events() for s in offline("gaps", parts)])
    got = cluster.gap_events("gaps")
    assert len(got) > 0
    np.testing.assert_array_equal(_events_sorted(got), _events_sorted(want))


def test_gapfilter_ample_memory_equals_one_process(batch, cluster):
    one = single("gaps_big", batch).gap_events()
    got = cluster.gap_events("gaps_big")
    assert len(one) > 0
    np.testing.assert_array_equal(_events_sorted(got), _events_sorted(one))


def test_llmsketch_flow_size_from_owning_shard(batch, cluster):
    parts = split_by_shard(batch, SHARDS)
    sketches = offline("flows", parts)
    for part, sketch in zip(parts, sketches):
        keys = np.unique(part.flow_keys(), axis=0)[:200]
        np.testing.assert_array_equal(cluster.flow_size("flows", keys), sketch.flow_size(keys))
    want = sorted((row for s in sketches for row in s.top_flows(20)), key=lambda kv: (-kv[1], kv[0]))[:20]
    assert cluster.top_flows("flows", 20) == want


def test_hiddensketch_5tuple_union_equals_offline(batch, cluster):
    sketches = offline("hh_flow", split_by_shard(batch, SHARDS))
    want = hiddensketch.heavy_hitters_union(sketches, total_items=len(batch))
    got = cluster.heavy_hitters("hh_flow")
    assert got == want and len(got) > 0
    truth = single("exact", batch)  # exact is src-keyed; compare against flow counts instead
    counts = truth.flow_counts()
    limit = SKETCHES["hh_flow"]["phi"] * len(batch)
    true_heavy = {k for k, c in counts.items() if c > limit}
    assert true_heavy <= {bytes(k) for k, _ in got}  # one-pass estimates never under-count


def test_hiddensketch_by_source_is_routed_by_source_and_unioned(batch, cluster):
    ids = source_shard_ids(batch, SHARDS)
    owners = {}
    for src, s in zip(batch.src_ip.tolist(), ids.tolist()):
        assert owners.setdefault(src, s) == s  # every packet of a source on one shard
    sketches = offline("hh_src", split_by_source(batch, SHARDS))
    want = hiddensketch.heavy_hitters_union(sketches, total_items=len(batch))
    got = cluster.heavy_hitters("hh_src")
    assert got == want and len(got) > 0
    true_heavy = exact.heavy_hitters(batch.src_ip, phi=SKETCHES["hh_src"]["phi"])
    assert set(true_heavy) <= {k for k, _ in got}  # recall 1: a source is whole on its shard


def test_residualsketch_summed_layers_equals_offline(batch, cluster):
    sketches = offline("hhh", split_by_shard(batch, SHARDS))
    assert sketches[0].T == cocosketch.shard_threshold(500, SHARDS)
    assert [s.params.seed for s in sketches] == list(range(SHARDS))  # spec §4: each shard its own seed
    want = [(e.prefix, e.length, e.discounted) for e in cocosketch.merged_hhh(sketches, 500)]
    assert cluster.hhh("hhh") == want and len(want) > 0


def test_unknown_sketch_is_a_clear_error(cluster):
    with pytest.raises(ss.QueryError, match="no sketch named"):
        cluster.hhh("nope")
    with pytest.raises(ss.QueryError, match="does not answer hhh"):
        cluster.hhh("gaps")


def test_missing_ray_is_a_clear_error(monkeypatch):
    import sys

    from telesketch.distributed import RayNotInstalledError

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(RayNotInstalledError, match=r"pip install 'telesketch\[ray\]'"):
        ShardedSketches({"exact": {"kind": "exact"}}, shards=2)


def test_shard_specs_turn_a_phi_threshold_into_the_shards_share():
    """The service's default ResidualSketch is configured by (phi, expected_packets): each shard gets
    a plain threshold (its share of T), and the front end keeps T for the window's report."""
    from telesketch.service.config import DEFAULT_SKETCHES
    from telesketch.sketches.residualsketch import ResidualSketch

    spec = DEFAULT_SKETCHES["hhh"]
    T = ResidualSketch(**{k: v for k, v in spec.items() if k != "kind"}).T
    out = shard_specs({"hhh": spec}, 4)["hhh"]
    assert "phi" not in out and "expected_packets" not in out and out["global_threshold"] == T
    assert out["threshold"] == cocosketch.shard_threshold(T, 4) < T
    ResidualSketch(**{k: v for k, v in out.items() if k not in ("kind", "global_threshold")})  # builds


@pytest.mark.parametrize("layout", ["paper", "tuned"])
def test_shard_specs_turn_a_byte_phi_threshold_into_the_shards_share(layout):
    """A byte-weighted ResidualSketch configured by (phi, expected_bytes): shard_specs dropped phi and
    expected_packets but kept expected_bytes beside the shard's threshold, so every shard's sketch
    was refused ("give either threshold or (phi, expected_packets), not both") and the service could
    not start with shards. Pre-existing (not from 10177ba..main); test written first, it failed on
    main a9dd002."""
    from telesketch.service.sketchset import configure
    from telesketch.sketches.residualsketch import ResidualSketch

    spec = {"kind": "residualsketch", "memory_bytes": 64 * 1024, "phi": 2e-3, "expected_bytes": 2_500_000_000,
            "weight": "bytes", "layout": layout}
    whole = ResidualSketch(**{k: v for k, v in spec.items() if k != "kind"})
    out = shard_specs({"hhh": spec}, 4)["hhh"]
    assert "expected_bytes" not in out and out["global_threshold"] == whole.T
    assert out["threshold"] == cocosketch.shard_threshold(whole.T, 4)
    (cs,) = configure(shard_spec({"hhh": out}, 1))
    shard = cs.build()
    assert cs.active and shard.T == out["threshold"]
    assert shard.params.chosen_layout.crucial_layers == whole.params.chosen_layout.crucial_layers


@pytest.mark.parametrize("memory, phi, expected, name", [
    (32 * 1024, 1e-3, 1_000_000, "flat"),  # r = 4096 x 1e-3 = 4.1: CocoSketch's layout, no Residual Block
    (128 * 1024, 5e-4, 4_000_000, "16-24"),  # r = 8.2, 128 KiB, phi <= 7e-4 (rule 6): the /16 and /24 blocks
])
def test_a_shard_pinned_to_a_tuned_layout_reports_its_name(memory, phi, expected, name):
    """``layout = "tuned"`` is pinned for a shard as ``paper`` with the chosen crucial layers and split
    (``ResidualSketch.shard_params``); the shard's ``chosen_layout`` said "custom" for both tuned layouts,
    where the whole-stream sketch says "flat" / "16-24". A layout given by hand that no rule names is
    still "custom"."""
    from telesketch.sketches.residualsketch import ResidualSketch, ResidualSketchParams

    spec = {"kind": "residualsketch", "memory_bytes": memory, "phi": phi, "expected_packets": expected,
            "layout": "tuned"}
    whole = ResidualSketch(**{k: v for k, v in spec.items() if k != "kind"})
    assert whole.params.chosen_layout.name == name
    out = shard_specs({"hhh": spec}, 4)["hhh"]
    shard = ResidualSketch(**{k: v for k, v in out.items() if k not in ("kind", "global_threshold")})
    assert shard.params.layout == "paper" and shard.params.chosen_layout.name == name
    assert shard.params.chosen_layout.crucial_layers == whole.params.chosen_layout.crucial_layers
    assert ResidualSketchParams(memory_bytes=memory, threshold=100, crucial_layers=(24,)).chosen_layout.name == "custom"
    assert ResidualSketchParams(memory_bytes=memory, threshold=100).chosen_layout.name == "paper"


MIXED_SKETCHES = {name: SKETCHES[name] for name in ("exact", "hh_src", "gaps_big", "flows")}


@pytest.fixture(scope="module")
def mixed_cluster(cluster):
    """Both families (40 % IPv6 flows) on 2 shards: IPv6 rows routed by their 37-byte / 16-byte keys."""
    mixed = generate_batch(packets=20_000, flows=1_000, seed=9, ipv6_share=0.4)
    sharded = ShardedSketches(MIXED_SKETCHES, shards=SHARDS)
    for part in mixed.split(10_000):
        sharded.ingest(part)
    yield mixed, sharded
    sharded.shutdown()


def _single_mixed(name, batch):
    sketch = ss.SketchSet.from_config({name: MIXED_SKETCHES[name]}).get(name).build()
    sketch.update(batch)
    return sketch


@pytest.mark.slow  # a second set of shard actors: about 15 s on 2 shared cores
def test_mixed_families_shard_balanced_and_equal_one_process(mixed_cluster):
    mixed, sharded = mixed_cluster
    v6_per_shard = [p.ipv6_count() for p in split_by_shard(mixed, SHARDS)]
    assert min(v6_per_shard) > 0.25 * mixed.ipv6_count(), v6_per_shard  # IPv6 flows spread, not on one shard
    assert min(p.ipv6_count() for p in split_by_source(mixed, SHARDS)) > 0.1 * mixed.ipv6_count()
    one = _single_mixed("exact", mixed)
    got = sharded.heavy_hitters("exact", threshold=20)
    assert got == one.heavy_hitters(threshold=20) and any(isinstance(k, bytes) for k, _ in got)
    assert sharded.top_flows("exact", 30) == one.top_flows(30)
    want = hiddensketch.heavy_hitters_union(offline("hh_src", split_by_source(mixed, SHARDS)), total_items=len(mixed))
    got = sharded.heavy_hitters("hh_src")
    assert got == want and any(isinstance(k, bytes) and len(k) == 16 for k, _ in got)
    whole = _single_mixed("gaps_big", mixed).gap_events()
    events = sharded.gap_events("gaps_big")
    assert len(whole) > 0 and len(events) == len(whole)
    order = ["ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "src_ip6", "dst_ip6"]
    np.testing.assert_array_equal(np.sort(events, order=order), np.sort(whole, order=order))
