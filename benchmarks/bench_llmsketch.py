"""LLM-Sketch accuracy and throughput per estimator (specs/llmsketch.md §4-§5).

``--sections paper`` (default, issue #19): the paper's way of measuring. N: the nDPI trace with each
source capture split in time; N-unseen: split by capture; the other real captures zero-shot; G: the
generated trace per seed. At each memory the pivot T is chosen from the memory and the training traffic
(``estimators.evaluation.choose_pivot``); sklearn boosted trees calibrated to T, the shipped LM
(``--calibrate-lm``: also quantile-calibrated to T), constants 0 / 0.5 / 1, the oracle, Count-Min and
CU of equal memory; all-flow ARE / AAE, ARE over flows >= T, top-100 ARE, HH F1, first-packet AUC,
and the ratios to the best constant per metric. ``--estimators ...,lm-head`` adds the language model
trained here on each training part (frozen MiniLM embedder + MLP head, ``estimators.lm_head``,
calibrated to T like the trees; zero-shot captures use N's). The older per-estimator tables follow
(``--sections accuracy``).

For each trace: train estimators on the first half (trees, tiny; lm = the shipped MiniLM head unless
``--lm-path``; it was trained on the first half of each nDPI capture, so on N-unseen it is not held
out: give ``--lm-path`` a LoRA or head directory for that, e.g. ``estimators/data/lm-lora``), replay the second half through LLM-Sketch with per-flow scores (sync mode,
re-scoring at 1, 2, 4, ...), and report flow-size ARE / AAE (all flows, and ARE over flows > 64
packets), heavy-hitter F1 (alpha = 1e-4, heavy-hitter configuration) at three memory sizes, for
each estimator, the three constants of spec §3.2 (d) (0: never evict; 0.5: evict on every miss;
1: also lock every slot), the oracle, and a plain Count-Min of the same memory, and the share of
the gap between the *best* constant at that size and the oracle that each estimator closes.
``--generated-seeds 7,8,9`` repeats the generated trace for each seed and adds a table of the
mean ARE over the seeds (one trace seed moves the small 16/32 KiB gaps by their own size).
``--lm-train-seconds S`` also fine-tunes the LM on each trace's first half (capped at S seconds),
next to the shipped LM. Also the estimator's throughput (scored
packets/s) and the sketch's packets/s with scoring on.

Packet-path throughput (``--throughput``): 1 M packets of ``telesketch.traces.generate_batch``
(50 k flows, 64 Ki batches) through ``LLMSketch(400 KiB).update``: precomputed scores, then
``update(batch)`` through the FlowScorer with the constant, trees and lm estimators (lm in the
default async mode: the packet path never waits for the model).

    .venv/bin/python benchmarks/bench_llmsketch.py                     # ndpi + generated + throughput
    .venv/bin/python benchmarks/bench_llmsketch.py --quick             # paper section, one memory per trace
    .venv/bin/python benchmarks/bench_llmsketch.py --sections throughput
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from common import machine

from telesketch.estimators import ConstantEstimator, OracleEstimator, load_estimator
from telesketch.estimators.scoring import FlowScorer
from telesketch.estimators.synthetic import generate_labelled_batch
from telesketch.estimators.training import fit_estimator, load_trace, split_trace, training_sets
from telesketch.sketches import exact
from telesketch.sketches.llmsketch import CountMinBaseline, LLMSketch, stored_keys

NDPI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "traces", "ndpi_merged_hdr128.pcap")


#: ``--scorer-memory``: "separate" (each LLM-Sketch row's score cache beside its memory, 2^20 flows) or
#: "charged" (carved out of the memory point: ``scoring.charged_split`` with ``--scorer-share``), issue #19 row 7
SCORER = {"memory": "separate", "share": None}


def llm_sketch(memory: int, task: str = "flow_size") -> LLMSketch:
    """The LLM-Sketch of a memory point: all of it, or (``--scorer-memory charged``) the sketch part."""
    if SCORER["memory"] == "charged":
        from telesketch.estimators.scoring import charged_split

        return LLMSketch(params=charged_split(memory, task, scorer_share=SCORER["share"])[0])
    return LLMSketch(memory, task)


def cache_flows_for(memory: int | None) -> int:
    """The score cache of a memory point's LLM-Sketch rows (``None``: the default 2^20 flows)."""
    if SCORER["memory"] == "charged" and memory is not None:
        from telesketch.estimators.scoring import charged_split

        return charged_split(memory, scorer_share=SCORER["share"])[1]
    return 1 << 20


def score_trace(estimator, batch, floor_from, chunk=8192, memory=None):
    """Per-packet scores via the packet path (sync); returns (scores, model calls, seconds). ``memory``:
    the memory point whose score cache to use (``--scorer-memory charged``: its share)."""
    scorer = FlowScorer(estimator, rescore=True, mode="sync", floor_from=floor_from, cache_flows=cache_flows_for(memory))
    start = time.perf_counter()
    scores = np.concatenate([scorer.scores(b) for b in batch.split(chunk)])
    return scores, scorer.model_calls, time.perf_counter() - start


def flow_metrics(truth, keys, est_values):
    est = dict(zip(keys, est_values.tolist()))
    big = [k for k, c in truth.items() if c > 64]
    return {"ARE": exact.are(truth, est), "AAE": exact.aae(truth, est), "ARE>64": exact.are(truth, est, big)}


