"""Issue #19, fourth pass: can the language model's knowledge reach the trees' fast path?

First-packet AUC (flow >= T, T from each memory point as in ``bench_llmsketch.py --sections paper``) of:

* ``trees``: scikit-learn ``HistGradientBoostingRegressor`` of ``log2`` flow size on the 16 header words
  (``tokens.tree_features``), the parameters of ``trees.BoostedTreesEstimator.fit``;
* ``lm head``: the frozen-MiniLM embedding + MLP head (``lm_head``): the shipped one on N and the held-out
  captures (it was trained on N's training part), one fitted on the training part elsewhere;
* ``hybrid k=K``: the trees on the header words plus the first ``K`` principal components of the MiniLM
  embedding (PCA fitted on the training part) -- it still runs MiniLM for every scored flow;
* ``distilled (LM pred target)``: the trees' features and model, target = the LM head's predicted ``log2``
  size (trees-like serving cost); ``distilled (mean of LM pred and label)``: target = the mean of the two;
* ``stacked``: the header words plus the LM head's prediction (``--stacked``; needs the LM at serving).

Traces: N (nDPI, each capture split in time), N-unseen (split by capture), held-out real captures
(zero-shot with N's models), G seeds. Set ``TELESKETCH_EMBED_CACHE`` to reuse embeddings (never written
here) and ``OMP_NUM_THREADS=1`` on a loaded machine (scikit-learn's OpenMP threads spin otherwise).

    OMP_NUM_THREADS=1 TELESKETCH_EMBED_CACHE=DIR python llmsketch_distil.py --traces N,N-unseen,held-out,G
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

D = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "traces")
HELD_OUT = ("slips_test-cc-capture-1.pcap", "stopddos_amp.dns.RRSIG.fragmented.pcap",
            "stopddos_amp.TCP.reflection.SYNACK.pcap")


def hgb(x, y):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=20,
                                         early_stopping=False, random_state=0).fit(x, y)


def fit_all(emb, train, teacher, ks, stacked, label):
    """Every model on ``train``'s scoring-point samples; ``teacher`` None: an LM head fitted here."""
    from sklearn.decomposition import PCA

    from telesketch.estimators.lm_head import LMHeadEstimator, mlp_forward
    from telesketch.estimators.tokens import tree_features
    from telesketch.estimators.training import cap_flows, segment_samples

    t0 = time.time()
    s = segment_samples(train, rescore=True)
    y = np.log2(np.maximum(s.size.astype(np.float64), 1))
    f = tree_features(s.headers).astype(np.float64)
    before = emb.computed
    e = emb(s.headers, s.hdr_len)
    if teacher is None:
        sc = cap_flows(s, 20_000)
        teacher = LMHeadEstimator.fit(sc.headers, sc.hdr_len, sc.size, embedder=emb)
    tp = mlp_forward(e, teacher.head)
    m = {"trees": (hgb(f, y), None), "lm head": (teacher, None)}
    for k in ks:
        pca = PCA(k, random_state=0).fit(e)
        m[f"hybrid k={k}"] = (hgb(np.c_[f, pca.transform(e)], y), pca)
    m["distilled (LM pred target)"] = (hgb(f, tp), None)
    m["distilled (mean of LM pred and label)"] = (hgb(f, 0.5 * (tp + y)), None)
    if stacked:
        m["stacked (trees features + LM pred)"] = (hgb(np.c_[f, tp], y), "lm")
    print(f"[{label}] {len(s):,} samples, {emb.computed - before} embedded, fitted in {time.time() - t0:.0f} s",
          flush=True)
    return m


def predict(emb, models, headers, hdr_len):
    from telesketch.estimators.lm_head import mlp_forward
    from telesketch.estimators.tokens import tree_features

    f = tree_features(headers).astype(np.float64)
    e = emb(headers, hdr_len)
    tp = mlp_forward(e, models["lm head"][0].head)
    p = {}
    for name, (mod, aux) in models.items():
        if name == "lm head":
            p[name] = tp
        elif aux is None:
            p[name] = mod.predict(f)
        elif aux == "lm":
            p[name] = mod.predict(np.c_[f, tp])
        else:
            p[name] = mod.predict(np.c_[f, aux.transform(e)])
    return p


