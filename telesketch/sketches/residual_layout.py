"""ResidualSketch layouts: which crucial layers, and what memory split, for a (memory, threshold) point.

Issue 20: the paper's layout (byte mode: one Residual Block at /16, memory split equally between F and
the block) loses to CocoSketch at equal memory on some traffic, and no single layout wins everywhere
(BENCHMARKS.md "Against CocoSketch beyond the spec's workloads"). The **"tuned"** layout is a departure
from the paper that picks one of three layouts per (memory, threshold, expected epoch size) by a small
rule measured on the benchmark's design rows:

* ``"paper"``: ``crucial_layers=(16,)``, equal split (the spec's default);
* ``"16-24"``: ``crucial_layers=(16, 24)``, ``split=(1/2, 1/4, 1/4)``: F keeps half the memory for the
  layers it answers (/32 and, through conditioning, every coarser one) and two quarter-size blocks count the
  light /16 and /24 traffic; it needs each quarter to hold a few times ``1/phi`` buckets, or it collapses;
* ``"flat"``: no crucial layer, all the memory in F. This is CocoSketch, bucket for bucket (same state,
  same answers: ``tests/test_residual_layout.py``); the rule falls back to it wherever the measurement does
  not show another layout clearly winning.

The rule reads the **load ratio** ``r = buckets * phi`` (``buckets`` = IPv4 buckets the whole memory holds,
``phi = T / expected``), i.e. the memory in units of ``1/phi`` buckets, the threshold ``T`` itself (packets, or
bytes byte-weighted) and the memory:

=========================================================  ===========  ===============================================
region                                                      layout       design rows in it (F1 gain over CocoSketch)
=========================================================  ===========  ===============================================
``T < 50``                                                  ``flat``     stopddos phi 1e-3 (T = 7); held-out T = 2..39
``8 <= r <= 36`` and ``memory >= 16 KiB``                   ``16-24``    hard mix 32-128 KiB, synth 64-128 KiB (+0.01..+0.15)
``r <= 0.3``                                                ``paper``    nDPI phi 1e-3, 2 KiB (+0.07)
``0.3 < r <= 6`` and ``T >= 1000``                          ``paper``    synth 32-64 KiB, starved T = 1500 (+0.03..+0.39)
anything else (or ``expected`` unknown)                     ``flat``     the rows the paper lost, ties, 8 KiB blocks
=========================================================  ===========  ===============================================

A region gets a non-flat layout only where, on every design row in it, that layout beat CocoSketch by at
least :data:`MARGIN` F1 in the measurement the rule was read from; elsewhere the answer is CocoSketch's.

History (BENCHMARKS.md "tuned layouts"): rule 1 was read from 31 byte-mode design rows (hard mix, spec §8.1
synth, the starved regime, two real captures at phi 1e-2 / 1e-3) and lost 5 of 36 rows on three further
captures (halves, phi 1e-2 / 1e-3, 2-32 KiB): the paper's block at T = 2 (-0.55) and the two-block layout at
8 KiB on spoofed SYN floods (-0.30). Rule 2 (this one) adds the two guards ``T >= 50`` and ``memory >= 16 KiB``
read from those rows, so they are design rows now too; it is scored on fresh generated rows that set nothing.
Bit mode has no design rows measured, so ``"tuned"`` gives ``"flat"`` there.
"""
from __future__ import annotations

from dataclasses import dataclass

from telesketch.sketches.cocosketch import bucket_bytes
from telesketch.sketches.core import SketchError

