"""The sharded front end's transport and pipelining (issue 21, fourth pass).

* ``route_packed``: each shard's parts in one contiguous buffer, exactly ``route_parts``'s columns;
* ``SharedRing`` + ``ShardWorker.update_shared``: the same update as the parts sent by value;
* the sketch worker acknowledges a batch only once the shards applied it (``wait_applied``), in
  admission order, and answers a batch that failed on the shards with the failure;
* on a real local Ray cluster, ``ShardPool`` with batches in flight applies every batch in order.
"""
from __future__ import annotations

import asyncio
import pickle
import threading
import time

import numpy as np
import pytest
from local_ray import start_local_ray

from telesketch.distributed.cluster import (
    SharedRing,
    ShardWorker,
    route_packed,
    route_parts,
    shared_memory_usable,
)
from telesketch.errors import Unavailable
from telesketch.packets import HEADER_BYTES, PacketBatch
from telesketch.service.epochs import ApplyResult
from telesketch.service.metrics import ServiceMetrics
from telesketch.service.server import SketchWorker
from telesketch.traces.generate import generate_batch

SPECS = {"truth": {"kind": "exact"},
         "hh_src": {"kind": "hiddensketch", "memory_bytes": 64 * 1024, "phi": 0.01, "expected_epoch_items": 20_000}}


def _without_header(batch: PacketBatch) -> PacketBatch:
    cols = batch.columns()
    cols["header"] = np.zeros((len(batch), HEADER_BYTES), np.uint8)
    cols["hdr_len"] = np.zeros(len(batch), np.uint8)
    return PacketBatch(**cols)


