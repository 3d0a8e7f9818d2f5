"""benchmarks/llmsketch_targets.py: issue #19's target rows judged from the paper bench's JSON rows."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import llmsketch_targets as targets  # noqa: E402

MODEL = "shipped trees (default, calibrated to T)"


def rows(model_are_t, oracle_are_t, auc=0.95, f1=0.95):
    """One memory point's rows: constants with ARE>=T 0.1 at best, the oracle, the model, CM / CU / Elastic."""
    base = {"ARE": 1.0, "AAE": 2.0, "ARE>=T": 0.2, "top100 ARE": 0.2, "F1": 0.9, "AUC": float("nan")}
    out = {c: dict(base) for c in targets.BEST_OF}
    out["constant(0)"]["ARE>=T"] = out["constant(0)"]["top100 ARE"] = 0.1
    out["oracle"] = dict(base, **{"ARE>=T": oracle_are_t, "top100 ARE": oracle_are_t, "F1": 0.99})
    out[MODEL] = dict(base, **{"ARE>=T": model_are_t, "top100 ARE": model_are_t, "AUC": auc, "F1": f1})
    for b in (targets.CM, targets.CU, targets.ELASTIC):
        out[b] = dict(base, ARE=5.0, AAE=9.0)
    return out


def judge(row, kind, points):
    return targets.verdict(row, [(mem, targets.checks(row, kind, mem, r, MODEL)) for mem, r in points])


def test_row2_needs_every_point_under_0_6x_and_two_under_0_5x():
    met = [(4, rows(0.045, 0.0)), (8, rows(0.04, 0.0)), (16, rows(0.055, 0.0))]
    assert judge(2, "N", met).startswith("**met**")
    one_low = [(4, rows(0.045, 0.0)), (8, rows(0.055, 0.0)), (16, rows(0.055, 0.0))]
    assert judge(2, "N", one_low).startswith("not met")
    too_high = [(4, rows(0.045, 0.0)), (8, rows(0.04, 0.0)), (16, rows(0.07, 0.0))]
    assert judge(2, "N", too_high).startswith("not met")


def test_a_point_where_the_oracle_is_above_half_the_best_constant_does_not_apply():
    assert judge(2, "N", [(8, rows(0.5, 0.06))]).startswith("n.a.")  # oracle 0.6x the best constant
    assert judge(6, "N-unseen", [(8, rows(0.5, 0.06))]).startswith("n.a.")  # ARE / AAE: the oracle is 1x
    # oracle 0.4x: ARE>=T and top-100 apply, and the model's 5x the best constant fails them
    assert judge(6, "N-unseen", [(8, rows(0.5, 0.04))]).startswith("not met (0/2; 2 n.a.)")
    assert judge(6, "N-unseen", [(8, rows(0.1, 0.04))]).startswith("**met** (2/2; 2 n.a.)")


def test_rows_1_4_5():
    point = [(16, rows(0.05, 0.0, auc=0.85, f1=0.85))]
    assert judge(1, "G", point).startswith("**met**")  # ARE 1 / AAE 2 below CM and CU's 5 / 9
    assert judge(4, "G", point).startswith("not met")  # 0.85 < max(0.90, 0.9 - 0.02)
    assert judge(5, "G", point).startswith("**met**")  # 0.85 >= 0.80
    assert judge(5, "N", point).startswith("not met")  # 0.85 < 0.90
    assert judge(3, "G", point).startswith("n.a.")  # row 3 is judged at 32 and 64 KiB only


def test_main_reads_the_bench_json(tmp_path, capsys):
    data = {"command": "bench", "traces": [{"name": "N: nDPI", "points": [
        {"memory": 8192, "pivot": 67, "pivot_hh": 5, "rows": rows(0.04, 0.0)}]}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert targets.main([str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "### Row 5" in out and "| N | **met** (1/1): 0.950 |" in out


def test_named_candidate_trees_get_their_own_column_after_the_shipped_trees(tmp_path, capsys):
    """bench_llmsketch --candidate-trees NAME=DIR (repeatable): each NAME is a column of its own."""
    import bench_llmsketch as bench

    assert bench.candidate_label("/x/trees") == targets.CANDIDATE_TREES_LABEL
    assert bench.candidate_dir("mixed=/x/trees") == "/x/trees" and bench.candidate_dir("/x/trees") == "/x/trees"
    point = rows(0.04, 0.0)
    for name, auc in (("mixed", 0.91), ("nDPI", 0.97)):
        point[bench.candidate_label(f"{name}=/x/{name}")] = dict(point[MODEL], AUC=auc)
    data = {"command": "bench", "traces": [{"name": "N: nDPI", "points": [
        {"memory": 8192, "pivot": 67, "pivot_hh": 5, "rows": point}]}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert targets.main([str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| trace | shipped trees | candidate trees mixed | candidate trees nDPI |" in out
    assert "| N | **met** (1/1): 0.950 | **met** (1/1): 0.910 | **met** (1/1): 0.970 |" in out


def test_bench_heavy_hitter_pivots_models_spare_rule_and_the_oracle_label():
    """bench_llmsketch.hh_pivots: the models get heavy_hitter_pivot (what a service sketch uses), the
    oracle keeps the fifth pass's rule (half the slots, at most threshold + 1); --hh-pivot half gives the
    models that rule too (before/after runs in one tree)."""
    import numpy as np

    import bench_llmsketch as bench
    from telesketch.estimators.evaluation import choose_pivot, heavy_hitter_pivot, heavy_slots

    sizes = np.arange(1, 3001)
    mem, threshold = 32 * 1024, 2500  # 500 heavy hitters, 1920 slots: T well below the threshold
    slots = heavy_slots(mem, "heavy_hitters")
    old = min(choose_pivot(sizes, slots), threshold + 1)
    models, oracle = bench.hh_pivots(sizes, slots, threshold, 1.0)
    assert oracle == old and models == heavy_hitter_pivot(sizes, slots, threshold) < old
    assert bench.hh_pivots(sizes, slots, threshold, 1.0, "half") == (old, old)
    with pytest.raises(ValueError, match="rule must be"):
        bench.hh_pivots(sizes, slots, threshold, 1.0, "quarter")


def test_bench_score_memo_never_answers_for_a_freed_model():
    """bench_llmsketch.paper_trace memoised the constants' and LMs' scores by ``id(model)`` and built new
    constant objects at every memory point: a new object at a freed one's address got its scores (seen:
    N-unseen 16 KiB, constant(0.5)'s rows were constant(0)'s). memo_scores keeps each model it memoises
    alive, so an id is never reused while its entry lives, and answers only for that very object."""
    import bench_llmsketch as bench
    from telesketch.estimators import ConstantEstimator

    cache, computed = {}, []
    for value in (0.0, 0.5, 1.0, 0.5):
        model = ConstantEstimator(value)  # the previous one is unreferenced here: CPython may reuse its address
        got = bench.memo_scores(cache, model, 512, lambda v=value: computed.append(v) or v)
        assert got == value
        assert bench.memo_scores(cache, model, 512, lambda: -1.0) == value  # the same object: memoised
    assert computed == [0.0, 0.5, 1.0, 0.5]
    assert bench.memo_scores(cache, model, 1024, lambda: 2.0) == 2.0  # other settings (a floor): scored again
