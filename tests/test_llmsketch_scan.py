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
