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
