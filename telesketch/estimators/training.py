"""Training data and the ``train-estimator`` job (spec §4 "Train and evaluate").

``train-estimator`` splits a trace in time (:func:`split_parts`): in every source capture (a joined
trace's manifest names them; one capture otherwise) the first ``train_fraction`` (default 0.5)
trains, the rest is held out. A split by packet index of a joined trace would train on other
applications than it tests on (issue #19: first-packet AUC 0.45 on nDPI). The older helpers below
(:func:`training_sets`) split by packet index: the first ``train_fraction`` trains, the rest
evaluates. Labels are soft labels of flow sizes counted *within each part* (exact oracle). Samples
are the packets the packet path would score: positions 1, 2, 4, 8, ... of each flow (position 1
only with ``rescore=False``). The last 10 % of the training part (by packet index) is held out
for validation MSE; the evaluation part gives the reported held-out error, next to the error of
the best constant (the training mean).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telesketch.estimators import TRAINED_KINDS, TRAINING_MODULES, require_llm, soft_label
from telesketch.estimators.tokens import ipv4_view
from telesketch.packets import PacketBatch


@dataclass
class Samples:
    """Scoring-point packets of one trace segment: header rows, soft labels, flow sizes, flow ids."""

    headers: np.ndarray
    hdr_len: np.ndarray
    y: np.ndarray
    size: np.ndarray
    flow: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx) -> "Samples":
        return Samples(self.headers[idx], self.hdr_len[idx], self.y[idx], self.size[idx], self.flow[idx])


def load_trace(path) -> PacketBatch:
    """Every IPv4 packet of a capture as one batch (``telesketch.traces.read_capture``)."""
    from telesketch.traces import read_capture

    return PacketBatch.concat(read_capture(path)).family(4)  # the readers also yield IPv6 rows


def flow_ids(batch: PacketBatch) -> np.ndarray:
    """Each packet's flow key as a sortable void scalar: the 13-byte key (``V13``) for IPv4-only
    batches, as always; the 37-byte key (``V37``, IPv4 v4-mapped) once IPv6 rows are present, so
    IPv6 flows that share ports are told apart by their addresses."""
    if not batch.has_ipv6():
        return batch.flow_keys_void()
    return np.ascontiguousarray(batch.flow_keys37()).view("V37").ravel()


def inflow_positions(batch: PacketBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(position, flow, size)``: each packet's 1-based position in its flow (``int64[n]``), its
    flow's index in ``np.unique`` order (``int64[n]``) and every flow's packet count (``int64[flows]``)."""
    _, inv, counts = np.unique(flow_ids(batch), return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate(([0], np.flatnonzero(np.diff(inv[order])) + 1))
    rank = np.arange(len(batch)) - np.repeat(starts, np.diff(np.concatenate((starts, [len(batch)]))))
    pos = np.empty(len(batch), np.int64)
    pos[order] = rank + 1
    return pos, inv, counts


def scoring_points(pos: np.ndarray, rescore: bool) -> np.ndarray:
    """Packet indices the packet path scores: in-flow positions 1 (and 2, 4, 8, ... with ``rescore``)."""
    return np.flatnonzero(((pos & (pos - 1)) == 0) if rescore else pos == 1)


def segment_samples(batch: PacketBatch, rescore: bool = True) -> Samples:
    """Scoring-point samples of ``batch`` labelled with flow sizes counted inside ``batch``."""
    return _segment_samples(batch, rescore)[0]


def _segment_samples(batch: PacketBatch, rescore: bool) -> tuple[Samples, np.ndarray]:
    """The samples and each sample's packet index in ``batch``."""
    pos, inv, counts = inflow_positions(batch)
    idx = scoring_points(pos, rescore)
    size = counts[inv[idx]]
    headers, hdr_len = batch.header[idx], batch.hdr_len[idx]
    if batch.has_ipv6():  # IPv6 rows in the IPv4 layout the models read (tokens.ipv4_view)
        headers, hdr_len = ipv4_view(headers, hdr_len, batch.proto[idx])
    return Samples(headers, hdr_len, soft_label(size), size, inv[idx]), idx


def cap_flows(samples: Samples, max_flows: int | None, seed: int = 0) -> Samples:
    """Keep the samples of at most ``max_flows`` randomly chosen flows."""
    flows = np.unique(samples.flow)
    if max_flows is None or flows.shape[0] <= max_flows:
        return samples
    keep = np.random.default_rng(seed).choice(flows, max_flows, replace=False)
    return samples.take(np.isin(samples.flow, keep))


def generated_batch(spec: str) -> PacketBatch:
    """``"PACKETS,FLOWS,SEED[,SEED...]"``: :func:`telesketch.traces.generate_batch` traffic (zipf 1.1,
    gap rate 0.01) for each seed, concatenated in seed order (the traffic of ``generate_capture``)."""
    from telesketch.traces import generate_batch

    try:
        packets, flows, *seeds = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"generated source must be PACKETS,FLOWS,SEED[,SEED...], got {spec!r}") from None
    if not seeds:
        raise ValueError(f"generated source must be PACKETS,FLOWS,SEED[,SEED...] (at least one seed), got {spec!r}")
    return PacketBatch.concat([generate_batch(packets=packets, flows=flows, seed=s) for s in seeds])


