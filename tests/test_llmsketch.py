"""LLM-Sketch (specs/llmsketch.md): layout, exact agreement with the naive model, queries, contract."""
import numpy as np
import pytest

import naive_llmsketch as naive
from workloads import skewed_flows
from telesketch.estimators import ConstantEstimator, Estimator
from telesketch.estimators.scoring import FlowScorer
from telesketch.packets import PacketBatch
from telesketch.sketches import exact
from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.llmsketch import CountMinBaseline, LLMSketch, LLMSketchParams, mmh3_rows


def skewed_batch(n=4000, flows=600, seed=0):
    return skewed_flows(n, flows, seed)


def keys_of(batch, task):
    if task == "hhh":
        return [int(a) for a in batch.src_ip]
    return [k.tobytes() for k in batch.flow_keys()]


def run_naive(batch, scores, memory, task, seed):
    model = naive.NaiveLLMSketch(memory, task, seed=seed)
    for key, p in zip(keys_of(batch, task), scores.astype(np.float64).tolist()):
        model.insert(key, p)
    return model


def assert_same_state(sketch, model):
    for b, bucket in enumerate(model.buckets):
        for s, (key, count, lock, occ) in enumerate(bucket):
            assert sketch.occ[b, s] == occ
            if occ:
                assert sketch.slot_keys[b, s].tobytes() == key
                assert (sketch.counts[b, s], sketch.lock[b, s]) == (count, lock)
    if model.light == "countmin":
        np.testing.assert_array_equal(sketch.cm, np.array(model.cm))
    if model.light == "coco":
        cells = np.array(model.coco)
        np.testing.assert_array_equal(sketch.coco_ids, cells[..., 0])
        np.testing.assert_array_equal(sketch.coco_counts, cells[..., 1])
        np.testing.assert_array_equal(sketch.coco_occ, cells[..., 2])


def test_mmh3_matches_reference_package():
    mmh3 = pytest.importorskip("mmh3")
    rng = np.random.default_rng(1)
    for length in (0, 1, 2, 3, 4, 5, 13):
        rows = rng.integers(0, 256, (20, length), dtype=np.uint8)
        for seed in (0, 100, 123123):
            got = mmh3_rows(rows, seed)
            want = [mmh3.hash(r.tobytes(), seed, signed=False) for r in rows]
            assert got.tolist() == want
            assert [naive.mmh3_32(r.tobytes(), seed) for r in rows] == want


