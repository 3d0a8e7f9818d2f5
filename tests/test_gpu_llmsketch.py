"""GPU LLM-Sketch (``telesketch.gpu.llmsketch``) against the CPU sketch: identical state and answers.

CI has no GPU: the checks run under the CUDA simulator in a subprocess (this file run as a script)
and, when this process has a CUDA device, in-process too; see ``tests/gpu_harness.py``.
Inputs are small (a few thousand packets, a few dozen buckets, a few thousand Count-Min counters):
the simulator runs every GPU thread as a Python thread.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_harness
from workloads import skewed_flows

pytestmark = pytest.mark.gpu
pytest_generate_tests = gpu_harness.pytest_generate_tests  # parametrizes the twin checks by case

# case -> LLMSketch keyword parameters: the three tasks, several memories, ratios and seeds
EQUALITY = {
    "fs_2k": dict(memory_bytes=2048, task="flow_size", seed=3),
    "fs_3k_seed7": dict(memory_bytes=3000, task="flow_size", seed=7),
    "fs_saturating": dict(memory_bytes=1100, task="flow_size", heavy_ratio=0.97, seed=5),  # W = 11: counters hit 255
    "hh_3k": dict(memory_bytes=3000, task="heavy_hitters", seed=2),
    "hh_1500_seed9": dict(memory_bytes=1500, task="heavy_hitters", seed=9),
    "hhh_3k": dict(memory_bytes=3000, task="hhh", seed=4),
    "hhh_2k_ratio03": dict(memory_bytes=2048, task="hhh", heavy_ratio=0.3, seed=8),
}
SCORE_RANGE = {"fs_saturating": (-0.5, 0.7)}  # mostly "small" packets: many saturating adds; default (-0.5, 1.5)
EQUALITY_CASES = sorted(EQUALITY)
OTHER_CASES = ["bytes_fs_small", "bytes_fs", "bytes_hh", "device_hash", "batch_split", "roundtrip_flow_size", "roundtrip_heavy_hitters", "roundtrip_hhh",
               "update_keys", "estimator", "merge_refused", "sizes", "empty_batch", "successor", "mixed_ipv6"]
N_BATCHES = 3
BATCH_PACKETS = 1500
FLOWS = 1200


# ---------------------------------------------------------------------------- workload
def workload(n: int, flows: int, seed: int, score_range=(-0.5, 1.5)):
    """``(batch, scores)``: ``n`` packets over ``flows`` Zipf flows (three flows per source address,
    so HHH prefixes aggregate) and ``float64`` scores uniform in ``score_range`` (the sketch clips
    them to [0, 1])."""
    rng = np.random.default_rng(seed)
    batch = skewed_flows(n, flows, rng, flows_per_source=3)
    return batch, rng.uniform(*score_range, n)


def batches(seed: int, score_range=(-0.5, 1.5)):
    """Three batches; the last one's scores are ``float32`` (the sketch accepts either)."""
    out = [workload(BATCH_PACKETS, FLOWS, 100 * seed + k, score_range) for k in range(N_BATCHES)]
    out[-1] = (out[-1][0], out[-1][1].astype(np.float32))
    return out


# ---------------------------------------------------------------------------- comparisons
def _pair(**kwargs):
    from telesketch.gpu.llmsketch import LLMSketch as GpuLLMSketch
    from telesketch.sketches.llmsketch import LLMSketch

    return LLMSketch(**kwargs), GpuLLMSketch(**kwargs)


def _query_keys(sketch, batch):
    return batch.src_ip if sketch.params.task == "hhh" else batch.flow_keys()


def same_state(want, got) -> str:
    """'' when every state array (slot keys, counts, locks, occupancy, Count-Min, Coco cells), the
    packet count and the serialised bytes agree."""
    a, b = want.state(), got.state()
    for name, arr in a.items():
        if not np.array_equal(arr, b[name]) or np.asarray(arr).dtype != np.asarray(b[name]).dtype:
            return f"state {name!r} differs"
    return "" if want.to_bytes() == got.to_bytes() else "serialised state differs"


def same_answers(want, got, batch) -> str:
    """'' when flow_size, top_flows, heavy_hitters (and hhh for the hhh task) agree."""
    keys = _query_keys(want, batch)
    if not np.array_equal(want.flow_size(keys), got.flow_size(keys)):
        return "flow_size differs"
    if want.top_flows(50) != got.top_flows(50):
        return "top_flows differs"
    for threshold in (0, 5, 20):
        if want.heavy_hitters(threshold) != got.heavy_hitters(threshold):
            return f"heavy_hitters({threshold}) differs"
    if want.params.task == "hhh":
        for phi in (0.01, 0.05):
            if want.hhh(phi=phi) != got.hhh(phi=phi):
                return f"hhh(phi={phi}) differs"
    return ""


