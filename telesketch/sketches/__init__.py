"""CPU sketches (Numba): one module per algorithm, all with the same verbs.

``update(batch)``, ``merge(other)`` (or a clear ``NotMergeableError``), ``to_bytes()`` /
``from_bytes()``, ``memory_bytes`` and each algorithm's queries. ``exact`` holds the ground-truth
oracles and accuracy metrics they are tested against.
"""
from telesketch.sketches import exact
from telesketch.sketches.cocosketch import CocoSketch
from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.gapfilter import GapFilterAO, GapFilterSO, GapFilterStraw
from telesketch.sketches.hiddensketch import HiddenSketch
from telesketch.sketches.llmsketch import LLMSketch
from telesketch.sketches.residualsketch import ResidualSketch

__all__ = [
    "CocoSketch",
    "GapFilterAO",
    "GapFilterSO",
    "GapFilterStraw",
    "HiddenSketch",
    "LLMSketch",
    "NotMergeableError",
    "ResidualSketch",
    "SketchError",
    "exact",
]
