"""The service with its sketches on a real local Ray cluster (``shards = 2``), on loopback.

``exact`` must answer exactly as one process; every other sketch as the same sketch classes run
offline on each shard's packets (routing by flow key), combined by the sharded window rules; and a
restart from the data directory must bring back every epoch, the open one included.
"""
from __future__ import annotations

import numpy as np
import pytest
from local_ray import start_local_ray

ray = pytest.importorskip("ray")

from telesketch.client import Client  # noqa: E402
from telesketch.distributed import shard_ids, shard_spec, shard_specs, split_by_shard, split_by_source  # noqa: E402
from telesketch.packets import PacketBatch  # noqa: E402
from telesketch.service.config import ServiceConfig  # noqa: E402
from telesketch.service.server import ServiceThread  # noqa: E402
from telesketch.sketches import exact  # noqa: E402
from test_service import SKETCHES as BASE_SKETCHES  # noqa: E402
from test_service import config, epoch_parts, generate_batches  # noqa: E402

SHARDS = 2
SKETCHES = dict(BASE_SKETCHES, hh_flow={"kind": "hiddensketch", "key": "5tuple", "memory_bytes": 128 * 1024,
                                        "phi": 0.005, "expected_epoch_items": 30_000})
SHARD_SPECS = shard_specs(SKETCHES, SHARDS)


def _params(name: str, shard: int = 0) -> dict:
    """Shard ``shard``'s parameters of sketch ``name`` (ResidualSketch: its own seed)."""
    return {k: v for k, v in shard_spec(SHARD_SPECS, shard)[name].items() if k != "kind"}


@pytest.fixture(scope="module")
def ray_cluster():
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def traffic():
    return generate_batches()


@pytest.fixture(scope="module")
def sharded(ray_cluster, tmp_path_factory, traffic):
    """A 2-shard server that has ingested ``traffic`` (three epochs; the last one stays open)."""
    cfg = config(tmp_path_factory.mktemp("sharded"), shards=SHARDS, sketches=dict(SKETCHES))
    svc = ServiceThread(cfg).start()
    client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="collector-1")
    summary = client.push(traffic)
    assert summary.applied_packets == sum(map(len, traffic))
    pool = svc.service.sketchset.pool  # the open epoch really lives on the actors
    from telesketch.sketches.llmsketch import LLMSketch

    assert pool.shards == SHARDS and pool.memory("flows") == SHARDS * LLMSketch(**_params("flows")).memory_bytes
    yield svc, client, cfg
    client.close()
    svc.stop()


def shard_parts(traffic) -> dict[int, list[PacketBatch]]:
    """Per epoch, each shard's packets (arrival order)."""
    return {eid: split_by_shard(part, SHARDS) for eid, part in epoch_parts(traffic).items()}


def test_exact_answers_as_one_process(sharded, traffic):
    _, client, _ = sharded
    parts = epoch_parts(traffic)
    ids = sorted(parts)
    for eid, part in parts.items():
        assert dict(client.heavy_hitters(epoch=eid, sketch="exact")) == exact.heavy_hitters(part.src_ip, phi=0.005)
        hhh = {(p, length): c for p, length, c in client.hhh(epoch=eid, sketch="exact")}
        assert hhh == exact.hhh(part.src_ip, phi=1e-3)
    whole = PacketBatch.concat(traffic)
    rows, info = client.heavy_hitters(last=3, sketch="exact", threshold=500, details=True)
    assert dict(rows) == exact.heavy_hitters(whole.src_ip, threshold=500) and info.combine == "merged"
    counts = exact.count_dict(whole.flow_keys_void())
    top = client.top_flows(5, last=3, sketch="exact")
    assert top == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert client.flow_size([k for k, _ in top], last=3, sketch="exact") == [counts[k] for k, _ in top]
    got = dict(client.heavy_changers(epoch=ids[-1], sketch="exact"))
    assert got == exact.heavy_changers(parts[ids[-2]].src_ip, parts[ids[-1]].src_ip, phi=0.005) and got