def flow_split_sets(batch: PacketBatch, train_fraction: float = 0.8, rescore: bool = True,
                    max_flows: int | None = 20_000, seed: int = 0) -> tuple[Samples, Samples, Samples]:
    """``(train, validation, evaluation)`` samples split by *flow*: labels are whole-trace flow sizes.

    A random ``train_fraction`` of the flows trains (its last tenth, by flow, validates); the other
    flows are the held-out evaluation set, so no flow is seen both in training and evaluation.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    samples = segment_samples(batch, rescore)
    flows = int(samples.flow.max()) + 1 if len(samples) else 0
    rank = np.empty(flows, np.int64)
    rank[np.random.default_rng(seed).permutation(flows)] = np.arange(flows)
    r = rank[samples.flow]
    n_train = int(flows * train_fraction)
    n_fit = int(n_train * 0.9)
    train = cap_flows(samples.take(r < n_fit), max_flows, seed)
    val = cap_flows(samples.take((r >= n_fit) & (r < n_train)), max_flows, seed)
    evaluation = cap_flows(samples.take(r >= n_train), max_flows, seed)
    return train, val, evaluation


def split_trace(batch: PacketBatch, train_fraction: float = 0.5) -> tuple[PacketBatch, PacketBatch]:
    """``(training part, evaluation part)`` by packet index."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    cut = int(len(batch) * train_fraction)
    return batch[:cut], batch[cut:]


def training_sets(batch: PacketBatch, train_fraction: float = 0.5, rescore: bool = True,
                  max_flows: int | None = 20_000, seed: int = 0) -> tuple[Samples, Samples, Samples]:
    """``(train, validation, evaluation)`` samples (validation: the last 10 % of the training part)."""
    train_part, eval_part = split_trace(batch, train_fraction)
    train_all, pkt_index = _segment_samples(train_part, rescore)
    cut = int(len(train_part) * 0.9)  # the last 10 % of the training part's packets validate
    train = cap_flows(train_all.take(pkt_index < cut), max_flows, seed)
    val = cap_flows(train_all.take(pkt_index >= cut), max_flows, seed)
    evaluation = cap_flows(segment_samples(eval_part, rescore), max_flows, seed)
    return train, val, evaluation


