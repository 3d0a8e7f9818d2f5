"""Prometheus metrics of one service instance (its own registry: several servers may share a process).

No flow keys, addresses or sender ids appear as labels: label values are fixed sets (rejection
reasons, query names), configured sketch names, or the build's version strings.

The ``_created`` series prometheus_client adds beside every counter and histogram are turned off
(they are start times, one extra series per counter, and no dashboard reads them). Process metrics
(CPU seconds, resident memory, open file descriptors, start time) come from prometheus_client's
``ProcessCollector`` (Linux ``/proc``) and the Python version from its ``PlatformCollector``.
"""
from __future__ import annotations

import platform

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily

from telesketch.service.sketchset import ClosedGapEpoch
from telesketch.sketches.core import Sketch

#: ``telesketch_batches_rejected`` reasons (see telesketch.service.server).
REJECT_REASONS = ("invalid", "oversized", "unauthenticated", "undecodable", "future_timestamp", "too_many_epochs",
                  "sequence_jump", "admin_denied", "busy")

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# One switch for the whole process (prometheus_client has no per-registry setting); the service's
# registry is the only one telesketch exposes, so nothing else relies on the series.
prometheus_client.disable_created_metrics()


def build_labels() -> dict[str, str]:
    """``telesketch_build_info`` labels: package version, Python, numba and grpcio versions."""
    import grpc
    import numba

    from telesketch import __version__

    return {"version": __version__, "python": platform.python_version(), "numba": numba.__version__,
            "grpcio": grpc.__version__}


