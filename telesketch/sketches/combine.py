"""Each sketch kind's rule for answering over several states: the windows its ``combine`` returns.

A window joins a kind's states over the epochs of a query window (:data:`~telesketch.sketches.core.EPOCHS`)
or the shards' windows of a sharded sketch (:func:`~telesketch.sketches.core.over_shards`); both the
service (:mod:`telesketch.service.sketchset`) and the Ray front end (:mod:`telesketch.distributed.cluster`)
ask these, so every rule is written once:

* Hidden Sketch (not mergeable, one-pass): a key's window estimate is the sum over the epochs of its
  reported estimate, or the epoch's point estimate where it was not reported; keys reported in any
  epoch are candidates (``sum of per-epoch estimates``). Keys are whole on one shard (routed by their
  own key), so shards are unioned. A threshold below the per-epoch floor ``thresh`` is refused.
* ResidualSketch: the per-layer estimates of every state (every shard of every epoch) are summed and
  one HHH pass runs over them (``summed layer estimates``); ``hhh_rows`` does so once per address
  family (the IPv4 and IPv6 trees, side by side, at one threshold).
* GapFilter: a window is the union of its epochs' gap events (``union``); shards are one stream
  again, ordered by time.
* LLM-Sketch: a flow's size is the sum of its per-epoch estimates, read from its owning shard; top
  flows re-estimate every epoch's top ``k`` over all epochs, per shard, and union the shards.
* mergeable kinds (``exact``): :class:`~telesketch.sketches.core.MergedWindow`.
"""
from __future__ import annotations

import numpy as np

from telesketch.errors import Precondition
from telesketch.sketches.core import Combined, Window, window_threshold
from telesketch.sketches.hiddensketch import key_order


def by_count(rows: list) -> list:
    """Rows ``(key, count)`` largest count first, ties by key (IPv4 ``int`` keys before IPv6 bytes)."""
    return sorted(rows, key=lambda kv: (-kv[1], key_order(kv[0])))


class FloorError(Precondition):
    """A query threshold below what the sketch can report (keys at or under it are never reported)."""