def not_vacuous(sketch, name: str) -> str:
    """The workload must fill the buckets (so packets are diverted and slots evicted), lock slots and
    reach the light part."""
    if not sketch.occ.all():
        return "a heavy bucket is not full: no eviction pressure"
    if not sketch.lock.any():
        return "no slot is locked"
    light = sketch.params.light
    if light == "countmin" and not sketch.cm.any():
        return "Count-Min untouched"
    if light == "coco" and not sketch.coco_occ.any():
        return "CocoSketch untouched"
    if name == "fs_saturating" and not (sketch.cm == 255).any():
        return "no saturated Count-Min counter"
    return ""


def check_equal(name: str) -> str:
    """GPU == CPU after every batch (state) and at the end (queries)."""
    kwargs = EQUALITY[name]
    cpu, dev = _pair(**kwargs)
    for k, (batch, scores) in enumerate(batches(kwargs["seed"], SCORE_RANGE.get(name, (-0.5, 1.5)))):
        cpu.update(batch, scores)
        dev.update(batch, scores)
        if detail := same_state(cpu, dev):
            return f"batch {k}: {detail}"
    return same_answers(cpu, dev, batch) or not_vacuous(cpu, name)


def check_device_hash() -> str:
    """The device MurmurHash3 over key words equals the CPU ``mmh3_rows`` of the key bytes."""
    from telesketch.gpu.llmsketch import device_mmh3_words
    from telesketch.sketches.llmsketch import bytes_to_words, mmh3_rows

    rng = np.random.default_rng(5)
    for length in (4, 13):
        keys = rng.integers(0, 256, (300, length), dtype=np.uint8)
        keys[0], keys[1] = 0, 255
        for seed in (0, 1, 2, 100, 123123, 2**32 - 1):
            got, want = device_mmh3_words(bytes_to_words(keys), length, seed), mmh3_rows(keys, seed)
            if not np.array_equal(got, want):
                return f"length {length} seed {seed}: differs at {np.flatnonzero(got != want)[:5].tolist()}"
    return ""