#: Layout selections a ResidualSketch takes (``ResidualSketchParams.layout``).
LAYOUTS = ("paper", "tuned")
#: F1 a non-flat layout had to gain over CocoSketch on every design row of its region.
MARGIN = 0.01
#: ``r`` bounds of the rule (module docstring): two-block region, and the paper's small-memory region.
TWO_BLOCK_R = (8.0, 36.0)
PAPER_STARVED_R = 0.3
PAPER_R = 6.0
#: The paper's layout between PAPER_STARVED_R and PAPER_R only at thresholds of at least this many units.
PAPER_MIN_T = 1000
#: No crucial layer below this threshold (units): with T of a few packets the Residual Connection fires on
#: keys that are not heavy (rule 2; the held-out T = 2 rows of rule 1).
MIN_T = 50
#: The two-block layout only from this memory: each quarter block then has at least 256 buckets a row
#: (rule 2; at 8 KiB it lost the spoofed SYN-flood rows by 0.26-0.30).
TWO_BLOCK_MIN_MEMORY = 16 * 1024


@dataclass(frozen=True)
class Layout:
    """One ResidualSketch layout: ``name``, ``crucial_layers`` (IPv4 tree) and ``split`` (``None``: equal,
    as ``ResidualSketchParams.split`` takes it), and ``why``: the rule's reason, for logs and ``telesketch size``."""

    name: str
    crucial_layers: tuple[int, ...]
    split: tuple[float, ...] | None
    why: str


PAPER = {"byte": (16,), "bit": (12,)}


def paper_layout(mode: str) -> Layout:
    """The spec's layout: one crucial layer (/16 byte, /12 bit), equal split."""
    return Layout("paper", PAPER[mode], None, "the paper's layout (layout = \"paper\")")


def load_ratio(memory_bytes: int, threshold: int, expected: int | None, weight: str = "packets") -> float | None:
    """``r = buckets * phi``: IPv4 buckets in ``memory_bytes`` times ``phi = threshold / expected``
    (``None`` when ``expected`` is unknown). Units of ``threshold`` and ``expected`` must agree (packets, or
    bytes byte-weighted)."""
    if not expected:
        return None
    return memory_bytes // bucket_bytes(weight) * threshold / expected


def choose_layout(memory_bytes: int, threshold: int, mode: str = "byte", expected: int | None = None,
                  weight: str = "packets") -> Layout:
    """The "tuned" layout for one sketch: see the module docstring for the rule and its measurement.

    ``memory_bytes``: the IPv4 tree's bucket memory; ``threshold``: ``T`` (packets, or bytes byte-weighted);
    ``mode``: ``byte`` or ``bit``; ``expected``: packets (bytes) per epoch, from which ``phi = T / expected``;
    ``weight``: ``packets`` or ``bytes`` (bucket size). Deterministic: the same inputs give the same layout,
    so a snapshot's parameters resolve to the same state on load.
    """
    if mode not in PAPER:
        raise SketchError(f"mode must be 'byte' or 'bit', got {mode!r}")
    flat = lambda why: Layout("flat", (), None, why)  # noqa: E731
    if mode != "byte":
        return flat("bit mode: no design rows measured for the tuned rule, so CocoSketch's layout")
    r = load_ratio(memory_bytes, threshold, expected, weight)
    if r is None:
        return flat("expected packets (bytes) per epoch unknown: phi, and so the rule, cannot be read")
    if threshold < MIN_T:
        return flat(f"T = {threshold} < {MIN_T}: too small a threshold for a Residual Block to pay")
    if TWO_BLOCK_R[0] <= r <= TWO_BLOCK_R[1] and memory_bytes >= TWO_BLOCK_MIN_MEMORY:
        return Layout("16-24", (16, 24), (0.5, 0.25, 0.25),
                      f"r = buckets x phi = {r:.2f} in [{TWO_BLOCK_R[0]:g}, {TWO_BLOCK_R[1]:g}]: /16 and /24 blocks")
    if r > TWO_BLOCK_R[1]:
        return flat(f"r = {r:.2f} > {TWO_BLOCK_R[1]:g}: memory holds the traffic, no layout beats CocoSketch")
    if r <= PAPER_STARVED_R or (r <= PAPER_R and threshold >= PAPER_MIN_T):
        return Layout("paper", PAPER["byte"], None,
                      f"r = {r:.2f}, T = {threshold}: the paper's /16 block (starved memory or large T)")
    return flat(f"r = {r:.2f}, T = {threshold}: no layout measured to beat CocoSketch here")
