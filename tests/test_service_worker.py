"""The sketch worker's hand-off back to the event loop (issue 21 (a)): answers settled while the
loop is busy reach it in one wake-up, in admission order, each with its own result or error, and
every queue slot and budget byte comes back."""
from __future__ import annotations

import asyncio
import threading

from telesketch.service.budget import InflightBudget
from telesketch.service.epochs import ApplyResult, BatchRejected
from telesketch.service.metrics import ServiceMetrics
from telesketch.service.server import SketchWorker
from telesketch.errors import QueryError


class _SketchSet:
    def applied_marker(self):
        return None


class _Manager:
    """Applies "batches" (ints); batch 3 is refused. ``applied`` is set after the last one."""

    sketchset = _SketchSet()

    def __init__(self, last: int):
        self.order: list[int] = []
        self.last = last
        self.applied = threading.Event()

    def apply(self, batch, sender_id, sequence, raw):
        self.order.append(batch)
        if batch == self.last:
            self.applied.set()
        if batch == 3:
            raise BatchRejected(QueryError, "invalid", "batch 3 is bad")
        return ApplyResult(sender_id, sequence, False, 10, 10, 0, 1)


def test_answers_settled_while_the_loop_is_busy_come_in_one_wakeup_in_order():
    n = 6
    manager = _Manager(last=n - 1)
    metrics = ServiceMetrics()
    budget = InflightBudget(1 << 20, metrics.inflight_bytes.set)
    worker = SketchWorker(manager, capacity=n, metrics=metrics, budget=budget)
    wakeups = []

    async def main():
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(callback, *args, **kw):
            wakeups.append(callback)
            return real(callback, *args, **kw)

        loop.call_soon_threadsafe = counting
        worker.start()
        futures = []
        for i in range(n):
            assert budget.try_reserve(100)
            futures.append(await worker.admit(i, "s", i + 1, b"", reserved=100))
        # the loop stays busy (blocked) until the worker has applied every batch
        assert manager.applied.wait(10)
        threading.Event().wait(0.3)  # blocking on purpose: the worker hands the last answer over meanwhile
        results = await asyncio.gather(*futures, return_exceptions=True)
        worker.stop()
        return results

    results = asyncio.run(main())
    assert manager.order == list(range(n))
    assert len(wakeups) == 1  # one wake-up of the loop for all six answers (it was one per batch)
    assert isinstance(results[3], BatchRejected) and results[3].reason == "invalid"
    assert [r.sequence for i, r in enumerate(results) if i != 3] == [1, 2, 3, 5, 6]
    assert worker.depth == 0 and budget.in_use == 0
    assert worker._slots._value == n