def evaluate(emb, out, name, models, train, test, mems):
    """AUC of every model at each memory point's ``T`` (points where both classes occur)."""
    from telesketch.estimators.evaluation import choose_pivot, heavy_slots, rank_auc
    from telesketch.estimators.training import inflow_positions

    pos, inv, counts = inflow_positions(test)
    first = np.flatnonzero(pos == 1)
    p = predict(emb, models, test.header[first], test.hdr_len[first])
    sizes = np.unique(train.flow_keys_void(), return_counts=True)[1]
    res = {}
    for kib in mems:
        t = choose_pivot(sizes, heavy_slots(int(kib * 1024)), scale=len(test) / len(train))
        lab = counts[inv[first]] >= t
        if lab.all() or not lab.any():
            continue
        res[f"{kib:g} KiB (T {t}, {int(lab.sum())} pos)"] = {k: rank_auc(v, lab) for k, v in p.items()}
    out[name] = res
    for pt, r in res.items():
        print(f"{name} {pt}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)


def main(argv=None) -> int:
    from telesketch.estimators import load_estimator
    from telesketch.estimators.evaluation import capture_ids, capture_split, time_split_per_capture
    from telesketch.estimators.lm_head import Embedder
    from telesketch.estimators.synthetic import generate_labelled_batch
    from telesketch.estimators.training import load_trace, split_trace

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="N,N-unseen,held-out,G")
    ap.add_argument("--seeds", default="7,8,9", help="G seeds")
    ap.add_argument("--ks", default="4,8,16", help="principal components of the embedding in the hybrid")
    ap.add_argument("--stacked", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dir", default=D, help="the shared traces directory (nDPI trace, manifest, held-out captures)")
    args = ap.parse_args(argv)
    traces = set(args.traces.split(","))
    ks = [int(k) for k in args.ks.split(",") if k]
    emb = Embedder("onnx-int8")  # disk memo read from $TELESKETCH_EMBED_CACHE, never flushed here
    out = {}
    t00 = time.time()
    d = args.dir
    ndpi = os.path.join(d, "ndpi_merged_hdr128.pcap")
    if traces & {"N", "N-unseen", "held-out"}:
        b = load_trace(ndpi)
        cap = capture_ids(b, ndpi, os.path.join(d, "ndpi_merged_manifest.json"))
        if traces & {"N", "held-out"}:
            tr, te = time_split_per_capture(b, cap, 0.5)
            mn = fit_all(emb, tr, load_estimator("lm"), ks, args.stacked, "N (LM: the shipped head)")
            if "N" in traces:
                evaluate(emb, out, "N", mn, tr, te, (4, 8, 16))
            if "held-out" in traces:
                for h in HELD_OUT:
                    evaluate(emb, out, "held-out " + h, mn, tr, load_trace(os.path.join(d, h)), (0.5, 1, 2))
        if "N-unseen" in traces:
            tru, teu = capture_split(b, cap, 0.5, seed=0)
            evaluate(emb, out, "N-unseen", fit_all(emb, tru, None, ks, args.stacked, "N-unseen (LM head fitted here)"),
                     tru, teu, (4, 8, 16))
    if "G" in traces:
        for seed in [int(x) for x in args.seeds.split(",") if x]:
            g = generate_labelled_batch(200_000, 10_000, seed=seed)
            gtr, gte = split_trace(g, 0.5)
            evaluate(emb, out, f"G seed {seed}", fit_all(emb, gtr, None, ks, args.stacked, f"G {seed} (LM head fitted here)"),
                     gtr, gte, (16, 32, 64))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"total {time.time() - t00:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
