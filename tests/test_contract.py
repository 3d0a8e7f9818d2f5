"""One contract every sketch kind keeps, on the CPU and (under the CUDA simulator) on its GPU twin.

In the spirit of river's ``check_estimator``: the same checks run over every kind the service
configures (``telesketch.service.sketchset.KINDS``, plus the CocoSketch baseline and Hidden
Sketch's mergeable two-pass mode), so a new kind or a changed one is held to all of them:

* ``update`` changes the state (the checks below are not vacuous);
* ``to_bytes`` / ``from_bytes`` round trip: the same bytes, the same answers, and the restored
  sketch continues exactly as the original on the next batch;
* ``merge`` of two halves of a stream equals one pass over the whole (kinds that merge), or raises
  :class:`NotMergeableError` and leaves the sketch unchanged (kinds that do not);
* ``len(to_bytes())`` is the header plus the payload the kind's ``memory_bytes`` accounts for, plus
  its documented uncharged bookkeeping (the datasketches serialised-size check);
* bad input (not a batch, wrong scores, a corrupt or foreign snapshot, a merge with other
  parameters) raises :class:`SketchError` with a message, and changes nothing.

The GPU twins run the same checks in a subprocess under ``NUMBA_ENABLE_CUDASIM=1``
(:mod:`gpu_harness`), and must also give byte-identical state to the CPU class.
"""
from __future__ import annotations

import importlib
import json
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import gpu_harness
from workloads import contract_batch, flow_scores

from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.gapfilter import GAP_EVENT_DTYPE_V1

# ---------------------------------------------------------------------------- answers (JSON-able)


def _plain(value: Any) -> Any:
    """Numpy scalars, arrays, bytes and tuples as JSON values (bytes as hex text)."""
    if isinstance(value, (bytes, np.void)):
        return bytes(value).hex()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def gap_answers(sketch, batch) -> dict:
    """IPv4 events as layout 1 recorded them (the IPv6 fields added in layout 2 are zero there)."""
    events = sketch.gap_events()
    events = events[list(GAP_EVENT_DTYPE_V1.names)] if events.dtype.names else events
    return {"events": [_plain(list(e)) for e in events.tolist()],
            "counts": _plain(dict(sorted(sketch.gap_counts().items())))}


def hidden_answers(sketch, batch) -> dict:
    if sketch.params.mode == "two_pass" and sketch.phase == "first":
        return {"n_items": sketch.n_items, "point": _plain(sketch.point_estimate(np.unique(batch.src_ip)[:50]))}
    return {"heavy_hitters": _plain(sketch.heavy_hitters()),
            "point": _plain(sketch.point_estimate(np.unique(batch.src_ip)[:50]))}


def block_answers(sketch, batch) -> dict:
    return {"hhh": _plain(sketch.hhh()), "slash16": _plain(sketch.estimate(int(batch.src_ip[0]) & 0xFFFF0000, 16))}


def llm_answers(sketch, batch) -> dict:
    return {"top_flows": _plain(sketch.top_flows(10)), "flow_size": _plain(sketch.flow_size(batch.flow_keys()[:50]))}


def exact_answers(sketch, batch) -> dict:
    return {"heavy_hitters": _plain(sketch.heavy_hitters(phi=0.01)), "hhh": _plain(sketch.hhh(phi=0.05)),
            "top_flows": _plain(sketch.top_flows(5)), "gap_events": len(sketch.gap_events())}


# ---------------------------------------------------------------------------- serialised sizes
def _gapfilter_ao_payload(s) -> int:
    """Each lane stores a ``u16`` SEQ and a ``u16`` fingerprint, charged ``lane_bytes`` (2 + fp bytes)."""
    return s.memory_bytes // s.params.lane_bytes * 4


