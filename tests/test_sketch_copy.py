"""``copy()`` of the kinds that copy their arrays instead of a round trip through bytes (what a
service query does with the open epoch under the ingest lock): the copy answers the same, later
ingest into either does not change the other, and a copy fed the same packets ends in the same
state as the original (byte for byte)."""

import numpy as np
import pytest

from telesketch.sketches.cocosketch import CocoSketch
from telesketch.sketches.gapfilter import GapFilterAO, GapFilterSO, GapFilterStraw
from telesketch.sketches.llmsketch import LLMSketch
from telesketch.sketches.residualsketch import ResidualSketch
from telesketch.traces.generate import generate_batch


def _scores(batch) -> np.ndarray:
    """Deterministic per-packet scores for a pure LLM-Sketch (no scorer attached)."""
    return ((batch.src_ip.astype(np.uint64) * 2654435761) % 1000).astype(np.float32) / 1000


class _Pure(LLMSketch):
    """A pure LLM-Sketch fed with :func:`_scores` (``update(batch)`` as the other kinds)."""

    COPY_EXACT = LLMSketch.COPY_EXACT + (f"{__name__}:_Pure",)

    def update(self, batch, scores=None):
        super().update(batch, _scores(batch) if scores is None else scores)


def _hhh(s):
    return s.hhh_rows(threshold=50)


def _flows(s):
    return s.top_flows(50)


def _gaps(s):
    return s.gap_events().tobytes(), s.dropped_events, s.coverage()


KINDS = {
    "residualsketch": (lambda: ResidualSketch(memory_bytes=16 * 1024, mode="byte", threshold=50), _hhh),
    "cocosketch": (lambda: CocoSketch(memory_bytes=16 * 1024, mode="byte", threshold=50), _hhh),
    "llmsketch": (lambda: _Pure(memory_bytes=64 * 1024, keep_keys=True), _flows),
    "llmsketch_scored": (lambda: LLMSketch(memory_bytes=64 * 1024, estimator="constant", scoring="sync"), _flows),
    "gapfilter_so": (lambda: GapFilterSO(memory_bytes=8 * 1024), _gaps),
    "gapfilter_ao": (lambda: GapFilterAO(memory_bytes=8 * 1024), _gaps),
    "gapfilter_straw": (lambda: GapFilterStraw(memory_bytes=8 * 1024), _gaps),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_copy_answers_the_same_and_is_independent(kind):
    build, answer = KINDS[kind]
    batch = generate_batch(12_000, 600, seed=3, ipv6_share=0.2)
    first, second = batch.split(6_000)[:2]
    original = build()
    original.update(first)
    before = original.to_bytes()
    clone = original.copy()
    assert clone.params is original.params  # the array copy, not a round trip through bytes
    assert clone.to_bytes() == before and answer(clone) == answer(original)

    original.update(second)  # later ingest into the original leaves the copy as it was
    assert clone.to_bytes() == before
    straight = build()
    straight.update(first)
    straight.update(second)
    assert original.to_bytes() == straight.to_bytes()

    if getattr(clone, "scorer", 0) is None:  # a scored sketch's copy holds the state only (no scorer)
        return
    clone.update(second)  # and the copy continues exactly as the original did
    assert clone.to_bytes() == straight.to_bytes() and answer(clone) == answer(straight)
    clone.update(first)
    assert original.to_bytes() == straight.to_bytes()


def test_scored_copy_leaves_the_scorer_behind():
    sketch = LLMSketch(memory_bytes=64 * 1024, estimator="constant", scoring="sync")
    sketch.update(generate_batch(2_000, 100, seed=1))
    assert sketch.scorer is not None and sketch.copy().scorer is None
