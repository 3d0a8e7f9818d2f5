"""FlowScorer's flow cache against a plain-Python model of it (set-associative LRU, per-flow
positions, scores of the latest scoring point), on batches much longer than the kernels' prefetch
distance and a cache small enough that flows are evicted and come back as new."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.estimators import Estimator
from telesketch.estimators.scoring import FLOW_HASH_SEED, WAYS, FlowScorer
from telesketch.hashing import hash_5tuple
from telesketch.packets import PacketBatch


class HashScore(Estimator):
    """A distinct score per packet (its row's header byte), to see which packet a score came from."""

    kind = "hash-score"

    def score(self, headers, hdr_len):
        return headers[:, 0].astype(np.float64) / 255


def model_scores(batches, cache_flows: int, rescore: bool) -> list[np.ndarray]:
    """What the scorer must return: a dict of sets of ways, LRU by last use, no size floor."""
    ways = min(WAYS, cache_flows)
    nsets = -(-cache_flows // ways)
    sets: dict[int, dict[int, list]] = {}  # set -> {tag: [seen, score, last use]}
    tick, out = 0, []
    for batch in batches:
        hashes = hash_5tuple(batch, FLOW_HASH_SEED).tolist()
        scores = np.empty(len(batch))
        for i, h in enumerate(hashes):
            tag = h or 1
            entries = sets.setdefault((h >> 32) % nsets, {})
            if tag not in entries:
                if len(entries) == ways:
                    del entries[min(entries, key=lambda t: entries[t][2])]
                entries[tag] = [0, np.nan, 0]
            entry = entries[tag]
            entry[0] += 1
            entry[2] = tick
            tick += 1
            pos = entry[0]
            if pos == 1 or (rescore and pos & (pos - 1) == 0):
                entry[1] = batch.header[i, 0] / 255
            scores[i] = entry[1]
        out.append(scores)
    return out


@pytest.mark.parametrize("cache_flows,rescore", [(64, False), (64, True), (1 << 12, True)])
def test_scores_match_a_python_model_of_the_cache(cache_flows, rescore):
    rng = np.random.default_rng(5)
    n = 12_000
    flow = (rng.zipf(1.3, n) % 500).astype(np.int64)
    header = np.zeros((n, 40), np.uint8)
    header[:, 0] = rng.integers(0, 256, n)
    whole = PacketBatch.from_columns(
        ts_ns=np.arange(n, dtype=np.uint64), src_ip=(0x0A000000 + flow).astype(np.uint32),
        dst_ip=np.full(n, 0xC0A80001, np.uint32), src_port=(1024 + flow).astype(np.uint16),
        dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8), header=header,
        hdr_len=np.full(n, 40, np.uint8))
    batches = whole.split(3_000)
    scorer = FlowScorer(HashScore(), cache_flows=cache_flows, rescore=rescore, mode="sync", floor_from=0)
    got = [scorer.scores(b) for b in batches]
    for i, (g, want) in enumerate(zip(got, model_scores(batches, cache_flows, rescore))):
        np.testing.assert_array_equal(g, want, err_msg=f"batch {i}")


def _score_cache(cache_flows):
    """A ScoreCache's arrays (views of its interleaved ``cells``), as FlowScorer passes them."""
    from telesketch.estimators.scoring import ScoreCache

    c = ScoreCache(cache_flows)
    return {"tags": c.tags, "seen": c.seen, "score": c.score, "stamp": c.stamp, "pending": c.pending,
            "cells": c.cells}


def _cache_arrays(cache_flows):
    """Separate contiguous cache arrays, as the two-pass form had them."""
    ways = min(WAYS, cache_flows)
    sets = -(-cache_flows // ways)
    return {"tags": np.zeros((sets, ways), np.uint64), "seen": np.zeros((sets, ways), np.int64),
            "score": np.full((sets, ways), np.nan), "stamp": np.full((sets, ways), -1, np.int64),
            "pending": np.zeros((sets, ways), np.uint8)}


def _two_pass(c, flow_hash, tick, rescore, is_async, fresh_all, floor_from):
    """FlowScorer.scores' kernels before issue 21's fourth pass: _lookup_kernel, then _fill_kernel."""
    from telesketch.estimators.scoring import _fill_kernel, _lookup_kernel

    n = flow_hash.shape[0]
    slots, prev, pos = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    point, enqueue, cached, model = np.empty(n, np.bool_), np.empty(n, np.bool_), np.empty(n), np.empty(n)
    _lookup_kernel(flow_hash, c["tags"], c["seen"], c["score"], c["stamp"], c["pending"], np.int64(tick), rescore,
                   is_async, slots, point, prev, cached, enqueue, pos)
    fresh = np.where(point, fresh_all, np.nan)
    _fill_kernel(point, prev, cached, fresh, not is_async, slots, c["score"].reshape(-1), pos, np.int64(floor_from),
                 model)
    return model, enqueue, slots, point


def _one_pass(c, flow_hash, tick, rescore, is_async, fresh_all, floor_from):
    """What FlowScorer.scores runs now: _score_batch_kernel, then _fill_deferred_kernel."""
    from telesketch.estimators.scoring import _fill_deferred_kernel, _score_batch_kernel

    n = flow_hash.shape[0]
    slots, prev, pos = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    point, enqueue, defer = np.empty(n, np.bool_), np.empty(n, np.bool_), np.empty(n, np.bool_)
    cached, model = np.empty(n), np.empty(n)
    deferred = _score_batch_kernel(c["cells"], c["tags"], c["seen"], c["score"], c["stamp"], c["pending"],
                                   flow_hash, np.int64(tick), rescore, is_async, not is_async, np.int64(floor_from), slots,
                                   point, prev, cached, enqueue, pos, defer, model)
    assert deferred == int(defer.sum())
    if not is_async:
        assert defer[point].all()  # every scoring point waits on its model score
    if deferred:
        fresh = np.where(point, fresh_all, np.nan)
        _fill_deferred_kernel(defer, point, prev, cached, fresh, True, slots, c["score"], pos,
                              np.int64(floor_from), model)
    return model, enqueue, slots, point


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("cache_flows,rescore,floor_from", [(64, False, 4), (64, True, 8), (1 << 12, True, 0),
                                                            (1 << 12, False, 16), (5, True, 2)])
def test_one_pass_kernel_equals_the_two_pass_form(is_async, cache_flows, rescore, floor_from):
    """_score_batch_kernel (lookup and fill in one pass) gives the scores, queue marks, slots and the
    whole cache state of _lookup_kernel + _fill_kernel, batch after batch: small caches, so flows are
    evicted mid-batch and come back; rescoring and a low size floor, so scores change mid-batch; and
    in async mode, the worker's stores between batches (some flows scored, some left unscored)."""
    from telesketch.estimators.scoring import _store_kernel

    rng = np.random.default_rng(11)
    a, b = _cache_arrays(cache_flows), _score_cache(cache_flows)
    tick = 0
    for batch_no in range(8):
        n = 4000
        flows = (rng.zipf(1.2, n) % 700).astype(np.uint64)
        flow_hash = (flows * np.uint64(0x9E3779B97F4A7C15)) ^ (flows << np.uint64(40))
        flow_hash[flows == 3] = 0  # the tag of hash 0 is 1
        fresh_all = rng.uniform(0, 1, n)
        want = _two_pass(a, flow_hash, tick, rescore, is_async, fresh_all, floor_from)
        got = _one_pass(b, flow_hash, tick, rescore, is_async, fresh_all, floor_from)
        tick += n
        for name, x, y in zip(("scores", "enqueue", "slots", "points"), got, want):
            np.testing.assert_array_equal(x, y, err_msg=f"batch {batch_no}: {name}")
        if is_async:
            assert want[1].any() or batch_no > 0  # new flows were queued
            queued = flow_hash[want[1]][: int(want[1].sum()) // 2]  # the worker scores half of what was queued
            s = rng.uniform(0, 1, queued.shape[0])
            for c in (a, b):  # b's arrays are strided views: the worker's kernel takes them as they are
                _store_kernel(queued, s, c["tags"], c["score"], c["pending"], c["seen"], np.int64(floor_from))
        for name in a:
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"batch {batch_no}: cache {name}")