def _same(a, b) -> bool:
    return a.n == b.n and a.columns.keys() == b.columns.keys() and all(
        a.columns[k].dtype == b.columns[k].dtype and np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("by_source", [False, True])
def test_packed_parts_are_route_parts_in_one_buffer(strip, by_source):
    batch = generate_batch(5_000, 300, seed=4)
    if strip:
        batch = _without_header(batch)
    for shards in (1, 3):
        packed, parts = route_packed(batch, shards, 7, by_source), route_parts(batch, shards, 7, by_source)
        assert len(packed) == shards
        for p, (flow, source) in zip(packed, parts):
            buffers = []
            wire = pickle.dumps(p, protocol=5, buffer_callback=buffers.append)
            assert len(buffers) == 1  # one out-of-band buffer: the whole part, zero-copy through Ray
            sent = pickle.loads(wire, buffers=buffers)
            got_flow, got_source = sent.parts()
            assert _same(got_flow, flow)
            assert (got_source is None) == (source is None)
            if source is not None:
                assert _same(got_source, source)
            for column in got_flow.columns.values():
                assert column.ctypes.data % column.itemsize == 0  # aligned views, no copy needed


def test_an_update_through_a_shared_ring_slot_is_the_update_by_value(tmp_path):
    batches = generate_batch(12_000, 400, seed=9).split(3_000)
    by_value, by_ring = ShardWorker(SPECS), ShardWorker(SPECS)
    by_value.advance(0)
    by_ring.advance(0)
    ring = SharedRing("test", 2)
    try:
        paths = []
        for batch in batches:
            by_value.update(route_packed(batch, 2, 7, True)[1])
            taken = {}

            def slot(shard, nbytes):
                taken[shard] = ring.take(nbytes) if shard == 1 else (None, np.empty(nbytes, np.uint8))
                return taken[shard][1]

            p = route_packed(batch, 2, 7, True, slot)[1]
            path = taken[1][0]
            paths.append(path)
            by_ring.update_shared(path, len(p.buffer), p.n_flow, p.n_source, p.columns)
        assert paths[0] == paths[2] and paths[0] != paths[1]  # two slots, taken in turn
        for name in SPECS:
            assert by_ring.dump(name) == by_value.dump(name)
        assert by_ring.count() == by_value.count() > 0
        with pytest.raises(Exception, match="expected"):
            by_ring.update_shared(paths[0], 1 << 30, 1, None, ())
    finally:
        ring.close()
    assert ring.files == [None, None]


def test_a_ring_slot_grows_under_a_new_name():
    ring = SharedRing("grow", 1)
    try:
        small, view = ring.take(100)
        view[:] = 7
        again, _ = ring.take(50)
        assert again == small  # fits: the same file
        _, view = ring.take(4 << 20)
        assert len(view) == 4 << 20 and ring.files[0][2] >= 4 << 20  # a new, larger file
    finally:
        ring.close()


def test_two_rings_of_one_tag_in_one_process_use_their_own_files():
    """Two sharded pools in one process (a service restarted in place) must not share slots (with
    named files in /dev/shm the second one hit FileExistsError)."""
    first, second = SharedRing("shard0", 1), SharedRing("shard0", 1)
    try:
        assert first.take(10)[0] != second.take(10)[0]  # was FileExistsError on the second
    finally:
        first.close()
        second.close()


def _open_slot_files(tag: str) -> set[int]:
    """Inodes of the :class:`SharedRing` slot files tagged ``tag`` that this process holds open (by
    the ring's descriptor or an mmap's own duplicate of it: one file, one inode)."""
    import os

    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith(f"/memfd:telesketch-{tag}-"):
                found.add(os.stat(f"/proc/self/fd/{name}").st_ino)
        except OSError:  # closed since the listing (listdir's own descriptor, say)
            continue
    return found


@pytest.mark.skipif(not shared_memory_usable(), reason="needs memfd_create and /proc/<pid>/fd")
def test_a_ring_dropped_without_close_closes_its_slot_files():
    """A ``ShardPool`` dropped without ``shutdown()`` dropped its rings unclosed: each slot's memfd
    stayed open (and its memory held) until the process exited. A ring now closes its files when
    it is collected; ``close()`` still closes them at once, and a ring taken from again after
    ``close()`` closes the new ones too."""
    import gc

    ring = SharedRing("dropped", 2)
    for nbytes in (100, 3 << 20, 4 << 20):  # the last one regrows slot 0: its first file is closed
        ring.take(nbytes)
    assert len(_open_slot_files("dropped")) == 2
    del ring
    gc.collect()
    assert _open_slot_files("dropped") == set()  # were 2 left open on main
    closed = SharedRing("closed", 1)
    closed.take(10)
    closed.close()
    assert _open_slot_files("closed") == set()
    closed.take(10)  # used again after close: a fresh file, closed when the ring goes
    assert len(_open_slot_files("closed")) == 1
    del closed
    gc.collect()
    assert _open_slot_files("closed") == set()


class _PipelinedSet:
    """A sketch set whose update returns before the 'shards' apply it: markers count batches, and
    ``wait_applied`` takes a while, then marks the batches up to the marker applied."""

    def __init__(self, fail_at=None):
        self.marker = 0
        self.applied = 0
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def applied_marker(self):
        return self.marker

    def applied_through(self):
        return self.applied

    def wait_applied(self, marker):
        time.sleep(0.02)
        with self.lock:
            if self.fail_at is not None and marker >= self.fail_at:
                raise Unavailable(f"a shard failed applying batch {self.fail_at}")
            self.applied = max(self.applied, marker)


class _Manager:
    def __init__(self, sketchset):
        self.sketchset = sketchset

    def apply(self, batch, sender_id, sequence, raw):
        self.sketchset.marker += 1
        return ApplyResult(sender_id, sequence, False, len(batch), len(batch), 0, 0)


def _run_worker(sketchset, batches: int):
    """Admit ``batches`` batches; per batch, ``(sequence, applied when answered, result or error)``
    in the order the answers arrived."""
    answers = []

    async def main():
        worker = SketchWorker(_Manager(sketchset), 4, ServiceMetrics())
        worker.start()
        batch = generate_batch(10, 3, seed=1)
        futures = []
        for seq in range(1, batches + 1):
            future = await worker.admit(batch, "s", seq, None)
            future.add_done_callback(lambda f, seq=seq: answers.append(
                (seq, sketchset.applied, f.exception() or f.result())))
            futures.append(future)
        await asyncio.gather(*futures, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    asyncio.run(main())
    return answers


def test_the_worker_acknowledges_a_batch_only_once_the_shards_applied_it():
    answers = _run_worker(_PipelinedSet(), 10)
    assert [seq for seq, _, _ in answers] == list(range(1, 11))  # admission order
    for seq, applied, result in answers:
        assert isinstance(result, ApplyResult) and result.sequence == seq
        assert applied >= seq  # an ack always follows the shards' apply of that batch


def test_a_batch_that_failed_on_the_shards_is_answered_with_the_failure():
    answers = _run_worker(_PipelinedSet(fail_at=4), 8)
    assert [seq for seq, _, _ in answers] == list(range(1, 9))
    for seq, applied, result in answers:
        if seq < 4:
            assert isinstance(result, ApplyResult) and applied >= seq
        else:  # never acknowledged: the client resends it (after a restart replays the log)
            assert isinstance(result, Unavailable), (seq, result)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _assert_shards_equal_offline(pool, specs, batches):
    """Each shard's dumped states equal its shard sketches fed offline, batch by batch in order."""
    from telesketch.distributed.cluster import shard_spec
    from telesketch.service.sketchset import SketchSet

    for shard, blobs in enumerate(zip(*[pool.dump(name) for name in SPECS])):
        local = SketchSet.from_config(shard_spec(specs, shard))
        states = local.new_states(0)
        for b in batches:
            flow, source = route_parts(b, 2, pool.route_seed, pool.by_source)[shard]
            local.update_parts(states, {"truth": flow.batch(), "hh_src": source.batch()})
        for name, blob in zip(SPECS, blobs):
            assert blob == local.get(name).dump_state(states[name]), (shard, name)


@pytest.mark.parametrize("shared", [True, False])
def test_a_pipelined_pool_applies_every_batch_in_order(ray_cluster, shared):
    from telesketch.distributed.cluster import shard_specs
    from telesketch.distributed.service import ShardPool

    specs = shard_specs(SPECS, 2)
    pool = ShardPool(specs, 2)
    try:
        assert pool.shared  # every actor on this machine
        pool.shared = shared  # False: PackedParts through Ray's object store
        pool.pipeline(2)
        pool.advance(0)
        batches = generate_batch(40_000, 2_000, seed=11).split(2_500)
        tickets = [pool.update(b) for b in batches]
        assert tickets == list(range(1, len(batches) + 1))
        assert len(pool._inflight) <= 2  # never more than the limit in flight
        pool.wait(tickets[-1])
        assert not pool._inflight
        # the dump follows every update submitted before it: the shards' states equal the same
        # shard sketches fed offline, batch by batch in arrival order
        _assert_shards_equal_offline(pool, specs, batches)
    finally:
        pool.shutdown()


def test_a_pool_dropped_without_shutdown_closes_its_rings(ray_cluster):
    """The whole path of the ring test above: a ShardPool that carried a batch through shared memory
    and is then dropped without ``shutdown()`` leaves no slot file open."""
    import gc

    from telesketch.distributed.cluster import shard_specs
    from telesketch.distributed.service import ShardPool

    pool = ShardPool(shard_specs(SPECS, 2), 2)
    if not pool.shared:
        pool.shutdown()
        pytest.skip("the actors cannot read this process's shared memory here")
    pool.advance(0)
    pool.update(generate_batch(4_000, 200, seed=3))
    assert _open_slot_files("shard0") and _open_slot_files("shard1")
    del pool
    gc.collect()
    assert not _open_slot_files("shard0") and not _open_slot_files("shard1")


class _PacedSet:
    """Like the sharded pool with 2 batches in flight: handing batch k to the 'shards' takes
    ``pace`` seconds and returns once batch k - 2 is applied (``applied_through``), so that
    ``wait_applied`` of an older marker returns at once."""

    INFLIGHT = 2

    def __init__(self, pace=0.05):
        self.pace = pace
        self.marker = 0
        self.applied = 0

    def submit(self):
        time.sleep(self.pace)
        self.marker += 1
        self.applied = max(self.applied, self.marker - self.INFLIGHT)

    def applied_marker(self):
        return self.marker

    def applied_through(self):
        return self.applied

    def wait_applied(self, marker):
        if marker > self.applied:
            time.sleep(self.pace)
            self.applied = max(self.applied, marker)


class _PacedManager(_Manager):
    def apply(self, batch, sender_id, sequence, raw):
        self.sketchset.submit()
        return ApplyResult(sender_id, sequence, False, len(batch), len(batch), 0, 0)


def test_an_applied_batch_is_answered_while_later_batches_keep_the_queue_busy():
    """Found in the second review: the worker answered pending batches only when its queue was
    empty, so with the queue kept busy the first batch's answer (and its queue slot and budget)
    waited for every batch queued behind it, though the shards had applied it long before."""
    sketchset = _PacedSet()
    answered_at = {}

    async def main():
        worker = SketchWorker(_PacedManager(sketchset), 8, ServiceMetrics())
        worker.start()
        batch = generate_batch(10, 3, seed=1)
        futures = []
        for seq in range(1, 9):  # all queued at once: the queue is busy for 8 paces
            future = await worker.admit(batch, "s", seq, None)
            future.add_done_callback(lambda f, seq=seq: answered_at.setdefault(seq, sketchset.marker))
            futures.append(future)
        results = await asyncio.gather(*futures)
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        return results

    results = asyncio.run(main())
    assert [r.sequence for r in results] == list(range(1, 9))
    assert list(answered_at) == list(range(1, 9))  # admission order
    # batch 1 is applied once batch 3 is handed over: answered well before batch 8 is
    assert answered_at[1] <= 5, answered_at


def test_a_pool_whose_actors_cannot_open_the_ring_uses_the_object_store(ray_cluster, monkeypatch):
    """Found in the second review: the pool chose shared memory from the node ids alone; an actor
    that cannot open ``/proc/<front end pid>/fd/<fd>`` (another pid namespace, a /proc mounted with
    hidepid, a non-dumpable front end) failed every update, and a restart failed the same way. The
    pool now checks that every actor reads a slot and else sends parts through Ray's object store."""
    from telesketch.distributed import cluster
    from telesketch.distributed.cluster import shard_specs
    from telesketch.distributed.service import ShardPool

    real_take = cluster.SharedRing.take

    def unreachable(self, nbytes):
        _, view = real_take(self, nbytes)
        return "/proc/self/fd/not-the-front-end", view  # a path the actor cannot open

    monkeypatch.setattr(cluster.SharedRing, "take", unreachable)
    specs = shard_specs(SPECS, 2)
    pool = ShardPool(specs, 2)
    try:
        assert not pool.shared
        pool.pipeline(2)
        pool.advance(0)
        batches = generate_batch(8_000, 500, seed=12).split(2_000)
        pool.wait([pool.update(b) for b in batches][-1])
        _assert_shards_equal_offline(pool, specs, batches)
    finally:
        pool.shutdown()


def test_an_unreadable_slot_is_a_clear_error():
    worker = ShardWorker(SPECS)
    worker.advance(0)
    with pytest.raises(Exception, match="shared-memory slot"):
        worker.update_shared("/proc/self/fd/not-a-slot", 64, 1, None, ())
