"""Sketch-level evaluation of flow-size estimators, the way the LLM-Sketch paper measures (issue #19).

* Splits: :func:`time_split_per_capture` (each capture of a joined trace: its first part trains,
  the rest tests; the paper trains on one capture and tests on the next in time) and
  :func:`capture_split` (whole captures train or test: applications never seen in training).
  :func:`capture_ids` maps the packets of ``ndpi_merged_hdr128.pcap`` to their source capture.
* :func:`choose_pivot`: the pivot ``T`` (packets) from the memory and the training traffic, so that
  flows of ``>= T`` packets fill about half the heavy slots; :func:`heavy_hitter_pivot`: the
  heavy-hitter task's (every heavy hitter a slot, the free slots two more flows each).
* :func:`sketch_metrics`: all-flow ARE / AAE, ARE over flows ``>= T``, top-100 ARE; :func:`hh_f1`;
  :func:`first_packet_auc` (does the score at a flow's first packet rank flows ``>= T`` first?).
* :func:`validation_cut_scale`: the calibration cut (score 0.5 at ``m * T``) chosen on a second split
  of the training part (:func:`validation_split`), never on the test part.
* Baselines of equal memory: Count-Min (``llmsketch.CountMinBaseline``) and
  :class:`ConservativeUpdateBaseline` (CU), 4-byte counters; :class:`ElasticBaseline` (Elastic Sketch).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from telesketch.jit import kernel
from telesketch.packets import PacketBatch

CU_ROWS = 3


# ---------------------------------------------------------------------------- splits
def capture_ids(batch: PacketBatch, pcap_path, manifest_path) -> np.ndarray:
    """``int64[n]``: each packet's source-capture index in a joined trace (``ndpi_merged_manifest.json``).

    The manifest lists ``[file, records]`` in file order. Captures are 1 ms apart and timestamps are
    monotone, so a packet belongs to the last capture whose first record is at or before its time.
    """
    manifest = json.loads(Path(manifest_path).read_text())
    counts = np.array([int(c) for _, c in manifest], np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ts = _pcap_record_times_ns(pcap_path)
    if ts.shape[0] != counts.sum():
        raise ValueError(f"{pcap_path} has {ts.shape[0]} records, the manifest {int(counts.sum())}")
    nonempty = counts > 0
    first_ts = ts[starts[nonempty]]
    ids = np.flatnonzero(nonempty)
    return ids[np.searchsorted(first_ts, batch.ts_ns.astype(np.int64), side="right") - 1]


def _pcap_record_times_ns(path) -> np.ndarray:
    """Timestamps (ns, ``int64``) of every record of a classic microsecond pcap, in file order."""
    data = Path(path).read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{path}: not a little-endian microsecond pcap")
    out, at = [], 24
    while at + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, at)
        out.append(sec * 1_000_000_000 + usec * 1000)
        at += 16 + incl
    return np.array(out, np.int64)


def time_split_per_capture(batch: PacketBatch, capture: np.ndarray, train_fraction: float = 0.5):
    """``(train, test)``: in every capture, the first ``train_fraction`` of its packets train."""
    _, inv, counts = np.unique(capture, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    rank = np.empty(len(batch), np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank[order] = np.arange(len(batch)) - np.repeat(starts, counts)
    train = rank < np.floor(counts[inv] * train_fraction)
    return batch[np.flatnonzero(train)], batch[np.flatnonzero(~train)]


def capture_split(batch: PacketBatch, capture: np.ndarray, train_fraction: float = 0.5, seed: int = 0):
    """``(train, test)``: a random ``train_fraction`` of the captures train, the others test."""
    ids = np.unique(capture)
    chosen = np.random.default_rng(seed).permutation(ids)[: int(len(ids) * train_fraction)]
    train = np.isin(capture, chosen)
    return batch[np.flatnonzero(train)], batch[np.flatnonzero(~train)]


# ---------------------------------------------------------------------------- pivot
def heavy_slots(memory_bytes: int, task: str = "flow_size", heavy_ratio: float | None = None,
                weight: str = "packets") -> int:
    """Heavy-part slots of an ``LLMSketch(memory_bytes, task, heavy_ratio, weight=weight)``
    (``heavy_ratio`` ``None``: the task's default; a byte-weighted slot's count is 8 bytes, not 4)."""
    from telesketch.sketches.llmsketch import SLOTS, LLMSketchParams

    return LLMSketchParams(memory_bytes, task, heavy_ratio, weight=weight).buckets * SLOTS


def choose_pivot(train_sizes, slots: int, fill: float = 0.5, scale: float = 1.0, minimum: int = 2) -> int:
    """The pivot ``T``: the smallest size such that flows of ``>= T`` packets number at most
    ``fill * slots`` in the training traffic (sizes multiplied by ``scale``, the ratio of the
    evaluated epoch's packets to the training part's).

    Why: with a fixed ``T = 64`` a small sketch has more flows predicted large than heavy slots,
    and locked large flows evict each other (issue #19)."""
    sizes = np.sort(np.asarray(train_sizes, np.float64) * scale)[::-1]
    k = int(fill * slots)
    if k >= sizes.shape[0]:
        return minimum
    return max(minimum, int(np.floor(sizes[k])) + 1)


#: Heavy-hitter sketches (:func:`heavy_hitter_pivot`): flows admitted as large per heavy slot that the
#: heavy hitters leave free. Chosen from 1 / 2 / 4 on the second halves of the labelled synthetic
#: generator's seeds 11-13 and the capture generator's seeds 11-13 (BENCHMARKS.md, issue #19 sixth pass).
HH_SPARE_FLOWS = 2.0
#: ``phi`` of a heavy-hitter query when none is given (spec §5; ``LLMSketch.heavy_hitters``).
HH_PHI = 1e-4


def heavy_hitter_pivot(train_sizes, slots: int, threshold: int, scale: float = 1.0,
                       spare_flows: float = HH_SPARE_FLOWS) -> int:
    """The pivot ``T`` (packets) a heavy-hitter LLM-Sketch's estimator is calibrated for.

    ``train_sizes``: the training traffic's flow sizes (packets; multiplied by ``scale``, the ratio of
    the epoch's packets to the training traffic's); ``slots``: the sketch's heavy slots
    (:func:`heavy_slots` of the task); ``threshold``: the query's threshold (packets; heavy hitters
    have more). ``H`` = training flows of ``>= threshold + 1`` packets. ``T`` is the smallest size
    such that flows of ``>= T`` packets number at most ``H + spare_flows * max(slots - H, 0)``, and
    never above ``threshold + 1`` (1 when the threshold is 0: every flow is a heavy hitter).

    Why (issue #19 row 4): the task has no light part, so a packet the sketch does not admit (a
    flow predicted small that finds its bucket full) is lost, and a heavy hitter predicted small
    is missed; a small flow admitted as large only takes a slot until it is evicted. Every heavy
    hitter needs a slot, and the slots the heavy hitters leave free are best spent admitting more
    flows the model ranks high (``spare_flows`` per free slot), which catches the heavy hitters the
    model ranks below the threshold. With the flow-size rule (flows ``>= T`` fill half the slots,
    :func:`choose_pivot`) ``T`` sat at ``threshold + 1`` on G at 32 KiB and the trees missed 36 %
    of the heavy hitters at their first packet. When the heavy hitters alone outnumber the slots
    there is nothing to spare: ``T = threshold + 1``, the label itself."""
    if not 0 <= spare_flows < np.inf:  # NaN fails too; inf would admit inf (or inf x 0 = NaN) flows
        raise ValueError(f"spare_flows must be a finite number >= 0, got {spare_flows}")
    sizes = np.asarray(train_sizes, np.float64) * scale
    heavy = int(np.count_nonzero(sizes >= threshold + 1))
    admitted = heavy + spare_flows * max(int(slots) - heavy, 0)
    return min(choose_pivot(train_sizes, admitted, fill=1.0, scale=scale), int(threshold) + 1)


# ---------------------------------------------------------------------------- baselines
class ConservativeUpdateBaseline:
    """Count-Min with conservative update (CU) of equal memory: 3 rows of ``int(memory / 3 / 4)``
    4-byte counters over the 13-byte key, rows hashed like ``CountMinBaseline`` (mmh3 seeds 0..2)."""

    def __init__(self, memory_bytes: int):
        self.width = int(memory_bytes / CU_ROWS / 4)
        if self.width < 1:
            raise ValueError(f"memory_bytes={memory_bytes} is too small for a CU sketch")
        self.table = np.zeros((CU_ROWS, self.width), np.int64)

    def _cols(self, keys13: np.ndarray) -> np.ndarray:
        from telesketch.sketches.llmsketch import mmh3_rows

        return np.ascontiguousarray(np.stack([mmh3_rows(keys13, r).astype(np.int64) % self.width
                                              for r in range(CU_ROWS)]))

    def update(self, batch: PacketBatch) -> None:
        _cu_kernel(self.table, self._cols(batch.flow_keys()))

    def flow_size(self, keys) -> np.ndarray:
        cols = self._cols(np.ascontiguousarray(keys, np.uint8).reshape(-1, 13))
        return np.min(np.stack([self.table[r][cols[r]] for r in range(CU_ROWS)]), axis=0)


@kernel
def _cu_kernel(table, cols):
    """Conservative update, packet by packet: raise only the row counters equal to the minimum."""
    for i in range(cols.shape[1]):
        low = table[0, cols[0, i]]
        for r in range(1, table.shape[0]):
            low = min(low, table[r, cols[r, i]])
        for r in range(table.shape[0]):
            if table[r, cols[r, i]] == low:
                table[r, cols[r, i]] = low + 1


ELASTIC_LAMBDA = 8
ELASTIC_ENTRY_BYTES = 13 + 4 + 4  # key, vote+, vote- (the flag bit is not charged)
ELASTIC_ROWS = 3
ELASTIC_SEED = 0xE1A5


class ElasticBaseline:
    """Elastic Sketch (Yang et al., SIGCOMM 2018), simplified, as an equal-memory baseline.

    Heavy part: ``heavy_ratio`` of the memory in one-entry buckets ``(key, vote+, vote-, flag)``
    charged 21 bytes (13-byte key, two 4-byte votes); light part: 3 rows of 1-byte saturating
    Count-Min counters. A packet of a flow in its bucket adds to ``vote+``; another flow adds to
    ``vote-`` and, once ``vote- >= 8 vote+`` (lambda = 8), evicts the resident (its ``vote+`` goes to
    the light part) and takes the bucket with ``flag`` set; otherwise it goes to the light part. A
    flagged resident's estimate adds its light count. Keys are held as 64-bit hashes (collisions
    ignored); the light part hashes those. Not the reference code: no multi-entry buckets."""

    def __init__(self, memory_bytes: int, heavy_ratio: float = 0.25):
        self.buckets = max(int(memory_bytes * heavy_ratio / ELASTIC_ENTRY_BYTES), 1)
        width = int((memory_bytes - self.buckets * ELASTIC_ENTRY_BYTES) / ELASTIC_ROWS)
        if width < 1:
            raise ValueError(f"memory_bytes={memory_bytes} is too small for an Elastic sketch")
        self.key = np.zeros(self.buckets, np.uint64)
        self.vplus = np.zeros(self.buckets, np.int64)
        self.vminus = np.zeros(self.buckets, np.int64)
        self.flag = np.zeros(self.buckets, np.uint8)
        self.light = np.zeros((ELASTIC_ROWS, width), np.int64)

    @staticmethod
    def _fingerprints(keys13: np.ndarray) -> np.ndarray:
        from telesketch.hashing import hash_keys

        h = hash_keys(np.ascontiguousarray(keys13, np.uint8).reshape(-1, 13), ELASTIC_SEED)
        return np.where(h == 0, np.uint64(1), h)  # 0 marks an empty bucket

    def update(self, batch: PacketBatch) -> None:
        _elastic_kernel(self._fingerprints(batch.flow_keys()), self.key, self.vplus, self.vminus, self.flag,
                        self.light, ELASTIC_LAMBDA)

    def flow_size(self, keys) -> np.ndarray:
        fp = self._fingerprints(keys)
        out = np.empty(fp.shape[0], np.int64)
        _elastic_query(fp, self.key, self.vplus, self.flag, self.light, out)
        return out


@kernel(inline="always")
def _mix(x, r):
    """splitmix64 finaliser of ``x`` for row ``r`` (bucket: r = ELASTIC_ROWS)."""
    z = x + np.uint64(0x9E3779B97F4A7C15) * np.uint64(r + 1)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@kernel(inline="always")
def _light_add(light, k, v):
    w = np.uint64(light.shape[1])
    for r in range(light.shape[0]):
        c = np.int64(_mix(k, r) % w)
        light[r, c] = min(light[r, c] + v, 255)


@kernel(inline="always")
def _light_get(light, k):
    w = np.uint64(light.shape[1])
    low = np.int64(255)
    for r in range(light.shape[0]):
        low = min(low, light[r, np.int64(_mix(k, r) % w)])
    return low


@kernel
def _elastic_kernel(fp, key, vplus, vminus, flag, light, lam):
    nb_ = np.uint64(key.shape[0])
    for i in range(fp.shape[0]):
        k = fp[i]
        b = np.int64(_mix(k, light.shape[0]) % nb_)
        if key[b] == 0:
            key[b], vplus[b], vminus[b], flag[b] = k, 1, 0, 0
        elif key[b] == k:
            vplus[b] += 1
        else:
            vminus[b] += 1
            if vminus[b] >= lam * vplus[b]:
                _light_add(light, key[b], vplus[b])
                key[b], vplus[b], vminus[b], flag[b] = k, 1, 1, 1
            else:
                _light_add(light, k, 1)


@kernel
def _elastic_query(fp, key, vplus, flag, light, out):
    nb_ = np.uint64(key.shape[0])
    for i in range(fp.shape[0]):
        k = fp[i]
        b = np.int64(_mix(k, light.shape[0]) % nb_)
        if key[b] == k:
            out[i] = vplus[b] + (_light_get(light, k) if flag[b] else 0)
        else:
            out[i] = _light_get(light, k)


# ---------------------------------------------------------------------------- metrics
def sketch_metrics(true: np.ndarray, est: np.ndarray, pivot: int, top: int = 100) -> dict[str, float]:
    """Flow-size errors over aligned ``true`` / ``est`` counts (``int[flows]``): ``ARE``, ``AAE``
    (every flow), ``ARE>=T`` (flows of ``>= pivot`` packets; NaN if none), ``top100 ARE`` (the
    ``top`` largest true flows)."""
    true = np.asarray(true, np.float64)
    err = np.abs(true - np.asarray(est, np.float64))
    rel = err / true
    big = true >= pivot
    order = np.argsort(-true, kind="stable")[:top]
    return {"ARE": float(rel.mean()), "AAE": float(err.mean()),
            "ARE>=T": float(rel[big].mean()) if big.any() else float("nan"),
            "top100 ARE": float(rel[order].mean()), "flows>=T": int(big.sum())}


def hh_f1(test: PacketBatch, scores: np.ndarray, memory_bytes: int, threshold: int, true_hh: set) -> float:
    """Heavy-hitter F1 of ``LLMSketch(memory, "heavy_hitters")`` fed ``scores`` (report: count > threshold)."""
    from telesketch.sketches import exact
    from telesketch.sketches.llmsketch import LLMSketch

    sketch = LLMSketch(memory_bytes, "heavy_hitters")
    sketch.update(test, scores)
    return exact.set_accuracy(true_hh, [k for k, _ in sketch.heavy_hitters(threshold=threshold)]).f1


def first_packet_auc(estimator, test: PacketBatch, pivot: int) -> float:
    """ROC AUC of the estimator's score at each test flow's first packet for "flow ``>= pivot``";
    NaN when only one class is present. Scores only those first packets (no flow cache)."""
    from telesketch.estimators.training import inflow_positions

    pos, inv, counts = inflow_positions(test)
    first = np.flatnonzero(pos == 1)
    label = counts[inv[first]] >= pivot
    if label.all() or not label.any():
        return float("nan")
    if hasattr(estimator, "predict") and hasattr(estimator, "forest"):
        s = estimator.predict(test.header[first], test.hdr_len[first])  # raw: no float32 ties at 0 / 1
    else:
        s = np.asarray(estimator.score_packets(test, first), np.float64)
    return rank_auc(s, label)


def rank_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney ROC AUC (ties count half)."""
    _, inv, cnt = np.unique(np.asarray(score, np.float64), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]  # 1-based, ties averaged
    pos = int(label.sum())
    neg = label.shape[0] - pos
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


# ---------------------------------------------------------------------------- calibration of any model
class QuantileCalibrated:
    """Any estimator's score re-mapped so that ``0.5`` falls at its training-set quantile for pivot ``T``.

    ``cut``: the score above which lies the training share of flows ``>= T``
    (:func:`telesketch.estimators.trees.quantile_cut`); the map is piecewise linear and monotone,
    ``[0, cut] -> [0, 0.5]`` and ``[cut, 1] -> [0.5, 1]``, so ranking (AUC) is unchanged and the
    share predicted large on the training samples matches the share truly large. Why: a model
    trained on rare positives under-predicts (issue #19: recall 0.28 at the 0.5 cut)."""

    kind = "calibrated"

    @property
    def row_independent(self) -> bool:
        """As the base estimator's (the map is per row)."""
        return bool(getattr(self.base, "row_independent", False))

    def __init__(self, base, cut: float, pivot: int):
        self.base, self.cut, self.pivot = base, float(np.clip(cut, 1e-6, 1 - 1e-6)), int(pivot)

    @classmethod
    def fit(cls, base, train_scores, train_sizes, pivot: int) -> "QuantileCalibrated":
        from telesketch.estimators.trees import quantile_cut

        return cls(base, quantile_cut(train_scores, np.asarray(train_sizes) >= pivot), pivot)

    def _map(self, r) -> np.ndarray:
        r = np.clip(np.asarray(r, np.float64), 0.0, 1.0)
        c = self.cut
        return np.where(r < c, 0.5 * r / c, 0.5 + 0.5 * (r - c) / (1.0 - c)).astype(np.float32)

    def score(self, headers, hdr_len) -> np.ndarray:
        return self._map(self.base.score(headers, hdr_len))

    def score_packets(self, batch, idx) -> np.ndarray:
        return self._map(self.base.score_packets(batch, idx))


# ---------------------------------------------------------------------------- the cut, chosen on validation
CUT_SCALES = (0.5, 1.0, 2.0, 4.0)


def validation_split(train: PacketBatch, capture: np.ndarray | None, split: str = "time", seed: int = 0):
    """``(fit part, validation part)`` of a training part, split again the way the evaluation splits
    (``time``: each capture's first half; ``capture``: half the captures; no ``capture``: by packet index)."""
    if split == "capture" and capture is not None:
        return capture_split(train, capture, 0.5, seed)
    if capture is not None:
        return time_split_per_capture(train, capture, 0.5)
    cut = len(train) // 2
    return train[:cut], train[cut:]


def validation_cut_scale(model, fit_part: PacketBatch, val: PacketBatch, memory_bytes: int, test_packets: int,
                         scales=CUT_SCALES) -> tuple[float, dict]:
    """The calibration scale ``m`` (score 0.5 at ``m * T``) chosen on the training part alone.

    ``model``: trees fitted on ``fit_part`` (:func:`validation_split`); LLM-Sketch runs on ``val`` at
    ``memory_bytes`` scaled by its length over ``test_packets`` (the evaluated epoch's load per
    byte), with ``T`` chosen from ``fit_part`` as the evaluation does; ``m`` minimises ARE over
    flows ``>= T`` plus top-100 ARE there. Why: no single ``m`` wins at every memory (BENCHMARKS.md,
    issue #19 second pass), and choosing it on the test half would tune on the test set.
    Returns ``(m, {m: (ARE>=T, top-100 ARE)})``; ``m = 1`` when no scale gives finite errors."""
    from telesketch.estimators.scoring import FlowScorer
    from telesketch.sketches.llmsketch import LLMSketch

    mem = max(int(memory_bytes * len(val) / max(test_packets, 1)), 256)
    sizes = np.unique(fit_part.flow_keys_void(), return_counts=True)[1]
    pivot = choose_pivot(sizes, heavy_slots(mem), scale=len(val) / max(len(fit_part), 1))
    uniq, true = np.unique(val.flow_keys_void(), return_counts=True)
    rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    floor = max(512, 1 << int(np.ceil(np.log2(max(pivot, 1)))))
    found = {}
    for m in scales:
        scorer = FlowScorer(model.with_pivot(max(2, int(round(m * pivot)))), rescore=True, mode="sync",
                            floor_from=floor)
        scores = np.concatenate([scorer.scores(b) for b in val.split(8192)])
        sketch = LLMSketch(mem, "flow_size")
        sketch.update(val, scores)
        r = sketch_metrics(true, sketch.flow_size(rows), pivot)
        found[m] = (r["ARE>=T"], r["top100 ARE"])
    finite = {m: sum(v) for m, v in found.items() if all(np.isfinite(v))}
    return (min(finite, key=finite.get) if finite else 1.0), found
