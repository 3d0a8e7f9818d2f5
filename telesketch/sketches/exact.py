"""Exact ground truth and accuracy metrics: the oracles every sketch is checked against.

Keys are given as numpy arrays and answers use plain Python keys:

* 4-byte keys (source addresses): ``uint32[n]`` in, ``int`` out;
* 13-byte flow keys: ``uint8[n, 13]`` rows or ``V13`` scalars (``PacketBatch.flow_keys()`` /
  ``flow_keys_void()``) in, ``bytes`` out;
* IPv6: 16-byte source addresses and 37-byte flow keys (``uint8[n, 16]`` / ``uint8[n, 37]`` rows,
  e.g. ``PacketBatch.src_keys16()`` / ``flow_keys37()``, IPv4 v4-mapped) work with every
  function above as any other byte key. For a batch of both families, :func:`family_keys` and the
  ``mixed_*`` functions count each family in its own key form (IPv4 sources ``int``, IPv6 sources
  16 ``bytes``; IPv4 flows 13 ``bytes``, IPv6 flows 37 ``bytes``) against one threshold over
  all packets, so IPv4 answers are unchanged by IPv6 traffic other than through ``N``.

**Weights.** Every counting function takes optional ``weights`` (one non-negative integer per key,
e.g. ``PacketBatch.length`` for bytes; the ``mixed_*`` functions take ``weight="packets"|"bytes"``):
counts become weight sums and ``phi`` is a fraction of the total weight, the ground truth of a
byte-weighted sketch. Without weights every answer is the packet count, as before.

Thresholds are strict everywhere (a key is heavy when its count is ``> threshold``), as the specs
define them. Memory is O(distinct keys); these functions are for tests, benchmarks and ``--exact``
reports, not for the packet path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from telesketch.jit import kernel
from telesketch.sketches.hierarchy import BYTE_LAYERS, IPV6_LAYERS, hhh_from_counts, layers_for, prefix_mask


# ---------------------------------------------------------------------------- keys and counts
def _as_key_array(keys: np.ndarray) -> np.ndarray:
    """A 1-D array whose elements are the keys: ``uint32`` or ``V<k>`` byte strings."""
    keys = np.asarray(keys)
    if keys.ndim == 2 and keys.dtype == np.uint8:
        keys = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-D (uint32 or V13) or uint8[n, k], got shape {keys.shape}")
    if keys.dtype.kind == "V" or keys.dtype == np.uint32:
        return keys
    if keys.dtype.kind in "iu":
        return keys.astype(np.uint64)
    raise ValueError(f"unsupported key dtype {keys.dtype}")


def _python_keys(unique: np.ndarray) -> list[Hashable]:
    if unique.dtype.kind == "V":
        return [k.tobytes() for k in unique]
    return [int(k) for k in unique.tolist()]


def flow_counts(keys: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted, same dtype as given, ``V`` for rows) and their ``int64`` counts
    (weight sums with ``weights``)."""
    keys = _as_key_array(keys)
    if weights is None:
        unique, counts = np.unique(keys, return_counts=True)
        return unique, counts.astype(np.int64)
    weights = _as_weights(weights, keys.shape[0])
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros(unique.shape[0], np.int64)
    np.add.at(sums, inverse.ravel(), weights)
    return unique, sums


def _as_weights(weights, n: int) -> np.ndarray:
    weights = np.asarray(weights)
    if weights.shape != (n,) or (weights.size and (weights.dtype.kind not in "iu" or weights.min() < 0)):
        raise ValueError(f"weights must be {n} non-negative integers, got {weights.dtype} {weights.shape}")
    return weights.astype(np.int64)


def total_weight(n_items: int, weights: np.ndarray | None) -> int:
    """``n_items`` without weights, else their sum: what ``phi`` is a fraction of."""
    return n_items if weights is None else int(np.asarray(weights, dtype=np.int64).sum())


def count_dict(keys: np.ndarray, weights: np.ndarray | None = None) -> dict[Hashable, int]:
    """Exact count (or weight sum) of every key as ``{key: count}``."""
    unique, counts = flow_counts(keys, weights)
    return dict(zip(_python_keys(unique), counts.tolist()))


