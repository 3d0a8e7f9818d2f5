"""Query pacing (``query_share``) and the reused open-epoch copy (issue 16, fault 7).

A client polling queries back to back took CPU that ingestion needed. ``QueryEngine`` paces
queries to ``query_share`` of wall time and copies the open epoch's state only when a batch has
landed since the last copy. These tests drive the engine with a fake clock (no sleeping), and
compare every answer with the exact counts of what was applied.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from telesketch.packets import PacketBatch
from telesketch.service import sketchset as ss
from telesketch.service.config import ConfigError, load_config
from telesketch.service.epochs import EpochManager
from telesketch.service.queries import QueryEngine, WindowSpec
from telesketch.service.sketchset import SketchSet

EXACT = {"exact": {"kind": "exact"}}
T0 = 1_700_000_000 * 10**9


def batch(n: int, seed: int) -> PacketBatch:
    rng = np.random.default_rng(seed)
    src = (0x0A000000 + rng.integers(0, 20, n)).astype(np.uint32)
    return PacketBatch.from_columns(ts_ns=np.full(n, T0, np.uint64), src_ip=src,
                                    dst_ip=np.full(n, 0xC0A80001, np.uint32), src_port=np.full(n, 1000, np.uint16),
                                    dst_port=np.full(n, 443, np.uint16), proto=np.full(n, 6, np.uint8),
                                    length=np.full(n, 100, np.uint16))


def truth(*batches: PacketBatch) -> Counter:
    total = Counter()
    for b in batches:
        total.update(Counter(b.src_ip.tolist()))
    return total


def counts(answer) -> Counter:
    total = Counter()
    for key, value in answer.rows:
        total[int.from_bytes(key[:4], "big")] += int(value)
    return total


class FakeClock:
    """``clock()`` and ``sleep()`` for the engine: time moves only when told to (or when slept)."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def manager():
    m = EpochManager(SketchSet.from_config(EXACT), 3600 * 10**9, 6, None)
    yield m
    m.close()


def slow_engine(manager, clock, share, query_seconds, **kw):
    """An engine whose every answer takes ``query_seconds`` on ``clock``."""
    engine = QueryEngine(manager, query_share=share, clock=clock, sleep=clock.sleep, **kw)
    real = engine._answer

    def answer(*args, **kwargs):
        clock.now += query_seconds
        return real(*args, **kwargs)

    engine._answer = answer
    return engine


def test_back_to_back_queries_get_at_most_their_share_of_time(manager):
    manager.apply(batch(1000, 1))
    clock = FakeClock()
    engine = slow_engine(manager, clock, share=0.25, query_seconds=0.1)
    start = clock.now
    for _ in range(8):
        assert counts(engine.top_flows(WindowSpec(), k=100, sketch="exact")) == truth(batch(1000, 1))
    # the first query does not wait; each later one waits 3x the 0.1 s the previous one took
    assert clock.slept == pytest.approx([0.3] * 7)
    assert engine.paced_seconds == pytest.approx(2.1)
    assert engine.busy_seconds == pytest.approx(0.8) and engine.cpu_seconds >= 0
    busy = 8 * 0.1
    assert busy / (clock.now - start) == pytest.approx(0.8 / 2.9)  # -> 0.25 as the run grows


def test_a_query_after_a_quiet_spell_does_not_wait(manager):
    manager.apply(batch(100, 2))
    clock = FakeClock()
    engine = slow_engine(manager, clock, share=0.25, query_seconds=0.1)
    engine.top_flows(WindowSpec(), k=10, sketch="exact")
    clock.now += 0.3  # the client paused as long as the query's share asks
    engine.top_flows(WindowSpec(), k=10, sketch="exact")
    clock.now += 0.2  # shorter than 0.3: the next waits the rest only
    engine.top_flows(WindowSpec(), k=10, sketch="exact")
    assert clock.slept == pytest.approx([0.1])


def test_share_one_never_waits_and_a_long_query_waits_at_most_the_cap(manager):
    manager.apply(batch(100, 3))
    clock = FakeClock()
    unpaced = slow_engine(manager, clock, share=1.0, query_seconds=0.5)
    for _ in range(3):
        unpaced.top_flows(WindowSpec(), k=10, sketch="exact")
    assert clock.slept == [] and unpaced.paced_seconds == 0
    capped = slow_engine(manager, clock, share=0.1, query_seconds=2.0, max_query_wait_seconds=1.0)
    capped.top_flows(WindowSpec(), k=10, sketch="exact")
    capped.top_flows(WindowSpec(), k=10, sketch="exact")  # earned 18 s; waits the 1 s cap
    assert clock.slept == pytest.approx([1.0])


