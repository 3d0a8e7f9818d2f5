"""Once-per-epoch warnings that a sketch's memory is too small for its traffic (issue 20).

A Hidden Sketch whose second stage holds more keys than its Count-Min can peel answers *partially*
(:class:`~telesketch.sketches.hiddensketch.HHResult` ``partial``: keys may be missing, estimates are
upper bounds). The service says so on two signals, each logged as one WARNING per (sketch, epoch),
however many queries read the epoch, and counted on ``/metrics``:

* an epoch closes with ``load_factor >= LOAD_WARN`` (cheap, no decode; the answers for it will
  likely be partial): ``telesketch_sketch_overloaded_epochs_total{sketch}``; every close also sets
  ``telesketch_sketch_closed_load_factor{sketch}`` (the last closed epoch's load factor);
* a query answer drew on an epoch whose decode was partial:
  ``telesketch_sketch_partial_epochs_total{sketch}`` (epochs, once each), beside the per-answer
  ``telesketch_partial_answers_total{sketch}``.

The open epoch is queried as it grows, so it is warned about once, the first time it is partial.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

log = logging.getLogger("telesketch.service")

#: load factor (keys over what the decode can peel) from which an epoch's close is warned about
LOAD_WARN = 1.0
#: (sketch, epoch, signal) entries remembered to warn only once; older ones are forgotten first
REMEMBERED = 4096


class OverloadWatch:
    """Warns and counts each (sketch, epoch) once per signal; ``metrics``: a ``ServiceMetrics`` or
    ``None`` (log only). Thread-safe: epochs close on the ingest thread, queries run on others."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        self._seen: OrderedDict[tuple[str, int | None, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def _first(self, sketch: str, epoch: int | None, signal: str) -> bool:
        """True the first time (sketch, epoch, signal) is seen (``epoch`` ``None``: always)."""
        if epoch is None:
            return True
        key = (sketch, int(epoch), signal)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
            return True

    def epoch_closed(self, sketch: str, epoch: int | None, load: float | None, memory_bytes: int) -> None:
        """An epoch of ``sketch`` closed with ``load`` (``None``: the kind cannot tell)."""
        if load is None:
            return
        if self.metrics is not None:
            self.metrics.closed_load_factor.labels(sketch).set(load)
        if load < LOAD_WARN or not self._first(sketch, epoch, "load"):
            return
        log.warning("sketch %s: load factor %.2f at the end of epoch %s: its memory (%d bytes) is too small "
                    "for this traffic, its answers will be partial (see `telesketch size`)",
                    sketch, load, epoch, memory_bytes)
        if self.metrics is not None:
            self.metrics.overloaded_epochs.labels(sketch).inc()

    def partial_epochs(self, sketch: str, epochs: list[int]) -> list[int]:
        """Epochs of ``sketch`` found partial by a query; warns about and counts the ones not seen
        before, and returns them."""
        new = [e for e in epochs if self._first(sketch, e, "partial")]
        if new:
            log.warning("sketch %s: partial answer for epoch(s) %s: its decode could not finish, so keys may be "
                        "missing and estimates are upper bounds; it needs more memory (see `telesketch size`)",
                        sketch, new)
            if self.metrics is not None:
                self.metrics.partial_epochs.labels(sketch).inc(len(new))
        return new