def _threshold(n_items: int, phi: float | None, threshold: float | None) -> float:
    if (phi is None) == (threshold is None):
        raise ValueError("give exactly one of phi (fraction of items) or threshold (absolute count)")
    if phi is not None:
        if not 0.0 < phi < 1.0:
            raise ValueError(f"phi must be in (0, 1), got {phi}")
        return phi * n_items
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    return float(threshold)


def threshold_for(n_items: int, phi: float) -> float:
    """The absolute threshold ``phi * n_items`` (ValueError unless ``0 < phi < 1``)."""
    return _threshold(n_items, phi, None)


def heavy_hitters(keys: np.ndarray, phi: float | None = None, threshold: float | None = None,
                  weights: np.ndarray | None = None) -> dict[Hashable, int]:
    """Keys whose count is ``> phi * n`` (or ``> threshold``): ``{key: count}``; with ``weights``
    weight sums against ``phi *`` the total weight."""
    keys = _as_key_array(keys)
    thr = _threshold(total_weight(keys.shape[0], weights), phi, threshold)
    unique, counts = flow_counts(keys, weights)
    heavy = counts > thr
    return dict(zip(_python_keys(unique[heavy]), counts[heavy].tolist()))


def heavy_changers(
    keys_before: np.ndarray,
    keys_after: np.ndarray,
    phi: float | None = None,
    threshold: float | None = None,
) -> dict[Hashable, int]:
    """Keys whose count changes by more than the threshold between two windows.

    With ``phi`` the threshold is ``phi * max(n_before, n_after)`` (Hidden Sketch spec §8.2).
    Returns ``{key: count_after - count_before}``.
    """
    before = count_dict(keys_before)
    after = count_dict(keys_after)
    n = max(len(_as_key_array(keys_before)), len(_as_key_array(keys_after)))
    thr = _threshold(n, phi, threshold)
    changes = {}
    for key in before.keys() | after.keys():
        delta = after.get(key, 0) - before.get(key, 0)
        if abs(delta) > thr:
            changes[key] = delta
    return changes


# ---------------------------------------------------------------------------- both address families
#: Key forms of :func:`family_keys`: the batch column of IPv4 keys for each key name.
FAMILY_KEYS = ("src_ip", "dst_ip", "flow")


