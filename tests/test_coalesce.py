"""Joining queued batches into one sketch update (``EpochManager.apply_many``, the worker's
``coalesce_packets``): every ack, refusal, counter, sequence, log record and sketch state is what
applying the same batches one by one gives, on a stream with duplicates, a sequence jump, a log
write failure in the middle of a group, batches spanning epochs, late packets and rotations inside
groups; the log replays to the same state after a kill; a joined update that fails answers each of
its batches with the error and lets their resends apply; a set with a sketch that is not
``batch_invariant`` is never joined."""
from __future__ import annotations

import asyncio
import copy
import errno
import os

import numpy as np
import pytest

from telesketch.packets import PacketBatch
from telesketch.service import epochs
from telesketch.service.config import ConfigError, ServiceConfig
from telesketch.service.epochs import EpochManager, LogWriteError
from telesketch.service.metrics import ServiceMetrics
from telesketch.service.server import SketchWorker
from telesketch.service.sketchset import SketchSet
from telesketch.traces.generate import generate_batch

SKETCHES = {
    "gaps": {"kind": "gapfilter_ao", "memory_bytes": 8192},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 16384, "threshold": 30},
    "flows": {"kind": "llmsketch", "memory_bytes": 16384, "task": "flow_size", "estimator": "constant",
              "keep_keys": True},
    "truth": {"kind": "exact"},
}
EPOCH_NS = 1_000_000_000


def _stream(seed: int = 4, size: int = 300, packets: int = 12_000) -> list[tuple[PacketBatch, str, int, None]]:
    """``(batch, sender, sequence, raw)`` items: two senders over ~4 epochs of 1 s (batches of 300
    packets, some spanning two epochs), a resend (duplicate), a sequence far ahead (refused), a
    batch of an epoch already closed (late), a batch mixing late and current packets, an empty one."""
    base = generate_batch(packets, 400, seed=seed, duration_s=4.0)
    base = base[np.argsort(base.ts_ns, kind="stable")]
    parts = base.split(size)
    items, seq = [], {"a": 0, "b": 0}
    for i, part in enumerate(parts):
        sender = "a" if i % 3 else "b"
        seq[sender] += 1
        items.append((part, sender, seq[sender], None))
        if i == 6:
            items.append(items[3])  # a resend of an applied batch: duplicate
        if i == 9:
            items.append((part, "c", 10**7, None))  # far ahead: refused (max_sequence_jump)
        if i == 25:
            items.append((parts[1], "d", 1, None))  # from the first epoch: late
            items.append((PacketBatch.concat([parts[2][:50], part[:50]]), "d", 2, None))  # half late
            items.append((PacketBatch.empty(), "d", 3, None))
    return items


def _manager(path, sketches=None, durability: str = "none") -> EpochManager:
    return EpochManager(SketchSet.from_config(copy.deepcopy(sketches or SKETCHES)), EPOCH_NS, keep_epochs=8,
                        data_dir=path, durability=durability, max_sequence_jump=1000)


def _one_by_one(m: EpochManager, items) -> list:
    out = []
    for item in items:
        try:
            out.append(m.apply(*item))
        except Exception as exc:  # noqa: BLE001 - compared with apply_many's answer
            out.append(exc)
    return out


def _grouped(m: EpochManager, items, sizes=(1, 5, 8, 3, 13, 2)) -> list:
    out, i, k = [], 0, 0
    while i < len(items):
        n = sizes[k % len(sizes)]
        out += m.apply_many(items[i : i + n])
        i, k = i + n, k + 1
    return out


def _same_answers(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, Exception) or isinstance(y, Exception):
            assert type(x) is type(y) and str(x) == str(y), (x, y)
        else:
            assert x == y


def _state(m: EpochManager) -> tuple:
    """Everything a client or a restart can see: every epoch's counts and sketch bytes, counters, senders, LSN."""
    with m.lock:
        eps = [(e.id, e.closed, e.packets, e.batches,
                {name: m.sketchset.get(name).dump_state(s) for name, s in e.states.items()}) for e in m.epochs()]
        return eps, vars(m.counters).copy(), dict(m.senders), m.lsn


def _log_records(path) -> list[tuple[int, bytes]]:
    data = (path / "wal.log").read_bytes()
    offset, out = epochs._WAL_HEAD.size, []
    while offset < len(data):
        lsn, payload = epochs._record_at(data, offset, 1 << 30)
        out.append((lsn, bytes(payload)))
        offset += epochs._REC.size + len(payload)
    return out


