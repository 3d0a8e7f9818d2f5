"""IPv4 and IPv6 prefix hierarchies shared by the HHH sketches and the exact oracle: the layers of a
hierarchy, the network mask of a prefix length, and the discounted HHH pass over per-layer counts.

Prefix values are ``u32`` addresses (IPv6: 128-bit ints) with the bits below the prefix length zeroed; a prefix is the
pair ``(value, length)``. These are helpers, not ground truth: the CocoSketch / ResidualSketch and
LLM-Sketch queries run :func:`hhh_from_counts` and :func:`prefix_mask` over their estimates, and
:mod:`telesketch.sketches.exact` runs them over exact counts.
"""
from __future__ import annotations

from typing import Mapping

BYTE_LAYERS: tuple[int, ...] = (0, 8, 16, 24, 32)
BIT_LAYERS: tuple[int, ...] = tuple(range(33))
#: IPv6 allocation hierarchy: /0, RIR-scale /16, ISP /32, site /48, home /56, subnet /64, host /128.
IPV6_LAYERS: tuple[int, ...] = (0, 16, 32, 48, 56, 64, 128)


def prefix_mask(length: int, width: int = 32) -> int:
    """Network mask of a prefix length as a ``width``-bit value (``u32`` by default, 128 for IPv6; ``/0`` is 0)."""
    if not 0 <= length <= width:
        raise ValueError(f"prefix length must be in [0, {width}], got {length}")
    full = (1 << width) - 1
    return 0 if length == 0 else (full << (width - length)) & full


def layers_for(mode: str) -> tuple[int, ...]:
    """Prefix lengths of a hierarchy: ``byte`` (5 layers) or ``bit`` (33 layers)."""
    if mode == "byte":
        return BYTE_LAYERS
    if mode == "bit":
        return BIT_LAYERS
    raise ValueError(f"unknown hierarchy mode {mode!r}; use 'byte' or 'bit'")


def hhh_from_counts(
    counts: Mapping[int, Mapping[int, float]], threshold: float, width: int = 32
) -> dict[tuple[int, int], float]:
    """The discounted HHH set from per-layer counts ``{length: {prefix: count}}``.

    Layers are processed finest to coarsest; ``c(p) = f(p) - sum of c(q)`` over reported ``q``
    below ``p``; ``p`` is an HHH iff ``f(p) > T`` and ``c(p) > T``. Works for exact counts and for
    per-layer sketch estimates alike (the ResidualSketch query and shard merge use it): a prefix
    that only carries covered mass (a sketch may miss a parent whose children it reported) is
    still visited, so covered mass always reaches the coarser layers.
    ``width`` is the address width in bits: 32 (IPv4 ``u32`` prefixes) or 128 (IPv6 prefixes as
    128-bit ints, see :func:`telesketch.sketches.exact.ipv6_ints`).
    Returns ``{(prefix, length): c(p)}``.
    """
    reported: dict[tuple[int, int], float] = {}
    carry: dict[int, float] = {}  # prefix at the previous (finer) layer -> covered mass below it
    for length in sorted(counts, reverse=True):
        mask = prefix_mask(length, width)
        covered: dict[int, float] = {}
        for prefix, mass in carry.items():
            covered[prefix & mask] = covered.get(prefix & mask, 0) + mass
        layer = counts[length]
        carry = {}
        for prefix in layer.keys() | covered.keys():
            f = layer.get(prefix, 0)
            below = covered.get(prefix, 0)
            c = f - below
            if f > threshold and c > threshold:
                reported[(prefix, length)] = c
                below = f
            if below:
                carry[prefix] = below
    return reported