def family_keys(batch, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(IPv4 keys, IPv6 keys)`` of a :class:`~telesketch.packets.PacketBatch`, in row order.

    ``key`` ``src_ip``/``dst_ip``: ``(uint32[n4], uint8[n6, 16])``; ``flow``: ``(uint8[n4, 13],
    uint8[n6, 37])``.
    """
    if key not in FAMILY_KEYS:
        raise ValueError(f"key must be one of {FAMILY_KEYS}, got {key!r}")
    v4, v6 = batch.family(4), batch.family(6)
    if key == "flow":
        return v4.flow_keys(), v6.flow_keys37()
    return getattr(v4, key), np.ascontiguousarray(getattr(v6, key + "6"))


def family_weights(batch, weight: str = "packets") -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(IPv4 weights, IPv6 weights)`` in :func:`family_keys` row order: ``(None, None)`` for packets,
    the ``length`` column of each family for bytes."""
    if weight == "packets":
        return None, None
    if weight != "bytes":
        raise ValueError(f"weight must be 'packets' or 'bytes', got {weight!r}")
    return batch.family(4).length, batch.family(6).length


def mixed_count_dict(batch, key: str, weight: str = "packets") -> dict[Hashable, int]:
    """Exact count (or byte sum) of every key of both families (key forms as in the module docstring)."""
    keys4, keys6 = family_keys(batch, key)
    w4, w6 = family_weights(batch, weight)
    return {**count_dict(keys4, w4), **(count_dict(keys6, w6) if len(keys6) else {})}


def mixed_heavy_hitters(batch, key: str, phi: float | None = None,
                        threshold: float | None = None, weight: str = "packets") -> dict[Hashable, int]:
    """Keys of both families whose count is ``> phi * len(batch)`` (or ``> threshold``); byte-weighted:
    byte sums against ``phi *`` the batch's bytes."""
    thr = _threshold(total_weight(len(batch), batch.length if weight == "bytes" else None), phi, threshold)
    return {k: c for k, c in mixed_count_dict(batch, key, weight).items() if c > thr}


def mixed_heavy_changers(before, after, key: str, phi: float | None = None,
                         threshold: float | None = None) -> dict[Hashable, int]:
    """Keys of both families whose count changes by more than ``phi * max(n_before, n_after)``
    (or ``threshold``) between two batches: ``{key: count_after - count_before}``."""
    thr = _threshold(max(len(before), len(after)), phi, threshold)
    old, new = mixed_count_dict(before, key), mixed_count_dict(after, key)
    changes = {k: new.get(k, 0) - old.get(k, 0) for k in old.keys() | new.keys()}
    return {k: d for k, d in changes.items() if abs(d) > thr}


# ---------------------------------------------------------------------------- hierarchical heavy hitters
def prefix_counts(addresses: np.ndarray, layers: Sequence[int] = BYTE_LAYERS,
                  weights: np.ndarray | None = None) -> dict[int, dict[int, int]]:
    """Exact ``{length: {prefix_value: count}}`` (weight sums with ``weights``) of every prefix that
    occurs, for each layer."""
    addresses = np.asarray(addresses, dtype=np.uint32)
    out = {}
    for length in layers:
        values, counts = flow_counts(addresses & np.uint32(prefix_mask(length)), weights)
        out[length] = dict(zip(values.tolist(), counts.tolist()))
    return out


def hhh(
    addresses: np.ndarray,
    phi: float | None = None,
    threshold: float | None = None,
    mode: str = "byte",
    weights: np.ndarray | None = None,
) -> dict[tuple[int, int], float]:
    """Exact discounted HHH of an address column: ``{(prefix, length): discounted_count}``; with
    ``weights`` counts are weight sums and ``phi`` a fraction of the total weight."""
    addresses = np.asarray(addresses, dtype=np.uint32)
    thr = _threshold(total_weight(addresses.shape[0], weights), phi, threshold)
    return hhh_from_counts(prefix_counts(addresses, layers_for(mode), weights), thr)


# ---------------------------------------------------------------------------- IPv6 hierarchical heavy hitters
def ipv6_ints(addresses: np.ndarray) -> list[int]:
    """128-bit Python ints of ``uint8[n, 16]`` network-order IPv6 addresses (``2001:db8::1`` ->
    ``0x20010db8000000000000000000000001``): the prefix values of IPv6 HHH answers."""
    addresses = np.ascontiguousarray(addresses, dtype=np.uint8)
    if addresses.ndim != 2 or addresses.shape[1] != 16:
        raise ValueError(f"IPv6 addresses must be uint8[n, 16], got shape {addresses.shape}")
    halves = addresses.view(">u8").astype(np.uint64)
    return [(int(hi) << 64) | int(lo) for hi, lo in halves.tolist()]


def prefix_counts6(addresses: np.ndarray, layers: Sequence[int] = IPV6_LAYERS,
                   weights: np.ndarray | None = None) -> dict[int, dict[int, int]]:
    """Exact ``{length: {prefix (128-bit int): count}}`` (weight sums with ``weights``) of IPv6
    ``uint8[n, 16]`` addresses per layer."""
    addresses = np.ascontiguousarray(addresses, dtype=np.uint8).reshape(-1, 16)
    whole = ({int.from_bytes(k, "big"): c for k, c in count_dict(addresses, weights).items()}
             if len(addresses) else {})
    out: dict[int, dict[int, int]] = {}
    for length in layers:
        mask = prefix_mask(length, 128)
        layer: dict[int, int] = {}
        for address, count in whole.items():
            layer[address & mask] = layer.get(address & mask, 0) + count
        out[length] = layer
    return out


def hhh6(
    addresses: np.ndarray,
    phi: float | None = None,
    threshold: float | None = None,
    layers: Sequence[int] = IPV6_LAYERS,
    weights: np.ndarray | None = None,
) -> dict[tuple[int, int], float]:
    """Exact discounted HHH of IPv6 ``uint8[n, 16]`` addresses: ``{(prefix int, length): c}``
    (weight sums with ``weights``, ``phi`` of the total weight)."""
    thr = _threshold(total_weight(len(addresses), weights), phi, threshold)
    return hhh_from_counts(prefix_counts6(addresses, layers, weights), thr, width=128)


# ---------------------------------------------------------------------------- GapFilter ground truth
@kernel
def _gap_labels_kernel(flow_ids, seq, n_flows, t1, t2, reset):
    labels = np.zeros(flow_ids.shape[0], np.bool_)
    last = np.zeros(n_flows, np.int64)
    seen = np.zeros(n_flows, np.bool_)
    for i in range(flow_ids.shape[0]):
        f = flow_ids[i]
        s = np.int64(seq[i])
        if not seen[f]:
            seen[f] = True
            last[f] = s
            continue
        o = last[f]
        d = (s - o) & 0xFFFF
        labels[i] = t1 <= d < t2
        if s > o or o - s >= reset:
            last[f] = s
    return labels


def gap_labels(
    flow_keys: np.ndarray, seq: np.ndarray, t1: int = 5, t2: int = 30, reset: int = 10000
) -> np.ndarray:
    """Per-item ground truth of GapFilter (spec §5.1): ``bool[n]``, True where a major gap opens.

    ``flow_keys`` are the items' keys (any form :func:`flow_counts` takes), ``seq`` their ``uint16``
    sequence values in arrival order. The flow's state is its running maximum SEQ, reset on
    wrap-around (a drop of at least ``reset``); the label compares against the old value.
    """
    keys = _as_key_array(flow_keys)
    seq = np.asarray(seq)
    if seq.shape[0] != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {seq.shape[0]} sequence values")
    if not 0 < t1 < t2 < 2**15:
        raise ValueError(f"need 0 < T1 < T2 < 32768, got T1={t1}, T2={t2}")
    _, flow_ids = np.unique(keys, return_inverse=True)
    n_flows = int(flow_ids.max()) + 1 if flow_ids.size else 0
    return _gap_labels_kernel(flow_ids.astype(np.int64), seq.astype(np.uint16), n_flows, t1, t2, reset)


# ---------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class SetAccuracy:
    """Precision, recall and F1 of a reported set against the true set (empty ratios are 1.0)."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.true_positives,
            "fp": self.false_positives,
            "fn": self.false_negatives,
        }


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def set_accuracy(true_keys: Iterable[Hashable], reported_keys: Iterable[Hashable]) -> SetAccuracy:
    """Precision, recall and F1 of ``reported_keys`` against ``true_keys``."""
    truth, reported = set(true_keys), set(reported_keys)
    tp = len(truth & reported)
    precision = _ratio(tp, len(reported))
    recall = _ratio(tp, len(truth))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return SetAccuracy(precision, recall, f1, tp, len(reported) - tp, len(truth) - tp)


def label_accuracy(truth: np.ndarray, reported: np.ndarray) -> SetAccuracy:
    """Precision, recall and F1 of per-item boolean reports against per-item labels."""
    truth = np.asarray(truth, dtype=bool)
    reported = np.asarray(reported, dtype=bool)
    if truth.shape != reported.shape:
        raise ValueError(f"label shapes differ: {truth.shape} vs {reported.shape}")
    tp = int(np.count_nonzero(truth & reported))
    fp = int(np.count_nonzero(~truth & reported))
    fn = int(np.count_nonzero(truth & ~reported))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return SetAccuracy(precision, recall, f1, tp, fp, fn)


def are(truth: Mapping[Hashable, float], estimates: Mapping[Hashable, float], keys: Iterable[Hashable] | None = None) -> float:
    """Average relative error ``mean |f - f_hat| / f`` over ``keys`` (default: every true key).

    A key missing from ``estimates`` counts as estimate 0 (relative error 1). Empty -> 0.0.
    """
    keys = list(truth if keys is None else keys)
    if not keys:
        return 0.0
    return float(np.mean([abs(truth[k] - estimates.get(k, 0)) / truth[k] for k in keys]))


def aae(truth: Mapping[Hashable, float], estimates: Mapping[Hashable, float], keys: Iterable[Hashable] | None = None) -> float:
    """Average absolute error ``mean |f - f_hat|`` over ``keys`` (default: every true key)."""
    keys = list(truth if keys is None else keys)
    if not keys:
        return 0.0
    return float(np.mean([abs(truth[k] - estimates.get(k, 0)) for k in keys]))