def test_llm_flow_sizes_come_from_the_owning_shard(sharded, traffic):
    _, client, _ = sharded
    from telesketch.sketches.llmsketch import LLMSketch

    chains = [[] for _ in range(SHARDS)]  # per shard, one sketch per epoch, each the previous one's successor
    for eid, shards in sorted(shard_parts(traffic).items()):
        for s, part in enumerate(shards):
            sketch = chains[s][-1].successor() if chains[s] else LLMSketch(**_params("flows"))
            sketch.update(part)
            chains[s].append(sketch)
    parts = epoch_parts(traffic)
    for i, (eid, shards) in enumerate(sorted(shard_parts(traffic).items())):
        keys = np.concatenate([shards[s].flow_keys()[:10] for s in range(SHARDS)])
        want = np.concatenate([chains[s][i].flow_size(shards[s].flow_keys()[:10]) for s in range(SHARDS)])
        assert client.flow_size([bytes(k) for k in keys], epoch=eid, sketch="flows") == want.tolist()
        tops = [row for s in range(SHARDS) for row in chains[s][i].top_flows(10)]
        assert client.top_flows(10, epoch=eid, sketch="flows") == \
            [(k, float(v)) for k, v in sorted(tops, key=lambda kv: (-kv[1], kv[0]))[:10]]
    # a window: each key's estimates summed over the epochs of its own shard only
    first = parts[sorted(parts)[0]][:20]
    keys, owner = first.flow_keys(), shard_ids(first, SHARDS)
    want = [sum(int(sk.flow_size(k[None])[0]) for sk in chains[o]) for k, o in zip(keys, owner)]
    sizes, info = client.flow_size([bytes(k) for k in keys], last=3, sketch="flows", details=True)
    assert sizes == want and info.combine == "owning shard, sum of per-epoch estimates"


def test_gap_events_are_the_union_of_the_shards(sharded, traffic):
    _, client, _ = sharded
    from telesketch.sketches.gapfilter import GapFilterAO

    offline = [GapFilterAO(**_params("gaps")) for _ in range(SHARDS)]
    for eid, shards in sorted(shard_parts(traffic).items()):
        events = []
        for sketch, part in zip(offline, shards):
            sketch.start_epoch(eid)
            sketch.update(part)
            events.append(sketch.gap_events())
        want = np.concatenate(events)
        want = want[np.argsort(want["ts_ns"], kind="stable")]
        got = client.flow_gaps(epoch=eid, sketch="gaps")
        assert len(got) > 0 and [g.ts_ns for g in got] == want["ts_ns"].tolist()
        assert [g.jump for g in got] == want["jump"].tolist()


def test_hhh_sums_the_shards_layers_at_the_service_threshold(sharded, traffic):
    _, client, _ = sharded
    from telesketch.sketches.residualsketch import ResidualSketch, merged_hhh

    global_t = SHARD_SPECS["hhh"]["global_threshold"]
    offline = {}
    for eid, shards in sorted(shard_parts(traffic).items()):
        offline[eid] = [ResidualSketch(**_params("hhh", shard)) for shard in range(SHARDS)]
        for sketch, part in zip(offline[eid], shards):
            sketch.update(part)
        want = merged_hhh(offline[eid], global_t)
        assert sorted(client.hhh(epoch=eid, sketch="hhh")) == sorted((e.prefix, e.length, float(e.discounted))
                                                                     for e in want) and want
    rows = client.hhh(last=3, sketch="hhh")
    want = merged_hhh([s for e in sorted(offline) for s in offline[e]], 3 * global_t)
    assert sorted(rows) == sorted((e.prefix, e.length, float(e.discounted)) for e in want) and want


def test_hidden_sketch_by_flow_unions_the_shards_at_the_global_threshold(sharded, traffic):
    _, client, _ = sharded
    from telesketch.sketches.hiddensketch import HiddenSketch

    parts = epoch_parts(traffic)
    for eid, shards in sorted(shard_parts(traffic).items()):
        limit = 0.005 * len(parts[eid])
        want = {}
        for part in shards:
            sketch = HiddenSketch(**_params("hh_flow"))
            sketch.update(part)
            want.update({k: v for k, v in sketch.heavy_hitters() if v > limit})
        got = dict(client.heavy_hitters(epoch=eid, sketch="hh_flow"))
        assert got == want and got
        truth = exact.heavy_hitters(parts[eid].flow_keys_void(), phi=0.005)
        assert set(got) == {bytes(k) for k in truth}  # recall and precision 1 at this load


