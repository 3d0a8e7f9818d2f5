"""Gradient-boosted regression trees on header words (spec §3.2 (c)).

:class:`BoostedTreesEstimator` (new models): scikit-learn's ``HistGradientBoostingRegressor`` of
``log2`` flow size, exported to numpy for serving, with a pivot-calibrated score. Below: the
original hand-written GBDT (:class:`TreesEstimator`), kept so saved models of that format still load.

A small histogram GBDT in the style of sklearn's ``HistGradientBoostingRegressor``: features are
binned once into at most ``max_bins`` quantile bins; each round fits a depth-limited tree to the
residuals (squared loss) by scanning per-feature gradient histograms; the prediction is
``base + lr * sum(trees)``, clipped to [0, 1] as the score.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numba as nb
import numpy as np

from telesketch.estimators import LABEL_SLOPE, META_FILE, Estimator, check_headers
from telesketch.estimators.tokens import tree_features


@dataclass(frozen=True)
class TreesConfig:
    """Boosting parameters: rounds, learning rate, depth, leaf size, bins."""

    rounds: int = 150
    learning_rate: float = 0.1
    max_depth: int = 5
    min_leaf: int = 20
    max_bins: int = 64


class TreesEstimator(Estimator):
    """Fitted model: bin edges ``float32[f][<=max_bins-1]`` and node arrays of every tree."""

    kind = "trees"

    def __init__(self, config: TreesConfig, edges: list[np.ndarray], base: float, nodes: np.ndarray):
        self.config, self.edges, self.base = config, edges, float(base)
        self.nodes = nodes  # float64[trees, nodes, 3]: feature (-1 leaf), bin threshold, value
        self._packed = None  # per node: feature int64 (-1 leaf), value threshold float32, leaf value

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, headers, hdr_len, y, config: TreesConfig = TreesConfig(), progress=None) -> "TreesEstimator":
        """Fit on header blocks and soft labels ``y`` (``float[n]``)."""
        headers, hdr_len = check_headers(headers, hdr_len)
        x = tree_features(headers)
        edges = [_bin_edges(x[:, f], config.max_bins) for f in range(x.shape[1])]
        bins = _apply_bins(x, edges)
        y = np.asarray(y, np.float64)
        base = float(y.mean()) if y.size else 0.0
        pred = np.full(y.shape[0], base)
        size = 2 ** (config.max_depth + 1) - 1
        nodes = np.zeros((config.rounds, size, 3))
        for t in range(config.rounds):
            nodes[t] = _fit_tree(bins, y - pred, config, size)
            pred += config.learning_rate * _predict_tree(nodes[t], bins)
            if progress is not None:
                progress(t + 1, config.rounds, float(np.mean((y - pred) ** 2)))
        return cls(config, edges, base, nodes)

    # ------------------------------------------------------------------ score
    def predict(self, headers, hdr_len) -> np.ndarray:
        """Raw boosted prediction ``float64[n]`` (one Numba pass: bin, then walk every tree)."""
        headers, hdr_len = check_headers(headers, hdr_len)
        if self._packed is None:
            self._packed = _value_thresholds(self.nodes, self.edges)
        feature, threshold, value = self._packed
        out = np.empty(headers.shape[0])
        _predict_kernel(tree_features(headers), feature, threshold, value, self.base, self.config.learning_rate, out)
        return out

    def score(self, headers, hdr_len) -> np.ndarray:
        return np.clip(self.predict(headers, hdr_len), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "trees.npz", nodes=self.nodes,
                            **{f"edges{i}": e for i, e in enumerate(self.edges)})
        meta = {"kind": self.kind, "config": asdict(self.config), "base": self.base, "features": len(self.edges)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory) -> "TreesEstimator":
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        with np.load(directory / "trees.npz") as z:
            edges = [z[f"edges{i}"] for i in range(meta["features"])]
            nodes = z["nodes"]
        return cls(TreesConfig(**meta["config"]), edges, meta["base"], nodes)


def _bin_edges(col: np.ndarray, max_bins: int) -> np.ndarray:
    uniq = np.unique(col)
    if uniq.shape[0] <= max_bins:
        return ((uniq[:-1] + uniq[1:]) / 2).astype(np.float32)
    qs = np.quantile(col, np.linspace(0, 1, max_bins + 1)[1:-1])
    return np.unique(qs).astype(np.float32)


def _apply_bins(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.searchsorted(e, x[:, f], side="right") for f, e in enumerate(edges)], 1).astype(np.int64)


def _fit_tree(bins: np.ndarray, g: np.ndarray, config: TreesConfig, size: int) -> np.ndarray:
    """One tree as a heap-ordered array of nodes ``[feature (-1: leaf), bin threshold, value]``."""
    nodes = np.zeros((size, 3))
    nodes[:, 0] = -1
    nbins = config.max_bins + 1
    nfeat = bins.shape[1]
    offsets = np.arange(nfeat) * nbins
    stack = [(0, np.arange(bins.shape[0]), 0)]
    while stack:
        node, idx, depth = stack.pop()
        m = idx.shape[0]
        total = g[idx].sum()
        nodes[node, 2] = total / m if m else 0.0
        if depth >= config.max_depth or m < 2 * config.min_leaf:
            continue
        flat = (bins[idx] + offsets).ravel()
        gsum = np.bincount(flat, weights=np.repeat(g[idx], nfeat), minlength=nfeat * nbins).reshape(nfeat, nbins)
        cnt = np.bincount(flat, minlength=nfeat * nbins).reshape(nfeat, nbins)
        gl, nl = np.cumsum(gsum, 1)[:, :-1], np.cumsum(cnt, 1)[:, :-1]
        nr = m - nl
        ok = (nl >= config.min_leaf) & (nr >= config.min_leaf)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(ok, gl**2 / nl + (total - gl) ** 2 / nr, -np.inf)
        f, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not np.isfinite(gain[f, b]) or gain[f, b] <= total**2 / m + 1e-12:
            continue
        nodes[node, 0], nodes[node, 1] = f, b
        go_left = bins[idx, f] <= b
        stack.append((2 * node + 1, idx[go_left], depth + 1))
        stack.append((2 * node + 2, idx[~go_left], depth + 1))
    return nodes


def _predict_tree(nodes: np.ndarray, bins: np.ndarray) -> np.ndarray:
    at = np.zeros(bins.shape[0], np.int64)
    rows = np.arange(bins.shape[0])
    while True:
        feat = nodes[at, 0].astype(np.int64)
        inner = feat >= 0
        if not inner.any():
            return nodes[at, 2]
        f = np.where(inner, feat, 0)
        left = bins[rows, f] <= nodes[at, 1]
        at = np.where(inner, np.where(left, 2 * at + 1, 2 * at + 2), at)


def _value_thresholds(nodes: np.ndarray, edges: list[np.ndarray]):
    """Node arrays with the bin threshold turned into a feature-value threshold.

    ``bin(x) <= b`` (``bin = searchsorted(edges, x, 'right')``) holds exactly when ``x < edges[b]``
    (always when ``b`` is past the last edge), so prediction needs no binning.
    """
    feature = nodes[:, :, 0].astype(np.int64)
    bins = nodes[:, :, 1].astype(np.int64)
    threshold = np.full(feature.shape, np.inf, np.float32)
    for f, e in enumerate(edges):
        at = (feature == f) & (bins < e.shape[0])
        threshold[at] = e[bins[at]]
    return feature, threshold, np.ascontiguousarray(nodes[:, :, 2])


@nb.njit(cache=True, nogil=True)
def _predict_kernel(x, feature, threshold, value, base, lr, out):
    """``out[i] = base + lr * sum_t tree_t(x[i])``, left child when ``x[f] < threshold``."""
    for i in range(x.shape[0]):
        total = 0.0
        for t in range(feature.shape[0]):
            at = 0
            f = feature[t, 0]
            while f >= 0:
                at = 2 * at + 1 if x[i, f] < threshold[t, at] else 2 * at + 2
                f = feature[t, at]
            total += value[t, at]
        out[i] = base + lr * total


# ============================================================================ scikit-learn boosting
#: ``meta["format"]`` of a :class:`BoostedTreesEstimator` directory (the hand-written GBDT has none).
HGB_FORMAT = "sklearn-hgb-log2size"


class BoostedTreesEstimator(Estimator):
    """scikit-learn ``HistGradientBoostingRegressor`` of ``log2(flow size)``, served without sklearn.

    Fitting needs scikit-learn (the ``[llm]`` extra); the fitted trees are exported to numpy arrays
    (per tree and node: ``feature`` int64 (-1: leaf), ``threshold`` float64 (``x <= t``: left),
    ``left``/``right`` int64 child indices, ``value`` float64), so serving is numpy + one Numba pass.

    The score is *calibrated* for a pivot ``T`` (packets): ``p = sigmoid(LABEL_SLOPE * (pred - cut))``
    with ``pred`` the predicted ``log2`` size and ``cut`` the training-set quantile of ``pred`` above
    which lies the training share of flows ``>= T`` (quantile mapping: ``p >= 0.5`` exactly for the
    same share of training samples as are truly large). Regression on a rare class under-predicts;
    a fixed cut at ``log2 T`` would admit too few large flows. :meth:`with_pivot` recalibrates.
    """

    kind = "trees"

    def __init__(self, forest: dict, base: float, cut: float, pivot: int, train_pred: np.ndarray | None = None,
                 train_size: np.ndarray | None = None, config: dict | None = None):
        self.forest, self.base, self.cut, self.pivot = forest, float(base), float(cut), int(pivot)
        self.train_pred, self.train_size = train_pred, train_size  # kept for recalibration (not saved)
        self.config = dict(config or {})

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
        return est.with_pivot(pivot)

    def with_pivot(self, pivot: int) -> "BoostedTreesEstimator":
        """The same trees calibrated for pivot ``pivot`` on the training predictions (a new object)."""
        if self.train_pred is None:
            raise ValueError("recalibration needs the training predictions (fit in this process)")
        cut = quantile_cut(self.train_pred, self.train_size >= int(pivot))
        return BoostedTreesEstimator(self.forest, self.base, cut, pivot, self.train_pred, self.train_size, self.config)

    # ------------------------------------------------------------------ score
    def predict(self, headers, hdr_len) -> np.ndarray:
        """Predicted ``log2`` flow size, ``float64[n]``."""
        headers, hdr_len = check_headers(headers, hdr_len)
        out = np.empty(headers.shape[0])
        f = self.forest
        _forest_kernel(tree_features(headers), f["feature"], f["threshold"], f["left"], f["right"], f["value"],
                       self.base, out)
        return out

    def score(self, headers, hdr_len) -> np.ndarray:
        z = LABEL_SLOPE * (self.predict(headers, hdr_len) - self.cut)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "trees.npz", **self.forest)
        meta = {"kind": self.kind, "format": HGB_FORMAT, "base": self.base, "cut": self.cut, "pivot": self.pivot,
                "config": self.config}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory) -> "BoostedTreesEstimator":
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        with np.load(directory / "trees.npz") as z:
            forest = {k: z[k] for k in ("feature", "threshold", "left", "right", "value")}
        return cls(forest, meta["base"], meta["cut"], meta["pivot"], config=meta.get("config"))


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


@nb.njit(cache=True, nogil=True)
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