def hh_f1(batch, scores, memory, threshold, true_hh):
    sketch = LLMSketch(memory, "heavy_hitters")
    sketch.update(batch, scores)
    return exact.set_accuracy(true_hh, [k for k, _ in sketch.heavy_hitters(threshold=threshold)]).f1


CONSTANTS = ("constant(0)", "constant(0.5)", "constant(1)")
GAP_FLOOR = 1e-3  # a best-constant -> oracle gap this small (in ARE) is noise: no share reported


def run_trace(name, batch, memories, estimators, lm_path, tiny_epochs, lm_train_seconds=0.0, floor_from=512):
    train_part, eval_part = split_trace(batch, 0.5)
    keys_void = eval_part.flow_keys_void()
    uniq = np.unique(keys_void)
    truth = exact.count_dict(keys_void)
    query_keys = uniq.tolist()
    query_rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    n = len(eval_part)
    threshold = int(1e-4 * n)
    true_hh = set(exact.heavy_hitters(keys_void, threshold=threshold))
    print(f"\n## {name}: eval {n:,} packets, {len(truth):,} flows, {sum(c > 64 for c in truth.values())} "
          f"flows > 64 pkts, HH threshold {threshold} ({len(true_hh)} true HH)", flush=True)
    train, val, _ = training_sets(batch, 0.5, rescore=True, max_flows=20_000)
    models = {"constant(0)": ConstantEstimator(0.0), "constant(0.5)": ConstantEstimator(0.5),
              "constant(1)": ConstantEstimator(1.0), "oracle": OracleEstimator(truth)}
    for kind in estimators:
        t0 = time.perf_counter()
        if kind == "trees":
            models[kind] = fit_estimator("trees", train, val)
        elif kind == "tiny":
            models[kind] = fit_estimator("tiny", train, val, epochs=tiny_epochs, seed=0)
        elif kind == "lm":
            models[kind] = load_estimator("lm", lm_path)
            if lm_train_seconds > 0:
                print(f"  lm (trained here): fine-tuning on the first half, at most {lm_train_seconds:.0f} s", flush=True)
                trained = fit_estimator("lm-lora", train, val, progress=True, seed=0,
                                        max_seconds=lm_train_seconds)  # LoRA: "lm" trains the head
                with tempfile.TemporaryDirectory() as tmp:  # served as the service serves it: int8 ONNX
                    trained.save(tmp)
                    models["lm (trained here)"] = load_estimator("lm", tmp)
        print(f"  {kind}: ready in {time.perf_counter() - t0:.1f} s ({len(train)} training samples)", flush=True)
    rows = []
    LLMSketch(memories[0], "flow_size").update(eval_part[:1000], np.zeros(1000))  # load the cached kernels
    for label, model in models.items():
        scores, calls, secs = score_trace(model, eval_part, floor_from)
        t0 = time.perf_counter()
        LLMSketch(memories[1], "flow_size").update(eval_part, scores)
        upd = time.perf_counter() - t0
        for mem in memories:
            sketch = LLMSketch(mem, "flow_size")
            sketch.update(eval_part, scores)
            m = flow_metrics(truth, query_keys, sketch.flow_size(query_rows))
            m["F1"] = hh_f1(eval_part, scores, mem, threshold, true_hh)
            rows.append((label, mem, m, calls / secs if secs else 0.0, n / (secs + upd)))
    for mem in memories:
        cm = CountMinBaseline(mem)
        cm.update(eval_part)
        rows.append(("count-min", mem, flow_metrics(truth, query_keys, cm.flow_size(query_rows)) | {"F1": float("nan")},
                     float("nan"), float("nan")))
    print("\n| estimator | memory | ARE | AAE | ARE (>64) | HH F1 | best-constant gap closed (ARE) | (ARE>64) "
          "| scored pkts/s | sketch pkts/s (scoring on) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, mem, m, fps, pps in sorted(rows, key=lambda r: (r[1], r[0])):
        closed = [_gap_closed(rows, mem, m, metric) for metric in ("ARE", "ARE>64")]
        print(f"| {label} | {mem // 1024} KiB | {m['ARE']:.3f} | {m['AAE']:.2f} | {m['ARE>64']:.3f} | "
              f"{m['F1']:.3f} | {closed[0]} | {closed[1]} | {fps:,.0f} | {pps:,.0f} |")
    return rows


# ============================================================================ the paper's way (issue #19)
MANIFEST = "ndpi_merged_manifest.json"  # next to the nDPI trace: each source capture and its packets
HELD_OUT = ("slips_test-cc-capture-1.pcap", "stopddos_amp.dns.RRSIG.fragmented.pcap",
            "stopddos_amp.TCP.reflection.SYNACK.pcap", "stopddos_pkt.TCP.synflood.spoofed.pcap")
PAPER_METRICS = ("ARE", "AAE", "ARE>=T", "top100 ARE", "F1")
LOWER_IS_BETTER = {"ARE": True, "AAE": True, "ARE>=T": True, "top100 ARE": True, "F1": False}


def _flow_sizes(batch):
    return np.unique(batch.flow_keys_void(), return_counts=True)[1]


def _floor_for(pivot: int) -> int:
    """The scorer's size floor must not mark flows below the pivot large: first floor >= T, >= 512."""
    return max(512, 1 << int(np.ceil(np.log2(max(pivot, 1)))))


class MemoScores:
    """An estimator's scores memoised by header row, so recalibrating a slow model (the LM) for
    each pivot re-scores nothing."""

    kind = "memo"

    def __init__(self, base):
        self.base, self.memo = base, {}

    def score(self, headers, hdr_len):
        keys = [bytes(h[:n]) for h, n in zip(headers, hdr_len)]
        first = {}
        for i, k in enumerate(keys):
            if k not in self.memo and k not in first:
                first[k] = i
        missing = np.array(list(first.values()), np.int64)
        if missing.size:
            got = self.base.score(headers[missing], hdr_len[missing])
            self.memo.update(zip((keys[i] for i in missing), got.tolist()))
        return np.array([self.memo[k] for k in keys], np.float32)

    def score_packets(self, batch, idx):
        return self.score(batch.header[idx], batch.hdr_len[idx])


def memo_scores(cache: dict, model, settings, score):
    """``score()`` (a model's per-packet scores of the test part), memoised in ``cache`` per model
    object and ``settings`` (hashable: what else the scores depend on, e.g. the size floor and the
    score cache's flows): the constants' and the LMs' scores do not depend on the sketch. The entry
    keeps ``model`` alive, so no other object can take its ``id`` while the entry lives (keyed by the
    bare ``id``, a constant built at a later memory point at a freed one's address got that one's
    scores)."""
    key = (id(model), settings)
    hit = cache.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    scores = score()
    cache[key] = (model, scores)
    return scores


HH_PIVOT_RULES = ("spare", "half")


def hh_pivots(train_sizes, slots: int, threshold: int, scale: float, rule: str = "spare") -> tuple[int, int]:
    """``(models' T, oracle's T)`` for a heavy-hitter sketch of ``slots`` heavy slots (threshold in packets).

    The oracle's: flows ``>= T`` fill half the heavy slots, never above ``threshold + 1`` (the fifth
    pass's rule for every model; exact sizes gain nothing from admitting more). The models':
    ``rule="spare"`` (default), :func:`telesketch.estimators.evaluation.heavy_hitter_pivot`, what a
    service's heavy-hitter sketch is calibrated for (every heavy hitter a slot, the free slots two
    more flows each); ``rule="half"``: the oracle's, as before the sixth pass (for before/after runs)."""
    from telesketch.estimators.evaluation import choose_pivot, heavy_hitter_pivot

    if rule not in HH_PIVOT_RULES:
        raise ValueError(f"rule must be one of {HH_PIVOT_RULES}, got {rule!r}")
    oracle = min(choose_pivot(train_sizes, slots, scale=scale), threshold + 1)
    if rule == "half":
        return oracle, oracle
    return heavy_hitter_pivot(train_sizes, slots, threshold, scale=scale), oracle


def paper_trace(name, train, test, memories, fitted, lm=None, summary=None, validate=None, extra=None,
                hh_rule="spare"):
    """One trace of the issue-#19 evaluation: every memory point, every estimator and baseline.

    ``fitted``: a ``BoostedTreesEstimator`` trained on ``train`` (or on another trace: zero-shot);
    recalibrated here to each memory point's pivot ``T``, chosen from ``train`` and the memory.
    ``validate(memory, test_packets) -> m``: also the trees with score 0.5 at ``m * T``, ``m`` chosen
    on a validation split of the training part (``evaluation.validation_cut_scale``).
    ``extra``: ``{label: estimator}`` of further pivot-calibrated models (``with_pivot``), e.g. the LM head.
    ``hh_rule``: the heavy-hitter sketch's pivot for the models (:func:`hh_pivots`).
    """
    from telesketch.estimators.evaluation import (ConservativeUpdateBaseline, ElasticBaseline, choose_pivot,
                                                  first_packet_auc, sketch_metrics)

    keys_void = test.flow_keys_void()
    uniq, true = np.unique(keys_void, return_counts=True)
    truth = dict(zip(uniq.tolist(), true.tolist()))
    query_rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    n = len(test)
    threshold = int(1e-4 * n)
    true_hh = set(exact.heavy_hitters(keys_void, threshold=threshold))
    train_sizes = _flow_sizes(train)
    scale = n / max(len(train), 1)
    print(f"\n### {name}: train {len(train):,} packets / {train_sizes.size:,} flows; test {n:,} packets, "
          f"{len(truth):,} flows, HH threshold {threshold} ({len(true_hh)} true HH)", flush=True)
    print("\n| memory | T (flow size) | T (HH; oracle's) | estimator | ARE | AAE | ARE>=T | top-100 ARE | HH F1 | first-pkt AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cache = {}
    out = []
    for mem in memories:
        # the heavy slots of the LLM-Sketch rows' sketch (with --scorer-memory charged: the part beside the cache)
        slots, slots_hh = (llm_sketch(mem, task).params.buckets * 8 for task in ("flow_size", "heavy_hitters"))
        pivot = choose_pivot(train_sizes, slots, scale=scale)
        pivot_hh, pivot_hh_oracle = hh_pivots(train_sizes, slots_hh, threshold, scale, hh_rule)
        models = {"constant(0)": (ConstantEstimator(0.0),) * 2, "constant(0.5)": (ConstantEstimator(0.5),) * 2,
                  "constant(1)": (ConstantEstimator(1.0),) * 2,
                  "oracle": (OracleEstimator(truth, pivot), OracleEstimator(truth, pivot_hh_oracle))}
        if fitted is not None:
            models["trees (sklearn HGB, calibrated)"] = (fitted.with_pivot(pivot), fitted.with_pivot(pivot_hh))
            if validate is not None:
                m = validate(mem, n)
                models[VALIDATED] = (fitted.with_pivot(max(2, int(round(m * pivot)))), fitted.with_pivot(pivot_hh))
                print(f"\n(validated cut at {mem / 1024:g} KiB: score 0.5 at {m:g} T)", flush=True)
        for label, est in (extra or {}).items():
            models[label] = (est.with_pivot(pivot), est.with_pivot(pivot_hh))
        if lm is not None:
            models["lm (shipped)"] = (lm, lm)
            if isinstance(lm, MemoScores):
                from telesketch.estimators.evaluation import QuantileCalibrated
                from telesketch.estimators.training import segment_samples

                if "lm_train" not in cache:  # the LM's scores of the training part's scoring points
                    s = segment_samples(train, rescore=True)
                    cache["lm_train"] = (lm.score(s.headers, s.hdr_len), s.size)
                sc, sz = cache["lm_train"]
                models["lm (shipped, quantile-calibrated)"] = (QuantileCalibrated.fit(lm, sc, sz, pivot),
                                                               QuantileCalibrated.fit(lm, sc, sz, pivot_hh))
        rows = {}
        for label, (model, model_hh) in models.items():
            fs = {}
            t_hh = pivot_hh_oracle if label == "oracle" else pivot_hh
            for which, m, t in (("size", model, pivot), ("hh", model_hh, t_hh)):
                floor = _floor_for(t)
                if label.startswith(("constant", "lm")):  # scores independent of the memory point
                    fs[which] = memo_scores(cache, m, (floor, cache_flows_for(mem)),
                                            lambda: score_trace(m, test, floor, memory=mem)[0])
                else:
                    fs[which] = score_trace(m, test, floor, memory=mem)[0]
            sketch = llm_sketch(mem, "flow_size")
            sketch.update(test, fs["size"])
            r = sketch_metrics(true, sketch.flow_size(query_rows), pivot)
            hh = llm_sketch(mem, "heavy_hitters")
            hh.update(test, fs["hh"])
            r["F1"] = exact.set_accuracy(true_hh, [k for k, _ in hh.heavy_hitters(threshold=threshold)]).f1
            r["AUC"] = first_packet_auc(model, test, pivot) if not label.startswith(("constant", "oracle")) \
                else float("nan")
            rows[label] = r
        for label, base in (("count-min (4 B counters)", CountMinBaseline(mem)),
                            ("CU (4 B counters)", ConservativeUpdateBaseline(mem)),
                            ("Elastic (1/4 heavy, 1 B light counters)", ElasticBaseline(mem))):
            base.update(test)
            rows[label] = sketch_metrics(true, base.flow_size(query_rows), pivot) | {"F1": float("nan"),
                                                                                     "AUC": float("nan")}
        for label, r in rows.items():
            print(f"| {mem / 1024:g} KiB | {pivot} | {pivot_hh}; {pivot_hh_oracle} | {label} | {r['ARE']:.4f} | "
                  f"{r['AAE']:.3f} | "
                  f"{r['ARE>=T']:.4f} | {r['top100 ARE']:.4f} | {r['F1']:.3f} | {r['AUC']:.3f} |", flush=True)
        out.append((mem, pivot, (pivot_hh, pivot_hh_oracle), rows))
    if summary is not None:
        summary.append((name, out))
    return out


VALIDATED = "trees (cut chosen on validation)"
SHIPPED_TREES = "shipped trees (default, calibrated to T)"
SHIPPED_LM = "shipped LM head (calibrated to T)"
CANDIDATE_TREES = "candidate trees (--candidate-trees, calibrated to T)"


def candidate_label(spec: str) -> str:
    """The row label of ``--candidate-trees`` ``DIR`` (:data:`CANDIDATE_TREES`) or ``NAME=DIR``
    (``candidate trees NAME (--candidate-trees, calibrated to T)``; llmsketch_targets.py calls it NAME)."""
    if "=" not in spec:
        return CANDIDATE_TREES
    return f"candidate trees {spec.split('=', 1)[0]} (--candidate-trees, calibrated to T)"


def candidate_dir(spec: str) -> str:
    """The trees directory of a ``--candidate-trees`` value (``DIR`` or ``NAME=DIR``)."""
    return spec.split("=", 1)[1] if "=" in spec else spec


LM_HEAD = "lm (MiniLM embedder + MLP head, trained here, calibrated)"


def validator(fit, train, capture=None, split="time"):
    """``validate(memory, test_packets) -> m`` for :func:`paper_trace`: trees fitted (once, lazily) on
    the first part of :func:`evaluation.validation_split` of ``train``, ``m`` chosen on the second."""
    from telesketch.estimators.evaluation import validation_cut_scale, validation_split
    from telesketch.sketches.core import SketchError

    held = {}

    def validate(mem, test_packets):
        if not held:
            held["parts"] = validation_split(train, capture, split)
            held["model"] = fit(held["parts"][0])
        try:
            m, found = validation_cut_scale(held["model"], *held["parts"], mem, test_packets)
        except SketchError as exc:  # the scaled-down memory holds no sketch
            print(f"\n(validated cut at {mem / 1024:g} KiB: none, {exc}; m = 1)", flush=True)
            return 1.0
        print("\n(validation ARE>=T / top-100 per m: " + ", ".join(f"{k:g}: {a:.4f} / {b:.4f}"
                                                               for k, (a, b) in found.items()) + ")")
        return m

    return validate


def print_ratios(summary, model="trees (sklearn HGB, calibrated)"):
    """Per trace and memory: best constant per metric, and the oracle's and ``model``'s ratio to it
    (errors: model / best constant; F1: the difference); and whether ``model`` beats CM and CU."""
    print(f"\n### ratios to the best constant per metric ({model}; oracle in brackets)")
    print("\n| trace | memory | ARE | AAE | ARE>=T | top-100 ARE | HH F1 (model - best const) | "
          "ARE, AAE below CM and CU | ARE, AAE below Elastic |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, out in summary:
        for mem, _, _, rows in out:
            if model not in rows:
                continue
            cells = []
            for metric in PAPER_METRICS:
                consts = [rows[c][metric] for c in CONSTANTS]
                if LOWER_IS_BETTER[metric]:
                    best = min(consts)
                    ratio = lambda v: (f"{v / best:.2f}x" if best > 0 else "–")
                    cells.append(f"{ratio(rows[model][metric])} ({ratio(rows['oracle'][metric])}; best c {best:.4f})")
                else:
                    best = max(consts)
                    cells.append(f"{rows[model][metric]:.3f} vs {best:.3f} ({rows['oracle'][metric]:.3f})")
            beats = all(rows[model][m] < rows[b][m] for m in ("ARE", "AAE")
                        for b in ("count-min (4 B counters)", "CU (4 B counters)"))
            elastic = "Elastic (1/4 heavy, 1 B light counters)"
            beats_el = all(rows[model][m] < rows[elastic][m] for m in ("ARE", "AAE"))
            print(f"| {name} | {mem / 1024:g} KiB | " + " | ".join(cells) + f" | {'yes' if beats else 'no'} | "
                  f"{'yes' if beats_el else 'no'} |")


def paper_evaluation(args):
    """N (per-capture time split), N-unseen (capture split), held-out real captures zero-shot, G."""
    from telesketch.estimators.evaluation import capture_ids, capture_split, time_split_per_capture
    from telesketch.estimators.training import segment_samples
    from telesketch.estimators.trees import BoostedTreesEstimator

    kib = lambda s: [int(float(x) * 1024) for x in s.split(",")]
    lm = load_estimator("lm", args.lm_path) if "lm" in args.estimators.split(",") else None
    if lm is not None and args.calibrate_lm:
        lm = MemoScores(lm)
    summary = []
    head = LM_HEAD if "lm-head" in args.estimators.split(",") else None
    head_on = set(args.lm_head_traces.split(","))
    shipped = {}
    if args.shipped:  # the models a service serves, each recalibrated to the memory point's pivot
        shipped = {SHIPPED_TREES: load_estimator("trees"), SHIPPED_LM: load_estimator("lm", args.lm_path)}
    elif args.shipped_trees:  # the default's trees alone (no LM embeddings)
        shipped = {SHIPPED_TREES: load_estimator("trees")}
    for spec in args.candidate_trees or []:  # e.g. trees trained on other traffic, judged as a shipped default
        shipped[candidate_label(spec)] = load_estimator("trees", candidate_dir(spec))

    def fit_head(train):
        """The frozen-MiniLM + MLP head LM on ``train``'s scoring points (at most --lm-head-max-flows flows)."""
        from telesketch.estimators.lm_head import LMHeadEstimator, shared_embedder
        from telesketch.estimators.training import cap_flows

        t0 = time.perf_counter()
        s = cap_flows(segment_samples(train, rescore=True), args.lm_head_max_flows)
        emb = shared_embedder(args.lm_head_backend)
        before = emb.computed
        est = LMHeadEstimator.fit(s.headers, s.hdr_len, s.size, backend=args.lm_head_backend, embedder=emb)
        emb.flush()
        print(f"\n({head}: {len(s):,} samples, {emb.computed - before:,} embedded here, fitted in "
              f"{time.perf_counter() - t0:.1f} s, {est.config['epochs_run']} epochs)", flush=True)
        return est

    def extra(train=None, model=None, trace=None):
        """``{label: model}`` for :func:`paper_trace`: the shipped models (``--shipped``) and the LM head
        (``model``, or fitted on ``train`` when ``trace`` is in ``--lm-head-traces``)."""
        out = dict(shipped)
        if head is not None and (model is not None or trace in head_on):
            out[head] = model if model is not None else fit_head(train)
        return out or None

    def fit(train):
        t0 = time.perf_counter()
        s = segment_samples(train, rescore=True)
        est = BoostedTreesEstimator.fit(s.headers, s.hdr_len, s.size)
        print(f"\n(trees: {len(s):,} samples, fitted in {time.perf_counter() - t0:.1f} s)", flush=True)
        return est

    manifest = os.path.join(os.path.dirname(args.trace), MANIFEST)
    if os.path.exists(args.trace) and os.path.exists(manifest):
        batch = load_trace(args.trace)
        capture = capture_ids(batch, args.trace, manifest)
        train, test = time_split_per_capture(batch, capture, 0.5)
        model_n = fit(train)
        head_n = extra(train, trace="N")
        validate_n = validator(fit, train, capture_ids(train, args.trace, manifest), "time") \
            if not args.no_validated_cut else None
        paper_trace("N: nDPI, each capture split in time (first half trains)", train, test,
                    kib(args.memories_trace), model_n, lm, summary, validate_n, head_n, args.hh_pivot)
        train_u, test_u = capture_split(batch, capture, 0.5, seed=0)
        paper_trace("N-unseen: nDPI split by capture (half the captures train)", train_u, test_u,
                    kib(args.memories_trace), fit(train_u), lm, summary,
                    validator(fit, train_u, capture_ids(train_u, args.trace, manifest), "capture")
                    if not args.no_validated_cut else None, extra(train_u, trace="N-unseen"), args.hh_pivot)
        held_out = HELD_OUT if args.held_out is None else [h for h in args.held_out.split(",") if h]
        for name in held_out:
            path = os.path.join(os.path.dirname(args.trace), name)
            if os.path.exists(path):
                paper_trace(f"held-out {name}, zero-shot (trees trained on N's training part)", train,
                            load_trace(path), kib(args.memories_held_out), model_n, lm, summary, validate_n,
                            extra(model=(head_n or {}).get(head)), args.hh_pivot)
    for seed in [int(x) for x in args.generated_seeds.split(",") if x]:
        gen = generate_labelled_batch(args.generated_packets, args.generated_flows, seed=seed)
        train, test = split_trace(gen, 0.5)
        paper_trace(f"G: generated seed {seed} (first half trains)", train, test, kib(args.memories_generated),
                    fit(train), lm, summary, validator(fit, train) if not args.no_validated_cut else None,
                    extra(train, trace="G"), args.hh_pivot)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                       "traces": [{"name": name, "points": [{"memory": mem, "pivot": t, "pivot_hh": t_hh[0],
                                                              "pivot_hh_oracle": t_hh[1], "rows": rows}
                                                             for mem, t, t_hh, rows in out]}
                                  for name, out in summary]}, f, indent=1)
        print(f"\n(every row written to {args.json})")
    print_ratios(summary)
    if not args.no_validated_cut:
        print_ratios(summary, VALIDATED)
    if head is not None:
        from telesketch.estimators.lm_head import shared_embedder

        shared_embedder(args.lm_head_backend).flush()
        print_ratios(summary, head)
    for label in shipped:
        print_ratios(summary, label)
    if lm is not None:
        print_ratios(summary, "lm (shipped)")
    if isinstance(lm, MemoScores):
        print_ratios(summary, "lm (shipped, quantile-calibrated)")


def _gap_closed(rows, mem, m, metric) -> str:
    """Share of the best-constant -> oracle gap in ``metric`` closed by ``m`` ("-" if the oracle is not better)."""
    ref = {label: r[metric] for label, size, r, _, _ in rows if size == mem}
    best = min(ref[c] for c in CONSTANTS)
    gap = best - ref["oracle"]
    if gap <= GAP_FLOOR:
        return "– (oracle not better)"
    return f"{(best - m[metric]) / gap:.0%}"


def throughput(packets=1_000_000, flows=50_000, batch_size=65536, repeats=3, lm_path=None):
    """Packet-path M packets/s of ``LLMSketch(400 KiB).update`` (best of ``repeats``)."""
    from telesketch.traces import generate_batch

    batch = generate_batch(packets, flows, seed=1)
    parts = batch.split(batch_size)
    scores = np.random.default_rng(0).random(len(batch))
    labelled = generate_labelled_batch(100_000, 5_000, seed=3)
    train, val, _ = training_sets(labelled, 0.5, rescore=True, max_flows=5000)
    trees = fit_estimator("trees", train, val)

    def precomputed():
        sketch, at = LLMSketch(400 * 1024), 0
        for part in parts:
            sketch.update(part, scores[at:at + len(part)])
            at += len(part)

    def scored(estimator, **kw):
        def run():
            sketch = LLMSketch(400 * 1024, estimator=estimator, **kw)
            for part in parts:
                sketch.update(part)
            return sketch
        return run

    cases = [("precomputed scores", precomputed), ("constant(0.5), FlowScorer", scored("constant")),
             ("trees, FlowScorer (sync)", scored(trees)),
             ("trees, FlowScorer (sync, re-scoring)", scored(trees, rescore=True))]
    print(f"\n## packet path: {packets:,} packets, {flows:,} flows, batches of {batch_size:,}, "
          f"LLMSketch(400 KiB, flow_size), serial kernel, best of {repeats}")
    print("\n| scores | M packets/s |\n|---|---|")
    for label, run in cases:
        run()  # compile / warm caches
        best = min(_timed(run) for _ in range(repeats))
        print(f"| {label} | {packets / best / 1e6:.2f} |", flush=True)
    lm = load_estimator("lm", lm_path)
    run = scored(lm, scoring="async")
    sketch_holder = []
    seconds = _timed(lambda: sketch_holder.append(run()))
    scorer = sketch_holder[0].scorer
    calls_at_end = scorer.model_calls
    print(f"| lm, FlowScorer (async: provisional 0.5 until scored) | {packets / seconds / 1e6:.2f} |")
    t0 = time.perf_counter()
    scorer.flush()
    print(f"\nlm async: {calls_at_end:,} of {np.unique(batch.flow_keys_void()).size:,} flows scored by the time the "
          f"last packet was inserted; the worker needed {time.perf_counter() - t0:.1f} s more for the rest")
    heads = labelled.header[:4096], labelled.hdr_len[:4096]
    lm.score(heads[0][:256], heads[1][:256])
    secs = _timed(lambda: lm.score(*heads))
    print(f"lm int8 ONNX scoring: {4096 / secs:,.0f} sequences/s (batches of 256, 2 intra-op threads)")


# ============================================================================ bytes (issue 17)
BYTE_MEMORIES = {"flow_size": (200, 400, 600, 800, 1000), "heavy_hitters": (50, 150, 250)}  # KiB, spec §2.1


def byte_accuracy(name, batch, estimator, label) -> None:
    """Flow sizes and heavy hitters by bytes (``weight="bytes"``) beside packets at the spec's memory
    points, same scores, same charged memory: byte-weighted slots are 12 B (flow_size) / 21 B (heavy
    hitters) instead of 8 / 17 and the Count-Min counters 4 B instead of 1, so fewer fit. Flow sizes:
    ARE and AAE over all flows, ARE over the flows above the trace's top-1 % size (each unit's own);
    heavy hitters: F1 at phi = 1e-4 of the packets (bytes)."""
    keys_void = batch.flow_keys_void()
    uniq, inverse = np.unique(keys_void, return_inverse=True)
    rows = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, 13)
    query_keys = uniq.tolist()
    counts = {"packets": np.bincount(inverse.ravel()).astype(np.int64),
              "bytes": np.bincount(inverse.ravel(), weights=batch.length.astype(np.float64)).astype(np.int64)}
    scores, _, secs = score_trace(estimator, batch, 512)
    print(f"\n## {name}: {len(batch):,} packets, {len(uniq):,} flows, {int(batch.length.astype(np.int64).sum()):,} bytes; "
          f"scores: {label} ({secs:.1f} s)")
    print("\n| task | memory | unit | slots | Count-Min counters | ARE | AAE | ARE (top 1 %) | HH F1 (phi 1e-4) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, memories in BYTE_MEMORIES.items():
        for kib in memories:
            for unit in ("packets", "bytes"):
                sketch = LLMSketch(kib * 1024, task, weight=unit)
                sketch.update(batch, scores)
                truth = counts[unit]
                cells = ["-", "-", "-"]
                if task == "flow_size":
                    est = sketch.flow_size(rows)
                    t = dict(zip(query_keys, truth.tolist()))
                    big = [k for k, c in t.items() if c >= np.quantile(truth, 0.99)]
                    e = dict(zip(query_keys, est.tolist()))
                    cells = [f"{exact.are(t, e):.3f}", f"{exact.aae(t, e):,.1f}", f"{exact.are(t, e, big):.4f}"]
                thr = int(1e-4 * truth.sum())
                true_hh = {k for k, c in zip(query_keys, truth.tolist()) if c > thr}
                got = [k for k, c in sketch.heavy_hitters(threshold=thr)]
                if task == "flow_size":  # fingerprints: compare by the stored key of each true flow
                    fp = {bytes(f): k for f, k in zip(stored_keys(rows, "flow_size"), query_keys)}
                    got = [fp.get(int(k).to_bytes(4, "little")) for k in got]
                f1 = exact.set_accuracy(true_hh, [k for k in got if k is not None]).f1
                print(f"| {task} | {kib} KiB | {unit} | {sketch.occ.size:,} | {sketch.cm.size:,} | "
                      + " | ".join(cells) + f" | {f1:.3f} |", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


#: ``--quick``: KiB of the nDPI splits, of the held-out captures and of the generated trace
QUICK_MEMORIES = ("8", "1", "32")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=NDPI, help="capture to train/evaluate on ('none': the generated trace only)")
    ap.add_argument("--memories-trace", default="4,8,16", help="KiB, comma separated")
    ap.add_argument("--memories-generated", default="16,32,64")
    ap.add_argument("--memories-held-out", default="0.5,1,2",
                    help="KiB for the small held-out real captures (4-38 k packets: scaled down from 4-16 KiB)")
    ap.add_argument("--generated-packets", type=int, default=200_000)
    ap.add_argument("--generated-flows", type=int, default=10_000)
    ap.add_argument("--generated-seeds", default="7,8,9", help="seeds of the generated trace, comma separated "
                    "(more than one: also the mean over seeds)")
    ap.add_argument("--estimators", default="trees,tiny,lm",
                    help="comma separated: trees, tiny, lm (the shipped or --lm-path model); the paper "
                         "section also takes lm-head (the MiniLM head trained on each training part)")
    ap.add_argument("--lm-path", default=None, help="trained lm directory (default: the shipped head, trained on nDPI's first halves; "
                         "the LoRA adapter is telesketch/estimators/data/lm-lora)")
    ap.add_argument("--tiny-epochs", type=int, default=2)
    ap.add_argument("--floor-from", type=int, default=512,
                    help="the packet path's size-floor position (telesketch.estimators.scoring; 0: off)")
    ap.add_argument("--lm-train-seconds", type=float, default=0.0,
                    help="also fine-tune the LM on each trace's first half for at most this long (0: off)")
    ap.add_argument("--lm-head-max-flows", type=int, default=20_000,
                    help="paper section, estimator lm-head: train the head on at most this many flows' scoring points")
    ap.add_argument("--lm-head-backend", default="onnx-int8", choices=["onnx-int8", "onnx"],
                    help="paper section, estimator lm-head: the MiniLM embedder's ONNX model (int8 or fp32); "
                         "set TELESKETCH_EMBED_CACHE to a directory to keep the embeddings between runs")
    ap.add_argument("--held-out", default=None,
                    help="paper section: the held-out captures to run (file names, comma separated; default all)")
    ap.add_argument("--no-validated-cut", action="store_true",
                    help="paper section: skip the trees row whose cut is chosen on a validation split (faster)")
    ap.add_argument("--shipped", action="store_true",
                    help="paper section: also the shipped trees (the default) and the shipped LM head (or --lm-path), "
                         "each recalibrated to every memory point's T as a service sketch of that memory is")
    ap.add_argument("--shipped-trees", action="store_true",
                    help="paper section: also the shipped trees (the default), as --shipped does, without the LM head")
    ap.add_argument("--candidate-trees", action="append", default=None, metavar="[NAME=]DIR",
                    help="paper section: also this trained trees directory, recalibrated to every memory point's T "
                         "like --shipped (a candidate for the shipped default); repeat with NAME=DIR for several")
    ap.add_argument("--lm-head-traces", default="N,N-unseen,G",
                    help="paper section, estimator lm-head: the traces it is trained on (N, N-unseen, G; "
                         "held-out captures use N's)")
    ap.add_argument("--hh-pivot", default="spare", choices=HH_PIVOT_RULES,
                    help="paper section: the heavy-hitter sketch's pivot for the models (hh_pivots): spare (default; "
                         "estimators.evaluation.heavy_hitter_pivot, what a service sketch uses) or half (flows >= T fill "
                         "half the heavy slots, at most the threshold + 1: before the sixth pass); the oracle's is half")
    ap.add_argument("--json", default=None, help="paper section: also write every row to this JSON file "
                    "(for benchmarks/llmsketch_targets.py)")
    ap.add_argument("--calibrate-lm", action="store_true",
                    help="paper section: also the shipped LM with its score quantile-calibrated to each pivot")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes: the paper section with the trees only, one memory point per trace "
                         "(N and N-unseen at 8 KiB, held-out at 1 KiB, G seed 7 at 32 KiB), no throughput; "
                         "with --sections accuracy: the small generated traces only")
    ap.add_argument("--sections", default="paper,throughput",
                    help="paper (issue #19: N, N-unseen, held-out, G), accuracy (the older per-estimator "
                         "tables), throughput, bytes (flow sizes and heavy hitters by bytes beside packets at "
                         "the spec's memory points, shipped trees scores) (comma separated)")
    ap.add_argument("--scorer-memory", default="separate", choices=["separate", "charged"],
                    help="paper section: each LLM-Sketch row's score cache beside the memory point (2^20 flows, "
                         "not charged) or charged to it (the cache takes --scorer-share of the memory, the sketch "
                         "the rest; Count-Min, CU and Elastic keep the whole memory point)")
    ap.add_argument("--scorer-share", type=float, default=None,
                    help="with --scorer-memory charged: the cache's share of each memory point (default: the "
                         "service's, telesketch.estimators.scoring.DEFAULT_SCORER_SHARE)")
    args = ap.parse_args(argv)
    SCORER.update(memory=args.scorer_memory, share=args.scorer_share)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"machine: {machine()}")
    kinds = ["trees"] if args.quick else args.estimators.split(",")
    kib = lambda s: [int(x) * 1024 for x in s.split(",")]
    sections = args.sections.split(",")
    if args.quick:
        args.estimators = "trees"
        args.memories_trace, args.memories_held_out, args.memories_generated = QUICK_MEMORIES
        if "paper" in sections:
            args.generated_seeds = "7"
    if "throughput" in sections and not args.quick:
        throughput(lm_path=args.lm_path)
    if "paper" in sections:
        paper_evaluation(args)
    if "bytes" in sections:
        trees = load_estimator("trees")
        if os.path.exists(args.trace):
            byte_accuracy(os.path.basename(args.trace), load_trace(args.trace), trees, "shipped trees")
        for seed in [int(x) for x in args.generated_seeds.split(",") if x][:1]:
            gen = generate_labelled_batch(args.generated_packets, args.generated_flows, seed=seed)
            byte_accuracy(f"generated (seed {seed}, {args.generated_flows:,} flows)", gen, trees, "shipped trees")
    if "accuracy" not in sections:
        return 0
    if not args.quick and os.path.exists(args.trace):
        run_trace(os.path.basename(args.trace), load_trace(args.trace), kib(args.memories_trace), kinds,
                  args.lm_path, args.tiny_epochs, args.lm_train_seconds, args.floor_from)
    seeds = [int(x) for x in args.generated_seeds.split(",")]
    per_seed = []
    for seed in seeds:
        gen = generate_labelled_batch(args.generated_packets // (10 if args.quick else 1),
                                      args.generated_flows // (10 if args.quick else 1), seed=seed)
        per_seed.append(run_trace(f"generated (seed {seed})", gen, kib(args.memories_generated), kinds,
                                  args.lm_path, args.tiny_epochs, args.lm_train_seconds, args.floor_from))
    if len(seeds) > 1:
        print_seed_means(per_seed, seeds)
    return 0


def print_seed_means(per_seed, seeds) -> None:
    """Mean ARE / ARE>64 / HH F1 over the generated-trace seeds, and the gap closed by the means."""
    groups = {}
    for rows in per_seed:
        for label, mem, m, _, _ in rows:
            groups.setdefault((label, mem), []).append(m)
    mean = [(label, mem, {k: float(np.mean([m[k] for m in ms])) for k in ("ARE", "ARE>64", "F1")}, 0.0, 0.0)
            for (label, mem), ms in groups.items()]
    print(f"\n## generated, mean over seeds {','.join(map(str, seeds))}")
    print("\n| estimator | memory | ARE | ARE (>64) | HH F1 | best-constant gap closed (ARE) | (ARE>64) |")
    print("|---|---|---|---|---|---|---|")
    for label, mem, m, _, _ in sorted(mean, key=lambda r: (r[1], r[0])):
        closed = [_gap_closed(mean, mem, m, metric) for metric in ("ARE", "ARE>64")]
        print(f"| {label} | {mem // 1024} KiB | {m['ARE']:.4f} | {m['ARE>64']:.4f} | {m['F1']:.3f} | "
              f"{closed[0]} | {closed[1]} |")


if __name__ == "__main__":
    sys.exit(main())