def test_restart_brings_back_every_epoch_on_the_shards(ray_cluster, tmp_path, traffic):
    cfg = config(tmp_path, shards=SHARDS, sketches={"exact": SKETCHES["exact"], "flows": SKETCHES["flows"]})
    with ServiceThread(cfg) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        client.push(traffic)
        keys = [bytes(k) for k in PacketBatch.concat(traffic).flow_keys()[:30]]
        before = {eid: (client.top_flows(10, epoch=eid, sketch="flows"),
                        client.flow_size(keys, epoch=eid, sketch="flows"),
                        client.top_flows(10, epoch=eid, sketch="exact")) for eid in epoch_parts(traffic)}
        client.close()
    with ServiceThread(cfg) as svc:  # closed epochs from their files, the open one from open.tsk onto the shards
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        after = {eid: (client.top_flows(10, epoch=eid, sketch="flows"),
                       client.flow_size(keys, epoch=eid, sketch="flows"),
                       client.top_flows(10, epoch=eid, sketch="exact")) for eid in epoch_parts(traffic)}
        assert client.push_one(traffic[-1], sequence=len(traffic)).duplicate  # the sequence table came back too
        client.close()
    assert after == before
    wrong = ServiceConfig(**{**vars(cfg), "shards": 3})
    # the data directory's settings.json names the setting (issue 17 item 2; was the snapshot's message)
    with pytest.raises(Exception, match=r"shards was 2 when it was created \(now 3\)"):
        ServiceThread(wrong).start()
    with pytest.raises(Exception, match=r"shards was 2 when it was created \(now 1\)"):
        ServiceThread(ServiceConfig(**{**vars(cfg), "shards": 1})).start()


def test_an_unsharded_data_directory_does_not_start_sharded(ray_cluster, tmp_path, traffic):
    cfg = config(tmp_path, sketches={"exact": SKETCHES["exact"], "gaps": SKETCHES["gaps"]})
    with ServiceThread(cfg) as svc:
        Client(f"127.0.0.1:{svc.grpc_port}").push(traffic[:8])
    with pytest.raises(Exception, match=rf"shards was 1 when it was created \(now {SHARDS}\)"):
        ServiceThread(ServiceConfig(**{**vars(cfg), "shards": SHARDS})).start()
    with ServiceThread(cfg) as svc:  # nothing was changed by the refused start
        assert Client(f"127.0.0.1:{svc.grpc_port}").stats()["packets"] == str(sum(map(len, traffic[:8])))


def test_hidden_sketch_by_source_is_routed_by_source_and_unioned(sharded, traffic):
    """Every packet of a source goes to one shard, so each shard answers for its own sources."""
    _, client, _ = sharded
    from telesketch.sketches.hiddensketch import HiddenSketch

    parts = epoch_parts(traffic)
    ids = sorted(parts)
    offline = {}
    for eid, part in parts.items():
        offline[eid] = [HiddenSketch(**_params("hh")) for _ in range(SHARDS)]
        for sketch, shard_part in zip(offline[eid], split_by_source(part, SHARDS)):
            sketch.update(shard_part)
        limit = 0.005 * len(part)
        want = {k: v for s in offline[eid] for k, v in s.heavy_hitters() if v > limit}
        rows, info = client.heavy_hitters(epoch=eid, sketch="hh", details=True)
        assert dict(rows) == want and want and info.combine == "union over shards of sums of per-epoch estimates"
        assert set(exact.heavy_hitters(part.src_ip, phi=0.005)) <= set(want)  # recall 1
    limit = 0.005 * max(len(parts[ids[-2]]), len(parts[ids[-1]]))
    want = {}
    for before, after in zip(offline[ids[-2]], offline[ids[-1]]):
        want.update(dict(after.heavy_changers(before, hc_threshold=limit)))
    got = dict(client.heavy_changers(epoch=ids[-1], sketch="hh"))
    assert got == want and got, "the burst in the last epoch is a heavy changer"


def test_hidden_sketch_by_flow_changers_are_each_shards_own(sharded, traffic):
    _, client, _ = sharded
    from telesketch.sketches.hiddensketch import HiddenSketch

    parts = epoch_parts(traffic)
    ids = sorted(parts)
    limit = 0.005 * max(len(parts[ids[-2]]), len(parts[ids[-1]]))
    want = {}
    for before_part, after_part in zip(*(shard_parts(traffic)[e] for e in ids[-2:])):
        before, after = HiddenSketch(**_params("hh_flow")), HiddenSketch(**_params("hh_flow"))
        before.update(before_part)
        after.update(after_part)
        want.update(dict(after.heavy_changers(before, hc_threshold=limit)))
    assert dict(client.heavy_changers(epoch=ids[-1], sketch="hh_flow")) == want and want