def check_batch_split() -> str:
    """One batch, or the same packets in uneven pieces (single packets included): same state."""
    from telesketch.gpu.llmsketch import LLMSketch as GpuLLMSketch
    from telesketch.packets import PacketBatch

    parts = [workload(1500, FLOWS, 70 + k) for k in range(2)]
    batch = PacketBatch.concat([b for b, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    for task in ("flow_size", "hhh"):
        whole, pieces = GpuLLMSketch(2048, task, seed=6), GpuLLMSketch(2048, task, seed=6)
        whole.update(batch, scores)
        for cut in np.split(np.arange(len(batch)), [1, 700, 2000, 2001]):
            pieces.update(batch[cut], scores[cut])
        if detail := same_state(whole, pieces):
            return f"{task}: {detail}"
    return ""


def check_roundtrip(task: str) -> str:
    """Snapshots move CPU -> GPU, GPU -> CPU and GPU -> GPU and continue updating identically."""
    from telesketch.gpu.llmsketch import LLMSketch as GpuLLMSketch
    from telesketch.sketches.llmsketch import LLMSketch

    cpu, dev = _pair(memory_bytes=2500, task=task, seed=13)
    (first, s1), (second, s2) = workload(2000, 500, 1), workload(2000, 500, 2)
    cpu.update(first, s1)
    dev.update(first, s1)
    restored = {"cpu->gpu": GpuLLMSketch.from_bytes(cpu.to_bytes()), "gpu->cpu": LLMSketch.from_bytes(dev.to_bytes()),
                "gpu->gpu": GpuLLMSketch.from_bytes(dev.to_bytes())}
    cpu.update(second, s2)
    for how, sketch in restored.items():
        sketch.update(second, s2)
        if detail := same_state(cpu, sketch) or same_answers(cpu, sketch, second):
            return f"{how}: {detail}"
    if type(restored["cpu->gpu"]) is not GpuLLMSketch or restored["cpu->gpu"].device_backend is None:
        return "from_bytes did not build a GPU sketch"
    return ""


def check_update_keys() -> str:
    """``update_keys`` (stored key bytes) runs the same kernels as ``update``."""
    from telesketch.sketches.llmsketch import stored_keys

    batch, scores = workload(2000, 500, 9)
    for task in ("flow_size", "heavy_hitters"):
        cpu, dev = _pair(memory_bytes=2000, task=task, seed=1)
        keys = stored_keys(batch, task)
        cpu.update_keys(keys, scores)
        dev.update_keys(keys, scores)
        if detail := same_state(cpu, dev):
            return f"{task}: {detail}"
    return ""


def check_estimator() -> str:
    """Without explicit scores, the sketch's FlowScorer supplies them on the host, as on the CPU."""
    from telesketch.estimators import ConstantEstimator
    from telesketch.packets import PacketBatch

    batch, _ = workload(2000, 300, 11)
    header = np.random.default_rng(11).integers(0, 256, (len(batch), 40), dtype=np.uint8)
    batch = PacketBatch.from_columns(**(batch.columns() | {"header": header, "hdr_len": np.full(len(batch), 40)}))
    cpu, dev = _pair(memory_bytes=4096, estimator=ConstantEstimator(1.0), scoring="sync")
    cpu.update(batch)
    dev.update(batch)
    return same_state(cpu, dev)


def mixed_workload(n: int, flows: int, seed: int):
    """:func:`workload` with 40 % of the flows IPv6 (random 16-byte addresses, the IPv4 flows' ports)."""
    from telesketch.packets import PacketBatch

    batch, scores = workload(n, flows, seed)
    rng = np.random.default_rng(seed + 1)
    is6 = (rng.random(flows) < 0.4)
    addr = rng.integers(0, 256, (flows, 2, 16), dtype=np.uint8)
    f = (batch.src_port.astype(np.int64) - 1) % flows  # the flow index workload() used
    v6 = is6[f]
    cols = batch.columns() | {
        "ipv6": v6.astype(np.uint8), "src_ip": np.where(v6, 0, batch.src_ip), "dst_ip": np.where(v6, 0, batch.dst_ip),
        "src_ip6": np.where(v6[:, None], addr[f, 0], 0).astype(np.uint8),
        "dst_ip6": np.where(v6[:, None], addr[f, 1], 0).astype(np.uint8)}
    return PacketBatch.from_columns(**cols), scores


def check_mixed_ipv6() -> str:
    """Mixed IPv4/IPv6 traffic with ``keep_keys``: same state, 37-byte names, answers and snapshot
    (layout 2), and a GPU -> CPU snapshot continues identically."""
    from telesketch.sketches.llmsketch import LLMSketch

    cpu, dev = _pair(memory_bytes=2500, task="flow_size", seed=17, keep_keys=True)
    parts = [mixed_workload(1500, 600, 40 + k) for k in range(3)]
    for k, (batch, scores) in enumerate(parts[:2]):
        cpu.update(batch, scores)
        dev.update(batch, scores)
        if detail := same_state(cpu, dev):
            return f"batch {k}: {detail}"
    if not np.array_equal(cpu.slot_names, dev.slot_names) or cpu.slot_names.shape[-1] != 37:
        return "slot names differ or did not widen to 37 bytes"
    batch = parts[1][0]
    if not np.array_equal(cpu.flow_size(batch.flow_keys37()), dev.flow_size(batch.flow_keys37())):
        return "flow_size on 37-byte keys differs"
    if cpu.top_flows(50) != dev.top_flows(50) or not any(len(k) == 37 for k, _ in cpu.top_flows(50)):
        return "top_flows differ or name no IPv6 flow"
    back = LLMSketch.from_bytes(dev.to_bytes())
    back.update(*parts[2])
    cpu.update(*parts[2])
    if detail := same_state(cpu, back) or not_vacuous(cpu, "mixed_ipv6"):
        return detail
    cpu, dev = _pair(memory_bytes=3000, task="heavy_hitters37", seed=5)  # 37-byte stored keys: 10 words
    for batch, scores in parts:
        cpu.update(batch, scores)
        dev.update(batch, scores)
    keys = [k.tobytes() for k in parts[2][0].flow_keys37()]
    if not np.array_equal(cpu.flow_size(keys), dev.flow_size(keys)) or cpu.top_flows(50) != dev.top_flows(50):
        return "heavy_hitters37: answers differ"
    return same_state(cpu, dev) or not_vacuous(cpu, "hh37")


def byte_workload(n: int, flows: int, seed: int):
    """:func:`workload` with per-flow packet lengths (40 .. 1500 bytes, jittered per packet) and
    every 97th packet of weight 0 (which must change nothing but take its stream index)."""
    from telesketch.packets import PacketBatch

    batch, scores = workload(n, flows, seed)
    rng = np.random.default_rng(seed + 7)
    length = (40 + (batch.src_port.astype(np.int64) * 389) % 1400 + rng.integers(0, 60, n)).astype(np.uint16)
    length[::97] = 0
    return PacketBatch.from_columns(**(batch.columns() | {"length": length})), scores


def check_bytes(task: str, memory: int, n: int, n_batches: int) -> str:
    """``weight="bytes"``: uint64 heavy counts, uint32 Count-Min (flow_size), zero weights; GPU == CPU
    after every batch, the answers, and a GPU snapshot continues on the CPU identically."""
    from telesketch.sketches.llmsketch import LLMSketch

    cpu, dev = _pair(memory_bytes=memory, task=task, seed=3, weight="bytes")
    parts = [byte_workload(n, FLOWS, 60 + k) for k in range(n_batches + 1)]
    for k, (batch, scores) in enumerate(parts[:-1]):
        cpu.update(batch, scores)
        dev.update(batch, scores)
        if detail := same_state(cpu, dev):
            return f"batch {k}: {detail}"
    if detail := same_answers(cpu, dev, parts[-2][0]) or not_vacuous(cpu, task):
        return detail
    if cpu.counts.dtype != np.uint64 or cpu.total_weight != dev.total_weight or cpu.total_weight == 0:
        return "byte-weighted counts are not uint64 or the byte totals differ"
    if task == "flow_size" and (cpu.cm.dtype != np.uint32 or cpu.cm.max() <= 255):
        return "Count-Min is not uint32 or never counted past 255"
    back = LLMSketch.from_bytes(dev.to_bytes())
    back.update(*parts[-1])
    cpu.update(*parts[-1])
    return same_state(cpu, back)


def check_merge_refused() -> str:
    from telesketch.gpu.llmsketch import LLMSketch as GpuLLMSketch
    from telesketch.sketches.core import NotMergeableError

    try:
        GpuLLMSketch(4096).merge(GpuLLMSketch(4096))
    except NotMergeableError as exc:
        return "" if "arrival" in str(exc) else f"unexpected message: {exc}"
    return "merge did not raise NotMergeableError"


def check_sizes() -> str:
    """memory_bytes, overhead_bytes and array shapes equal the CPU sketch's (spec §2.1 worked examples)."""
    for kwargs in (dict(memory_bytes=200 * 1024), dict(memory_bytes=50 * 1024, task="heavy_hitters"),
                   dict(memory_bytes=50 * 1024, task="hhh")):
        cpu, dev = _pair(**kwargs)
        if (cpu.memory_bytes, cpu.overhead_bytes) != (dev.memory_bytes, dev.overhead_bytes):
            return f"{kwargs}: sizes differ"
        if any(arr.shape != dev.state()[name].shape for name, arr in cpu._arrays().items()):
            return f"{kwargs}: shapes differ"
    return ""


def check_empty_batch() -> str:
    cpu, dev = _pair(memory_bytes=2048, task="hhh")
    batch, scores = workload(0, 1, 0)
    dev.update(batch, scores)
    return same_state(cpu, dev) or ("" if dev.packets == 0 else "packets moved")


def check_successor() -> str:
    from telesketch.gpu.llmsketch import LLMSketch as GpuLLMSketch

    _, dev = _pair(memory_bytes=2048, seed=2)
    batch, scores = workload(500, 100, 3)
    dev.update(batch, scores)
    nxt = dev.successor()
    if type(nxt) is not GpuLLMSketch or nxt.packets != 0 or nxt.occ.any() or nxt.params != dev.params:
        return "successor is not an empty GPU sketch with the same parameters"
    return ""


def run_case(name: str) -> str:
    if name in EQUALITY:
        return check_equal(name)
    if name.startswith("roundtrip_"):
        return check_roundtrip(name.split("_", 1)[1])
    if name.startswith("bytes_"):
        return {"bytes_fs_small": lambda: check_bytes("flow_size", 1500, 800, 1),
                "bytes_fs": lambda: check_bytes("flow_size", 3000, BATCH_PACKETS, 2),
                "bytes_hh": lambda: check_bytes("heavy_hitters", 3000, BATCH_PACKETS, 2)}[name]()
    return {"device_hash": check_device_hash, "batch_split": check_batch_split, "update_keys": check_update_keys,
            "estimator": check_estimator, "merge_refused": check_merge_refused, "sizes": check_sizes,
            "empty_batch": check_empty_batch, "successor": check_successor, "mixed_ipv6": check_mixed_ipv6}[name]()


class TestLLMSketchGpuTwin(gpu_harness.TwinChecks):
    script, cases, run_case = __file__, EQUALITY_CASES + OTHER_CASES, staticmethod(run_case)
    # the default run keeps one equality case per kernel and path; the rest run with -m slow
    # Simulator CPU seconds (gpu_harness verdicts): flow_size cases ~10 s each, hh/hhh ~2.5 s; the
    # default run keeps hhh_3k, device_hash, estimator and the instant ones.
    slow_cases = ["fs_2k", "fs_3k_seed7", "fs_saturating", "hh_3k", "hh_1500_seed9", "hhh_2k_ratio03", "batch_split",
                  "roundtrip_flow_size", "roundtrip_heavy_hitters", "roundtrip_hhh", "update_keys", "successor",
                  "bytes_fs", "bytes_hh"]


if __name__ == "__main__":
    from telesketch.gpu.llmsketch import LLMSketch

    gpu_harness.script_main(TestLLMSketchGpuTwin.cases, run_case, [lambda: LLMSketch(memory_bytes=4096)])