def _fail_once(sketchset, name: str) -> None:
    """Make ``sketchset.<name>`` (``update`` or ``update_batches``) raise once, then work as before."""
    real, fail = getattr(sketchset, name), [True]

    def broken(states, batches):
        if fail[0]:
            fail[0] = False
            raise RuntimeError("sketch update broke")
        return real(states, batches)

    setattr(sketchset, name, broken)


@pytest.mark.parametrize("size,packets", [(300, 12_000), (5000, 150_000)])
def test_joined_groups_answer_and_leave_what_one_by_one_does(tmp_path, size, packets):
    """Batches of 300 packets are concatenated (below JOIN_BELOW_PACKETS); of 5000, each goes to
    the sketches on its own within the group's one round trip (update_batches)."""
    items = _stream(size=size, packets=packets)
    one, joined = _manager(tmp_path / "one"), _manager(tmp_path / "joined")
    assert joined.sketchset.batch_invariant
    updates = []
    real = joined.sketchset.update_parts
    joined.sketchset.update_parts = lambda states, parts: (updates.append(
        [len(b) for b in next(iter(parts.values()))] if isinstance(next(iter(parts.values())), tuple)
        else [len(next(iter(parts.values())))]), real(states, parts))
    a, b = _one_by_one(one, items), _grouped(joined, items)
    _same_answers(a, b)
    kinds = {type(x).__name__ for x in a}
    assert {"Ack", "BatchRejected"} <= kinds
    assert any(getattr(x, "duplicate", False) for x in a) and any(getattr(x, "late_packets", 0) for x in a)
    assert len({x.epoch for x in a if not isinstance(x, Exception)}) >= 3  # rotations, inside groups too
    assert _state(one) == _state(joined)
    assert _log_records(tmp_path / "one") == _log_records(tmp_path / "joined")
    assert len(updates) < len(items)  # one round trip per group
    if size < epochs.JOIN_BELOW_PACKETS:
        assert max(n for call in updates for n in call) > size  # small batches concatenated
    else:
        assert max(len(call) for call in updates) > 1 and max(n for call in updates for n in call) <= size
    one.close()
    joined.close()


def test_the_log_replays_a_killed_joined_run_to_the_same_state(tmp_path):
    items = _stream(seed=7)
    one, joined = _manager(tmp_path / "one"), _manager(tmp_path / "joined")
    _one_by_one(one, items)
    _grouped(joined, items)
    one._release()  # both killed: no checkpoint, the log holds everything since the last one
    joined._release()
    one, joined = _manager(tmp_path / "one"), _manager(tmp_path / "joined")
    assert joined._replayed > 0
    assert _state(joined) == _state(one)
    one.close()
    joined.close()


def _failing_writev(fail_calls: set[int]):
    """``os.writev`` that fails with ENOSPC on the given calls (1-based), as a full disk does."""
    real, calls = os.writev, [0]

    def writev(fd, buffers):
        calls[0] += 1
        if calls[0] in fail_calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers)

    return writev