def test_heavy_sources_spread_over_many_flows_are_found_on_the_shards(ray_cluster, tmp_path):
    """A heavy source with many flows: routed by source, it is whole on one shard, where the
    one-pass FS gate sees all of it (routed by flow, it was below the gate on every shard)."""
    rng = np.random.default_rng(1)
    n, phi = 30_000, 0.005
    heavy = [(0x0B000000 + s, 1000 + f) for s in range(12) for f in rng.integers(0, 40, int(1.6 * phi * n))]
    light = [(0x0A000000 + int(x), 2000 + int(x) % 500) for x in rng.integers(0, 20_000, n - len(heavy))]
    packets = heavy + light
    rng.shuffle(packets)
    m = len(packets)
    batch = PacketBatch.from_columns(
        ts_ns=np.full(m, 1_700_000_000 * 10**9, np.uint64), src_ip=np.array([p[0] for p in packets], np.uint32),
        dst_ip=np.full(m, 0xC0A80001, np.uint32), src_port=np.array([p[1] for p in packets], np.uint16),
        dst_port=np.full(m, 443, np.uint16), proto=np.full(m, 6, np.uint8), ip_id=np.zeros(m, np.uint16))
    hh = {"kind": "hiddensketch", "memory_bytes": 56320, "phi": phi, "expected_epoch_items": n}
    truth = exact.heavy_hitters(batch.src_ip, phi=phi)
    assert len(truth) == 12
    with ServiceThread(config(tmp_path, shards=4, sketches={"hh": hh})) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}")
        client.push(batch.split(8192))
        got = dict(client.heavy_hitters(sketch="hh"))
    assert set(truth) <= set(got)  # recall 1
    assert all(got[k] >= truth[k] for k in truth)  # Hidden Sketch never under-counts


@pytest.mark.parametrize("shards", [1, SHARDS])
def test_a_sketch_added_to_the_config_starts_empty_in_restored_epochs(ray_cluster, tmp_path, traffic, shards):
    first = {"exact": SKETCHES["exact"]}
    cfg = config(tmp_path, shards=shards, sketches=first)
    with ServiceThread(cfg) as svc:
        Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c").push(traffic[:-2])
    more = ServiceConfig(**{**vars(cfg), "sketches": {**first, "flows": SKETCHES["flows"], "gaps": SKETCHES["gaps"]}})
    ids = sorted(epoch_parts(traffic))
    with ServiceThread(more) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        for eid in ids[:-1]:  # restored closed epochs: nothing counted by the new sketches
            assert client.top_flows(5, epoch=eid, sketch="flows") == []
            assert client.flow_gaps(epoch=eid, sketch="gaps") == []
        client.push(traffic[-2:])  # the open epoch counts from now on, in the new sketches too
        keys = PacketBatch.concat(traffic[-2:]).flow_keys()[:5]
        assert all(v > 0 for v in client.flow_size([bytes(k) for k in keys], epoch=ids[-1], sketch="flows"))
        assert client.top_flows(5, epoch=ids[-2], sketch="flows") == []


def test_a_failed_start_leaves_no_shard_actor_behind(ray_cluster, tmp_path):
    import asyncio

    from telesketch.service.server import Service

    service = Service(config(tmp_path, shards=SHARDS, sketches={"exact": SKETCHES["exact"]},
                             tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "missing.key")))
    actors = list(service.sketchset.pool.actors)
    assert ray.get(actors[0].active.remote(), timeout=60) == {"exact": ""}
    with pytest.raises(FileNotFoundError, match="missing.key"):
        asyncio.run(service.start())
    assert service.sketchset.pool is None
    assert all(_dies_soon(a) for a in actors)


