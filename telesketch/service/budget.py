"""One global budget of in-flight ingest bytes, reserved at admission (before protobuf decoding).

gRPC hands a request to the service as raw bytes (a custom ``request_deserializer``); the ingest
path reserves the message's size here before it decodes anything, and gives it back when the
sketch worker is done with the batch (applied or refused). A message that does not fit is refused
at once (``RESOURCE_EXHAUSTED``, reason ``busy``, retryable): its bytes are dropped undecoded, so
the batches the service holds (decoded, queued, being logged and applied) never add up to more
than ``max_inflight_bytes`` of messages, however many clients push at once.

The budget counts message bytes as received; the decoded columns of a batch add about as much
again while it is queued (``np.frombuffer`` views of the message's byte fields), so the service's
ingest memory is bounded by about twice the budget.
"""
from __future__ import annotations

import threading

#: Trailing metadata of a ``busy`` refusal: milliseconds the client should wait before retrying.
RETRY_AFTER_KEY = "telesketch-retry-after-ms"
#: Trailing metadata of a ``Push`` stream ended by a refusal: how many of the stream's batches
#: (the first N) were applied before it, so a client resends exactly the rest.
APPLIED_BATCHES_KEY = "telesketch-applied-batches"
#: Trailing metadata (binary): the ``PushSummary`` of those applied batches.
PARTIAL_SUMMARY_KEY = "telesketch-partial-summary-bin"

#: What a refused client is told to wait before its first retry (it backs off from there).
RETRY_AFTER_MS = 50


class InflightBudget:
    """A byte budget shared by every ingest RPC; thread-safe, never blocks.

    ``try_reserve(n)`` takes ``n`` bytes if they fit and says whether it did; ``release(n)`` gives
    them back. ``in_use`` and ``peak`` (the most ever in use at once) are in bytes; ``on_change``
    (called with ``in_use`` under the lock) feeds the metrics.
    """

    def __init__(self, limit_bytes: int, on_change=None):
        if limit_bytes < 1:
            raise ValueError(f"the in-flight budget must be positive, got {limit_bytes}")
        self.limit = int(limit_bytes)
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._on_change = on_change or (lambda in_use: None)
        self._lock = threading.Lock()

    def try_reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.in_use + nbytes > self.limit:
                self.refused += 1
                return False
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
            self._on_change(self.in_use)
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - nbytes)
            self._on_change(self.in_use)
