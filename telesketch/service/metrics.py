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
        self.apply_seconds = Histogram("telesketch_apply_seconds", "Time to apply one batch to the sketches",
                                       buckets=QUERY_BUCKETS, registry=r)
        self.log_write_failures = Counter(
            "telesketch_log_write_failures", "Batches refused because the write-ahead log write failed (disk full, "
            "I/O error): not applied, the sender retries", registry=r)
        self.checkpoint_failures = Gauge(
            "telesketch_checkpoint_failures", "Checkpoints that failed since start (disk full, I/O error); the "
            "write-ahead log keeps every batch until one succeeds", registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def set_epoch(self, epoch_id: int) -> None:
        """The open epoch changed: its id and its start time (packet clock, Unix seconds)."""
        self.epoch.set(epoch_id)
        self.epoch_start.set(epoch_id * self.epoch_ns / 1e9)

    def observe_query(self, query: str, seconds: float) -> None:
        self.query_seconds.labels(query).observe(seconds)

    def observe_partial(self, sketch: str) -> None:
        self.partial_answers.labels(sketch).inc()
