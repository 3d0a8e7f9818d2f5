"""Prometheus metrics of one service instance (its own registry: several servers may share a process).

No flow keys, addresses or sender ids appear as labels: label values are fixed sets (rejection
reasons, query names) or configured sketch names.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: ``telesketch_batches_rejected`` reasons (see telesketch.service.server).
REJECT_REASONS = ("invalid", "oversized", "unauthenticated", "undecodable", "future_timestamp", "too_many_epochs",
                  "sequence_jump", "admin_denied")

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServiceMetrics:
    """The counters, gauges and histograms ``/metrics`` exposes (names prefixed ``telesketch_``)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.packets = Counter("telesketch_packets_ingested", "Packets applied to an epoch", registry=r)
        self.batches = Counter("telesketch_batches_ingested", "Batches accepted (duplicates included)", registry=r)
        self.late = Counter("telesketch_packets_late", "Packets older than the open epoch (not applied)", registry=r)
        self.duplicates = Counter("telesketch_batches_duplicate", "Retried batches already applied", registry=r)
        self.rejected = Counter("telesketch_batches_rejected", "Batches refused", ["reason"], registry=r)
        self.queue_depth = Gauge("telesketch_queue_depth", "Batches admitted and not yet applied", registry=r)
        self.queue_capacity = Gauge("telesketch_queue_capacity", "Batches the queue admits", registry=r)
        self.epoch = Gauge("telesketch_epoch", "Id of the open epoch (ts_ns // epoch length)", registry=r)
        self.epochs_retained = Gauge("telesketch_epochs_retained", "Epochs held (closed and open)", registry=r)
        self.sketch_memory = Gauge("telesketch_sketch_memory_bytes", "Sketch state of the open epoch",
                                   ["sketch"], registry=r)
        self.query_seconds = Histogram("telesketch_query_seconds", "Query latency", ["query"],
                                       buckets=QUERY_BUCKETS, registry=r)
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

    def observe_query(self, query: str, seconds: float) -> None:
        self.query_seconds.labels(query).observe(seconds)