def _dies_soon(actor, seconds: float = 30.0) -> bool:
    """Whether calls on ``actor`` fail as on a dead actor within ``seconds`` (``ray.kill`` is asynchronous)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.active.remote(), timeout=seconds)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


def test_bad_parameters_fail_before_any_actor_starts(ray_cluster):
    from telesketch.distributed.service import ShardedSketchSet
    from telesketch.service.config import ConfigError

    bad = {"hhh": {"kind": "residualsketch", "memroy_bytes": 32 * 1024, "threshold": 100}}
    with pytest.raises(ConfigError, match=r"sketch 'hhh' \(residualsketch\): bad parameters"):
        ShardedSketchSet.from_config(bad, SHARDS)


def test_a_lost_shard_answers_unavailable_and_a_restart_loses_nothing_acknowledged(ray_cluster, tmp_path, traffic):
    import json
    import urllib.error
    import urllib.request

    import grpc

    cfg = config(tmp_path, shards=SHARDS, sketches={"exact": SKETCHES["exact"]})
    half = len(traffic) // 2
    with ServiceThread(cfg) as svc:
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        client.push(traffic[:half])
        ray.kill(svc.service.sketchset.pool.actors[1])
        with pytest.raises(grpc.RpcError) as err:
            for batch in traffic[half:]:  # ray.kill is asynchronous: a batch or two may still land
                client.push_one(batch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Restart the service" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.heavy_hitters(sketch="exact")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(urllib.error.HTTPError) as http_err:  # the HTTP API: 503, retry later
            urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/api/v1/heavy_hitters?sketch=exact", timeout=30)
        assert http_err.value.code == 503 and "Restart the service" in json.load(http_err.value)["error"]
    with ServiceThread(cfg) as svc:  # checkpoint + write-ahead log rebuild the shards
        client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c")
        client.push(traffic[client.last_sequence():])  # resume after the last acknowledged batch
        whole = PacketBatch.concat(traffic)
        counts = exact.count_dict(whole.flow_keys_void())
        top = client.top_flows(5, last=3, sketch="exact")
        assert top == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        assert client.stats()["packets"] == str(len(whole))


def test_an_overloaded_hidden_sketch_is_warned_about_once_per_epoch_on_the_shards(ray_cluster, tmp_path, caplog):
    """Issue 20 on shards: a second stage too small for the traffic (a CM of 3 x 30 counters per
    shard) closes its epoch with a load factor over 1 (one warning, counted) and answers partially,
    the partial epoch warned about and counted once however often it is read."""
    import logging
    import urllib.request

    from test_partial_answers import SMALL_HH, metric, traffic as zipf_epoch

    batches = zipf_epoch()
    with caplog.at_level(logging.WARNING, logger="telesketch.service"):
        with ServiceThread(config(tmp_path, shards=SHARDS, sketches={"small": SMALL_HH})) as svc:
            client = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="p")
            client.push(batches)
            closed, old, _ = client.rotate_epoch()
            assert closed
            for _ in range(3):
                rows, window = client.heavy_hitters(sketch="small", epoch=old, details=True)
                assert window.partial and rows
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/metrics", timeout=10) as reply:
                metrics = reply.read().decode()
            client.close()
    src = np.concatenate([np.asarray(b.src_ip) for b in batches])
    counts = exact.count_dict(src)
    assert all(est >= counts.get(k, 0) for k, est in rows)                    # never an under-count
    assert metric(metrics, "telesketch_sketch_overloaded_epochs_total", "small") == 1.0
    assert metric(metrics, "telesketch_sketch_closed_load_factor", "small") > 1.0
    assert metric(metrics, "telesketch_sketch_partial_epochs_total", "small") == 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("load factor" in m and f"epoch {old}" in m for m in messages) == 1
    assert sum("partial answer" in m for m in messages) == 1


def test_sketch_memory_counts_every_shard_and_both_address_families(sharded):
    """Stats (and the memory gauge) add the shards' states, each with ResidualSketch's IPv6 tree."""
    from telesketch.sketches.residualsketch import ResidualSketch

    svc, _, _ = sharded
    shards = [ResidualSketch(**_params("hhh", s)) for s in range(SHARDS)]
    want = sum(r.memory_bytes + r.ipv6_memory_bytes for r in shards)
    assert all(r.ipv6_memory_bytes > 0 for r in shards)
    assert {s["name"]: s["memory_bytes"] for s in svc.service.stats()["sketches"]}["hhh"] == want  # the open epoch
    closed = next(e for e in svc.service.manager.epochs() if e.closed)
    assert svc.service.sketchset.get("hhh").memory(closed.states["hhh"]) == want


def test_stats_count_every_shards_flow_score_cache(sharded):
    """LLM-Sketch's flow-score cache lives on every shard (2^20 entries of 33 bytes each by default):
    the stats reported 0 under shards (the sharded state had no ``scorer_bytes``)."""
    from telesketch.sketches.llmsketch import LLMSketch

    svc, _, _ = sharded
    flows = {s["name"]: s for s in svc.service.stats()["sketches"]}["flows"]
    one = LLMSketch(**_params("flows"))
    assert one.scorer_bytes == 33 * (1 << 20)
    assert flows["scorer_bytes"] == SHARDS * one.scorer_bytes and flows["scorer_charged"] is False
    assert flows["memory_bytes"] == SHARDS * one.memory_bytes  # separate: not in memory_bytes
