"""Issue #19: scikit-learn boosted trees served from numpy, pivot calibration, the paper-style splits,
the pivot chosen from memory, the CU baseline and the sketch-level metrics."""
import json

import numpy as np
import pytest

from telesketch.estimators import OracleEstimator, load_estimator, soft_label
from telesketch.estimators.evaluation import (ConservativeUpdateBaseline, capture_ids, capture_split, choose_pivot,
                                              first_packet_auc, heavy_hitter_pivot, heavy_slots, rank_auc,
                                              sketch_metrics, time_split_per_capture)
from telesketch.estimators.synthetic import generate_labelled_batch
from telesketch.estimators.training import segment_samples, split_trace
from telesketch.packets import PacketBatch

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def fitted():
    """Boosted trees on the first half of a small generated capture, and the second half."""
    from telesketch.estimators.trees import BoostedTreesEstimator

    batch = generate_labelled_batch(40_000, 2_000, seed=2)
    train, test = split_trace(batch, 0.5)
    s = segment_samples(train, rescore=True)
    return BoostedTreesEstimator.fit(s.headers, s.hdr_len, s.size, pivot=32, max_iter=40), s, test


def test_boosted_trees_match_sklearn_and_round_trip(fitted, tmp_path):
    est, s, test = fitted
    from sklearn.ensemble import HistGradientBoostingRegressor

    from telesketch.estimators.tokens import tree_features

    ref = HistGradientBoostingRegressor(max_iter=40, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=20,
                                        early_stopping=False, random_state=0)
    ref.fit(tree_features(s.headers).astype(np.float64), np.log2(s.size))
    x = test.header[:5000], test.hdr_len[:5000]
    np.testing.assert_allclose(est.predict(*x), ref.predict(tree_features(x[0]).astype(np.float64)), atol=1e-9)
    est.save(tmp_path)
    again = load_estimator("trees", tmp_path)
    assert again.pivot == 32 and again.cut == est.cut
    np.testing.assert_array_equal(again.score(*x), est.score(*x))


def test_quantile_calibration_predicts_the_training_share_large(fitted):
    est, s, test = fitted
    for pivot in (8, 32, 128):
        cal = est.with_pivot(pivot)
        predicted_large = float(np.mean(cal.score(s.headers, s.hdr_len) >= 0.5))
        assert predicted_large == pytest.approx(float(np.mean(s.size >= pivot)), abs=0.02)
    # a higher pivot needs a higher predicted size to score 0.5
    assert est.with_pivot(8).cut < est.with_pivot(128).cut


def test_boosted_trees_rank_large_flows_first(fitted):
    est, _, test = fitted
    assert first_packet_auc(est, test, 32) > 0.75  # generated classes are learnable from headers


def test_oracle_pivot_moves_the_half_point():
    assert soft_label([100], pivot=100)[0] == pytest.approx(0.5)
    assert soft_label([64])[0] == pytest.approx(0.5)
    batch = generate_labelled_batch(5_000, 300, seed=1)
    oracle = OracleEstimator.from_batch(batch)
    oracle.pivot = 10_000
    assert oracle.score_packets(batch, np.arange(len(batch))).max() < 0.5


def test_choose_pivot_fills_half_the_heavy_slots():
    sizes = np.arange(1, 1001)  # one flow of each size 1..1000
    t = choose_pivot(sizes, slots=200)
    assert t == 901 and np.sum(sizes >= t) == 100
    assert choose_pivot(sizes, slots=200, scale=2.0) == 1801  # a test epoch twice the training part
    assert choose_pivot(sizes, slots=10_000) == 2  # more slots than flows: everything may be large
    assert heavy_slots(16 * 1024) < heavy_slots(64 * 1024)