def _hidden_payload(s) -> int:
    """FS counters, then the second stage with each Bloom row and each segment bitmap rounded up to
    ``u64`` words, the CM's ``u32`` counters, and the ``i64`` item count (uncharged)."""
    p = s.params
    fs = p.fs_rows * p.fs_width * -(-p.fs_counter_bits // 8)
    bf = sum(rows * -(-bits // 64) * 8 for rows, bits in zip(p.bf_rows, p.bf_row_bits))
    seg = p.blocks * sum(-(-(1 << b) // 64) * 8 for b in p.seg_bits)
    cm = 3 * p.cm_width * 4
    return fs + bf + seg + cm + 8


def _block_payload(s) -> int:
    """An uncharged occupancy byte beside every 8-byte ``(id, count)`` bucket of the IPv4 tree and
    every 20-byte ``(hi, lo, count)`` bucket of the IPv6 tree (``ipv6_memory_bytes``)."""
    return s.memory_bytes * 9 // 8 + s.ipv6_memory_bytes * 21 // 20


def _llm_payload(s) -> int:
    """The charged slots and counters, plus a lock and an occupancy byte per heavy slot and an
    occupancy byte per light CocoSketch cell (``overhead_bytes`` counts these as bits)."""
    return s.memory_bytes + s.lock.size + s.occ.size + s.coco_occ.size


# ---------------------------------------------------------------------------- the kinds
@dataclass(frozen=True)
class KindCase:
    """One sketch kind under contract: its classes, small parameters and per-kind facts."""

    name: str
    cpu: str                 #: ``module:Class``
    gpu: str                 #: ``module:Class`` of the GPU twin, "" when there is none
    params: dict
    answers: Callable        #: ``(sketch, batch) -> dict`` of JSON-able answers
    payload: Callable        #: ``sketch -> int``: expected bytes of the state arrays (events excluded)
    mergeable: bool = False
    scored: bool = False     #: ``update(batch, scores)`` (LLM-Sketch without an estimator)
    other_params: dict = field(default_factory=dict)  #: a change making a sketch unmergeable with it

    def cls(self, device: str = "cpu") -> type:
        module, name = (self.gpu if device == "gpu" else self.cpu).split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, device: str = "cpu", **changes):
        return self.cls(device)(**{**self.params, **changes})

    def update(self, sketch, batch, seed: int = 0):
        if self.scored:
            return sketch.update(batch, flow_scores(batch, seed))
        return sketch.update(batch)


GF, HS, RS, CS, LS = ("telesketch.sketches.gapfilter", "telesketch.sketches.hiddensketch",
                      "telesketch.sketches.residualsketch", "telesketch.sketches.cocosketch",
                      "telesketch.sketches.llmsketch")
HIDDEN_SMALL = dict(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3, thresh=20)

CASES = {c.name: c for c in [
    KindCase("gapfilter_so", f"{GF}:GapFilterSO", "telesketch.gpu.gapfilter:GapFilterSO",
             dict(memory_bytes=4096, seed=1), gap_answers, lambda s: s.memory_bytes, other_params=dict(seed=2)),
    KindCase("gapfilter_ao", f"{GF}:GapFilterAO", "telesketch.gpu.gapfilter:GapFilterAO",
             dict(memory_bytes=4096, seed=1), gap_answers, _gapfilter_ao_payload, other_params=dict(seed=2)),
    KindCase("gapfilter_straw", f"{GF}:GapFilterStraw", "",
             dict(memory_bytes=4096, seed=1), gap_answers, lambda s: s.memory_bytes + 8,  # + the u64 PRNG state
             other_params=dict(seed=2)),
    KindCase("hiddensketch", f"{HS}:HiddenSketch", "telesketch.gpu.hiddensketch:HiddenSketch",
             HIDDEN_SMALL, hidden_answers, _hidden_payload, other_params=dict(seed=2)),
    KindCase("hiddensketch_two_pass", f"{HS}:HiddenSketch", "telesketch.gpu.hiddensketch:HiddenSketch",
             dict(HIDDEN_SMALL, mode="two_pass"), hidden_answers, _hidden_payload, mergeable=True,
             other_params=dict(seed=2)),
    KindCase("residualsketch", f"{RS}:ResidualSketch", "telesketch.gpu.residualsketch:ResidualSketch",
             dict(memory_bytes=8 * 1024, threshold=40), block_answers, _block_payload, other_params=dict(seed=2)),
    KindCase("cocosketch", f"{CS}:CocoSketch", "telesketch.gpu.residualsketch:CocoSketch",
             dict(memory_bytes=8 * 1024, threshold=40), block_answers, _block_payload, other_params=dict(seed=2)),
    KindCase("llmsketch", f"{LS}:LLMSketch", "telesketch.gpu.llmsketch:LLMSketch",
             dict(memory_bytes=16 * 1024, seed=1), llm_answers, _llm_payload, scored=True,
             other_params=dict(seed=2)),
    KindCase("exact", "telesketch.service.exactsketch:ExactSketch", "",
             dict(phi=0.01), exact_answers, lambda s: s.memory_bytes, mergeable=True,
             other_params=dict(phi=0.02)),
]}
GPU_CASES = sorted(name for name, c in CASES.items() if c.gpu)
CPU_N, GPU_N = 2000, 200  #: packets per contract stream (the simulator runs a Python thread per GPU thread)


def stream(n: int, seed: int = 1):
    """The contract's stream and its two halves (a sketch of each half, or one of the whole)."""
    batch = contract_batch(n, flows=n // 6, seed=seed)
    return batch, batch[: n // 2], batch[n // 2:]


def fed(case: KindCase, device: str, *batches):
    sketch = case.build(device)
    for seed, batch in enumerate(batches):
        case.update(sketch, batch, seed)
    return sketch


def header_and_payload(blob: bytes) -> tuple[int, int]:
    """Bytes of the envelope's magic + length + JSON header, and of its array payloads."""
    (hlen,) = struct.unpack_from("<I", blob, 4)
    return 8 + hlen, len(blob) - 8 - hlen


def events_bytes(blob: bytes) -> int:
    """Bytes of the ``events`` array (GapFilter's epoch log), which no ``memory_bytes`` charges."""
    (hlen,) = struct.unpack_from("<I", blob, 4)
    arrays = json.loads(blob[8:8 + hlen])["arrays"]
    return sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in arrays if a["name"] == "events")


# ---------------------------------------------------------------------------- the checks
def check_update_changes_state(case: KindCase, device: str, n: int) -> None:
    batch, _, _ = stream(n)
    empty, sketch = case.build(device), fed(case, device, batch)
    assert sketch.to_bytes() != empty.to_bytes(), f"{case.name}: update left the state as it was"
    answers = json.dumps(case.answers(sketch, batch))
    assert answers != json.dumps(case.answers(empty, batch)), f"{case.name}: answers do not depend on the data"


def check_round_trip(case: KindCase, device: str, n: int) -> None:
    batch, first, second = stream(n)
    sketch = fed(case, device, first)
    restored = case.cls(device).from_bytes(sketch.to_bytes())
    assert type(restored) is type(sketch)
    assert restored.to_bytes() == sketch.to_bytes(), f"{case.name}: from_bytes(to_bytes()) changed the state"
    assert case.answers(restored, batch) == case.answers(sketch, batch), f"{case.name}: answers changed"
    out_a, out_b = case.update(sketch, second, 1), case.update(restored, second, 1)
    if out_a is not None:  # GapFilter's per-packet flags
        assert np.array_equal(out_a, out_b), f"{case.name}: the restored sketch flags other packets"
    assert restored.to_bytes() == sketch.to_bytes(), f"{case.name}: the restored sketch continues differently"
    assert case.answers(restored, batch) == case.answers(sketch, batch)


def check_merge(case: KindCase, device: str, n: int) -> None:
    batch, first, second = stream(n)
    whole = case.build(device)
    case.update(whole, first, 0)
    case.update(whole, second, 1)
    left, right = fed(case, device, first), case.build(device)
    case.update(right, second, 1)
    before = left.to_bytes()
    if not case.mergeable:
        with pytest.raises(NotMergeableError, match=r"\w+ \w+ \w+"):
            left.merge(right)
        assert left.to_bytes() == before, f"{case.name}: a refused merge changed the state"
        return
    left.merge(right)
    assert left.to_bytes() == whole.to_bytes(), f"{case.name}: merged halves differ from one pass over the whole"
    assert case.answers(left, batch) == case.answers(whole, batch)


def check_serialized_size(case: KindCase, device: str, n: int) -> None:
    for sketch in (case.build(device), fed(case, device, stream(n)[0])):
        blob = sketch.to_bytes()
        header, payload = header_and_payload(blob)
        assert header < 2048, f"{case.name}: a {header}-byte header"
        assert payload - events_bytes(blob) == case.payload(sketch), (
            f"{case.name}: {payload - events_bytes(blob)} state bytes serialised, expected {case.payload(sketch)} "
            f"for memory_bytes {sketch.memory_bytes}")
        assert case.payload(sketch) <= 1.5 * (sketch.memory_bytes + getattr(sketch, "ipv6_memory_bytes", 0)) + 64, f"{case.name}: state far above memory_bytes"


def _other_kind_blob(case: KindCase) -> bytes:
    other = CASES["exact" if case.name != "exact" else "cocosketch"]
    return other.build().to_bytes()


def check_bad_input(case: KindCase, device: str, n: int) -> None:
    batch, first, _ = stream(n)
    sketch = fed(case, device, first)
    before = sketch.to_bytes()
    answers = case.answers(sketch, batch)
    bad_updates = [None, np.arange(5, dtype=np.uint32), "10.0.0.1"]
    for bad in bad_updates:
        with pytest.raises(SketchError, match="PacketBatch"):
            sketch.update(bad)
    if case.scored:
        with pytest.raises(SketchError, match="scores"):
            sketch.update(batch, np.ones(3))
    blob = sketch.to_bytes()
    for corrupt, why in [(b"", "bad magic"), (b"NOPE" + blob[4:], "bad magic"), (blob[:-1], "truncated"),
                         (blob + b"\0", "trailing"), (_other_kind_blob(case), "not ")]:
        with pytest.raises(SketchError, match=why):
            case.cls(device).from_bytes(corrupt)
    other = case.build(device, **case.other_params)
    with pytest.raises(SketchError, match=r"\w+ \w+ \w+"):
        sketch.merge(other)
    assert sketch.to_bytes() == before, f"{case.name}: bad input changed the state"
    assert case.answers(sketch, batch) == answers


CHECKS = [check_update_changes_state, check_round_trip, check_merge, check_serialized_size, check_bad_input]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_cpu_contract(kind, check):
    check(CASES[kind], "cpu", CPU_N)


def test_every_service_kind_is_under_contract():
    from telesketch.service.sketchset import KINDS

    assert set(KINDS) <= set(CASES), f"kinds without a contract case: {sorted(set(KINDS) - set(CASES))}"
    for name, kind in KINDS.items():
        assert CASES[name].cpu == f"{kind.module}:{kind.cls}"
        assert CASES[name].gpu == kind.gpu_cls


# ---------------------------------------------------------------------------- the GPU twins
def check_twin_matches_cpu(case: KindCase, n: int) -> None:
    batch, first, second = stream(n)
    cpu, gpu = fed(case, "cpu", first, second), fed(case, "gpu", first, second)
    assert gpu.to_bytes() == cpu.to_bytes(), f"{case.name}: the GPU twin's state differs from the CPU class's"
    assert case.answers(gpu, batch) == case.answers(cpu, batch), f"{case.name}: the GPU twin answers differently"
    restored = case.cls("cpu").from_bytes(gpu.to_bytes())  # a GPU snapshot loads on the CPU
    assert case.answers(restored, batch) == case.answers(cpu, batch)


def run_gpu_case(name: str) -> str:
    """Every contract check on the GPU twin of kind ``name``: "" or the first failure."""
    case = CASES[name]
    for check in CHECKS:
        try:
            check(case, "gpu", GPU_N)
        except AssertionError as exc:
            return f"{check.__name__}: {exc}"
        except pytest.fail.Exception as exc:  # pytest.raises saw no error
            return f"{check.__name__}: {exc}"
    try:
        check_twin_matches_cpu(case, GPU_N)
    except AssertionError as exc:
        return f"check_twin_matches_cpu: {exc}"
    return ""


pytest_generate_tests = gpu_harness.pytest_generate_tests


@pytest.mark.gpu
class TestGpuContract(gpu_harness.TwinChecks):
    script = __file__
    cases = GPU_CASES
    slow_cases = ["gapfilter_ao", "hiddensketch", "hiddensketch_two_pass", "cocosketch", "llmsketch"]  # 3-5 s CPU each
    run_case = staticmethod(run_gpu_case)


if __name__ == "__main__":
    gpu_harness.script_main(GPU_CASES, run_gpu_case, [lambda name=n: CASES[name].build("gpu") for n in GPU_CASES])
    sys.exit(0)
