"""Per-kind configuration facts, as data the config validation reads without importing a sketch.

:mod:`telesketch.service.config` validates a ``[sketches.NAME]`` table when the configuration
loads, and imports only the standard library and :mod:`telesketch.errors` (so ``--help``,
``telesketch query`` and configuration errors need no numba). The few rules it checks about a
kind's parameters therefore cannot ask the sketch classes; they live here, one
:class:`KindConfig` per kind name of :data:`telesketch.service.sketchset.KINDS`, so the glue
holds no kind names and a new kind states its facts beside its name.

Two kinds of fact:

- what a kind counts: ``weight = "bytes"`` is taken only by ``byte_weighted`` kinds, and refused
  for the parameter values in ``packets_only`` (LLM-Sketch's ``hhh`` task);
- how Ray shards route its packets (``shards > 1``): by ``route_key`` when the sketch's ``key``
  is that address column, by flow otherwise; a ``key`` that is another address column
  (``address_keys`` but not ``route_key``) would see each address's packets spread over the
  shards, so it is refused.

This module is stdlib-only on purpose. The Kind registry reads ``route_key`` from here, and
``tests/test_kinds_config.py`` checks the rest against the sketch classes (their ``KEYS``,
``TASKS`` and what their constructors refuse), so the two cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PacketsOnly:
    """``weight = "bytes"`` is refused when parameter ``param`` is one of ``values``: ``reason``
    (the ConfigError's text after ``sketch 'NAME': ``)."""

    param: str
    values: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class KindConfig:
    """What configuration validation knows about one sketch kind.

    ``title``: the kind's name in prose ("Hidden Sketch"), for error messages.
    ``byte_weighted``: takes ``weight = "bytes"`` (the others count packets, or gaps, only).
    ``packets_only``: parameter values with which a byte-weighted kind still counts packets only.
    ``route_key``: with Ray shards, packets are routed by this address column when the sketch's
    ``key`` is it ("" : always by flow); :class:`telesketch.service.sketchset.Kind` takes it from here.
    ``address_keys``: ``key`` values that are one address column; with shards > 1 every one but
    ``route_key`` is refused (its packets would be spread over the shards).
    """

    title: str
    byte_weighted: bool = False
    packets_only: tuple[PacketsOnly, ...] = ()
    route_key: str = ""
    address_keys: tuple[str, ...] = ()

    @property
    def unroutable_keys(self) -> tuple[str, ...]:
        """``key`` values refused with shards > 1: the address columns packets are not routed by."""
        return tuple(k for k in self.address_keys if k != self.route_key)


#: Per kind name, the facts configuration validation checks. Byte-weighted kinds first, in the
#: order the "weight = bytes is supported by ..." message lists them.
KIND_CONFIG: dict[str, KindConfig] = {
    "residualsketch": KindConfig("ResidualSketch", byte_weighted=True),
    "hiddensketch": KindConfig("Hidden Sketch", byte_weighted=True, route_key="src_ip",
                               address_keys=("src_ip", "dst_ip", "src_ip6", "dst_ip6")),
    "llmsketch": KindConfig("LLM-Sketch", byte_weighted=True, packets_only=(
        PacketsOnly("task", ("hhh",), "the llmsketch hhh task counts packets only; weight = \"bytes\" is for its "
                                      "flow_size and heavy_hitters tasks (byte-weighted HHH: kind residualsketch)"),)),
    "exact": KindConfig("exact counts", byte_weighted=True),
    "gapfilter_so": KindConfig("GapFilter-SO"),
    "gapfilter_ao": KindConfig("GapFilter-AO"),
    "gapfilter_straw": KindConfig("GapFilter Straw"),
}

#: Kinds that take ``weight = "bytes"``.
BYTE_WEIGHTED_KINDS: tuple[str, ...] = tuple(name for name, kind in KIND_CONFIG.items() if kind.byte_weighted)

#: The facts of a kind this module does not list (an unknown kind is refused when sketches are built).
UNKNOWN = KindConfig("sketch")


def kind_config(kind: str) -> KindConfig:
    """The :class:`KindConfig` of kind name ``kind`` (:data:`UNKNOWN` for a name not listed)."""
    return KIND_CONFIG.get(kind, UNKNOWN)
