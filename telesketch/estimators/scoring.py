"""The packet path's per-flow scoring (spec §4): one model call per flow, never per packet.

:class:`FlowScorer` keeps a bounded LRU cache ``flow key -> (packets seen, latest score)``. A packet
is a *scoring point* when its 1-based position in its flow is 1 (and, with ``rescore``, 2, 4, 8,
...). Each packet gets the score of the latest scoring point of its flow at or before it; a flow
evicted from the cache counts as new.

* ``mode="sync"`` (evaluation, tests; deterministic): a batch's scoring points are scored in one
  estimator call before the batch goes to the sketch. Equivalent to the offline two-phase replay.
* ``mode="async"`` (service): ingest never waits on the model. Flows without a score get a
  provisional one (the ``provisional`` estimator, e.g. trees, if given, else 0.5) and their
  scoring-point headers are queued; one worker thread scores the queue in batches of
  ``batch_size`` and fills the cache, so an arriving score changes only later packets.

Per-flow work is done per *distinct flow in a batch*, vectorised per packet.
"""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict

import numpy as np

from telesketch.estimators import as_estimator

PROVISIONAL = 0.5


def _is_power_of_two(x: np.ndarray) -> np.ndarray:
    return (x > 0) & ((x & (x - 1)) == 0)


class FlowScorer:
    """Scores for every packet of a batch from per-flow estimator calls (see module doc)."""

    def __init__(self, estimator, path=None, rescore: bool = False, cache_flows: int = 1 << 20,
                 mode: str = "sync", provisional=None, batch_size: int = 256):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if cache_flows < 1:
            raise ValueError(f"cache_flows must be positive, got {cache_flows}")
        self.estimator = as_estimator(estimator, path)
        self.provisional = None if provisional is None else as_estimator(provisional)
        self.rescore, self.cache_flows, self.mode, self.batch_size = rescore, int(cache_flows), mode, batch_size
        self.cache: OrderedDict[bytes, list] = OrderedDict()  # key -> [packets seen, score or nan]
        self.model_calls = 0  # packets sent to the estimator
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        if mode == "async":
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._drain, name="llmsketch-scorer", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ per batch
    def scores(self, batch) -> np.ndarray:
        """``float64[n]`` score of every packet of ``batch`` (and the cache updated)."""
        n = len(batch)
        if n == 0:
            return np.zeros(0)
        keys = batch.flow_keys_void()
        uniq, inv = np.unique(keys, return_inverse=True)
        ukeys = [k.tobytes() for k in uniq]
        seen, cached = self._lookup(ukeys)
        order = np.argsort(inv, kind="stable")  # by flow, arrival order inside
        sorted_inv = inv[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_inv)) + 1))
        rank = np.arange(n) - np.repeat(starts, np.diff(np.concatenate((starts, [n]))))
        pos = np.empty(n, np.int64)
        pos[order] = seen[sorted_inv] + rank + 1
        point = _is_power_of_two(pos) if self.rescore else pos == 1
        idx = np.flatnonzero(point)
        fresh = np.full(n, np.nan)
        if self.mode == "sync":
            if idx.size:
                fresh[idx] = self.estimator.score_packets(batch, idx)
                self.model_calls += idx.size
        out = self._forward_fill(fresh, order, starts, cached, batch)
        last = np.full(uniq.shape[0], np.nan)
        has = ~np.isnan(fresh[order])
        last_sorted = np.where(has, np.arange(n), -1)
        last_per = np.maximum.reduceat(last_sorted, starts)
        ok = last_per >= 0
        last[ok] = fresh[order][last_per[ok]]
        self._store(ukeys, np.bincount(inv, minlength=uniq.shape[0]), last)
        if self.mode == "async":
            self._enqueue(batch, idx, keys)  # after _store, so the worker finds the entries
        return out

    def _forward_fill(self, fresh, order, starts, cached, batch) -> np.ndarray:
        n = fresh.shape[0]
        f = fresh[order]
        seg = np.repeat(np.arange(starts.shape[0]), np.diff(np.concatenate((starts, [n]))))
        idx = np.where(~np.isnan(f), np.arange(n), -1)
        idx = np.maximum.accumulate(idx)
        valid = idx >= starts[seg]
        filled = np.where(valid, f[np.maximum(idx, 0)], cached[seg])
        missing = np.isnan(filled)
        if missing.any():
            filled[missing] = self._provisional(batch, order[missing])
        out = np.empty(n)
        out[order] = filled
        return out

    def _provisional(self, batch, rows) -> np.ndarray:
        if self.provisional is None:
            return np.full(rows.shape[0], PROVISIONAL)
        return self.provisional.score_packets(batch, rows).astype(np.float64)

    # ------------------------------------------------------------------ cache
    def _lookup(self, ukeys) -> tuple[np.ndarray, np.ndarray]:
        seen = np.zeros(len(ukeys), np.int64)
        score = np.full(len(ukeys), np.nan)
        with self._lock:
            for i, k in enumerate(ukeys):
                entry = self.cache.get(k)
                if entry is not None:
                    seen[i], score[i] = entry
        return seen, score

    def _store(self, ukeys, counts, last) -> None:
        with self._lock:
            cache = self.cache
            for k, c, s in zip(ukeys, counts.tolist(), last.tolist()):
                entry = cache.get(k)
                if entry is None:
                    entry = cache[k] = [0, np.nan]
                else:
                    cache.move_to_end(k)
                entry[0] += c
                if s == s:  # not NaN
                    entry[1] = s
            while len(cache) > self.cache_flows:
                cache.popitem(last=False)

    # ------------------------------------------------------------------ async worker
    def _enqueue(self, batch, idx, keys) -> None:
        if idx.size:
            self._queue.put((keys[idx].copy(), batch.header[idx].copy(), batch.hdr_len[idx].copy()))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            keys, headers, hdr_len = item
            for start in range(0, keys.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                s = self.estimator.score(headers[sl], hdr_len[sl])
                with self._lock:
                    self.model_calls += s.shape[0]
                    for k, v in zip(keys[sl], s.tolist()):
                        entry = self.cache.get(k.tobytes())
                        if entry is not None:
                            entry[1] = v
            self._queue.task_done()

    def flush(self) -> None:
        """Async mode: wait until every queued flow has been scored."""
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        """Stop the async worker (queued work is finished first)."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