def test_a_log_write_failure_inside_a_group_refuses_that_batch_alone(tmp_path, monkeypatch):
    """The 10th and 11th log writes fail: those batches (and a later one of the same sender, which
    must not overtake the failed one) are refused, the others of their groups are applied, exactly
    as one by one; the resend of the failed batches then applies."""
    items = _stream(seed=9)
    one, joined = _manager(tmp_path / "one"), _manager(tmp_path / "joined")
    monkeypatch.setattr(epochs.os, "writev", _failing_writev({10, 11}))
    a = _one_by_one(one, items)
    monkeypatch.setattr(epochs.os, "writev", _failing_writev({10, 11}))
    b = _grouped(joined, items, sizes=(8,))
    monkeypatch.undo()
    _same_answers(a, b)
    failed = [i for i, x in enumerate(b) if isinstance(x, LogWriteError)]
    assert len(failed) >= 2 and any(not isinstance(x, Exception) for x in b[failed[0] // 8 * 8 : failed[0] // 8 * 8 + 8])
    assert _state(one) == _state(joined)
    resend = [items[i] for i in failed]
    _same_answers(_one_by_one(one, resend), joined.apply_many(resend))
    assert _state(one) == _state(joined)
    one.close()
    joined.close()


def test_a_failed_joined_update_answers_each_of_its_batches_and_their_resends_apply(tmp_path):
    items = [(b, "s", i + 1, None) for i, b in enumerate(generate_batch(3000, 100, seed=2, duration_s=0.5).split(500))]
    m = _manager(tmp_path / "m")
    m.apply_many(items[:2])
    before = _state(m)
    _fail_once(m.sketchset, "update")
    dup_of_failed = items[3]
    out = m.apply_many(items[2:5] + [dup_of_failed, items[0]])
    assert [type(x).__name__ for x in out] == ["RuntimeError"] * 4 + ["Ack"]
    assert out[4].duplicate  # applied long before: still a duplicate
    assert m.senders["s"] == 2 and m.counters.batches == 2 and m.counters.packets == 1000
    assert m.counters.duplicate_batches == 1  # the one still a duplicate, not the failed one's
    assert _state(m)[0][0][2:4] == before[0][0][2:4]  # the epoch's packets and batches
    again = m.apply_many(items[2:5])
    assert all(not x.duplicate and x.applied_packets == 500 for x in again)
    assert m.senders["s"] == 5 and m.counters.packets == 2500
    m.close()


def test_a_set_with_a_sketch_that_is_not_batch_invariant_is_applied_one_by_one(tmp_path):
    m = _manager(tmp_path / "m")
    m.sketchset.get("flows").batch_invariant = False
    calls = []
    real = m.sketchset.update
    m.sketchset.update = lambda states, batch: (calls.append(len(batch)), real(states, batch))
    items = [(b, "s", i + 1, None) for i, b in enumerate(generate_batch(3000, 100, seed=2, duration_s=0.5).split(500))]
    m.apply_many(items)
    assert calls == [500] * 6
    m.close()


# ---------------------------------------------------------------------------- the worker
def _run_worker(manager: EpochManager, items, coalesce_packets: int) -> list:
    """Admit every item before the worker thread starts (so they wait in its queue), then let it
    apply them; the answers in admission order (results or exceptions)."""
    metrics = ServiceMetrics()
    worker = SketchWorker(manager, capacity=len(items), metrics=metrics, coalesce_packets=coalesce_packets)

    async def main():
        worker._loop = asyncio.get_running_loop()
        worker._slots = asyncio.Semaphore(len(items))
        futures = [await worker.admit(b, s, q, raw) for b, s, q, raw in items]
        worker._thread.start()
        out = await asyncio.gather(*futures, return_exceptions=True)
        worker.stop()
        return out

    out = asyncio.run(main())
    assert worker.depth == 0
    return out


def test_the_worker_joins_queued_batches_with_the_same_acks_and_states(tmp_path):
    items = _stream(seed=5)
    off, on = _manager(tmp_path / "off"), _manager(tmp_path / "on")
    groups = []
    real = on.apply_many
    on.apply_many = lambda group: (groups.append([len(item[0]) for item in group]), real(group))[1]
    a = _run_worker(off, items, coalesce_packets=0)
    b = _run_worker(on, items, coalesce_packets=2000)
    _same_answers(a, b)
    assert max(len(g) for g in groups) >= 6 and max(sum(g) for g in groups) <= 2000  # joined, within the cap
    assert _state(off) == _state(on)
    off.close()
    on.close()


def test_coalesce_packets_is_validated():
    assert ServiceConfig().coalesce_packets == 65536
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="coalesce_packets"):
            ServiceConfig(coalesce_packets=bad).validate()
    ServiceConfig(coalesce_packets=0).validate()


# ---------------------------------------------------------------------------- group commit
def _counting_fsync(fail_calls: set[int] = frozenset()):
    """``os.fsync`` that counts its calls and fails with EIO on the given ones (1-based)."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) in fail_calls:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    return fsync, calls


def test_every_batch_durability_fsyncs_once_per_group_with_the_same_log(tmp_path, monkeypatch):
    """Group commit: the records are the same bytes as one by one, written before their packets reach
    a sketch; one fsync covers the group's records (before its update and its answers)."""
    items = _stream(seed=3)
    one, joined = _manager(tmp_path / "one", durability="every-batch"), _manager(tmp_path / "joined",
                                                                                 durability="every-batch")
    fsync, calls = _counting_fsync()
    monkeypatch.setattr(epochs.os, "fsync", fsync)
    a = _one_by_one(one, items)
    one_by_one_fsyncs = len(calls)
    calls.clear()
    b = _grouped(joined, items, sizes=(8,))
    monkeypatch.undo()
    _same_answers(a, b)
    assert _state(one) == _state(joined)
    assert _log_records(tmp_path / "one") == _log_records(tmp_path / "joined")
    assert len(calls) < one_by_one_fsyncs / 2  # 61 vs 27 here: the checkpoints fsync as much in both runs
    one._release()  # killed: the log replays to the same state
    joined._release()
    assert _state(_manager(tmp_path / "joined")) == _state(_manager(tmp_path / "one"))


def test_a_failed_group_fsync_refuses_every_batch_it_covered_and_cuts_their_records(tmp_path, monkeypatch):
    base = generate_batch(4000, 100, seed=2, duration_s=0.5).split(500)
    items = [(b, "ab"[i % 2], i // 2 + 1, None) for i, b in enumerate(base)]  # a1 b1 a2 b2 ...
    m = _manager(tmp_path / "m", durability="every-batch")
    assert all(not isinstance(x, Exception) for x in m.apply_many(items[:2]))
    before, records = _state(m), _log_records(tmp_path / "m")
    fsync, calls = _counting_fsync({1})
    monkeypatch.setattr(epochs.os, "fsync", fsync)
    out = m.apply_many(items[2:6])
    monkeypatch.undo()
    assert len(calls) == 1 and all(isinstance(x, LogWriteError) for x in out)
    assert "nothing was applied: retry" in str(out[0])
    assert _state(m) == before and _log_records(tmp_path / "m") == records  # nothing applied, no record left
    # a later batch may not overtake a failed one; the resends apply once
    late = m.apply_many([items[6], items[0]])
    assert isinstance(late[0], LogWriteError) and "resend from sequence 2" in str(late[0]) and late[1].duplicate
    again = m.apply_many(items[2:8])
    assert all(not x.duplicate and x.applied_packets == 500 for x in again)
    m._release()
    restarted = _manager(tmp_path / "m", durability="every-batch")
    assert restarted.counters.packets == 4000 and restarted.senders == {"a": 4, "b": 4}
    restarted.close()


# ---------------------------------------------------------------------------- checkpoint faults
def _kill(m: EpochManager) -> None:
    """As ``kill -9``: the log's descriptor closed without an fsync (the OS keeps what was written),
    no checkpoint, the data directory's lock let go."""
    with m._io:
        os.close(m._wal_fd)
        m._wal_fd = None
    m._stop.set()
    m._lock.close()
    m._lock = None


@pytest.mark.parametrize("grouped", [False, True])
def test_a_log_swap_whose_directory_fsync_fails_keeps_logging_to_the_live_log(tmp_path, monkeypatch, grouped):
    """A checkpoint after a rotation (inside a group, or one by one) replaces ``wal.log`` by a fresh
    one; if the directory fsync after that rename fails, the checkpoint is counted as failed, but the
    batches acknowledged afterwards must still reach the file named ``wal.log``: a kill then replays
    them. (They were written to the replaced, unlinked log and a restart lost every one of them.)
    Without the scored LLM-Sketch: its flow-score cache is not in a checkpoint, so its replayed open
    state differs from the live one in any case (known, /tmp/evidence/coalesce.md)."""
    base = generate_batch(6000, 100, seed=2, duration_s=3.0)
    items = [(b, "s", i + 1, None) for i, b in enumerate(base[np.argsort(base.ts_ns, kind="stable")].split(500))]
    sketches = {name: spec for name, spec in SKETCHES.items() if name != "flows"}
    m = _manager(tmp_path / "m", sketches)
    real = epochs._atomic_write

    def atomic_write(path, chunks):
        real(path, chunks)
        if path.name == "wal.log":  # renamed into place, then the directory's fsync fails
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(epochs, "_atomic_write", atomic_write)
    out = m.apply_many(items) if grouped else [m.apply(*item) for item in items]
    monkeypatch.undo()
    assert all(not isinstance(x, Exception) for x in out) and len({x.epoch for x in out}) >= 3
    assert m.checkpoint_failures >= 2
    live = _state(m)
    _kill(m)
    restarted = _manager(tmp_path / "m", sketches)
    assert _state(restarted) == live
    restarted.close()


def test_a_joined_update_failing_at_a_rotation_does_not_let_a_later_batch_overtake_the_failed_ones(tmp_path):
    """a1 a2 (epoch 0) and a3 (epoch 1) in one group: a3's rotation flushes a1 a2's joined update,
    which fails, so a1 a2 are answered with the error and their sequences taken back. a3 must not
    then be applied past them: the resends of a1 a2 would be answered as duplicates and their
    packets lost (on main a3 was acknowledged and the resends came back duplicate)."""
    base = generate_batch(1500, 100, seed=2, duration_s=0.9)
    first, second = base[np.argsort(base.ts_ns, kind="stable")].split(500)[:2]
    third = generate_batch(500, 100, seed=3, duration_s=0.5)
    third.ts_ns[:] += np.uint64(2 * EPOCH_NS)  # two epochs later: a rotation
    items = [(first, "a", 1, None), (second, "a", 2, None), (third, "a", 3, None)]
    m = _manager(tmp_path / "m")
    m.apply(first[:1], "warm", 1)  # the epoch of the first batches is open
    _fail_once(m.sketchset, "update_batches")
    out = m.apply_many(items)
    assert isinstance(out[0], RuntimeError) and isinstance(out[1], RuntimeError)
    acknowledged = {i for i, x in enumerate(out) if not isinstance(x, Exception)}
    # the sender resends whatever was not acknowledged, in order, as a client does
    again = m.apply_many([item for i, item in enumerate(items) if i not in acknowledged])
    assert all(not isinstance(x, Exception) for x in again)
    assert not any(x.duplicate for x in again), again
    assert m.counters.packets + m.counters.late_packets == 1 + 1500
    m.close()


@pytest.mark.parametrize("grouped", [False, True])
def test_a_batch_whose_own_sketch_update_fails_is_not_overtaken_by_the_next_of_its_sender(tmp_path, grouped):
    """a1 spans two epochs; the sketch update of its first part fails (grouped: the joined update its
    rotation flushes), so a1 is answered with the error and not counted. a2 of the same sender must
    then be refused until a1 is resent, as after a failed log write: applied first, it made a1's
    resend a duplicate, acknowledged and never applied (on main, grouped and one by one)."""
    base = generate_batch(1000, 100, seed=2, duration_s=0.9)
    a1 = base[np.argsort(base.ts_ns, kind="stable")]
    a1.ts_ns[500:] += np.uint64(EPOCH_NS)  # its second half in the next epoch: a rotation inside it
    a2 = generate_batch(300, 50, seed=3, duration_s=0.5)
    a2.ts_ns[:] += np.uint64(EPOCH_NS)
    m = _manager(tmp_path / "m")
    m.apply(a1[:1], "warm", 1)  # a1's first epoch is open
    name = "update_batches" if grouped else "update"
    _fail_once(m.sketchset, name)
    items = [(a1, "a", 1, None), (a2, "a", 2, None)]
    out = m.apply_many(items) if grouped else _one_by_one(m, items)
    assert isinstance(out[0], RuntimeError)
    assert isinstance(out[1], LogWriteError) and "resend from sequence 1" in str(out[1])
    again = m.apply_many(items) if grouped else _one_by_one(m, items)
    assert all(not isinstance(x, Exception) and not x.duplicate for x in again), again
    assert m.counters.packets + m.counters.late_packets == 1 + 1300
    m.close()


@pytest.mark.parametrize("durability", ["none", "every-batch"])
def test_a_failed_joined_update_leaves_no_later_acknowledged_batch_of_its_sender_out_of_the_table(tmp_path, durability):
    """b1 (packets) and b2 (empty: nothing for the sketches) in one group whose joined update fails:
    b1's sequence is taken back. b2 must not stay acknowledged above it: the table would go back
    below b2, so its retry would be applied a second time (on main b2 was acknowledged and, once b1
    was resent, the table said 1)."""
    b1 = generate_batch(500, 50, seed=2, duration_s=0.5)
    m = _manager(tmp_path / "m", durability=durability)
    _fail_once(m.sketchset, "update_batches")
    items = [(b1, "b", 1, None), (PacketBatch.empty(), "b", 2, None)]
    out = m.apply_many(items)
    assert isinstance(out[0], RuntimeError)
    acknowledged = [i for i, x in enumerate(out) if not isinstance(x, Exception)]
    m.apply_many([item for i, item in enumerate(items) if i not in acknowledged])  # the resends
    assert m.senders["b"] == 2
    assert m.apply_many(items)[1].duplicate
    m.close()