def test_layout_matches_worked_examples():
    fs = LLMSketch(200 * 1024, "flow_size")
    assert fs.params.buckets == 640 and fs.cm.shape == (3, 54613)
    assert fs.memory_bytes == 640 * 64 + 3 * 54613
    assert fs.overhead_bytes == 640 * 8 * 2 // 8
    hh = LLMSketch(50 * 1024, "heavy_hitters")
    assert hh.params.buckets == 376 and hh.cm.size == 0 and hh.memory_bytes == 376 * 136
    hhh = LLMSketch(50 * 1024, "hhh")
    assert hhh.params.buckets == 25600 // 64 and hhh.coco_ids.shape == (2, 25600 // 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_bytes": 0}, "memory_bytes"),
    ({"memory_bytes": 100, "task": "flow_size"}, "no heavy bucket"),
    ({"task": "sizes"}, "unknown LLM-Sketch task"),
    ({"heavy_ratio": 1.5}, "heavy_ratio"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(SketchError, match=match):
        LLMSketchParams(**kwargs)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("task, memory", [("flow_size", 2000), ("heavy_hitters", 1200), ("hhh", 1300)])
def test_equals_naive_model_packet_for_packet(task, memory, parallel):
    batch = skewed_batch(seed=3)
    scores = np.random.default_rng(4).random(len(batch)).astype(np.float32)
    sketch = LLMSketch(memory, task, seed=11, parallel=parallel)
    for part in np.array_split(np.arange(len(batch)), 5):
        sketch.update(batch[part], scores[part])
    model = run_naive(batch, scores, memory, task, seed=11)
    assert_same_state(sketch, model)
    queries = batch.src_ip if task == "hhh" else batch.flow_keys()
    assert sketch.flow_size(queries).tolist() == [model.query(k) for k in keys_of(batch, task)]
    if task != "hhh":
        assert {k for k, _ in sketch.heavy_hitters(threshold=5)} == {
            (int.from_bytes(k, "little") if task == "flow_size" else k) for k in model.heavy_hitters(5)}


def test_batch_boundaries_do_not_matter():
    batch = skewed_batch(seed=5)
    scores = np.random.default_rng(6).random(len(batch))
    one, many = LLMSketch(3000, seed=2), LLMSketch(3000, seed=2)
    one.update(batch, scores)
    for part in np.array_split(np.arange(len(batch)), 13):
        many.update(batch[part], scores[part])
    for name, arr in one.state().items():
        np.testing.assert_array_equal(arr, many.state()[name])


def test_round_trip_then_continue_is_identical():
    batch = skewed_batch(seed=7)
    scores = np.random.default_rng(8).random(len(batch))
    a = LLMSketch(2500, "hhh", seed=3)
    a.update(batch[:2000], scores[:2000])
    b = LLMSketch.from_bytes(a.to_bytes())
    for s in (a, b):
        s.update(batch[2000:], scores[2000:])
    for name, arr in a.state().items():
        np.testing.assert_array_equal(arr, b.state()[name])
    assert a.hhh(threshold=50) == b.hhh(threshold=50)


def test_serialised_state_is_checked_and_merge_refused():
    sketch = LLMSketch(4096)
    with pytest.raises(SketchError, match="not a telesketch"):
        LLMSketch.from_bytes(b"junk")
    with pytest.raises(NotMergeableError, match="arrival"):
        sketch.merge(LLMSketch(4096))


def test_scores_are_required_and_checked():
    batch = skewed_batch(200)
    sketch = LLMSketch(4096)
    with pytest.raises(SketchError, match="needs an estimator"):
        sketch.update(batch)
    with pytest.raises(SketchError, match="scores for"):
        sketch.update(batch, np.zeros(3))


def test_constant_zero_never_evicts_and_heavy_counts_are_exact():
    batch = skewed_batch(seed=9)
    sketch = LLMSketch(1100, "heavy_hitters")
    sketch.update(batch, np.zeros(len(batch)))
    truth = exact.count_dict(batch.flow_keys_void())
    for key, count in sketch.top_flows(1000):  # admitted on first sight, never evicted: exact
        assert truth[key] == count


def test_large_flows_are_exact_with_oracle_scores_and_light_part_answers_the_rest():
    batch = skewed_batch(8000, 2000, seed=10)
    keys = batch.flow_keys_void()
    truth = exact.count_dict(keys)
    size = np.array([truth[k] for k in keys.tolist()])
    sketch = LLMSketch(6000, "flow_size")
    sketch.update(batch, (size >= 64).astype(float))
    est = dict(zip(keys.tolist(), sketch.flow_size(batch.flow_keys()).tolist()))
    big = [k for k, c in truth.items() if c >= 64]
    assert big and all(est[k] == truth[k] for k in big)
    assert all(est[k] >= min(truth[k], 1) for k in truth)  # no underestimate below 1 packet
    cm = CountMinBaseline(6000)
    cm.update(batch)
    assert exact.are(truth, est) < exact.are(truth, dict(zip(keys.tolist(), cm.flow_size(batch.flow_keys()).tolist())))


def test_hhh_uses_real_cidr_prefixes():
    rng = np.random.default_rng(0)
    src = np.concatenate([np.full(3000, 0x0A000000) + rng.integers(0, 4, 3000), rng.integers(0, 2**32, 1000)])
    batch = PacketBatch.from_columns(src_ip=src.astype(np.uint32))
    sketch = LLMSketch(64 * 1024, "hhh")
    sketch.update(batch, np.ones(len(batch)))
    layers = sketch.hhh_layers()
    assert layers[30][0x0A000000] == 3000 and layers[0][0] == len(batch)
    assert (0x0A000000, 30, 3000) in sketch.hhh(threshold=500) or any(
        p == 0x0A000000 and L >= 30 for p, L, _ in sketch.hhh(threshold=500))


class CountingEstimator(Estimator):
    """Score = first header byte / 255; records how many packets it was asked about."""

    def __init__(self):
        self.calls = 0

    def score(self, headers, hdr_len):
        self.calls += len(hdr_len)
        return headers[:, 0].astype(np.float32) / 255


def scored_batch(n=3000, seed=0):
    batch = skewed_batch(n, 300, seed)
    header = np.random.default_rng(seed).integers(0, 256, (n, 40), dtype=np.uint8)
    cols = batch.columns() | {"header": header, "hdr_len": np.full(n, 40)}
    return PacketBatch.from_columns(**cols)


@pytest.mark.parametrize("rescore", [False, True])
def test_flow_scorer_calls_the_model_once_per_scoring_point(rescore):
    batch = scored_batch()
    est = CountingEstimator()
    scorer = FlowScorer(est, rescore=rescore, floor_from=0)  # the floor is tested on its own below
    scores = np.concatenate([scorer.scores(b) for b in batch.split(700)])
    sizes = np.array(list(exact.count_dict(batch.flow_keys_void()).values()))
    points = sizes.size if not rescore else int(np.sum(np.floor(np.log2(sizes)) + 1))
    assert est.calls == points
    # each packet carries the score of its flow's latest scoring point
    keys = batch.flow_keys_void()
    latest, seen = {}, {}
    for i, k in enumerate(keys.tolist()):
        seen[k] = seen.get(k, 0) + 1
        if seen[k] == 1 or (rescore and seen[k] & (seen[k] - 1) == 0):
            latest[k] = batch.header[i, 0] / 255
        assert scores[i] == pytest.approx(latest[k], abs=1e-6)


def test_flow_scorer_lru_eviction_makes_a_flow_new():
    batch = scored_batch(400)
    est = CountingEstimator()
    scorer = FlowScorer(est, cache_flows=1)
    scorer.scores(batch[:1])
    scorer.scores(batch[1:2])
    scorer.scores(batch[:1])
    assert est.calls == 3 - (batch.flow_keys_void()[0] == batch.flow_keys_void()[1])


def test_async_scorer_never_blocks_and_fills_cache():
    batch = scored_batch(2000)
    scorer = FlowScorer(CountingEstimator(), mode="async", floor_from=0)
    first = scorer.scores(batch)
    assert first.shape == (2000,) and np.all((first >= 0) & (first <= 1))
    scorer.flush()
    again = scorer.scores(batch)  # every flow now has its model score
    keys = batch.flow_keys_void()
    firsts = {}
    for i, k in enumerate(keys.tolist()):
        firsts.setdefault(k, batch.header[i, 0] / 255)
    assert np.allclose(again, [firsts[k] for k in keys.tolist()], atol=1e-6)
    scorer.close()


def test_sketch_scores_through_its_estimator():
    batch = scored_batch()
    sketch = LLMSketch(4096, estimator=ConstantEstimator(1.0))
    sketch.update(batch)
    reference = LLMSketch(4096)
    reference.update(batch, np.ones(len(batch)))
    for name, arr in sketch.state().items():
        np.testing.assert_array_equal(arr, reference.state()[name])


class SlowEstimator(CountingEstimator):
    """A model that takes ``delay`` seconds per call (what the packet path must not wait for)."""

    kind = "tiny"  # a "slow" kind: mode="auto" scores it asynchronously

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def score(self, headers, hdr_len):
        import time

        time.sleep(self.delay)
        return super().score(headers, hdr_len)


def test_async_packet_path_does_not_wait_for_the_model():
    import time

    batch = scored_batch(3000)
    scorer = FlowScorer(SlowEstimator(0.3))  # auto -> async for slow kinds
    assert scorer.mode == "async"
    start = time.perf_counter()
    first = np.concatenate([scorer.scores(b) for b in batch.split(500)])
    assert time.perf_counter() - start < 0.25  # six batches, not one model call waited for
    assert np.all(first[:500] == 0.5)  # the provisional score before any model result
    scorer.flush()
    assert scorer.model_calls == np.unique(batch.flow_keys_void()).size
    scorer.close()


def test_sketch_with_async_scoring_counts_every_packet():
    batch = scored_batch(3000)
    sketch = LLMSketch(64 * 1024, estimator=SlowEstimator(0.01), scoring="async")
    for part in batch.split(500):
        sketch.update(part)
    sketch.scorer.flush()
    truth = exact.count_dict(batch.flow_keys_void())
    keys = np.unique(batch.flow_keys_void())
    est = sketch.flow_size(np.ascontiguousarray(keys).view(np.uint8).reshape(-1, 13))
    assert sketch.packets == len(batch) and np.all(est >= [truth[k] for k in keys.tolist()])


def test_scorer_cache_is_bounded_and_set_associative():
    batch = scored_batch(3000)
    scorer = FlowScorer(CountingEstimator(), cache_flows=20)
    scorer.scores(batch)
    assert scorer.cache.capacity == 24 and len(scorer.cache) <= 24


def test_successor_is_empty_and_keeps_the_flow_scores():
    """The next epoch's sketch starts empty but does not score continuing flows again."""
    batch = scored_batch()
    first, second = batch[:1500], batch[1500:]
    est = CountingEstimator()
    sketch = LLMSketch(8192, estimator=est, scoring="sync")
    sketch.update(first)
    calls_after_first = est.calls
    nxt = sketch.successor()
    assert nxt.scorer is sketch.scorer and nxt.params == sketch.params
    assert nxt.packets == 0 and not nxt.occ.any() and not nxt.cm.any()
    nxt.update(second)
    new_flows = set(second.flow_keys_void().tolist()) - set(first.flow_keys_void().tolist())
    assert est.calls - calls_after_first == len(new_flows)
    # the continuing flows carry their first-epoch score, so the state equals a replay with those scores
    replay = FlowScorer(CountingEstimator(), mode="sync")
    per_packet = replay.scores(batch)
    reference = LLMSketch(8192)
    reference.update(second, per_packet[1500:])
    for name, arr in nxt.state().items():
        np.testing.assert_array_equal(arr, reference.state()[name])


def test_service_epochs_share_one_scorer():
    from telesketch.service.sketchset import SketchSet

    sketches = SketchSet.from_config({"flows": {"kind": "llmsketch", "memory_bytes": 8192, "estimator": "constant"}})
    epoch0 = sketches.new_states(0)
    epoch1 = sketches.new_states(1, epoch0)
    assert epoch1["flows"] is not epoch0["flows"]
    assert epoch1["flows"].scorer is epoch0["flows"].scorer


def one_flow_batch(packets: int, flow: int = 7) -> PacketBatch:
    return PacketBatch.from_columns(src_ip=np.full(packets, 0x0A000000 + flow), dst_ip=np.full(packets, 0x0B000001),
                                    src_port=np.full(packets, 1000 + flow), dst_port=np.full(packets, 443),
                                    proto=np.full(packets, 6))


def test_size_floor_raises_scores_at_floor_positions_only():
    from telesketch.estimators import soft_label

    scorer = FlowScorer(ConstantEstimator(0.0), floor_from=4)
    scores = np.concatenate([scorer.scores(b) for b in one_flow_batch(20).split(3)])
    expected = np.repeat([0.0, soft_label([4])[0], soft_label([8])[0], soft_label([16])[0]], [3, 4, 8, 5])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # a floor never lowers a score, and floor_from=0 turns it off
    assert np.all(FlowScorer(ConstantEstimator(1.0), floor_from=4).scores(one_flow_batch(20)) == 1.0)
    assert np.all(FlowScorer(ConstantEstimator(0.0), floor_from=0).scores(one_flow_batch(600)) == 0.0)


@pytest.mark.parametrize("floor_from", [3, -4, 100, "512", 512.0, True])
def test_size_floor_must_be_a_power_of_two(floor_from):
    with pytest.raises(ValueError, match="floor_from"):
        FlowScorer(ConstantEstimator(0.0), floor_from=floor_from)


def test_bad_size_floor_in_the_service_config_names_the_sketch():
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import SketchSet

    with pytest.raises(ConfigError, match="sketch 'flows'.*floor_from must be 0 \\(off\\) or a power of two"):
        SketchSet.from_config({"flows": {"kind": "llmsketch", "memory_bytes": 8192, "estimator": "constant",
                                         "floor_from": 300}})


def test_async_model_score_arriving_late_keeps_the_floor():
    from telesketch.estimators import soft_label

    scorer = FlowScorer(SlowEstimator(0.2), mode="async", floor_from=8)
    batch = one_flow_batch(10)
    batch = PacketBatch.from_columns(**(batch.columns() | {"header": np.zeros((10, 40), np.uint8),
                                                          "hdr_len": np.full(10, 40)}))
    scorer.scores(batch)  # the model (score 0 for a zero header) answers after the flow passed position 8
    scorer.flush()
    assert np.nanmax(scorer.cache.score) == pytest.approx(soft_label([8])[0])
    scorer.close()


def test_size_floor_rescues_an_elephant_the_model_missed():
    """Buckets full of mice, a model that scores everything 0: without the floor the elephant is
    stuck in the saturating Count-Min at 255; with it, it takes a heavy slot at packet 256."""
    mice = PacketBatch.concat([one_flow_batch(1 + f % 3, flow=f) for f in range(1, 400)])
    elephant = one_flow_batch(2000, flow=5000)
    traffic = PacketBatch.concat([mice, elephant])
    key = elephant.flow_keys()[:1]
    answers = {}
    for floor_from in (0, 256):
        sketch = LLMSketch(2048, estimator=ConstantEstimator(0.0), scoring="sync", floor_from=floor_from)
        assert sketch.params.buckets * 8 < 399  # every bucket is full before the elephant arrives
        for part in traffic.split(512):
            sketch.update(part)
        answers[floor_from] = int(sketch.flow_size(key)[0])
    assert answers[0] == 255
    assert answers[256] == 2000 - 255


def test_update_is_pure_and_the_scored_sketch_owns_the_scorer():
    """LLMSketch keeps no model: update(batch, scores) is all it does; the scored sketch scores first
    and then runs the same update, byte for byte."""
    from telesketch.estimators.scoring import ScoredLLMSketch

    batch = scored_batch()
    pure = LLMSketch(8192)
    assert type(pure) is LLMSketch and not hasattr(pure, "scorer") and pure.scorer_bytes == 0
    with pytest.raises(SketchError, match="needs an estimator"):
        pure.update(batch)
    scored = LLMSketch(8192, estimator=CountingEstimator(), scoring="sync")
    assert isinstance(scored, ScoredLLMSketch) and isinstance(scored, LLMSketch)
    assert type(LLMSketch(8192, "flow_size", "constant")) is ScoredLLMSketch  # positional estimator too
    scored.update(batch)
    pure.update(batch, FlowScorer(CountingEstimator(), mode="sync").scores(batch))
    assert scored.to_bytes() == pure.to_bytes()
    assert type(LLMSketch.from_bytes(pure.to_bytes())) is LLMSketch
    assert type(LLMSketch.from_bytes(pure.to_bytes(), estimator="constant")) is ScoredLLMSketch