def test_heavy_hitter_pivot_gives_the_spare_slots_to_more_flows():
    """Issue #19 row 4: a heavy-hitter sketch has no light part, so a flow it does not admit is lost.
    Every heavy hitter (> threshold packets) needs a slot; the slots left over admit two flows each;
    when the heavy hitters alone outnumber the slots, T is the label's threshold + 1."""
    sizes = np.arange(1, 1001)  # one flow of each size 1..1000; threshold 900: 100 heavy hitters
    assert heavy_hitter_pivot(sizes, slots=80, threshold=900) == 901  # no spare slot
    assert heavy_hitter_pivot(sizes, slots=100, threshold=900) == 901
    t = heavy_hitter_pivot(sizes, slots=150, threshold=900)  # 50 spare slots: 100 more flows admitted
    assert t == 801 and np.sum(sizes >= t) == 200
    assert heavy_hitter_pivot(sizes, slots=150, threshold=900, spare_flows=1.0) == 851
    assert heavy_hitter_pivot(sizes, slots=10_000, threshold=900) == 2  # room for every flow of 2+ packets
    assert heavy_hitter_pivot(sizes, slots=150, threshold=1800, scale=2.0) == 1601  # a test epoch twice as long
    assert heavy_hitter_pivot(sizes, slots=10, threshold=0) == 1  # every flow is a heavy hitter
    for slots in (1, 50, 150, 400, 5000):  # never above the threshold + 1: every heavy hitter is predicted large
        for threshold in (0, 10, 500, 999, 5000):
            assert heavy_hitter_pivot(sizes, slots, threshold) <= threshold + 1
    with pytest.raises(ValueError, match="spare_flows"):
        heavy_hitter_pivot(sizes, slots=150, threshold=900, spare_flows=-1.0)


@pytest.mark.parametrize("spare", [float("inf"), float("nan")])
@pytest.mark.parametrize("slots", [50, 150])
def test_heavy_hitter_pivot_refuses_a_spare_flows_that_is_not_a_finite_number(spare, slots):
    """An infinite spare_flows is refused naming the setting, as a negative one is: it was an
    OverflowError (spare slots: int(inf)) or "cannot convert float NaN to integer" (none: inf x 0)."""
    sizes = np.arange(1, 1001)
    with pytest.raises(ValueError, match="spare_flows"):
        heavy_hitter_pivot(sizes, slots=slots, threshold=900, spare_flows=spare)


def test_shipped_trees_choose_the_heavy_hitter_pivot_for_the_default_phi():
    """A heavy-hitter sketch's trees are calibrated by :func:`heavy_hitter_pivot` for phi = 1e-4 of the
    epoch (the training traffic's packets when the epoch length is not given): the pivot is never
    above that threshold + 1, where the flow-size rule (half the slots) put it at 2x the threshold at 16 KiB."""
    est = load_estimator("trees")
    sizes = np.repeat(est.traffic["sizes"], est.traffic["flows"])
    threshold = int(1e-4 * est.traffic["packets"])
    for task in ("heavy_hitters", "heavy_hitters37"):
        for kib in (16, 64, 250):
            t = est.pivot_for_memory(kib * 1024, task)
            assert t == heavy_hitter_pivot(sizes, heavy_slots(kib * 1024, task), threshold) <= threshold + 1
    epoch = 10 * est.traffic["packets"]  # a longer epoch: a higher threshold, sizes scaled
    assert est.pivot_for_memory(16 * 1024, "heavy_hitters", epoch_packets=epoch) == heavy_hitter_pivot(
        sizes, heavy_slots(16 * 1024, "heavy_hitters"), int(1e-4 * epoch), scale=10.0)
    assert est.pivot_for_memory(16 * 1024, "flow_size") == choose_pivot(sizes, heavy_slots(16 * 1024))  # unchanged


def test_rank_auc_counts_ties_half():
    assert rank_auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([False, False, True, True])) == 1.0
    assert rank_auc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5


