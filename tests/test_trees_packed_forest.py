"""The trees' serving path (issue 21): the packed forest walk gives the same predictions, bit for
bit, as the plain node walk it replaced, and the scorer therefore the same score for every packet."""
import numpy as np
import pytest

from telesketch.estimators import load_estimator
from telesketch.estimators.scoring import FlowScorer
from telesketch.estimators.trees import BoostedTreesEstimator, PackedForest
from telesketch.packets import PacketBatch
from telesketch.traces import generate_batch


class ReferenceTrees(BoostedTreesEstimator):
    """The same trees served by the old path (plain node walk on float32 features)."""

    def __init__(self, trees: BoostedTreesEstimator):
        super().__init__(trees.forest, trees.base, trees.cut, trees.pivot, cuts=trees.cuts, traffic=trees.traffic)

    def predict(self, headers, hdr_len):
        return self.predict_reference(headers, hdr_len)


def mixed_batch(packets=6000, flows=800, seed=5) -> PacketBatch:
    """Generated IPv4 traffic with every third flow rewritten as IPv6 (compact header layout)."""
    batch = generate_batch(packets, flows, seed=seed)
    rng = np.random.default_rng(seed)
    _, inv = np.unique(batch.flow_keys_void(), return_inverse=True)
    inv = inv.ravel()
    six = inv % 3 == 0
    cols = batch.columns()
    h4 = batch.header[six]
    h6 = np.zeros_like(h4)
    h6[:, 0] = 0x60 | (h4[:, 1] >> 4)
    h6[:, 1] = ((h4[:, 1] & 0xF) << 4) | 0x3
    h6[:, 2:4] = rng.integers(0, 256, (h4.shape[0], 2), dtype=np.uint8)  # flow label
    h6[:, 4:6] = h4[:, 2:4]  # payload length
    h6[:, 6], h6[:, 7] = h4[:, 9], h4[:, 8]
    h6[:, 8:40] = h4[:, 20:40][:, np.minimum(np.arange(32), 19)] * (np.arange(32) < 20)
    addr = rng.integers(0, 256, (inv.max() + 1, 2, 16), dtype=np.uint8)
    header, hdr_len = cols["header"].copy(), cols["hdr_len"].copy()
    header[six], hdr_len[six] = h6, np.minimum(batch.hdr_len[six].astype(np.int64) - 20 + 8, 40)
    return PacketBatch.from_columns(**cols | {
        "ipv6": six.astype(np.uint8), "src_ip": np.where(six, 0, batch.src_ip), "dst_ip": np.where(six, 0, batch.dst_ip),
        "src_ip6": np.where(six[:, None], addr[inv, 0], 0).astype(np.uint8),
        "dst_ip6": np.where(six[:, None], addr[inv, 1], 0).astype(np.uint8),
        "header": header, "hdr_len": hdr_len, "ip_id": np.where(six, 0, batch.ip_id)})


@pytest.fixture(scope="module")
def shipped():
    return load_estimator("trees")


@pytest.fixture(scope="module")
def fitted():
    """Trees fitted on random header words, so splits fall on every feature and on exact values."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(1)
    headers = rng.integers(0, 4, (3000, 40), dtype=np.uint8) * 60
    headers[:, 0] = 0x45
    size = 1 + (headers[:, 21] + headers[:, 33]).astype(np.int64) + rng.integers(0, 3, 3000)
    return BoostedTreesEstimator.fit(headers, np.full(3000, 40, np.uint8), size, max_iter=25, max_leaf_nodes=15)


def test_packed_forest_predicts_bit_for_bit_like_the_node_walk(shipped, fitted):
    rng = np.random.default_rng(2)
    for trees in (shipped, fitted):
        for rows in (0, 1, 3, 7, 8, 9, 17, 1029, 2500):  # the 8-row groups, their tail and the 1024-row blocks
            headers = rng.integers(0, 256, (rows, 40), dtype=np.uint8)
            headers[:, 0] = 0x45
            headers[: rows // 2, 20:40] = rng.integers(0, 4, (rows // 2, 20), dtype=np.uint8) * 60  # on thresholds
            hdr_len = np.full(rows, 40, np.uint8)
            np.testing.assert_array_equal(trees.predict(headers, hdr_len), trees.predict_reference(headers, hdr_len))


def test_packed_forest_keeps_every_split_and_leaf(shipped):
    packed = PackedForest.of(shipped.forest)
    leaf = shipped.forest["feature"] < 0
    assert ((packed.node[..., 0] < 0) == leaf).all()
    t, k = np.nonzero(leaf)
    assert (packed.node[t, k, 2] == k).all() and (packed.node[t, k, 3] == k).all()  # a leaf stays put
    t, k = np.nonzero(~leaf)
    np.testing.assert_array_equal(packed.node[t, k, 1], np.floor(shipped.forest["threshold"][t, k]))


def test_scorer_scores_of_a_mixed_batch_equal_the_old_paths(shipped):
    batch = mixed_batch()
    assert 0 < batch.ipv6.sum() < len(batch)
    for rescore in (False, True):
        fast = FlowScorer(shipped, mode="sync", rescore=rescore)
        old = FlowScorer(ReferenceTrees(shipped), mode="sync", rescore=rescore)
        for part in batch.split(1500):
            np.testing.assert_array_equal(fast.scores(part), old.scores(part))
        assert fast.model_calls == old.model_calls > 0
