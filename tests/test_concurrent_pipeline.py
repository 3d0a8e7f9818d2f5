"""The concurrent sketch pipeline (issue 21): one batch's sketches run on several threads, and every
state and answer is the same as the serial pipeline's, batch by batch.

Two real servers on loopback (``sketch_threads = 1`` and ``= 4``, more threads than this machine
has cores so that the sketches interleave) take the same batches; after every batch each sketch's
serialised state and every query's answer must be equal.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from telesketch.client import Client
from telesketch.packets import PacketBatch
from telesketch.service.config import ServiceConfig
from telesketch.service.server import ServiceThread
from telesketch.service.sketchset import SketchSet
from telesketch.traces.generate import generate_batch

EPOCH_NS = 1_000_000_000

SKETCHES = {
    "gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024},
    "gaps_so": {"kind": "gapfilter_so", "memory_bytes": 4 * 1024},
    "gaps_straw": {"kind": "gapfilter_straw", "memory_bytes": 4 * 1024},
    "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 0.005, "expected_epoch_items": 20_000},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "threshold": 200},
    "flows": {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size", "estimator": "constant"},
    "exact": {"kind": "exact", "phi": 0.005},
}


@pytest.fixture(scope="module")
def batches() -> list[PacketBatch]:
    """40,000 packets over 2 one-second epochs, in batches of 5,000."""
    whole = generate_batch(40_000, 2_000, seed=3, duration_s=2.0, start_s=1_700_000_000.0)
    return whole.split(5_000)


def _states_bytes(sketchset: SketchSet, states: dict) -> dict[str, bytes]:
    return {name: sketchset.get(name).dump_state(state) for name, state in states.items()}


def test_concurrent_sketchset_states_equal_serial_after_every_batch(batches):
    serial, concurrent = SketchSet.from_config(SKETCHES), SketchSet.from_config(SKETCHES)
    serial.concurrency, concurrent.concurrency = 1, 4
    assert len(concurrent.active) == len(SKETCHES)
    s_states, c_states = serial.new_states(0), concurrent.new_states(0)
    try:
        for i, batch in enumerate(batches):
            serial.update(s_states, batch)
            concurrent.update(c_states, batch)
            assert _states_bytes(concurrent, c_states) == _states_bytes(serial, s_states), f"batch {i}"
            if i == 3:  # an epoch boundary: close and continue in the successors
                s_states = serial.new_states(1, s_states)
                c_states = concurrent.new_states(1, c_states)
    finally:
        concurrent.shutdown_pool()


def test_sketches_of_one_batch_really_run_at_the_same_time():
    """Two updates that each wait for the other to start only finish when run concurrently."""
    barrier = threading.Barrier(2, timeout=30)

    class Meeting:
        def update(self, batch):
            barrier.wait()

    batch = generate_batch(10, 5, seed=1)
    sketchset = SketchSet(concurrency=2)
    try:
        sketchset.update_parts({"a": Meeting(), "b": Meeting()}, {"a": batch, "b": batch})
    finally:
        sketchset.shutdown_pool()
    serial = SketchSet(concurrency=1)
    barrier = threading.Barrier(2, timeout=0.2)
    with pytest.raises(threading.BrokenBarrierError):
        serial.update_parts({"a": Meeting(), "b": Meeting()}, {"a": batch, "b": batch})


def test_every_concurrent_update_runs_on_one_numba_thread_and_the_callers_count_is_restored():
    """The pool thread sets its Numba thread count once (not per batch) and the caller sets and
    restores its own only when it is not already 1: every update, in every batch, still sees 1."""
    import numba

    seen = []

    class Probe:
        def update(self, batch):
            seen.append(numba.get_num_threads())

    batch = generate_batch(10, 5, seed=1)
    sketchset = SketchSet(concurrency=3)
    before = numba.get_num_threads()
    try:
        for threads in (before, 1, before):
            numba.set_num_threads(threads)
            for _ in range(3):
                sketchset.update_parts({k: Probe() for k in "abc"}, dict.fromkeys("abc", batch))
                assert numba.get_num_threads() == threads
    finally:
        numba.set_num_threads(before)
        sketchset.shutdown_pool()
    assert seen == [1] * 27


def test_a_failing_sketch_is_raised_after_the_others_applied_the_batch():
    applied = []

    class Good:
        def update(self, batch):
            applied.append(len(batch))

    class Bad:
        def update(self, batch):
            raise RuntimeError("kernel failed")

    batch = generate_batch(10, 5, seed=1)
    sketchset = SketchSet(concurrency=3)
    try:
        with pytest.raises(RuntimeError, match="kernel failed"):
            sketchset.update_parts({"a": Good(), "bad": Bad(), "c": Good()}, {"a": batch, "bad": batch, "c": batch})
    finally:
        sketchset.shutdown_pool()
    assert applied == [10, 10]


def test_sketch_threads_is_validated(tmp_path):
    from telesketch.service.config import ConfigError

    with pytest.raises(ConfigError, match="sketch_threads"):
        ServiceConfig(sketch_threads=-1).validate()


def _answers(client: Client) -> dict:
    """Every query of every sketch over every retained epoch, as plain values."""
    out = {}
    for window in ({"last": len(client.stats()["epochs"])},):
        key = "window"
        out[f"hh {key}"] = client.heavy_hitters(sketch="hh", **window)
        out[f"hhh {key}"] = client.hhh(sketch="hhh", **window)
        for name in ("gaps", "gaps_so", "gaps_straw"):
            out[f"{name} {key}"] = client.flow_gaps(sketch=name, **window)
        out[f"flows {key}"] = client.top_flows(50, sketch="flows", **window)
        out[f"exact {key}"] = client.heavy_hitters(sketch="exact", **window)
    return out


def test_service_answers_equal_serial_pipeline_batch_by_batch(tmp_path, batches):
    def cfg(name: str, threads: int) -> ServiceConfig:
        return ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / name),
                             epoch_seconds=1.0, wal=False, sketch_threads=threads, sketches=dict(SKETCHES))

    with ServiceThread(cfg("serial", 1)) as serial, ServiceThread(cfg("concurrent", 4)) as concurrent:
        assert concurrent.service.sketchset.threads == 4 and serial.service.sketchset.threads == 1
        a, b = Client(f"127.0.0.1:{serial.grpc_port}"), Client(f"127.0.0.1:{concurrent.grpc_port}")
        for i, batch in enumerate(batches):
            ack_a, ack_b = a.push_one(batch), b.push_one(batch)
            assert ack_a == ack_b
            assert _answers(b) == _answers(a), f"after batch {i}"
        whole = _answers(a)  # the comparison saw real answers
        assert all(len(whole[f"{name} window"]) > 0 for name in ("hh", "hhh", "gaps", "flows", "exact")), whole
        a.close()
        b.close()
    assert np.all([len(b) for b in batches])
