"""ResidualSketch: hierarchical heavy hitters over IPv4 and IPv6 prefixes (spec ``specs/residualsketch.md``).

State: a full-key CocoSketch ``F`` (d = 2) plus one CocoSketch "Residual Block" ``R_k`` per crucial
prefix length ``k``, memory split equally over the ``1 + |K|`` blocks (8 bytes per bucket). Per
packet with address ``x`` (packet index ``n`` in the sketch's stream):

    c = insert(F, x)                      # post-update count if x was held, else 0
    c <  T: insert(R_k, prefix(x, k))     # light traffic is counted at prefix granularity
    c == T: decrement R_k's prefix by T-1 # Residual Connection: x just became heavy
    c >  T: bypass                        # heavy keys are counted once, in F

Queries add F's heavy keys back into every block (the skip connection), answer each layer from the
nearest crucial layer at or above it (or from all of F below the finest one), and run one
bottom-up discounted HHH pass (:func:`~telesketch.sketches.cocosketch.hhh_pass`).

**IPv6.** Every sketch holds a second tree beside the IPv4 one: the same algorithm over 128-bit
keys (:mod:`~telesketch.sketches.cocosketch` "IPv6 tree"), fed the IPv6 rows of each batch, with
its own memory (``ipv6_memory_bytes``, default ``memory_bytes``, 20 bytes a bucket) and packet
index, so IPv4 state and answers are exactly those of the IPv4 rows alone. Its hierarchy follows
address allocation, the boundaries an operator reads: ``/0``, ``/16`` (RIR-scale blocks), ``/32``
(an ISP/LIR allocation), ``/48`` (a site), ``/56`` (a home or small-business delegation), ``/64``
(one subnet: SLAAC and temporary addresses live below it) and ``/128`` (a host) -- the layers
:data:`~telesketch.sketches.exact.IPV6_LAYERS`. Its crucial layers default to ``{32, 64}``:

* ``/64`` because below it hosts rotate temporary (privacy) addresses, so a busy LAN is a heavy
  /64 made of light /128s; answered from F, such a /64 is only seen through the few full keys F
  holds (per-layer F1 0.5-0.75 on the benchmark's mixed traffic), from its own block exactly (1.0);
* ``/32`` because it is the middle of the hierarchy, as /16 is for IPv4 byte mode: with ``/64``
  alone, /32../0 are aggregated from /64 prefixes and /32 drops to F1 0.5-0.7.

``{32}`` alone scores a slightly higher pooled F1 on the benchmark (its many /16 HHH get more
memory) but misses the heavy /64s, which is the answer an operator most needs from IPv6 traffic;
see ``docs/IPV6.md`` and BENCHMARKS.md for the measurement. :meth:`ResidualSketch.hhh_rows` answers
both trees at once (:class:`HHHRow`: family, 4- or 16-byte prefix, length) and the presenter's
:func:`telesketch.presenter.format_prefix` prints ``10.1.0.0/16`` / ``2001:db8::/32`` (RFC 5952).

**Bytes.** ``weight="bytes"`` counts each packet's ``length`` (IPv4 total length, IPv6 payload
length + 40) instead of 1, for top talkers and HHH by bytes: counts are int64 (12-byte IPv4 and
24-byte IPv6 buckets, so 2/3 and 5/6 as many buckets for the same ``memory_bytes``), ``threshold``
and every answer are bytes (``expected_bytes`` replaces ``expected_packets``), a newcomer takes a
bucket with probability ``length / count``, and the Residual Connection fires when a packet carries
F's count to ``T`` or past it (``cocosketch.connection_rule``; with unit weights exactly ``c == T``).
``weight="packets"`` (the default) keeps int32 counts and today's state and snapshots byte for byte.

**Memory split.** ``split`` (default ``None``: the paper's equal split) gives F and the blocks unequal
shares; each block then has its own width (``widths``), stored in arrays as wide as the widest block
(the tail of a narrower block stays empty and is not charged in ``memory_bytes``).

The update is order-dependent (the connection fires at the instant F's count equals T), so the
kernel is one sequential ``nogil`` loop (spec §5 "exact mode") and raw state is not mergeable;
shards combine through :meth:`ResidualSketch.layer_estimates` (:func:`merged_hhh`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from telesketch.sketches.cocosketch import (
    BlockSketchVerbs,
    DEFAULT_MEMORY,
    ROWS,
    CocoSketch,
    CocoSketchParams,
    HHHEntry,
    HHHRow,
    LayerEstimates,
    as_addresses,
    block_layer_estimates,
    buckets_per_row,
    buckets6_per_row,
    check_memory,
    bucket_bytes,
    check_seed,
    check_weight,
    hhh_pass,
    hhh_rows,
    layers_of,
    merged_hhh,
    normalise_dimension,
    prefix_estimate,
    resolve_weighted_threshold,
    seed_mix,
    shard_threshold,
    stream_kernel,
    sum_layer_estimates,
)
from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.residual_layout import (
    LAYOUTS,
    MIN_T,
    RULE,
    RULES,
    TWO_BLOCK_R,
    Layout,
    choose_layout,
    paper_layout,
)
from telesketch.sketches.hierarchy import IPV6_LAYERS, prefix_mask

__all__ = [
    "ResidualSketch",
    "ResidualSketchParams",
    "CocoSketch",
    "CocoSketchParams",
    "HHHEntry",
    "HHHRow",
    "IPV6_LAYERS",
    "hhh_rows",
    "hhh_pass",
    "merged_hhh",
    "shard_threshold",
    "sum_layer_estimates",
]

DEFAULT_CRUCIAL = {"byte": (16,), "bit": (12,)}
#: Crucial layers of the IPv6 tree (layers /0 /16 /32 /48 /56 /64 /128); see the module docstring.
DEFAULT_CRUCIAL6 = (32, 64)


@dataclass(frozen=True)
class ResidualSketchParams:
    """ResidualSketch parameters (spec §3 table).

    * ``mode``: ``byte`` (layers /0 /8 /16 /24 /32) or ``bit`` (/0 .. /32).
    * ``dimension``: ``src`` (default) or ``dst`` address hierarchy (``src_ip``/``dst_ip`` accepted).
    * ``memory_bytes``: bucket memory, split equally over ``1 + |K|`` blocks (default 32 KiB byte,
      256 KiB bit).
    * ``crucial_layers``: the Residual Blocks' prefix lengths ``0 < k < 32``, layers of the mode
      (default ``(16,)`` byte, ``(12,)`` bit).
    * ``threshold``: ``T`` in packets; or ``phi`` (default 1e-3) with ``expected_packets`` (one
      epoch), ``T = max(1, floor(phi * expected_packets))``. Comparisons with T are strict.
    * ``seed``: drives the replacement coins ``rand32(seed, n, j)``.
    * ``addback``: ``gt`` (reference parity: add back F keys with ``v > T``) or ``ge``.
    * ``connection``: False gives the spec's "noConn" ablation as the reference code runs it
      (every packet is a plain insert into every block; no decrement, no add-back).
    * ``weight``: ``packets`` (default) or ``bytes``: a packet weighs its ``length``; counts are
      int64 (12-byte IPv4 / 24-byte IPv6 buckets), ``threshold`` is in bytes and ``expected_bytes``
      replaces ``expected_packets``; the Residual Connection fires when a packet carries F's count to
      ``T`` or past it (see ``cocosketch.connection_rule``).
    * ``split``: how ``memory_bytes`` is divided over the IPv4 tree's blocks (the IPv6 tree keeps the
      equal split). ``None`` (default) is the paper's equal split; a number ``0 < s < 1`` gives F that share and splits the rest equally over the
      Residual Blocks; a tuple gives one share per block, F first. A departure from the paper (issue
      20): F answers the layers finer than the finest crucial layer and conditions every coarser one,
      so on traffic whose fine layers need the memory (the hard mix: F 2/3 scores F1 0.950 against the
      paper's 0.900 at 32 KiB) more F helps, while on traffic with many light /16s (spec §8 synth) the
      block needs it (T = 4000, 32 KiB: F 2/3 0.517 against 0.874). BENCHMARKS.md "issue 20" has every row.
    * ``layout``: ``paper`` (default: ``crucial_layers`` and ``split`` as given, the paper's when not) or
      ``tuned`` (issue 20, a departure from the paper): :func:`~telesketch.sketches.residual_layout.choose_layout`
      picks the IPv4 tree's crucial layers and split from ``memory_bytes``, ``T`` and ``expected_packets``
      (``expected_bytes`` byte-weighted), falling back to CocoSketch's layout (no crucial layer) where no
      layout was measured to beat it. With ``tuned``, ``crucial_layers`` / ``split`` may be omitted or must equal
      the chosen ones (a snapshot's parameters carry them); :attr:`chosen_layout` says which was picked and why.
    """

    mode: str = "byte"
    dimension: str = "src"
    memory_bytes: int | None = None
    crucial_layers: tuple[int, ...] | None = None
    threshold: int | None = None
    phi: float = 1e-3
    expected_packets: int | None = None
    seed: int = 0
    addback: str = "gt"
    connection: bool = True
    ipv6_memory_bytes: int | None = None
    ipv6_crucial_layers: tuple[int, ...] | None = None
    weight: str = "packets"
    expected_bytes: int | None = None
    split: float | tuple[float, ...] | None = None
    layout: str = "paper"

    def __post_init__(self):
        layers = layers_of(self.mode)
        check_weight(self.weight)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("dimension", normalise_dimension(self.dimension))
        set_("memory_bytes", DEFAULT_MEMORY[self.mode] if self.memory_bytes is None else check_memory(self.memory_bytes))
        if self.layout not in LAYOUTS:
            raise SketchError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        given_crucial = self.crucial_layers
        set_("crucial_layers", _check_crucial(self.crucial_layers, self.mode, layers))
        set_("seed", check_seed(self.seed))
        if self.addback not in ("gt", "ge"):
            raise SketchError(f"addback must be 'gt' (reference parity) or 'ge', got {self.addback!r}")
        if not isinstance(self.connection, bool):
            raise SketchError(f"connection must be a bool, got {self.connection!r}")
        self._T()
        set_("split", _check_split(self.split, len(self.crucial_layers)))
        if self.layout == "tuned":
            chosen = self._tuned_layout(given_crucial is not None, self.split is not None)
            if chosen is None:
                chosen = self._tuned_choices()[0]
                raise SketchError(f"layout = 'tuned' chooses crucial_layers {chosen.crucial_layers} and split "
                                  f"{chosen.split} here ({chosen.why}); omit crucial_layers and split, or use "
                                  f"layout = 'paper' to give your own (got {given_crucial}, {self.split})")
            set_("crucial_layers", chosen.crucial_layers)
            set_("split", chosen.split)
        for share in self.block_shares():
            buckets_per_row(int(self.memory_bytes * share), "ResidualSketch", self.weight)
        set_("ipv6_memory_bytes", self.memory_bytes if self.ipv6_memory_bytes is None
             else check_memory(self.ipv6_memory_bytes))
        set_("ipv6_crucial_layers", _check_crucial6(self.ipv6_crucial_layers))
        buckets6_per_row(self.ipv6_memory_bytes // (1 + len(self.ipv6_crucial_layers)), "ResidualSketch IPv6 tree",
                         self.weight)

    @property
    def chosen_layout(self) -> Layout:
        """The IPv4 tree's :class:`~telesketch.sketches.residual_layout.Layout` for ``layout``: the paper's (or the
        given crucial layers and split) for ``paper``, :func:`choose_layout`'s pick for ``tuned``."""
        if self.layout == "tuned":
            return self._tuned_layout(True, self.split is not None)
        if self.crucial_layers == DEFAULT_CRUCIAL[self.mode] and self.split is None:
            return paper_layout(self.mode)
        shares = None if self.split is None else self.block_shares()
        for named in tuned_layouts(self.mode, self.weight):  # e.g. a Ray shard's pinned "tuned" choice
            if named.crucial_layers == self.crucial_layers and _same_shares(named.split, shares, self.crucial_layers):
                return Layout(named.name, self.crucial_layers, shares,
                              f"crucial_layers / split as given (layout = \"paper\"): layout = \"tuned\"'s "
                              f"{named.name!r}")
        return Layout("custom", self.crucial_layers, shares, "crucial_layers / split as given (layout = \"paper\")")

    def _tuned_choices(self) -> list[Layout]:
        """The tuned layout of every rule (``residual_layout.RULES``) for these parameters, the current rule's first."""
        expected = self.expected_bytes if self.weight == "bytes" else self.expected_packets
        rules = [RULE] + [rule for rule in RULES if rule != RULE]
        return [choose_layout(self.memory_bytes, self.T, self.mode, expected, self.weight, rule=rule) for rule in rules]

    def _tuned_layout(self, crucial_given: bool, split_given: bool) -> Layout | None:
        """The layout ``tuned`` resolves to: the current rule's, or, where the parameters carry the crucial layers
        and split an earlier rule chose (a snapshot taken under it), that rule's, so its state still loads;
        None if the given ones match no rule."""
        for chosen in self._tuned_choices():
            if (not crucial_given or self.crucial_layers == chosen.crucial_layers) and (
                    not split_given or self.split == chosen.split):
                return chosen
        return None

    def block_shares(self) -> tuple[float, ...]:
        """Fraction of ``memory_bytes`` given to each block, F first (equal by default, spec §3)."""
        if self.split is None:
            return (1 / (1 + len(self.crucial_layers)),) * (1 + len(self.crucial_layers))
        if isinstance(self.split, tuple):
            return self.split
        rest = (1 - self.split) / max(1, len(self.crucial_layers))
        return (self.split,) + (rest,) * len(self.crucial_layers)

    def _T(self) -> int:
        return resolve_weighted_threshold(self.threshold, self.phi, self.expected_packets, self.expected_bytes,
                                          self.weight, required=True)

    @property
    def T(self) -> int:
        """The absolute promotion threshold in the sketch's unit (packets, or bytes byte-weighted)."""
        return self._T()


@functools.lru_cache(maxsize=None)
def tuned_layouts(mode: str, weight: str = "packets") -> tuple[Layout, ...]:
    """Every layout ``layout = "tuned"`` can pick in ``mode`` under any rule of ``RULES``: CocoSketch's
    (``flat``, no crucial layer) and each rule's block layout, read from :func:`choose_layout` at a point
    inside its region (``T = 20 * MIN_T``, ``r`` mid-range, ``phi`` half the rule's bound (1e-3 if none), the memory
    that gives that ``r``, at least the rule's least memory). So a sketch given the crucial layers and split of a
    tuned pick (a Ray shard: ``ResidualSketch.shard_params`` pins ``tuned`` as ``paper``) reports that pick's
    name, not "custom"."""
    threshold, r = 20 * MIN_T, sum(TWO_BLOCK_R) / 2
    found = {}
    for rule, region in RULES.items():
        phi = (region.max_phi or 2e-3) / 2
        memory = max(region.min_memory, math.ceil(r / phi) * bucket_bytes(weight))
        expected = round(memory // bucket_bytes(weight) * threshold / r)
        for layout in (choose_layout(memory, threshold, mode, None, weight, rule=rule),
                       choose_layout(memory, threshold, mode, expected, weight, rule=rule)):
            found.setdefault(layout.name, layout)
    return tuple(found.values())


def _same_shares(split, shares, crucial_layers) -> bool:
    """Whether a :class:`Layout`'s ``split`` and a sketch's block shares (``None``: equal) divide the memory alike."""
    equal = (1 / (1 + len(crucial_layers)),) * (1 + len(crucial_layers))
    a, b = equal if split is None else split, equal if shares is None else shares
    return len(a) == len(b) and all(math.isclose(x, y) for x, y in zip(a, b))


def _check_crucial(crucial, mode: str, layers: tuple[int, ...]) -> tuple[int, ...]:
    if crucial is None:
        return DEFAULT_CRUCIAL[mode]
    if isinstance(crucial, (int, np.integer)):
        crucial = (crucial,)
    crucial = tuple(int(k) for k in crucial)
    bad = [k for k in crucial if not 0 < k < 32 or k not in layers]
    if bad:
        raise SketchError(f"crucial layers {bad} invalid: need 0 < k < 32 and k a layer of {mode} mode {layers}")
    if len(set(crucial)) != len(crucial):
        raise SketchError(f"crucial layers must be distinct, got {crucial}")
    return tuple(sorted(crucial))


def _check_split(split, blocks: int):
    """``None`` (equal split), F's share ``0 < s < 1`` (the rest split equally over the Residual
    Blocks), or one share per block (F first), each in ``(0, 1]`` and summing to at most 1."""
    if split is None:
        return None
    if isinstance(split, (int, float, np.floating)) and not isinstance(split, bool):
        split = float(split)
        if not 0 < split < 1 or (blocks == 0 and split != 1):
            raise SketchError(f"split (F's share of memory_bytes) must be in (0, 1), got {split}")
        return split
    if isinstance(split, (str, bytes)):
        raise SketchError(f"split must be a number or one share per block, got {split!r}")
    try:
        shares = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        raise SketchError(f"split must be a number or one share per block, got {split!r}") from None
    if len(shares) != 1 + blocks or not all(0 < v <= 1 for v in shares) or sum(shares) > 1 + 1e-9:
        raise SketchError(f"split must give {1 + blocks} shares in (0, 1] (F first) summing to at most 1, "
                          f"got {split!r}")
    return shares


def _check_crucial6(crucial) -> tuple[int, ...]:
    if crucial is None:
        return DEFAULT_CRUCIAL6
    if isinstance(crucial, (int, np.integer)):
        crucial = (crucial,)
    crucial = tuple(int(k) for k in crucial)
    bad = [k for k in crucial if not 0 < k < 128 or k not in IPV6_LAYERS]
    if bad:
        raise SketchError(f"IPv6 crucial layers {bad} invalid: need 0 < k < 128 and k a layer of {IPV6_LAYERS}")
    if len(set(crucial)) != len(crucial):
        raise SketchError(f"IPv6 crucial layers must be distinct, got {crucial}")
    return tuple(sorted(crucial))


class ResidualSketch(BlockSketchVerbs):
    """Hierarchical heavy hitters over source (or destination) IPv4 prefixes.

    >>> from telesketch.traces.generate import generate_batch
    >>> batch = generate_batch(20_000, 2_000, seed=1)   # a PacketBatch of 20 000 packets
    >>> rs = ResidualSketch(memory_bytes=32 * 1024, mode="byte", threshold=1000)
    >>> rs.update(batch)                  # PacketBatch; or rs.update_addresses(uint32 array)
    >>> rs.hhh()[:3]                      # [(prefix, length, discounted_estimate), ...]
    [(875026394, 32, 3025), (887566926, 32, 1369), (874643456, 16, 1135)]
    >>> rs.estimate(0x34270000, 16)       # estimated packets of 52.39.0.0/16
    3126
    """

    ALGORITHM = "residualsketch"
    VERSION = 2  # 2: the IPv6 tree; version 1 (IPv4 only) still loads
    PARAMS = ResidualSketchParams

    @classmethod
    def truth_params(cls, params: dict) -> dict:
        """The truth's HHH walks the same hierarchy (``byte`` or ``bit`` prefixes)."""
        return {"hhh_mode": cls.PARAMS(**params).mode}  # the params alone: no tables allocated

    def shard_params(self, params: dict) -> dict:
        """``layout = "tuned"`` pinned to this sketch's choice (``paper`` with its crucial layers and
        split): a shard sees no ``expected_packets`` and would fall back to flat, while the layout of
        the whole stream fits each shard too (``phi``, and so the rule's ratio, is the same per shard)."""
        if params.get("layout") != "tuned":
            return params
        chosen = self.params.chosen_layout
        return {**params, "layout": "paper", "crucial_layers": chosen.crucial_layers, "split": chosen.split}

    def __init__(self, params: ResidualSketchParams | None = None, **kwargs):
        if params is not None and kwargs:
            raise SketchError("give either a ResidualSketchParams or keyword parameters, not both")
        self.params = params if params is not None else ResidualSketchParams(**kwargs)
        p = self.params
        self.T = p.T
        self.layers = layers_of(p.mode)
        self.crucial_layers = p.crucial_layers
        self._alloc_ipv4(1 + len(p.crucial_layers), "ResidualSketch", None if p.split is None else p.block_shares())  # cells (id, count): block 0 = F, j = R_{k_j}
        self.packets = 0  # stream index n of the next packet
        self._masks = np.array([prefix_mask(k) for k in p.crucial_layers], np.uint32)
        self._seed_mix = seed_mix(p.seed)
        self._addback = p.addback if p.connection else None  # noConn adds nothing back
        self._init_ipv6(p.ipv6_memory_bytes, p.ipv6_crucial_layers, "ResidualSketch IPv6 tree")

    def _tree_rule(self) -> tuple[int, bool, str | None]:
        """``(T, connection, addback)``: both trees use the same threshold and rules."""
        return self.T, self.params.connection, self._addback

    # ------------------------------------------------------------------ update
    @property
    def memory_bytes(self) -> int:
        """Bucket memory charged: ``(|K| + 1) * 2 * w * 8`` bytes (12 a bucket byte-weighted)."""
        return sum(self.widths) * ROWS * bucket_bytes(self.params.weight)

    ids = property(lambda self: self.cells["id"], doc="Bucket ids, ``uint32[1 + |K|, 2, w]`` (a view).")
    counts = property(lambda self: self.cells["count"], doc="Bucket counts, ``int32[1 + |K|, 2, w]`` (a view).")

    def update_addresses(self, addresses, weights=None) -> None:
        """Process a raw ``uint32[n]`` address array in order (benchmark entry point); ``weights``
        (byte-weighted sketches): ``n`` non-negative integers."""
        keys = as_addresses(addresses)
        stream_kernel(keys, self._take_weights(weights, keys.shape[0]), self.cells, self.occ, self.kernel_masks(),
                      np.int64(self.T),
                      self._seed_mix, np.uint64(self.packets), self.params.connection, *self._geometry)
        self.packets += keys.shape[0]

    def kernel_masks(self) -> tuple[np.uint64, ...] | None:
        """The crucial layers' prefix masks as :func:`stream_kernel` takes them: a tuple of ``uint64`` (the
        kernel is compiled for its length, so its loop over the blocks unrolls), None without crucial layers."""
        return tuple(np.uint64(mask) for mask in self._masks) or None

    # ------------------------------------------------------------------ queries
    def layer_estimates(self) -> LayerEstimates:
        """``{length: {prefix: estimated packets}}`` for every layer of the mode (spec §3).

        These maps are additive across shards and epochs (:func:`sum_layer_estimates`).
        """
        return block_layer_estimates(self.ids, self.counts, self.occ, self.crucial_layers,
                                     self.layers, self.T, self._addback)

    def estimate(self, prefix: int, length: int) -> int:
        """Estimated packets of ``prefix/length`` for any length 0..32 (host bits must be zero).

        A length finer than the finest crucial layer is answered from F's full keys, any other
        from the nearest crucial layer at or above it (with the heavy-key add-back).
        """
        if not 0 <= int(length) <= 32:
            raise SketchError(f"prefix length must be in [0, 32], got {length}")
        est = block_layer_estimates(self.ids, self.counts, self.occ, self.crucial_layers,
                                    (int(length),), self.T, self._addback)
        return prefix_estimate(est, prefix, length)

    def report_threshold(self, threshold: float | None) -> float:
        """``T_report``: the given value, or the construction threshold ``T``."""
        if threshold is None:
            return self.T
        if threshold < 0:
            raise SketchError(f"report threshold must be non-negative, got {threshold}")
        return threshold

    # ------------------------------------------------------------------ contract
    def merge(self, other) -> None:
        """Not supported: raises :class:`NotMergeableError` (spec §4)."""
        raise NotMergeableError(
            "ResidualSketch state cannot be merged: each Residual Block only means something with "
            "its own full-key sketch, and adding blocks double-counts light traffic (spec §4). "
            "Sum layer_estimates() of the shards and run one HHH pass: merged_hhh(sketches, threshold)"
        )
