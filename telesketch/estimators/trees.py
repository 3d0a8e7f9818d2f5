"""Gradient-boosted regression trees on header words (spec §3.2 (c)).

:class:`BoostedTreesEstimator`: scikit-learn's ``HistGradientBoostingRegressor`` of ``log2`` flow
size on the 16 non-address header words, exported to numpy arrays for serving (no sklearn needed
to score), with a pivot-calibrated score. It replaced a hand-written GBDT that underfit (issue #19);
directories of that old format are refused with a hint to retrain.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from telesketch.estimators import LABEL_SLOPE, META_FILE, Estimator, check_headers
from telesketch.estimators.tokens import ADDRESS_WORDS, header_words, tree_features
from telesketch.jit import kernel


#: ``meta["format"]`` of a :class:`BoostedTreesEstimator` directory (the hand-written GBDT had none).
HGB_FORMAT = "sklearn-hgb-log2size"
#: Pivots whose calibrated cut is saved with the model (powers of two), for :meth:`with_pivot` after loading.
TABLE_PIVOTS = tuple(2 ** k for k in range(1, 17))


class BoostedTreesEstimator(Estimator):
    """scikit-learn ``HistGradientBoostingRegressor`` of ``log2(flow size)``, served without sklearn.

    Fitting needs scikit-learn (the ``[llm]`` extra); the fitted trees are exported to numpy arrays
    (per tree and node: ``feature`` int64 (-1: leaf), ``threshold`` float64 (``x <= t``: left),
    ``left``/``right`` int64 child indices, ``value`` float64), so serving is numpy + one Numba pass.

    The score is *calibrated* for a pivot ``T`` (packets): ``p = sigmoid(LABEL_SLOPE * (pred - cut))``
    with ``pred`` the predicted ``log2`` size and ``cut`` the training-set quantile of ``pred`` above
    which lies the training share of flows ``>= T`` (quantile mapping: ``p >= 0.5`` exactly for the
    same share of training samples as are truly large). Regression on a rare class under-predicts;
    a fixed cut at ``log2 T`` would admit too few large flows. :meth:`with_pivot` recalibrates;
    :meth:`for_memory` recalibrates for the pivot a sketch of given memory needs, from the training
    traffic's flow sizes saved with the model (``traffic``, :func:`traffic_summary`).
    """

    kind = "trees"
    row_independent = True  #: each row walks the forest on its own features

    def __init__(self, forest: dict, base: float, cut: float, pivot: int, train_pred: np.ndarray | None = None,
                 train_size: np.ndarray | None = None, config: dict | None = None,
                 cuts: dict[int, float] | None = None, traffic: dict | None = None):
        self.forest, self.base, self.cut, self.pivot = forest, float(base), float(cut), int(pivot)
        self.train_pred, self.train_size = train_pred, train_size  # kept for recalibration (not saved)
        self.config = dict(config or {})
        #: the training traffic's flow sizes (:func:`traffic_summary`; saved), for :meth:`for_memory`
        self.traffic = traffic
        if cuts is None and train_pred is not None:
            cuts = {t: quantile_cut(train_pred, train_size >= t) for t in TABLE_PIVOTS}
        self.cuts = {int(k): float(v) for k, v in (cuts or {}).items()}  # pivot -> cut (saved)

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, headers, hdr_len, size, pivot: int = 64, max_iter: int = 200, learning_rate: float = 0.1,
            max_leaf_nodes: int = 31, min_samples_leaf: int = 20, seed: int = 0) -> "BoostedTreesEstimator":
        """Fit on header blocks and flow sizes (``int[n]`` packets) of the scoring-point samples."""
        from telesketch.estimators import require_llm

        ensemble = require_llm("sklearn.ensemble")
        headers, hdr_len = check_headers(headers, hdr_len)
        x = tree_features(headers).astype(np.float64)
        target = np.log2(np.maximum(np.asarray(size, np.float64), 1.0))
        model = ensemble.HistGradientBoostingRegressor(
            max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf, early_stopping=False, random_state=seed)
        model.fit(x, target)
        forest = export_hgb(model)
        base = float(np.ravel(model._baseline_prediction)[0])
        est = cls(forest, base, 0.0, pivot, config={"max_iter": max_iter, "learning_rate": learning_rate,
                                                    "max_leaf_nodes": max_leaf_nodes,
                                                    "min_samples_leaf": min_samples_leaf, "seed": seed})
        est.train_pred = est.predict(headers, hdr_len)
        est.train_size = np.asarray(size, np.int64)
        est.cuts = {t: quantile_cut(est.train_pred, est.train_size >= t) for t in TABLE_PIVOTS}
        return est.with_pivot(pivot)

    def with_pivot(self, pivot: int) -> "BoostedTreesEstimator":
        """The same trees calibrated for pivot ``pivot`` (a new object): on the training predictions
        when fitted in this process, else interpolated in ``log2 T`` from the saved power-of-two table."""
        cut = cut_for_pivot(self, pivot)
        out = BoostedTreesEstimator(self.forest, self.base, cut, pivot, self.train_pred, self.train_size, self.config,
                                    self.cuts, self.traffic)
        out._packed = getattr(self, "_packed", None)  # same trees: share the serving layout
        return out

    def pivot_for_memory(self, memory_bytes: int, task: str = "flow_size", epoch_packets: int | None = None, *,
                         heavy_ratio: float | None = None, weight: str = "packets") -> int:
        """The pivot ``T`` for an ``LLMSketch(memory_bytes, task)``: flows of ``>= T`` packets in the
        training traffic fill about half its heavy slots (:func:`~telesketch.estimators.evaluation.choose_pivot`),
        sizes scaled by ``epoch_packets`` / training packets when the epoch length is known. A
        heavy-hitter task (no light part) takes :func:`~telesketch.estimators.evaluation.heavy_hitter_pivot`
        for the default query, ``phi = 1e-4`` of the epoch (of the training traffic's packets when
        ``epoch_packets`` is not given): every heavy hitter is predicted large, and the slots they
        leave free admit more flows. ``heavy_ratio`` and ``weight``: the sketch's (its heavy slots,
        :func:`~telesketch.estimators.evaluation.heavy_slots`, depend on both). The saved pivot when
        the model carries no traffic summary (trained before it was saved)."""
        from telesketch.estimators.evaluation import HH_PHI, choose_pivot, heavy_hitter_pivot, heavy_slots
        from telesketch.sketches.llmsketch import TASKS

        if not self.traffic:
            return self.pivot
        sizes = np.repeat(np.asarray(self.traffic["sizes"], np.float64), np.asarray(self.traffic["flows"], np.int64))
        packets = max(int(self.traffic["packets"]), 1)
        scale = 1.0 if not epoch_packets else float(epoch_packets) / packets
        slots = heavy_slots(int(memory_bytes), task, heavy_ratio, weight)
        if TASKS[task][2] == "none":  # a heavy-hitter task: no light part (heavy_slots has checked the task)
            threshold = int(HH_PHI * (epoch_packets if epoch_packets else packets))
            return max(2, heavy_hitter_pivot(sizes, slots, threshold, scale=scale))
        return choose_pivot(sizes, slots, scale=scale)

    def for_memory(self, memory_bytes: int, task: str = "flow_size", epoch_packets: int | None = None,
                   max_pivot: int | None = None, *, heavy_ratio: float | None = None,
                   weight: str = "packets") -> "BoostedTreesEstimator":
        """These trees calibrated for the pivot :meth:`pivot_for_memory` chooses (never above
        ``max_pivot``, e.g. a heavy-hitter threshold + 1, so every heavy hitter is predicted large)."""
        pivot = self.pivot_for_memory(memory_bytes, task, epoch_packets, heavy_ratio=heavy_ratio, weight=weight)
        if max_pivot is not None:
            pivot = max(2, min(pivot, int(max_pivot)))
        return self if pivot == self.pivot else self.with_pivot(pivot)

    # ------------------------------------------------------------------ score
    def predict(self, headers, hdr_len) -> np.ndarray:
        """Predicted ``log2`` flow size, ``float64[n]``: :func:`_packed_forest_kernel` on the header
        words (the same value, bit for bit, as the node-by-node walk :func:`_forest_kernel`)."""
        headers, hdr_len = check_headers(headers, hdr_len)
        out = np.empty(headers.shape[0])
        packed = self.packed()
        _packed_forest_kernel(header_words(headers), packed.node, packed.value, self.base, out)
        return out

    def predict_reference(self, headers, hdr_len) -> np.ndarray:
        """:meth:`predict` by the plain node walk on ``float32`` features (the serving path before
        the packed forest; kept to check that one against)."""
        headers, hdr_len = check_headers(headers, hdr_len)
        out = np.empty(headers.shape[0])
        f = self.forest
        _forest_kernel(tree_features(headers), f["feature"], f["threshold"], f["left"], f["right"], f["value"],
                       self.base, out)
        return out

    def packed(self) -> "PackedForest":
        """The forest in the serving layout (:class:`PackedForest`), built once per forest."""
        packed = getattr(self, "_packed", None)
        if packed is None:
            packed = self._packed = PackedForest.of(self.forest)
        return packed

    def score(self, headers, hdr_len) -> np.ndarray:
        z = LABEL_SLOPE * (self.predict(headers, hdr_len) - self.cut)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "trees.npz", **self.forest)
        return write_meta(self, directory, format=HGB_FORMAT, base=self.base)

    @classmethod
    def load(cls, directory) -> "BoostedTreesEstimator":
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format") != HGB_FORMAT:
            raise ValueError(f"{directory} holds trees of the old hand-written format, no longer served; retrain: "
                             "telesketch train-estimator TRACE --kind trees --out DIR")
        with np.load(directory / "trees.npz") as z:
            forest = {k: z[k] for k in ("feature", "threshold", "left", "right", "value")}
        return cls(forest, meta["base"], meta["cut"], meta["pivot"], config=meta.get("config"),
                   cuts={int(k): v for k, v in meta.get("cuts", {}).items()}, traffic=meta.get("traffic"))


def traffic_summary(flow_sizes, packets: int) -> dict:
    """The training traffic's flow-size distribution as saved with a model: distinct sizes
    (packets, ascending), how many flows have each, and the packets of that traffic (``int``)."""
    sizes, flows = np.unique(np.asarray(flow_sizes, np.int64), return_counts=True)
    return {"sizes": sizes.tolist(), "flows": flows.tolist(), "packets": int(packets)}


def quantile_cut(pred: np.ndarray, large: np.ndarray) -> float:
    """The cut on ``pred`` above which lies the share ``mean(large)`` of ``pred`` (quantile mapping).

    No large sample: above every prediction (nothing predicted large)."""
    pred = np.asarray(pred, np.float64)
    share = float(np.mean(large)) if len(large) else 0.0
    if share <= 0.0 or pred.size == 0:
        return float(pred.max() + 1.0) if pred.size else 0.0
    return float(np.quantile(pred, 1.0 - share))


def export_hgb(model) -> dict[str, np.ndarray]:
    """A fitted ``HistGradientBoostingRegressor``'s trees as padded numpy arrays ``[trees, nodes]``.

    Reads the predictors' node tables (sklearn's ``TreePredictor.nodes``: numeric splits
    ``x <= num_threshold`` go left; no categorical features or missing values here).
    """
    trees = [p[0].nodes for p in model._predictors]
    width = max(t.shape[0] for t in trees)
    shape = (len(trees), width)
    out = {"feature": np.full(shape, -1, np.int64), "threshold": np.zeros(shape), "left": np.zeros(shape, np.int64),
           "right": np.zeros(shape, np.int64), "value": np.zeros(shape)}
    for i, t in enumerate(trees):
        m = t.shape[0]
        leaf = t["is_leaf"].astype(bool)
        out["feature"][i, :m] = np.where(leaf, -1, t["feature_idx"])
        out["threshold"][i, :m] = t["num_threshold"]
        out["left"][i, :m] = t["left"]
        out["right"][i, :m] = t["right"]
        out["value"][i, :m] = t["value"]
    return out


@kernel
def _forest_kernel(x, feature, threshold, left, right, value, base, out):
    """``out[i] = base + sum_t tree_t(x[i])``; at a node, ``x[f] <= threshold`` goes left."""
    for i in range(x.shape[0]):
        total = base
        for t in range(feature.shape[0]):
            at = 0
            f = feature[t, 0]
            while f >= 0:
                at = left[t, at] if x[i, f] <= threshold[t, at] else right[t, at]
                f = feature[t, at]
            total += value[t, at]
        out[i] = total



#: Header word (``uint16``, big-endian, of the 40-byte block) that tree feature ``j`` reads
#: (:func:`telesketch.estimators.tokens.tree_features`: the non-address words in order).
FEATURE_WORDS = np.array([w for w in range(20) if w not in ADDRESS_WORDS], np.int64)
#: The fields of a :class:`PackedForest` node.
NODE_WORD, NODE_THRESHOLD, NODE_LEFT, NODE_RIGHT = 0, 1, 2, 3


class PackedForest:
    """The exported forest laid out for serving (:func:`_packed_forest_kernel`).

    ``node`` int32 ``[trees, nodes, 4]``, per node: the header word its split reads (-1: a leaf),
    the split threshold as an integer (features are ``uint16`` words, so ``x <= t`` iff
    ``x <= floor(t)``; clipped to [-1, 65535], NaN: -1, so every comparison goes the way the float
    one does), the left and the right child (a leaf's children are itself, so a walk that reached
    a leaf can take more steps and stay there). ``value`` float64 ``[trees, nodes]``: leaf values.
    One node is 16 contiguous bytes: a step is one load, where the exported forest took three.
    """

    def __init__(self, node: np.ndarray, value: np.ndarray):
        self.node, self.value = node, value

    @classmethod
    def of(cls, forest: dict) -> "PackedForest":
        feature = np.asarray(forest["feature"], np.int64)
        leaf = feature < 0
        thr = np.asarray(forest["threshold"], np.float64)
        thr = np.where(np.isnan(thr), -1.0, np.clip(np.floor(thr), -1.0, 65535.0))
        itself = np.broadcast_to(np.arange(feature.shape[1]), feature.shape)
        node = np.stack([np.where(leaf, -1, FEATURE_WORDS[np.maximum(feature, 0)]), np.where(leaf, 0, thr),
                         np.where(leaf, itself, forest["left"]), np.where(leaf, itself, forest["right"])], axis=-1)
        return cls(np.ascontiguousarray(node.astype(np.int32)), np.ascontiguousarray(forest["value"], np.float64))


_ROW_BLOCK = 1024  # rows taken through every tree before the next block (the tree's nodes stay in L1)


@kernel
def _walk(words, node, t, i):
    """The leaf of tree ``t`` that row ``i`` of ``words`` reaches (plain walk)."""
    at = 0
    while node[t, at, NODE_WORD] >= 0:
        at = node[t, at, NODE_LEFT + np.int32(words[i, node[t, at, NODE_WORD]] > node[t, at, NODE_THRESHOLD])]
    return at


@kernel
def _step(words, node, t, i, at):
    """One step of row ``i`` down tree ``t`` from node ``at`` (a leaf stays put)."""
    w = max(node[t, at, NODE_WORD], 0)
    return node[t, at, NODE_LEFT + np.int32(words[i, w] > node[t, at, NODE_THRESHOLD])]


@kernel
def _packed_forest_kernel(words, node, value, base, out):
    """``out[i] = base + sum_t tree_t(row i)``, the trees added in order: the same float64 sum as
    :func:`_forest_kernel`. ``words``: ``uint16[n, 20]`` header words; ``node``, ``value``: a
    :class:`PackedForest`.

    Speed: rows go in blocks of :data:`_ROW_BLOCK`, each block through one tree at a time (its
    nodes stay in L1), eight rows walking the tree side by side (until all eight reach a leaf),
    so their chains of dependent loads overlap instead of waiting in turn (measured: 4 rows 1.8x
    the node walk, 8 rows another 1.13x; a loop over an 8-lane array was no faster than 4 rows)."""
    n = words.shape[0]
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        for i in range(start, stop):
            out[i] = base
        for t in range(node.shape[0]):
            i = start
            while i + 8 <= stop:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0
                live = node[t, 0, NODE_WORD] >= 0
                while live:
                    a0, a1 = _step(words, node, t, i, a0), _step(words, node, t, i + 1, a1)
                    a2, a3 = _step(words, node, t, i + 2, a2), _step(words, node, t, i + 3, a3)
                    a4, a5 = _step(words, node, t, i + 4, a4), _step(words, node, t, i + 5, a5)
                    a6, a7 = _step(words, node, t, i + 6, a6), _step(words, node, t, i + 7, a7)
                    live = (node[t, a0, NODE_WORD] >= 0) | (node[t, a1, NODE_WORD] >= 0) \
                        | (node[t, a2, NODE_WORD] >= 0) | (node[t, a3, NODE_WORD] >= 0) \
                        | (node[t, a4, NODE_WORD] >= 0) | (node[t, a5, NODE_WORD] >= 0) \
                        | (node[t, a6, NODE_WORD] >= 0) | (node[t, a7, NODE_WORD] >= 0)
                out[i] += value[t, a0]
                out[i + 1] += value[t, a1]
                out[i + 2] += value[t, a2]
                out[i + 3] += value[t, a3]
                out[i + 4] += value[t, a4]
                out[i + 5] += value[t, a5]
                out[i + 6] += value[t, a6]
                out[i + 7] += value[t, a7]
                i += 8
            for j in range(i, stop):
                out[j] += value[t, _walk(words, node, t, j)]


def write_meta(estimator, directory: Path, **fields) -> Path:
    """Write ``estimator.json`` for a calibrated estimator: its kind, ``fields`` (format, base, ...),
    the calibration (``cut``, ``pivot``, ``cuts`` per pivot), its ``config`` and, when known, the
    ``traffic`` it was trained on. Returns ``directory``."""
    meta = {"kind": estimator.kind, **fields, "cut": estimator.cut, "pivot": estimator.pivot,
            "cuts": {str(k): v for k, v in sorted(estimator.cuts.items())}, "config": estimator.config}
    if estimator.traffic:
        meta["traffic"] = estimator.traffic
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))
    return directory


def cut_for_pivot(estimator, pivot: int) -> float:
    """The score cut that calibrates ``estimator`` for ``pivot``: the training-set quantile of flows
    of ``>= pivot`` packets when the training predictions are at hand (fitted in this process), else
    interpolated in ``log2 T`` from its saved power-of-two table ``cuts``."""
    if estimator.train_pred is not None:
        return quantile_cut(estimator.train_pred, estimator.train_size >= int(pivot))
    if estimator.cuts:
        at = sorted(estimator.cuts)
        return float(np.interp(np.log2(pivot), np.log2(at), [estimator.cuts[t] for t in at]))
    raise ValueError("recalibration needs the training predictions or a saved cut table")