# ====================================================================== Hidden Sketch
class HiddenWindow(Window):
    """Hidden Sketch over epochs and shards (see the module docstring)."""

    def _partial(self, states: list) -> int:
        return sum(1 for s in states if s.decode().partial)

    def volume(self, packets: int) -> int:
        """``N`` of the window's ``phi * N``: ``packets``, or its bytes when the sketch counts bytes."""
        return _hidden_volume(self.flat(), packets)

    def partial_epochs(self) -> list[int]:
        """Positions of the epochs with a partial decode on some shard (decodes are cached, so after
        a query this costs no second decode)."""
        return [i for i, shards in enumerate(self.per_epoch()) if self._partial(shards)]

    def check_floor(self, threshold: float | None, query: str, name: str = "") -> None:
        """Raise :class:`FloorError` for a threshold below the sketch's per-epoch floor ``thresh``:
        only keys whose first-stage estimate passes it in an epoch are reported, so the answer would
        silently miss keys. (Over several epochs a key above the threshold in the window but at most
        ``thresh`` in each epoch can still be missed: the floor holds per epoch.)"""
        flat = self.flat()
        if threshold is None or not flat:
            return
        p = flat[0].params
        if threshold >= p.thresh:
            return
        unit = p.weight
        setting = "expected_epoch_bytes" if unit == "bytes" else "expected_epoch_items"
        expected = p.expected_epoch_bytes if unit == "bytes" else p.expected_epoch_items
        how = (f"its thresh: phi {p.phi:g} x {setting} {expected:,} - 10, unless set" if expected is not None
               else f"its thresh: phi {p.phi:g} x expected_epoch_items x {_mean_packet_bytes()} bytes - 10, unless set")
        raise FloorError(
            f"{query}: threshold {threshold:,.0f} {unit} is below sketch {name!r} (hiddensketch)'s floor of "
            f"{p.thresh:,} {unit} per epoch ({how}): keys at or under it are never reported, so the answer "
            f"would be incomplete. Ask for a threshold >= {p.thresh:,} {unit}, or lower the floor with a "
            f"smaller {setting} (or phi, or thresh) under [sketches.{name}] (more keys reach "
            "the second stage: give it more memory_bytes)")

    def heavy_hitters(self, packets, phi=None, threshold=None) -> Combined:
        """``packets``: the window's packets; a byte-weighted sketch takes phi of its bytes instead."""
        flat = self.flat()
        if not self.sharded and len(flat) == 1 and phi is None and threshold is None:
            return Combined(list(flat[0].heavy_hitters()), "single", self._partial(flat))
        packets = _hidden_volume(flat, packets)
        thr = window_threshold(phi, threshold, packets, flat[0].params.phi)
        rows = by_count([row for shard in self.per_shard() for row in _hidden_rows(shard, thr)])
        if self.sharded:  # each key lives on one shard (routed by its own key)
            return Combined(rows, "union over shards of sums of per-epoch estimates", self._partial(flat))
        return Combined(rows, self.label("sum of per-epoch estimates"), self._partial(flat))

    def heavy_changers(self, before, packets, phi=None, threshold=None) -> Combined:
        """``packets``: the larger of the two windows' packet counts."""
        after = self.flat()
        if after[0].unit == "bytes":  # the larger of the two windows' bytes
            packets = max(_hidden_volume(after, packets), _hidden_volume(before.flat(), packets))
        if not self.sharded and len(after) == 1:  # the sketch's own rule, at its own default threshold
            rows = list(after[0].heavy_changers(before.flat()[0], hc_threshold=window_threshold(phi, threshold, packets)))
            return Combined(rows, "single", self._partial([*before.flat(), *after]))
        thr = window_threshold(phi, threshold, packets, after[0].params.phi)
        rows, partial = [], 0
        for b, a in zip(before.per_shard(), self.per_shard()):
            rows += list(a[0].heavy_changers(b[0], hc_threshold=thr)) if len(a) == 1 else _hidden_changes(b, a, thr)
            partial += self._partial([*b, *a])
        rows.sort(key=lambda kv: (-abs(kv[1]), key_order(kv[0])))
        return Combined(rows, "union over shards" if self.sharded else "sum of per-epoch estimates", partial)


def _mean_packet_bytes() -> int:
    from telesketch.sketches.hiddensketch import MEAN_PACKET_BYTES

    return MEAN_PACKET_BYTES


def _hidden_volume(states: list, packets: int) -> int:
    """``N`` of a window's ``phi * N``: ``packets``, or the states' bytes when they count bytes."""
    if states and states[0].unit == "bytes":
        return sum(s.volume for s in states)
    return packets


def _hidden_window_estimates(states: list, keys) -> dict:
    """Per key: sum over epochs of its reported estimate, or the epoch's point estimate."""
    totals = {k: 0 for k in keys}
    for s in states:
        reported = dict(s.heavy_hitters())
        for k in totals:
            totals[k] += reported[k] if k in reported else int(s.estimate(k))
    return totals


def _hidden_rows(states: list, thr: float) -> list:
    """``[(key, estimate)]`` above ``thr``: the window rule over ``states`` (one state: its reports)."""
    candidates = {k for s in states for k, _ in s.heavy_hitters()}
    totals = _hidden_window_estimates(states, candidates) if len(states) > 1 else dict(states[0].heavy_hitters())
    return [(k, v) for k, v in totals.items() if v > thr]


def _hidden_changes(before: list, after: list, thr: float) -> list:
    """``[(key, change)]``: sums of per-epoch estimates of two windows, change above ``thr``."""
    candidates = {k for s in before + after for k, _ in s.heavy_hitters()}
    now, then = _hidden_window_estimates(after, candidates), _hidden_window_estimates(before, candidates)
    return [(k, now[k] - then[k]) for k in candidates if abs(now[k] - then[k]) > thr]