class ServiceMetrics:
    """The counters, gauges and histograms ``/metrics`` exposes (names prefixed ``telesketch_``).

    ``telesketch_epoch`` is the open epoch's id; ``telesketch_epoch_start_seconds`` is when it
    starts, in Unix seconds of packet time (``id * epoch length``), so a panel can show how far the
    service's packet clock is from now (a replayed capture lives in its own years).
    """

    def __init__(self, epoch_ns: int = 10_000_000_000):
        r = self.registry = CollectorRegistry()
        self.epoch_ns = int(epoch_ns)
        self.ipv6: IPv6Collector | None = None  #: registered by :meth:`watch`
        self._epoch_id: int | None = None  #: what :meth:`set_epoch` last set
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("telesketch_build", "Version of the running service and its main libraries",
                               registry=r)
        self.build_info.info(build_labels())
        self.packets = Counter("telesketch_packets_ingested", "Packets applied to an epoch", registry=r)
        self.batches = Counter("telesketch_batches_ingested", "Batches accepted (duplicates included)", registry=r)
        self.late = Counter("telesketch_packets_late", "Packets older than the open epoch (not applied)", registry=r)
        self.duplicates = Counter("telesketch_batches_duplicate", "Retried batches already applied", registry=r)
        self.rejected = Counter("telesketch_batches_rejected", "Batches refused", ["reason"], registry=r)
        self.queue_depth = Gauge("telesketch_queue_depth", "Batches admitted and not yet applied", registry=r)
        self.inflight_bytes = Gauge("telesketch_inflight_bytes", "Batch message bytes held by ingest calls "
                                    "(received and not yet applied); at the limit new batches are refused as busy",
                                    registry=r)
        self.inflight_limit = Gauge("telesketch_inflight_bytes_limit", "max_inflight_bytes: the in-flight budget",
                                    registry=r)
        self.inflight_peak = Gauge("telesketch_inflight_bytes_peak", "Most batch bytes held at once since start",
                                   registry=r)
        self.queue_capacity = Gauge("telesketch_queue_capacity", "Batches the queue admits", registry=r)
        self.epoch = Gauge("telesketch_epoch", "Id of the open epoch (ts_ns // epoch length)", registry=r)
        self.epoch_start = Gauge("telesketch_epoch_start_seconds",
                                 "Start of the open epoch, Unix seconds of packet time", registry=r)
        self.epochs_retained = Gauge("telesketch_epochs_retained", "Epochs held (closed and open)", registry=r)
        self.sketch_memory = Gauge("telesketch_sketch_memory_bytes", "Sketch state of the open epoch",
                                   ["sketch"], registry=r)
        self.scorer_memory = Gauge("telesketch_scorer_memory_bytes", "Per-flow scoring state of a sketch "
                                   "(LLM-Sketch's flow-score cache, capped by cache_flows); in "
                                   "telesketch_sketch_memory_bytes only where the sketch charges it (stats: "
                                   "scorer_charged)",
                                   ["sketch"], registry=r)
        self.sketch_device = Gauge("telesketch_sketch_device", "1 for each active sketch: where it runs "
                                   "(device cpu or gpu; backend numpy, cupy, numba or simulator)",
                                   ["sketch", "device", "backend"], registry=r)
        self.query_seconds = Histogram("telesketch_query_seconds", "Query latency", ["query"],
                                       buckets=QUERY_BUCKETS, registry=r)
        self.load_factor = Gauge("telesketch_sketch_load_factor",
                                 "Open epoch's load over what the sketch decodes (Hidden Sketch: >= 1 means "
                                 "answers will likely be partial: the sketch needs more memory)", ["sketch"], registry=r)
        self.partial_answers = Counter("telesketch_partial_answers",
                                       "Answers from a decode that could not finish (keys may be missing, "
                                       "estimates are upper bounds): the sketch needs more memory", ["sketch"], registry=r)
        self.partial_epochs = Counter("telesketch_sketch_partial_epochs",
                                      "Epochs whose decode was found partial by a query, each counted once (keys "
                                      "may be missing, estimates are upper bounds): the sketch needs more memory",
                                      ["sketch"], registry=r)
        self.closed_load_factor = Gauge("telesketch_sketch_closed_load_factor",
                                        "Load factor of the sketch's last closed epoch (Hidden Sketch: >= 1 means "
                                        "its answers are likely partial)", ["sketch"], registry=r)
        self.overloaded_epochs = Counter("telesketch_sketch_overloaded_epochs",
                                         "Epochs that closed with a load factor of 1 or more (logged once each): "
                                         "the sketch's memory is too small for the traffic", ["sketch"], registry=r)
        self.apply_seconds = Histogram("telesketch_apply_seconds", "Time to apply one batch to the sketches",
                                       buckets=QUERY_BUCKETS, registry=r)
        self.log_write_failures = Counter(
            "telesketch_log_write_failures", "Batches refused because the write-ahead log write failed (disk full, "
            "I/O error): not applied, the sender retries", registry=r)
        self.checkpoint_failures = Gauge(
            "telesketch_checkpoint_failures", "Checkpoints that failed since start (disk full, I/O error); the "
            "write-ahead log keeps every batch until one succeeds", registry=r)
        self.query_paced = Gauge(
            "telesketch_query_paced_seconds", "Seconds queries have waited for their share of time since start "
            "(query_share: a client polling back to back leaves the rest to ingestion)", registry=r)
        self.query_cpu = Gauge(
            "telesketch_query_cpu_seconds", "CPU seconds of the threads answering queries since start (the "
            "engine's work; the gRPC reply is built outside it)", registry=r)
        self.query_open_copy = Gauge(
            "telesketch_query_open_copy_bytes", "Bytes of open-epoch sketch states the query engine keeps copied "
            "for reuse until the next batch: at most one per polled sketch", registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def watch(self, manager) -> None:
        """Expose the IPv6 series of ``manager`` (an :class:`~telesketch.service.epochs.EpochManager`),
        read at scrape time by :class:`IPv6Collector`; a second call changes nothing."""
        if self.ipv6 is None:
            self.ipv6 = IPv6Collector(manager)
            self.registry.register(self.ipv6)

    def set_epoch(self, epoch_id: int) -> None:
        """The open epoch changed: its id and its start time (packet clock, Unix seconds)."""
        if epoch_id == self._epoch_id:  # every batch reports it; the gauges change only with the epoch
            return
        self._epoch_id = epoch_id
        self.epoch.set(epoch_id)
        self.epoch_start.set(epoch_id * self.epoch_ns / 1e9)

    def observe_query(self, query: str, seconds: float) -> None:
        self.query_seconds.labels(query).observe(seconds)

    def observe_partial(self, sketch: str) -> None:
        self.partial_answers.labels(sketch).inc()


def gap_coverage(manager) -> dict[str, dict]:
    """Per GapFilter sketch and retained epoch id: ``{name: {epoch: coverage}}``, where coverage is
    the sketch's ``coverage()`` (``{"covered_packets": n, "skipped_packets": {reason: n}}``), a
    closed GapFilter epoch's the one kept at close (:class:`~telesketch.service.sketchset.ClosedGapEpoch`).
    Sketches whose ``coverage()`` is ``None`` (not a GapFilter, a closed epoch written before coverage
    was kept) and sharded states (their shards' envelopes track none) are absent."""
    out: dict[str, dict] = {}
    with manager.lock:
        for epoch in manager.epochs():
            for name, state in epoch.states.items():
                coverage = state.coverage() if isinstance(state, (Sketch, ClosedGapEpoch)) else None
                if coverage is not None:
                    out.setdefault(name, {})[epoch.id] = coverage
    return out


def sum_coverage(parts) -> dict:
    """The sum of ``coverage()`` dicts: ``{"covered_packets": n, "skipped_packets": {reason: n}}``."""
    total = {"covered_packets": 0, "skipped_packets": {}}
    for part in parts:
        total["covered_packets"] += int(part.get("covered_packets", 0))
        for reason, n in part.get("skipped_packets", {}).items():
            total["skipped_packets"][reason] = total["skipped_packets"].get(reason, 0) + int(n)
    return total


def ipv4_only_sketches(manager) -> list[str]:
    """Names of the active sketches that are fed IPv4 rows only (``Sketch.takes_ipv6`` False)."""
    return [cs.name for cs in manager.sketchset.active if not cs.cls.takes_ipv6(cs.params)]


class IPv6Collector:
    """Scrape-time counters of what IPv6 traffic each sketch saw (issue 18):

    * ``telesketch_ipv6_withheld_total{sketch}``: IPv6 packets withheld from an IPv4-only sketch
      (``SketchSet.ipv6_withheld``; 0 for every IPv4-only sketch before its first);
    * ``telesketch_gap_covered_packets_total{sketch}``: packets a GapFilter inspected;
    * ``telesketch_gap_skipped_packets_total{sketch,reason}``: packets it could not inspect (IPv6
      packets without the configured sequence field; reasons as ``gapfilter.SKIP_REASONS``).

    Gap coverage lives in each epoch's state (a continuous GapFilter's closed epoch keeps the
    coverage it had at close, ``ConfiguredSketch.close``), so the counters add the epochs that hold
    it now to the last value seen (at a scrape) of those that no longer do: exact while every epoch
    is scraped at least once before it leaves retention. All restart at 0 with the service, as
    counters do.
    """

    def __init__(self, manager):
        self.manager = manager
        self._seen: dict[tuple[str, int], dict] = {}  # (sketch, epoch) -> last coverage seen
        self._dropped: dict[str, list[dict]] = {}  # sketch -> coverage of epochs no longer retained

    def coverage_totals(self) -> dict[str, dict]:
        """``{sketch: coverage}`` summed over every epoch seen since start (see the class docstring)."""
        from telesketch.sketches.gapfilter import SKIP_REASONS

        now = gap_coverage(self.manager)
        current = {(name, eid): cov for name, per in now.items() for eid, cov in per.items()}
        for key in [k for k in self._seen if k not in current]:
            self._dropped.setdefault(key[0], []).append(self._seen.pop(key))
        self._seen.update(current)
        names = sorted(set(now) | set(self._dropped))
        totals = {}
        for name in names:
            total = sum_coverage(self._dropped.get(name, []) + [c for (n, _), c in self._seen.items() if n == name])
            total["skipped_packets"] = {r: total["skipped_packets"].get(r, 0) for r in SKIP_REASONS}
            totals[name] = total
        return totals

    def collect(self):
        withheld = CounterMetricFamily("telesketch_ipv6_withheld",
                                       "IPv6 packets withheld from a sketch that takes IPv4 rows only "
                                       "(its answers cover IPv4 traffic)", labels=["sketch"])
        counts = dict(self.manager.sketchset.ipv6_withheld)
        for name in sorted(set(ipv4_only_sketches(self.manager)) | set(counts)):
            withheld.add_metric([name], counts.get(name, 0))
        covered = CounterMetricFamily("telesketch_gap_covered_packets",
                                      "Packets a GapFilter inspected for gaps (every IPv4 packet; IPv6 packets "
                                      "that carry its sequence field)", labels=["sketch"])
        skipped = CounterMetricFamily("telesketch_gap_skipped_packets",
                                      "Packets a GapFilter could not inspect (IPv6 without its sequence field), "
                                      "by reason: no gap is ever reported for them", labels=["sketch", "reason"])
        for name, total in self.coverage_totals().items():
            covered.add_metric([name], total["covered_packets"])
            for reason, n in total["skipped_packets"].items():
                skipped.add_metric([name, reason], n)
        return [withheld, covered, skipped]
