"""LLM-Sketch's vectorised slot scan (one-word keys) against the naive model where it matters most:
every score predicted large, so a miss in a full bucket evicts, and buckets whose slots are all
locked fall back to the least-counted slot of all."""
from __future__ import annotations

import numpy as np
import pytest

import naive_llmsketch as naive
from test_llmsketch import assert_same_state, keys_of, skewed_batch
from telesketch.sketches.llmsketch import LLMSketch


@pytest.mark.parametrize("task, memory", [("flow_size", 1500), ("hhh", 1300)])
@pytest.mark.parametrize("low, high", [(0.5, 1.0), (0.99, 1.0), (0.0, 0.6)])
def test_one_word_scan_equals_naive_model(task, memory, low, high):
    batch = skewed_batch(n=5000, flows=900, seed=8)
    scores = np.random.default_rng(9).uniform(low, high, len(batch))
    sketch = LLMSketch(memory, task, seed=5)
    for part in np.array_split(np.arange(len(batch)), 4):
        sketch.update(batch[part], scores[part])
    model = naive.NaiveLLMSketch(memory, task, seed=5)
    for key, p in zip(keys_of(batch, task), scores.tolist()):
        model.insert(key, p)
    assert_same_state(sketch, model)
    assert sketch.occ.all()  # the buckets filled up: the eviction paths ran


@pytest.mark.parametrize("task, memory", [("flow_size", 1500), ("flow_size", 40_000), ("hhh", 1300),
                                          ("hhh", 40_000)])
@pytest.mark.parametrize("low, high", [(0.5, 0.5), (0.0, 1.0), (0.99, 1.0)])
def test_written_out_one_word_kernel_equals_update_serial(task, memory, low, high):
    """``_update_serial_one_word`` (what ``update`` runs for 4-byte keys) is ``_update_serial`` (the
    readable loop over the helpers) written out: the same state after every batch, batches longer
    than its hashing chunk and not a multiple of it."""
    from telesketch.sketches.llmsketch import (LIGHT_KIND, _HASH_CHUNK, _update_serial, _update_serial_one_word,
                                               batch_words)

    batch = skewed_batch(n=9000, flows=3000, seed=4)
    scores = np.random.default_rng(2).uniform(low, high, len(batch))
    a, b = LLMSketch(memory, task, seed=7), LLMSketch(memory, task, seed=7)
    light = LIGHT_KIND[a.params.light]
    n0 = 0
    for part in np.array_split(np.arange(len(batch)), 3):
        assert part.shape[0] > _HASH_CHUNK and part.shape[0] % _HASH_CHUNK
        words = batch_words(batch[part], task)
        _update_serial(a._slot_words, a.counts, a.lock, a.occ, a.cm, a.coco_ids, a.coco_counts, a.coco_occ, light,
                       4, words, scores[part], np.int64(n0), a._seed_mix)
        _update_serial_one_word(b._slot_words, b.counts, b.lock, b.occ, b.cm, b.coco_ids, b.coco_counts, b.coco_occ,
                                light, words.reshape(-1), scores[part], np.int64(n0), b._seed_mix)
        n0 += part.shape[0]
        for name, arr in a._arrays().items():
            np.testing.assert_array_equal(b._arrays()[name], arr, err_msg=name)
    assert a.occ.all() or memory > 2000  # the small sketches filled up: the eviction paths ran
    assert (a.cm.any() or a.coco_occ.any())  # the light part ran


def test_mmh3_word_is_mmh3_words_of_one_word():
    from telesketch.sketches.llmsketch import _mmh3_word, _mmh3_words, mmh3_32

    rng = np.random.default_rng(3)
    for k in [0, 1, 0xFFFFFFFF, *rng.integers(0, 2**32, 200).tolist()]:
        for seed in (0, 1, 2, 100, 123123):
            want = _mmh3_words(np.array([k], np.uint32), 4, np.uint64(seed))
            assert _mmh3_word(np.uint32(k), np.uint64(seed)) == want
            assert want == mmh3_32(np.array([k], "<u4").view(np.uint8), np.uint64(seed))
