"""Slow, readable reference models of every algorithm, written from the specs in ../shared/specs.

Each implementation (Numba in ``telesketch.sketches``, CuPy/CUDA in ``telesketch.gpu``) is tested
against these. One module per algorithm keeps them readable; this module gathers them.
"""

from naive_gapfilter import NaiveAO, NaiveSO, NaiveStraw  # noqa: E402,F401
from naive_gapfilter import gap_labels as naive_gap_labels  # noqa: E402,F401
from naive_hiddensketch import NaiveHiddenSketch  # noqa: E402,F401
from naive_llmsketch import NaiveLLMSketch  # noqa: E402,F401
from naive_residualsketch import NaiveCoco, NaiveResidualSketch  # noqa: E402,F401