def test_a_refused_query_still_counts_its_time(manager):
    """A query that fails (here: a sketch that does not answer top_flows) still used the server."""
    manager.apply(batch(100, 4))
    clock = FakeClock()
    engine = QueryEngine(manager, query_share=0.5, clock=clock, sleep=clock.sleep)
    real = ss.pick

    def slow_pick(*args, **kw):
        clock.now += 0.2
        return real(*args, **kw)

    try:
        ss.pick = slow_pick
        with pytest.raises(Exception):
            engine.top_flows(WindowSpec(), k=10, sketch="no-such-sketch")
    finally:
        ss.pick = real
    engine.top_flows(WindowSpec(), k=10, sketch="exact")
    assert clock.slept == pytest.approx([0.2])


def test_the_open_epoch_copy_is_reused_until_a_batch_lands(manager, monkeypatch):
    first, second = batch(500, 5), batch(700, 6)
    manager.apply(first)
    engine = QueryEngine(manager)
    cs = manager.sketchset.sketches[0]
    copies = []
    real_copy = type(cs).copy

    def counting_copy(self, state):
        copies.append(1)
        return real_copy(self, state)

    monkeypatch.setattr(type(cs), "copy", counting_copy)
    for _ in range(3):
        assert counts(engine.top_flows(WindowSpec(), k=100, sketch="exact")) == truth(first)
    assert len(copies) == 1  # nothing changed between the three queries: one copy
    manager.apply(second)
    for _ in range(2):
        assert counts(engine.top_flows(WindowSpec(), k=100, sketch="exact")) == truth(first, second)
    assert len(copies) == 2
    # a new epoch opened: a fresh copy, answering from the new epoch only
    third = PacketBatch(**dict(batch(300, 7).columns(), ts_ns=np.full(300, T0 + 3600 * 10**9, np.uint64)))
    manager.apply(third)
    assert counts(engine.top_flows(WindowSpec(), k=100, sketch="exact")) == truth(third)
    assert counts(engine.top_flows(WindowSpec(last=2), k=100, sketch="exact")) == truth(first, second, third)
    assert len(copies) == 3


def test_a_copy_taken_before_a_batch_does_not_see_it(manager):
    """The reused copy is a copy: a batch applied after it was taken changes the live state only."""
    first = batch(400, 8)
    manager.apply(first)
    engine = QueryEngine(manager)
    cs = manager.sketchset.sketches[0]
    taken = engine._epochs(WindowSpec(), cs=cs)[0].states["exact"]
    manager.apply(batch(400, 9))
    assert engine._epochs(WindowSpec(), cs=cs)[0].states["exact"] is not taken
    rows = ss.top_flows(cs, [taken], 100).rows
    assert counts(type("A", (), {"rows": rows})) == truth(first)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_query_share_outside_zero_to_one_is_a_config_error(share):
    with pytest.raises(ConfigError, match="query_share"):
        load_config(None, {"query_share": share})
    with pytest.raises(ValueError, match="query_share"):
        QueryEngine(EpochManager(SketchSet.from_config(EXACT), 10**9, 6, None), query_share=share)


def test_query_share_defaults_to_a_quarter_and_reaches_the_engine():
    from telesketch.service.config import ServiceConfig

    assert ServiceConfig().query_share == 0.25
    assert load_config(None, {"query_share": 1}).query_share == 1.0


def test_the_kept_copies_are_one_state_per_polled_sketch_and_stale_ones_go():
    """The bound (``QueryEngine`` docstring): one copy per sketch, all of the current generation; a
    batch makes the next query drop every stale copy, of any sketch, before it copies."""
    m = EpochManager(SketchSet.from_config({"a": {"kind": "exact"}, "b": {"kind": "exact"}}), 3600 * 10**9, 6, None)
    try:
        m.apply(batch(500, 10))
        engine = QueryEngine(m)
        a, b = m.sketchset.sketches
        assert engine.open_copy_bytes == 0
        for _ in range(2):
            engine.top_flows(WindowSpec(), k=10, sketch="a")
            engine.top_flows(WindowSpec(), k=10, sketch="b")
        live = m.open.states
        assert set(engine._open_copies) == {"a", "b"}
        assert engine.open_copy_bytes == a.memory(live["a"]) + b.memory(live["b"]) > 0
        m.apply(batch(300, 11))
        engine.top_flows(WindowSpec(), k=10, sketch="a")
        assert set(engine._open_copies) == {"a"}  # b's copy of the older generation is gone
        assert engine.open_copy_bytes == a.memory(m.open.states["a"])
    finally:
        m.close()