def test_sketch_metrics_by_hand():
    true = np.array([1, 2, 100, 200])
    est = np.array([2, 2, 50, 200])
    m = sketch_metrics(true, est, pivot=100, top=1)
    assert m["ARE"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert m["AAE"] == pytest.approx((1 + 0 + 50 + 0) / 4)
    assert m["ARE>=T"] == pytest.approx(0.25) and m["top100 ARE"] == 0.0 and m["flows>=T"] == 2


def test_cu_never_underestimates_and_beats_count_min():
    from telesketch.sketches.llmsketch import CountMinBaseline

    batch = generate_labelled_batch(20_000, 2_000, seed=4)
    uniq, true = np.unique(batch.flow_keys_void(), return_counts=True)
    rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    cu, cm = ConservativeUpdateBaseline(4096), CountMinBaseline(4096)
    cu.update(batch)
    cm.update(batch)
    got_cu, got_cm = cu.flow_size(rows), cm.flow_size(rows)
    assert (got_cu >= true).all() and (got_cu <= got_cm).all()
    assert np.abs(got_cu - true).sum() < np.abs(got_cm - true).sum()


def _toy_batch(captures):
    """Packets of several captures, one flow per capture, 1 ms apart between captures."""
    ts, src = [], []
    t = 10**9
    for c, n in enumerate(captures):
        for _ in range(n):
            ts.append(t)
            src.append(c + 1)
            t += 10
        t += 1_000_000
    return PacketBatch.from_columns(ts_ns=np.array(ts, np.uint64), src_ip=np.array(src, np.uint32),
                                    proto=np.full(len(ts), 6, np.uint8))


def test_time_split_cuts_every_capture_and_capture_split_keeps_them_whole():
    batch = _toy_batch([4, 10, 2])
    capture = np.repeat([0, 1, 2], [4, 10, 2])
    train, test = time_split_per_capture(batch, capture, 0.5)
    assert train.src_ip.tolist() == [1, 1] + [2] * 5 + [3]
    assert test.src_ip.tolist() == [1, 1] + [2] * 5 + [3]
    tr, te = capture_split(batch, capture, 0.5, seed=0)
    assert set(tr.src_ip.tolist()).isdisjoint(te.src_ip.tolist()) and len(tr) + len(te) == len(batch)


def test_capture_ids_of_the_ndpi_trace(shared_traces):
    from telesketch.estimators.training import load_trace

    pcap = shared_traces / "ndpi_merged_hdr128.pcap"
    batch = load_trace(pcap)
    capture = capture_ids(batch, pcap, shared_traces / "ndpi_merged_manifest.json")
    assert capture.shape == (len(batch),) and (np.diff(capture) >= 0).all()
    assert capture[0] == 0 and capture[-1] == 486 and np.unique(capture).size > 400


def test_train_estimator_time_split_reports_heldout_figures(tmp_path, capsys):
    """train-estimator on a capture: time split, pivot from memory, AUC / calibration / sketch figures."""
    import json

    from telesketch.cli import main
    from telesketch.traces import generate_capture

    pcap = tmp_path / "gen.pcap"
    generate_capture(pcap, packets=30_000, flows=1_500, seed=5)
    assert main(["train-estimator", str(pcap), "--kind", "trees", "--out", str(tmp_path / "m"), "--no-progress",
                 "--memory-kib", "8", "--config", '{"max_iter": 30}']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "time" and report["captures"] is None
    held = report["heldout"]
    assert held["pivot"] == report["pivot"] >= 2
    assert 0.0 <= held["first_packet_auc"] <= 1.0
    assert set(held["calibration"]) == {"large_share", "predicted_large_share", "precision", "recall"}
    assert set(held["sketch"]["best_constant"]) == {"ARE", "AAE", "ARE>=T", "top100 ARE"}
    est = load_estimator("trees", tmp_path / "m")
    assert est.pivot == report["pivot"]


def test_train_estimator_warns_when_no_better_than_a_constant(tmp_path):
    from telesketch.estimators.training import constant_warnings

    report = {"first_packet_auc": 0.45,
              "sketch": {"model": {"ARE>=T": 0.2, "top100 ARE": 0.3},
                         "best_constant": {"ARE>=T": {"constant": 0.0, "value": 0.1},
                                           "top100 ARE": {"constant": 1.0, "value": 0.2}}}}
    warnings = constant_warnings(report)
    assert len(warnings) == 2 and "AUC 0.450" in warnings[0] and "no better than with a constant" in warnings[1]
    report["first_packet_auc"] = 0.9
    report["sketch"]["model"] = {"ARE>=T": 0.05, "top100 ARE": 0.3}
    assert constant_warnings(report) == []


def test_train_estimator_split_by_capture_needs_a_manifest(tmp_path, capsys):
    from telesketch.cli import main
    from telesketch.traces import generate_capture

    pcap = tmp_path / "gen.pcap"
    generate_capture(pcap, packets=2_000, flows=100, seed=5)
    assert main(["train-estimator", str(pcap), "--kind", "trees", "--out", str(tmp_path / "m"), "--no-progress",
                 "--split", "capture"]) == 2
    assert "needs the source captures" in capsys.readouterr().err


def test_old_hand_written_trees_are_refused_with_a_hint(tmp_path):
    (tmp_path / "estimator.json").write_text('{"kind": "trees", "config": {"rounds": 1}, "base": 0.3, "features": 16}')
    with pytest.raises(ValueError, match="old hand-written format.*retrain"):
        load_estimator("trees", tmp_path)


def test_shipped_trees_load_without_training_data_and_recalibrate():
    est = load_estimator("trees")
    assert est.pivot >= 2 and est.train_pred is None
    assert est.with_pivot(est.pivot).cut == pytest.approx(est.cuts.get(est.pivot, est.cut), abs=1e-9) \
        if est.pivot in est.cuts else True
    assert est.with_pivot(16).cut < est.with_pivot(256).cut  # from the saved cut table


def test_scorer_state_is_reported_and_capped_by_cache_flows():
    from telesketch.sketches.llmsketch import LLMSketch

    assert LLMSketch(8 * 1024).scorer_bytes == 0
    small = LLMSketch(8 * 1024, estimator=0.5, cache_flows=1024)
    big = LLMSketch(8 * 1024, estimator=0.5, cache_flows=4096)
    assert small.scorer_bytes == 1024 * 33 and big.scorer_bytes == 4 * small.scorer_bytes
    batch = generate_labelled_batch(5_000, 3_000, seed=1)
    small.update(batch)
    assert small.scorer_bytes == 1024 * 33 and len(small.scorer.cache) <= 1024  # capped, never grows


def test_quantile_calibration_of_any_model_keeps_ranking_and_moves_the_cut():
    from telesketch.estimators import ConstantEstimator
    from telesketch.estimators.evaluation import QuantileCalibrated

    scores = np.linspace(0.0, 0.4, 101)  # an under-confident model: never 0.5
    sizes = np.where(scores >= 0.3, 100, 1)  # the top quarter is large
    cal = QuantileCalibrated.fit(ConstantEstimator(0.0), scores, sizes, pivot=64)
    mapped = cal._map(scores)
    assert (np.diff(mapped) >= 0).all()
    assert float(np.mean(mapped >= 0.5)) == pytest.approx(float(np.mean(sizes >= 64)), abs=0.02)


def test_elastic_counts_a_lone_flow_exactly_and_beats_count_min_at_equal_memory():
    from telesketch.estimators.evaluation import ElasticBaseline
    from telesketch.sketches.llmsketch import CountMinBaseline

    batch = generate_labelled_batch(20_000, 2_000, seed=4)
    uniq, true = np.unique(batch.flow_keys_void(), return_counts=True)
    rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    el, cm = ElasticBaseline(4096), CountMinBaseline(4096)
    el.update(batch)
    cm.update(batch)
    got = el.flow_size(rows)
    assert el.buckets * 21 + el.light.size <= 4096
    big = np.argsort(-true)[:20]  # most of the largest flows own their buckets: counted (almost) exactly
    assert np.median(np.abs(got[big] - true[big]) / true[big]) < 0.02
    assert np.mean(np.abs(got - true) / true) < np.mean(np.abs(cm.flow_size(rows) - true) / true)
    one = ElasticBaseline(1024)
    one.update(batch[:1])
    assert one.flow_size(batch.flow_keys()[:1]).tolist() == [1]


def test_shipped_trees_choose_their_pivot_from_the_sketch_memory():
    """The shipped trees carry their training traffic's flow sizes: at 400 KiB the pivot is the one
    they were trained for (39: nDPI's first halves, generated and synthetic traffic pooled, issue #19
    fifth pass; 25 for the older generated-only trees), a smaller sketch gets a larger T, and flows >= T
    fill at most half the heavy slots (flows >= T - 1 more than half)."""
    est = load_estimator("trees")
    sizes = np.repeat(est.traffic["sizes"], est.traffic["flows"])
    assert est.pivot_for_memory(400 * 1024) == est.pivot == 39
    pivots = [est.pivot_for_memory(kib * 1024) for kib in (4, 16, 64, 400)]
    assert pivots == sorted(pivots, reverse=True) and pivots[0] > pivots[-1]
    for kib, t in zip((4, 16, 64), pivots):
        half = heavy_slots(kib * 1024) // 2
        assert (sizes >= t).sum() <= half < (sizes >= t - 1).sum()
    assert est.for_memory(4 * 1024, max_pivot=50).pivot == 50  # e.g. a heavy-hitter threshold + 1
    assert est.for_memory(400 * 1024) is est


def test_scored_sketch_calibrates_the_trees_for_its_memory():
    from telesketch.sketches.llmsketch import LLMSketch

    est = load_estimator("trees")
    small = LLMSketch(16 * 1024, estimator="trees")
    t = est.pivot_for_memory(16 * 1024)
    assert small.pivot == t != est.pivot
    assert small.scorer.estimator.cut == pytest.approx(est.with_pivot(t).cut)
    assert LLMSketch(16 * 1024, estimator="trees", pivot="model").pivot == est.pivot
    assert LLMSketch(16 * 1024, estimator="trees", pivot=100).pivot == 100
    hh = LLMSketch(16 * 1024, "heavy_hitters", estimator="trees")
    assert hh.pivot == est.pivot_for_memory(16 * 1024, "heavy_hitters")
    assert LLMSketch(16 * 1024, estimator="constant").pivot is None  # nothing to recalibrate
    for bad in ("big", 1, True, 2.5):
        with pytest.raises(ValueError, match="pivot must be"):
            LLMSketch(16 * 1024, estimator="constant", pivot=bad)
    # a larger pivot admits fewer flows as large: the share of first packets scored >= 0.5 falls
    batch = generate_labelled_batch(20_000, 1_000, seed=3)
    idx = np.arange(len(batch))
    share = [float(np.mean(LLMSketch(16 * 1024, estimator="trees", pivot=p).scorer.estimator
                           .score_packets(batch, idx) >= 0.5)) for p in (8, 64, 512)]
    assert share[0] > share[1] > share[2]


def test_a_scored_sketch_calibrates_for_the_slots_of_its_own_weight_and_heavy_ratio():
    """The pivot budgets the heavy slots the sketch has: a byte-weighted slot holds a uint64 count
    (21 bytes, not 17, for heavy_hitters), and a heavy_ratio other than the task's default moves
    memory between the parts. Counting the default packet sketch's slots, a 128 KiB byte-weighted
    heavy-hitter sketch admitted flows down to 7 packets for 6240 slots (15 for its own), and a
    flow_size sketch with heavy_ratio = 0.5 got the pivot of 0.2's slots (219 at 64 KiB, 96 for its own)."""
    from telesketch.sketches.llmsketch import SLOTS, LLMSketch, LLMSketchParams

    est = load_estimator("trees")
    sizes = np.repeat(est.traffic["sizes"], est.traffic["flows"])
    threshold = int(1e-4 * est.traffic["packets"])
    for kib in (32, 64, 128):
        own = LLMSketchParams(kib * 1024, "heavy_hitters", weight="bytes").buckets * SLOTS
        hh = LLMSketch(kib * 1024, "heavy_hitters", estimator="trees", weight="bytes")
        assert hh.pivot == max(2, heavy_hitter_pivot(sizes, own, threshold))
        own = LLMSketchParams(kib * 1024, "flow_size", heavy_ratio=0.5).buckets * SLOTS
        assert LLMSketch(kib * 1024, estimator="trees", heavy_ratio=0.5).pivot == choose_pivot(sizes, own)
    # the task's defaults are what heavy_slots counted before: unchanged
    assert LLMSketch(64 * 1024, "heavy_hitters", estimator="trees").pivot == est.pivot_for_memory(64 * 1024,
                                                                                                   "heavy_hitters")
    assert LLMSketch(64 * 1024, estimator="trees").pivot == est.pivot_for_memory(64 * 1024)


def test_a_scored_sketch_loaded_from_its_state_keeps_the_pivot_of_its_memory():
    """from_bytes builds the sketch from the state's parameters: the trees must be recalibrated for
    that memory, not for the constructor's default 400 KiB (a service restart loads live states so)."""
    from telesketch.sketches.llmsketch import LLMSketch

    est = load_estimator("trees")
    small = LLMSketch(16 * 1024, estimator="trees")
    loaded = LLMSketch.from_bytes(small.to_bytes(), estimator="trees")
    assert loaded.params.memory_bytes == 16 * 1024
    assert loaded.pivot == small.pivot == est.pivot_for_memory(16 * 1024) != est.pivot_for_memory(400 * 1024)
    hh = LLMSketch(16 * 1024, "heavy_hitters", estimator="trees")
    assert LLMSketch.from_bytes(hh.to_bytes(), estimator="trees").pivot == hh.pivot


def test_trained_trees_save_their_traffic_and_rechoose_the_pivot(tmp_path):
    from telesketch.estimators.training import train_estimator
    from telesketch.traces import generate_batch

    batch = generate_batch(packets=20_000, flows=1_000, seed=5)
    report = train_estimator(batch, "trees", tmp_path / "m", memory_kib=8, progress=False, max_iter=20)
    est = load_estimator("trees", tmp_path / "m")
    assert est.traffic["packets"] == 10_000 and sum(np.multiply(est.traffic["sizes"], est.traffic["flows"])) == 10_000
    assert est.pivot_for_memory(8 * 1024) == report["pivot"] == est.pivot
    # the directory says what trained it (issue #19: the shipped lm names its real capture this way)
    training = json.loads((tmp_path / "m" / "estimator.json").read_text())["training"]
    assert training["trace"] == "a packet batch" and training["split"] == "time" and training["memory_kib"] == 8
    assert training["train_samples"] == report["train_samples"]
    assert training["heldout"]["first_packet_auc"] == pytest.approx(report["heldout"]["first_packet_auc"])


def test_service_config_takes_the_pivot_and_refuses_a_bad_one():
    from telesketch.service.config import ConfigError
    from telesketch.service.sketchset import configure

    spec = {"kind": "llmsketch", "memory_bytes": 16 * 1024, "estimator": "trees", "cache_flows": 1024}
    (cs,) = configure({"flows": {**spec, "pivot": 100}})
    assert cs.active and cs.build().pivot == 100
    (cs,) = configure({"flows": spec})
    assert cs.build().pivot == load_estimator("trees").pivot_for_memory(16 * 1024)
    with pytest.raises(ConfigError, match="pivot must be"):
        configure({"flows": {**spec, "pivot": "bogus"}})


def test_validation_cut_scale_is_chosen_on_the_training_part_alone():
    """The cut scale m comes from a second split of the training part: the first part fits, LLM-Sketch
    on the second scores each m; the test half is never read. Per-capture splits keep every capture."""
    from telesketch.estimators.evaluation import CUT_SCALES, validation_cut_scale, validation_split
    from telesketch.estimators.trees import BoostedTreesEstimator

    batch = generate_labelled_batch(20_000, 1_000, seed=4)
    train, _ = split_trace(batch, 0.5)
    fit_part, val = validation_split(train, None)
    assert len(fit_part) + len(val) == len(train) and np.array_equal(fit_part.ts_ns, train.ts_ns[:len(fit_part)])
    s = segment_samples(fit_part, rescore=True)
    model = BoostedTreesEstimator.fit(s.headers, s.hdr_len, s.size, max_iter=20)
    m, found = validation_cut_scale(model, fit_part, val, 8 * 1024, test_packets=len(train))
    assert set(found) == set(CUT_SCALES) and m in CUT_SCALES
    assert sum(found[m]) == min(sum(v) for v in found.values())
    toy = _toy_batch([300, 500])
    capture = np.repeat([0, 1], [300, 500])
    a, b = validation_split(toy, capture, "time")
    assert (len(a), len(b)) == (400, 400)
    a, b = validation_split(toy, capture, "capture")
    assert sorted((len(a), len(b))) == [300, 500]


def test_train_estimator_on_several_sources_pools_training_parts_and_reports_each(tmp_path, capsys):
    """Issue #19, fifth pass: one model trained on a capture and generated traffic (several TRACE
    arguments), each split in time on its own; the pivot comes from the pooled training sizes and
    estimator.json names every source."""
    from telesketch.cli import main
    from telesketch.estimators.evaluation import heavy_slots
    from telesketch.estimators.training import load_trace
    from telesketch.traces import generate_batch, generate_capture

    pcap = tmp_path / "gen.pcap"
    generate_capture(pcap, packets=20_000, flows=1_000, seed=5)
    assert main(["train-estimator", str(pcap), "generated:10000,500,11", "synthetic:10000,500,12", "--kind", "trees",
                 "--out", str(tmp_path / "m"), "--no-progress", "--memory-kib", "8",
                 "--config", '{"max_iter": 20}']) == 0
    report = json.loads(capsys.readouterr().out)
    names = ["gen.pcap", "generated:10000,500,11", "synthetic:10000,500,12"]
    assert report["split"] == "time" and report["sources"] == names and "heldout" not in report
    assert list(report["heldout_by_source"]) == names
    assert all(0.0 <= h["first_packet_auc"] <= 1.0 for h in report["heldout_by_source"].values())
    # the pivot: the three training halves' flow sizes pooled (flows never merged across sources)
    halves = [split_trace(b, 0.5) for b in (load_trace(pcap), generate_batch(packets=10_000, flows=500, seed=11),
                                            generate_labelled_batch(10_000, 500, seed=12))]
    sizes = np.concatenate([np.unique(t.flow_keys_void(), return_counts=True)[1] for t, _ in halves])
    scale = sum(len(h) for _, h in halves) / sum(len(t) for t, _ in halves)
    assert report["pivot"] == choose_pivot(sizes, heavy_slots(8 * 1024), scale=scale)
    est = load_estimator("trees", tmp_path / "m")
    assert est.traffic["packets"] == sum(len(t) for t, _ in halves) and sum(est.traffic["flows"]) == sizes.size
    training = json.loads((tmp_path / "m" / "estimator.json").read_text())["training"]
    assert training["trace"] == names and set(training["heldout_by_source"]) == set(names)


def test_train_estimator_several_sources_refuse_flow_split_and_a_manifest(tmp_path, capsys):
    from telesketch.cli import main

    args = ["train-estimator", "generated:2000,100,1", "generated:2000,100,2", "--kind", "trees",
            "--out", str(tmp_path / "m"), "--no-progress"]
    assert main(args + ["--split", "flow"]) == 2
    assert "split 'flow' takes one training source" in capsys.readouterr().err
    assert main(args + ["--manifest", str(tmp_path / "x.json")]) == 2
    assert "--manifest names the captures of one trace" in capsys.readouterr().err
    assert main(["train-estimator", "generated:2000,100,1", "generated:2000,100,1", "--kind", "trees",
                 "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "distinct names" in capsys.readouterr().err
    assert main(args + ["--split", "capture"]) == 2  # the error names the source it is about
    assert "training source generated:2000,100,1: split 'capture' needs" in capsys.readouterr().err


def test_train_estimator_refuses_an_empty_source_among_several(tmp_path, capsys):
    """Second review (review-sk): a capture with no packets given beside other sources was dropped
    without a word (the model trained on the rest, exit 0, the report listing a source it never
    used), where the same capture alone is refused. It is refused by name."""
    from telesketch.cli import main

    empty = tmp_path / "empty.pcap"  # a pcap global header (little-endian, Ethernet) and no packets
    empty.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    out = tmp_path / "m"
    assert main(["train-estimator", "generated:2000,100,1", str(empty), "--kind", "trees", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "empty.pcap" in err and "no packets" in err
    assert not (out / "estimator.json").exists()



@pytest.mark.parametrize("spec", ["-5,10,1", "0,10,1", "1000,0,1", "1000,-3,1"])
def test_train_estimator_refuses_synthetic_sizes_that_are_not_positive(tmp_path, capsys, spec):
    """Second review (review-sk): ``synthetic:PACKETS,FLOWS,SEED`` with packets or flows <= 0 trained
    and saved a model on a few stray packets (exit 0), where ``generated:`` refuses the same numbers."""
    from telesketch.cli import main

    out = tmp_path / "m"
    assert main(["train-estimator", f"synthetic:{spec}", "--kind", "trees", "--out", str(out), "--no-progress"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert not (out / "estimator.json").exists()
    with pytest.raises(ValueError, match="must be positive"):
        generate_labelled_batch(*(int(x) for x in spec.split(",")[:2]))


def test_train_estimator_on_several_packet_batches_names_them(tmp_path):
    """Second review (review-sk): ``train_estimator([batch, batch2], ...)`` (the docstring's "a list of
    them", path or batch) failed with "training sources must have distinct names" (both were called
    "a packet batch"), so several batches needed ``names=``. Unnamed batches are numbered."""
    from telesketch.estimators.training import train_estimator
    from telesketch.traces import generate_batch

    batches = [generate_batch(packets=3000, flows=150, seed=s) for s in (1, 2)]
    report = train_estimator(batches, "trees", tmp_path / "m", progress=False, memory_kib=8, max_iter=5)
    assert report["sources"] == ["packet batch 0", "packet batch 1"]
    assert list(report["heldout_by_source"]) == report["sources"]


def test_train_estimator_takes_two_captures_that_share_a_file_name(tmp_path, capsys):
    """Two captures in different folders with one file name (a/x.pcap, b/x.pcap) were refused
    ("training sources must have distinct names": both were called x.pcap). Each is named by the
    shortest trailing path that tells it apart, in the report and estimator.json; a capture given
    twice is still refused."""
    from telesketch.cli import main
    from telesketch.traces import generate_capture

    for folder, seed in (("a", 5), ("b", 6)):
        (tmp_path / folder).mkdir()
        generate_capture(tmp_path / folder / "x.pcap", packets=6000, flows=300, seed=seed)
    generate_capture(tmp_path / "y.pcap", packets=6000, flows=300, seed=7)
    out = tmp_path / "m"
    assert main(["train-estimator", str(tmp_path / "a" / "x.pcap"), str(tmp_path / "b" / "x.pcap"),
                 str(tmp_path / "y.pcap"), "--kind", "trees", "--out", str(out), "--no-progress",
                 "--memory-kib", "8", "--config", '{"max_iter": 5}']) == 0
    names = ["a/x.pcap", "b/x.pcap", "y.pcap"]
    report = json.loads(capsys.readouterr().out)
    assert report["sources"] == names and list(report["heldout_by_source"]) == names
    training = json.loads((out / "estimator.json").read_text())["training"]
    assert training["trace"] == names and set(training["heldout_by_source"]) == set(names)
    same = str(tmp_path / "a" / "x.pcap")
    assert main(["train-estimator", same, str(tmp_path / "a" / ".." / "a" / "x.pcap"), "--kind", "trees",
                 "--out", str(tmp_path / "m2"), "--no-progress"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_source_names_are_the_shortest_distinguishing_paths():
    from telesketch.estimators.training import source_names

    assert source_names(["/d/a/x.pcap", "/d/b/x.pcap", "/d/y.pcap"]) == ["a/x.pcap", "b/x.pcap", "y.pcap"]
    assert source_names(["/a/x.pcap", "/b/a/x.pcap"]) == ["/a/x.pcap", "b/a/x.pcap"]
    assert source_names(["/r/s/a/x.pcap", "/r/t/a/x.pcap"]) == ["s/a/x.pcap", "t/a/x.pcap"]
    assert source_names(["/d/x.pcap"]) == ["x.pcap"]
    with pytest.raises(ValueError, match="given twice"):
        source_names(["/d/x.pcap", "/d/../d/x.pcap"])