# ====================================================================== ResidualSketch / CocoSketch
class HHHWindow(Window):
    """ResidualSketch (or CocoSketch) over epochs and shards: summed layer estimates, one HHH pass."""

    def hhh(self, packets, phi=None, threshold=None) -> Combined:
        """Default threshold: the sketch's ``phi`` of the window's packets (not its construction
        ``T``, which is phi x expected_packets whatever the window holds); with a configured
        absolute threshold, each epoch's own ``T`` (service-wide when sharded), summed."""
        from telesketch.sketches.cocosketch import merged_hhh

        flat = self.flat()
        thr = self._threshold(packets, phi, threshold)
        if len(flat) == 1:
            return Combined(list(flat[0].hhh(thr)), "single")
        return Combined([(e.prefix, e.length, e.discounted) for e in merged_hhh(flat, thr)], "summed layer estimates")

    def hhh_rows(self, packets, phi=None, threshold=None) -> Combined:
        """Both trees' heavy prefixes (:class:`~telesketch.sketches.cocosketch.HHHRow`: family,
        prefix bytes, length, estimate, discounted), IPv4 rows first, each family finest first.

        The same rule as :meth:`hhh`, once per family: each tree's layer estimates are summed over
        every state (epochs and shards) and one HHH pass runs over them, at the same threshold
        (a fraction of the window's packets of both families, or the summed ``T``)."""
        from telesketch.sketches.cocosketch import hhh_rows, merged_hhh

        flat = self.flat()
        thr = self._threshold(packets, phi, threshold)
        if len(flat) == 1:
            return Combined(list(flat[0].hhh_rows(thr)), "single")
        return Combined(hhh_rows(merged_hhh(flat, thr, family=4), merged_hhh(flat, thr, family=6)),
                        "summed layer estimates")

    def _threshold(self, packets, phi, threshold) -> float | None:
        """:meth:`hhh`'s threshold in the sketch's unit, packets or bytes (``None``: the one state's own ``T``)."""
        flat = self.flat()
        if flat[0].unit == "bytes":  # byte-weighted: phi of the window's bytes
            packets = sum(s.total_weight for s in flat)
        thr = window_threshold(phi, threshold, packets)
        if thr is None and flat[0].params.threshold is None:
            thr = flat[0].params.phi * packets
        if thr is None and len(flat) > 1:
            thr = self.rule.threshold * len(self.per_epoch()) if self.sharded else float(sum(s.T for s in flat))
        return thr


# ====================================================================== GapFilter
class GapWindow(Window):
    """GapFilter over epochs (union of their events) and shards (one stream again, by time)."""

    def gap_events(self) -> Combined:
        return self.epoch_events()


# ====================================================================== LLM-Sketch
class FlowWindow(Window):
    """LLM-Sketch over epochs (sums of per-epoch estimates) and shards (a flow on its owning shard)."""

    def flow_size(self, keys: np.ndarray) -> Combined:
        owner = self.rule.owner(keys) if self.sharded else np.zeros(keys.shape[0], np.int64)
        total = np.zeros(keys.shape[0], np.int64)
        for shard, states in enumerate(self.per_shard()):  # each key from its owning shard
            mine = owner == shard
            if mine.any():
                for s in states:
                    total[mine] += np.asarray(s.flow_size(keys[mine]), np.int64)
        if self.sharded:
            return Combined(total, "owning shard, sum of per-epoch estimates")
        return Combined(total, self.label("sum of per-epoch estimates"))

    def top_flows(self, k: int) -> Combined:
        if not self.sharded and len(self.parts) == 1:
            return Combined(list(self.parts[0].top_flows(k)), "single")
        # flows are whole on one shard: each shard's window answer, unioned
        rows = by_count([row for shard in self.per_shard() for row in _top_flows(shard, k)])[:k]
        return Combined(rows, "union over shards of sums of per-epoch estimates" if self.sharded
                        else "sum of per-epoch estimates")


def _top_flows(states: list, k: int) -> list:
    """The ``k`` largest flows over ``states``: every epoch's top ``k``, re-estimated over all epochs."""
    if len(states) == 1:
        return list(states[0].top_flows(k))
    candidates = list(dict.fromkeys(key for s in states for key, _ in s.top_flows(k)))
    totals = np.zeros(len(candidates), np.int64)
    for s in states:
        totals += np.asarray(s.estimate_reported(candidates), np.int64)
    order = sorted(range(len(candidates)), key=lambda i: (-totals[i], candidates[i]))[:k]
    return [(candidates[i], int(totals[i])) for i in order]