# ---------------------------------------------------------------------------- progress
class Progress:
    """Training progress in steps: :class:`telesketch.progress.ProgressBar` (a tqdm bar on a
    terminal, a plain line every few seconds otherwise); ``update(n, **metrics)``."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from telesketch.progress import ProgressBar

        self.total, self.desc, self.enabled = total, desc, enabled
        self._bar = ProgressBar(desc, total=total, unit="step", enabled=None if enabled else False)

    @property
    def n(self) -> int:
        return int(self._bar.n)

    def update(self, n: int = 1, **info) -> None:
        self._bar.update(n, " ".join(f"{k}={v:.4g}" for k, v in info.items()) if info else None)

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------------------- the job
def mse(pred, y) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(y, np.float64)) ** 2)) if len(y) else 0.0


def evaluate(estimator, samples: Samples, baseline: float) -> dict:
    """MSE of the estimator and of the constant ``baseline`` on ``samples``."""
    pred = estimator.score(samples.headers, samples.hdr_len)
    return {"mse": mse(pred, samples.y), "constant_mse": mse(np.full(len(samples), baseline), samples.y),
            "samples": len(samples)}


def fit_estimator(kind: str, train: Samples, val: Samples, progress: bool = False, **config):
    """Train an estimator of ``kind`` (``trees``, ``tiny``, ``lm``, ``lm-lora``) on samples; returns it.

    ``lm``: the frozen MiniLM embedder + MLP head (:mod:`telesketch.estimators.lm_head`, calibrated
    for ``pivot=`` like the trees); ``lm-lora``: MiniLM fine-tuned with LoRA (:mod:`~telesketch.estimators.lm`)."""
    if kind == "trees":
        from telesketch.estimators.trees import BoostedTreesEstimator

        return BoostedTreesEstimator.fit(train.headers, train.hdr_len, train.size, **config)
    if kind == "tiny":
        from telesketch.estimators.tiny import TinyConfig, TinyEstimator

        return TinyEstimator.fit(train, val, TinyConfig(**config), progress=progress)
    if kind == "lm":
        from telesketch.estimators.lm_head import LMHeadEstimator

        return LMHeadEstimator.fit(train.headers, train.hdr_len, train.size, **config)
    if kind == "lm-lora":
        from telesketch.estimators.lm import LMConfig, LMEstimator

        return LMEstimator.fit(train, val, LMConfig(**config), progress=progress)
    raise ValueError(f"cannot train estimator kind {kind!r}; use {', '.join(TRAINED_KINDS)}")


SPLITS = ("time", "packet", "capture", "flow")


def find_manifest(path) -> Path | None:
    """A ``*manifest.json`` beside ``path`` that lists its source captures (``[[file, records], ...]``
    summing to the capture's record count), else None: the joined nDPI trace has one."""
    import json

    from telesketch.estimators.evaluation import _pcap_record_times_ns

    path = Path(path)
    candidates = sorted(path.parent.glob("*manifest.json"))
    if not candidates:
        return None
    try:
        records = _pcap_record_times_ns(path).shape[0]
    except (ValueError, OSError):
        return None
    for m in candidates:
        try:
            if sum(int(c) for _, c in json.loads(m.read_text())) == records:
                return m
        except (ValueError, TypeError):
            continue
    return None


def split_parts(batch: PacketBatch, split: str, train_fraction: float = 0.5, capture: np.ndarray | None = None,
                seed: int = 0) -> tuple[PacketBatch, PacketBatch]:
    """``(training part, held-out part)`` of a trace.

    ``time`` (default): every source capture (``capture``: per-packet capture ids, e.g. from a
    manifest) is split in time, its first ``train_fraction`` trains; with no ``capture``, the
    whole trace by packet index (the same thing for one capture). ``packet``: by packet index even
    for a joined trace (trains on other applications than it tests on: not recommended).
    ``capture``: whole captures train or test (applications never seen in training).
    """
    from telesketch.estimators.evaluation import capture_split, time_split_per_capture

    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if split == "time" and capture is not None:
        return time_split_per_capture(batch, capture, train_fraction)
    if split in ("time", "packet"):
        return split_trace(batch, train_fraction)
    if split == "capture":
        if capture is None:
            raise ValueError("split 'capture' needs the source captures of the trace (a manifest)")
        return capture_split(batch, capture, train_fraction, seed)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def heldout_report(estimator, held_out: PacketBatch, memory_bytes: int, pivot: int) -> dict:
    """The model on the held-out part: first-packet AUC for flows ``>= pivot``, calibration at the
    0.5 cut (share predicted large, precision, recall) and, at ``memory_bytes``, LLM-Sketch's
    flow-size errors with the model against the best constant estimator (0, 0.5, 1) per metric."""
    from telesketch.estimators import ConstantEstimator
    from telesketch.estimators.evaluation import first_packet_auc, sketch_metrics
    from telesketch.estimators.scoring import FlowScorer
    from telesketch.sketches.llmsketch import LLMSketch

    pos, inv, counts = inflow_positions(held_out)
    first = np.flatnonzero(pos == 1)
    large = counts[inv[first]] >= pivot
    predicted = np.asarray(estimator.score_packets(held_out, first)) >= 0.5
    tp = int((predicted & large).sum())
    calibration = {"large_share": float(large.mean()) if large.size else 0.0,
                   "predicted_large_share": float(predicted.mean()) if predicted.size else 0.0,
                   "precision": tp / int(predicted.sum()) if predicted.any() else 0.0,
                   "recall": tp / int(large.sum()) if large.any() else 0.0}
    uniq, true = np.unique(held_out.flow_keys_void(), return_counts=True)
    rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    floor = max(512, 1 << int(np.ceil(np.log2(max(pivot, 1)))))

    def run(est) -> dict:
        scorer = FlowScorer(est, rescore=True, mode="sync", floor_from=floor)
        scores = np.concatenate([scorer.scores(b) for b in held_out.split(8192)]) if len(held_out) else np.zeros(0)
        sketch = LLMSketch(memory_bytes, "flow_size")
        sketch.update(held_out, scores)
        return sketch_metrics(true, sketch.flow_size(rows), pivot)

    model = run(estimator)
    constants = {c: run(ConstantEstimator(c)) for c in (0.0, 0.5, 1.0)}
    best = {}
    for metric in ("ARE", "AAE", "ARE>=T", "top100 ARE"):
        c = min(constants, key=lambda k: constants[k][metric] if np.isfinite(constants[k][metric]) else np.inf)
        best[metric] = {"constant": c, "value": constants[c][metric]}
    return {"pivot": int(pivot), "first_packet_auc": first_packet_auc(estimator, held_out, pivot),
            "calibration": calibration,
            "sketch": {"memory_kib": memory_bytes / 1024, "model": model, "best_constant": best}}


def constant_warnings(report: dict) -> list[str]:
    """Warnings when the model does no better than a constant on the held-out part."""
    out = []
    auc = report["first_packet_auc"]
    if not np.isfinite(auc) or auc < 0.6:
        out.append(f"first-packet AUC {auc:.3f}: the model barely ranks large flows first (0.5 = chance)")
    model, best = report["sketch"]["model"], report["sketch"]["best_constant"]
    worse = [m for m in ("ARE>=T", "top100 ARE") if np.isfinite(model[m]) and model[m] >= best[m]["value"]]
    if len(worse) == 2:
        out.append("LLM-Sketch with this model is no better than with a constant estimator on the held-out part "
                   f"(ARE>=T {model['ARE>=T']:.4f} vs {best['ARE>=T']['value']:.4f}, top-100 ARE "
                   f"{model['top100 ARE']:.4f} vs {best['top100 ARE']['value']:.4f})")
    return out


def concat_samples(parts: list[Samples]) -> Samples:
    """Samples of several sources as one set; flow ids are offset so no two sources share a flow."""
    if len(parts) == 1:
        return parts[0]
    flows, offset = [], 0
    for s in parts:
        flows.append(s.flow + offset)
        offset += int(s.flow.max()) + 1 if len(s) else 0
    return Samples(np.concatenate([s.headers for s in parts]), np.concatenate([s.hdr_len for s in parts]),
                   np.concatenate([s.y for s in parts]), np.concatenate([s.size for s in parts]),
                   np.concatenate(flows))


def source_names(paths) -> list[str]:
    """What several capture paths are called in reports and ``estimator.json``: each one's shortest
    trailing path that no other path ends with (``a/x.pcap`` and ``b/x.pcap`` beside ``y.pcap``;
    just the file name where that is unique), so captures in different folders that share a file
    name can train one model. Paths are made absolute first (``..`` folded, links not followed);
    two paths to one file are a ``ValueError`` (a capture given twice would count twice)."""
    import os

    absolute = [os.path.abspath(str(p)) for p in paths]
    seen: dict[str, str] = {}
    for given, real in zip(paths, (os.path.realpath(p) for p in absolute)):
        if real in seen:
            raise ValueError(f"capture {real} is given twice (as {seen[real]} and {given}); give each "
                             f"training source once")
        seen[real] = str(given)
    parts = [Path(p).parts for p in absolute]
    names = []
    for i, mine in enumerate(parts):
        for k in range(1, len(mine) + 1):  # distinct absolute paths: k = len(mine) always tells it apart
            if all(other[-k:] != mine[-k:] for j, other in enumerate(parts) if j != i):
                break
        names.append(str(Path(*mine[-k:])))
    return names


def _source_parts(trace, split: str, train_fraction: float, manifest, seed: int):
    """``(captures, training part, held-out part)`` of one source (path or batch): :func:`split_parts`,
    with the source captures of a joined capture from ``manifest`` or a manifest beside it."""
    from telesketch.estimators.evaluation import capture_ids

    batch = trace if isinstance(trace, PacketBatch) else load_trace(trace)
    capture = None
    if not isinstance(trace, PacketBatch) and split in ("time", "capture"):
        manifest = manifest or find_manifest(trace)
        if manifest is not None:
            capture = capture_ids(batch, trace, manifest)
    train_part, held_out = split_parts(batch, split, train_fraction, capture, seed)
    return (None if capture is None else int(np.unique(capture).size)), train_part, held_out


def config_keys(kind: str) -> tuple[str, ...]:
    """The model settings ``train_estimator`` passes on for ``kind`` (``--config`` keys): the fit's
    keyword parameters for ``trees`` / ``lm`` (less ``pivot`` and ``seed``, which it sets itself), the
    config dataclass's fields for ``tiny`` / ``lm-lora`` (less ``seed``). Imports no extra."""
    import dataclasses
    import inspect

    if kind in ("trees", "lm"):
        if kind == "trees":
            from telesketch.estimators.trees import BoostedTreesEstimator as model
        else:
            from telesketch.estimators.lm_head import LMHeadEstimator as model
        params = inspect.signature(model.fit).parameters
        return tuple(k for k in params if k not in ("headers", "hdr_len", "size", "pivot", "seed"))
    if kind == "tiny":
        from telesketch.estimators.tiny import TinyConfig as config
    elif kind == "lm-lora":
        from telesketch.estimators.lm import LMConfig as config
    else:
        raise ValueError(f"cannot train estimator kind {kind!r}; use {', '.join(TRAINED_KINDS)}")
    return tuple(f.name for f in dataclasses.fields(config) if f.name != "seed")  # seed: train_estimator's


def train_estimator(trace, kind: str, out, train_fraction: float = 0.5, max_flows: int | None = 20_000,
                    rescore: bool = True, seed: int = 0, progress: bool = True, split: str = "time",
                    memory_kib: float = 400, manifest=None, names=None, **config) -> dict:
    """Train ``kind`` on part of ``trace`` (path or batch, or a list of them), save to ``out``,
    report held-out figures.

    ``split`` (:func:`split_parts`): ``time`` (default: each source capture split in time; a
    manifest beside the capture, or ``manifest``, names the captures of a joined trace),
    ``packet``, ``capture``; ``flow``: that fraction of the flows (:func:`flow_split_sets`, whole-trace
    labels; no sketch-level figures). ``trees`` are scikit-learn boosted trees calibrated for the
    pivot ``T`` chosen from ``memory_kib`` and the training traffic
    (:func:`telesketch.estimators.evaluation.choose_pivot`); the report's ``heldout`` part has the
    first-packet AUC, calibration and sketch-level errors against the best constant, and
    ``warnings`` says when the model is no better than a constant.

    Several sources (a list, e.g. a real capture and generated traffic; ``names`` labels them in
    the report and ``estimator.json``, default: :func:`source_names` of the paths (file names, or
    the shortest distinguishing paths where file names repeat), ``packet batch I`` for the I-th
    source that is a batch): each is split on its own, flow sizes
    are counted within each source's part (no flow spans two sources), the training parts' samples
    are pooled (``max_flows`` caps the pool) and the pivot comes from the pooled sizes; the report
    has ``heldout_by_source`` (one held-out report per source, keyed by name) instead of
    ``heldout``. ``flow`` split and ``manifest`` take a single source; a source whose training part
    has no packets is a ``ValueError`` naming it. ``config``: model settings, the keys of
    :func:`config_keys` (any other is a ``ValueError`` before the trace is read).
    """
    from telesketch.estimators.evaluation import choose_pivot, heavy_slots

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if kind not in TRAINED_KINDS:
        raise ValueError(f"cannot train estimator kind {kind!r}; use {', '.join(TRAINED_KINDS)}")
    sources = list(trace) if isinstance(trace, (list, tuple)) else [trace]
    if not sources:
        raise ValueError("no training source given")
    if names is None:  # a batch has no file name: several are numbered; paths by source_names
        paths = [t for t in sources if not isinstance(t, PacketBatch)]
        path_names = iter(source_names(paths))
        names = [(f"packet batch {i}" if len(sources) > 1 else "a packet batch") if isinstance(t, PacketBatch)
                 else next(path_names) for i, t in enumerate(sources)]
    names = list(names)
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} training sources")
    if len(set(names)) != len(names):
        raise ValueError(f"training sources must have distinct names, got {names}")
    if len(sources) > 1 and split == "flow":
        raise ValueError("split 'flow' takes one training source; use 'time' to train on several")
    if len(sources) > 1 and manifest is not None:
        raise ValueError("--manifest names the captures of one trace; with several sources each capture's "
                         "manifest is found beside it")
    unknown = sorted(set(config) - set(config_keys(kind)))
    if unknown:  # fail fast, before reading the trace (the fit would raise a TypeError at the end)
        raise ValueError(f"model settings {unknown} are not taken by kind {kind!r}; it takes "
                         f"{', '.join(config_keys(kind))}")
    require_llm(*TRAINING_MODULES[kind])  # fail fast, before reading the trace
    memory_bytes = int(memory_kib * 1024)
    if split == "flow":
        batch = sources[0] if isinstance(sources[0], PacketBatch) else load_trace(sources[0])
        train, val, evaluation = flow_split_sets(batch, train_fraction, rescore, max_flows, seed)
        held_outs, captures = [], None
        sizes = train.size[np.unique(train.flow, return_index=True)[1]]
        train_packets = int(sizes.sum())
        pivot = choose_pivot(sizes, heavy_slots(memory_bytes))
    else:
        trains, vals, evals, all_trains, size_parts, held_outs, capture_counts = [], [], [], [], [], [], []
        train_packets = held_packets = 0
        for source, name in zip(sources, names):
            try:
                n_captures, train_part, held_out = _source_parts(source, split, train_fraction, manifest, seed)
            except ValueError as exc:  # with several sources, say which one
                if len(sources) == 1:
                    raise
                raise ValueError(f"training source {name}: {exc}") from None
            if len(sources) > 1 and len(train_part) == 0:  # else it would add nothing, without a word
                raise ValueError(f"training source {name}: its training part has no packets (an empty or "
                                 f"too short trace)")
            train_all, pkt_index = _segment_samples(train_part, rescore)
            cut = int(len(train_part) * 0.9)  # the last 10 % of the training part's packets validate
            all_trains.append(train_all)
            trains.append(train_all.take(pkt_index < cut))
            vals.append(train_all.take(pkt_index >= cut))
            evals.append(segment_samples(held_out, rescore))
            size_parts.append(np.unique(train_part.flow_keys_void(), return_counts=True)[1])
            held_outs.append(held_out)
            capture_counts.append(n_captures)
            train_packets += len(train_part)
            held_packets += len(held_out)
        train = cap_flows(concat_samples(trains), max_flows, seed)
        val = cap_flows(concat_samples(vals), max_flows, seed)
        evaluation = cap_flows(concat_samples(evals), max_flows, seed)
        sizes = np.concatenate(size_parts)
        captures = capture_counts[0] if len(sources) == 1 else capture_counts
        pivot = choose_pivot(sizes, heavy_slots(memory_bytes), scale=held_packets / max(train_packets, 1))
    if len(train) == 0:
        raise ValueError("the training part of the trace has no packets")
    start = time.perf_counter()
    if kind in ("trees", "lm"):
        from telesketch.estimators.trees import BoostedTreesEstimator, traffic_summary

        # no early stopping: fit on the whole training part (pooled only here: the other kinds do not use it)
        fit = train if split == "flow" else cap_flows(concat_samples(all_trains), max_flows, seed)
        if kind == "trees":
            est = BoostedTreesEstimator.fit(fit.headers, fit.hdr_len, fit.size, pivot=pivot, seed=seed, **config)
        else:
            from telesketch.estimators.lm_head import LMHeadEstimator

            est = LMHeadEstimator.fit(fit.headers, fit.hdr_len, fit.size, pivot=pivot, seed=seed, **config)
        est.traffic = traffic_summary(sizes, train_packets)  # saved: a sketch of other memory re-chooses T
    else:
        est = fit_estimator(kind, train, val, progress=progress, seed=seed, **config)
    seconds = time.perf_counter() - start
    est.save(out)
    base = float(np.mean(train.y))
    report = {"kind": kind, "out": str(Path(out)), "split": split, "captures": captures,
              "pivot": int(pivot), "train_samples": len(train),
              "train_seconds": round(seconds, 1), "validation": evaluate(est, val, base),
              "evaluation": evaluate(est, evaluation, base)}
    if len(sources) == 1 and held_outs and len(held_outs[0]):
        report["heldout"] = heldout_report(est, held_outs[0], memory_bytes, pivot)
        report["warnings"] = constant_warnings(report["heldout"])
    elif len(sources) > 1:
        report["sources"] = names
        report["heldout_by_source"], report["warnings"] = {}, []
        for name, held_out in zip(names, held_outs):
            if len(held_out):
                held = report["heldout_by_source"][name] = heldout_report(est, held_out, memory_bytes, pivot)
                report["warnings"] += [f"{name}: {w}" for w in constant_warnings(held)]
    if kind in ("trees", "lm"):
        training = {"trace": names[0] if len(sources) == 1 else names, "split": split,
                    "train_fraction": train_fraction, "memory_kib": memory_kib, "seed": seed,
                    "captures": report["captures"], "train_samples": len(train)}
        if len(sources) == 1:
            training["heldout"] = report.get("heldout")
        else:
            training["heldout_by_source"] = report["heldout_by_source"]
        record_training(out, training)
    return report


def record_training(directory, training: dict) -> Path:
    """Add ``training`` (what trained the model: trace name, split, memory, held-out figures) to the
    ``estimator.json`` in ``directory``, so a shipped model says what traffic it learnt from.
    Non-finite floats (an empty metric) are written as ``null``. Returns the meta file."""
    import json
    import math

    from telesketch.estimators import META_FILE

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return float(v) if math.isfinite(float(v)) else None
        if isinstance(v, np.integer):
            return int(v)
        return v

    meta_file = Path(directory) / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["training"] = clean(training)
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta_file
