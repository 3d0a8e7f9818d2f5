"""GPU GapFilter (``telesketch.gpu``) against the CPU sketches: identical flags, jumps and state.

CI has no GPU: the checks run under the CUDA simulator in a subprocess (this file run as a script)
and, when this process has a CUDA device, in-process too; see ``tests/gpu_harness.py``.
Inputs are small (a few thousand items, at most a few hundred buckets): the simulator runs every
GPU thread as a Python thread.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_harness
from workloads import ip_id_flows as workload

pytestmark = pytest.mark.gpu
pytest_generate_tests = gpu_harness.pytest_generate_tests  # parametrizes the twin checks by case

# (class name, keyword parameters): several memories, fp widths, suspect counts and options
SO_CASES = {
    "so_1k": dict(memory_bytes=1024, seed=3),
    "so_4k_modular": dict(memory_bytes=4096, seed=11, so_diff="modular"),
    "so_2k_t": dict(memory_bytes=2048, seed=5, t1=3, t2=20),
    "so_one_bucket": dict(memory_bytes=8, seed=1),
}
AO_CASES = {
    "ao_2k": dict(memory_bytes=2048, seed=3),
    "ao_4k_fp16_s4": dict(memory_bytes=4096, seed=7, fp_bits=16, suspects=4),
    "ao_1k_fp4_s0": dict(memory_bytes=1024, seed=9, fp_bits=4, suspects=0),
    "ao_3k_fp0_s8": dict(memory_bytes=3072, seed=2, fp_bits=0, suspects=8),
    "ao_2k_civ_floor": dict(memory_bytes=2048, seed=4, fp_bits=12, suspects=3,
                            ao_new_flow_pos="civilian_front", fp_accounting="floor"),
    "ao_one_bucket": dict(memory_bytes=24, seed=1),
}
EQUALITY_CASES = sorted(SO_CASES) + sorted(AO_CASES)
OTHER_CASES = ["device_hash", "mixed_ipv6_so", "mixed_ipv6_ao", "roundtrip_so", "roundtrip_ao", "merge_refused", "memory_bytes", "empty_batch"]
N_BATCHES = 3
BATCH_ITEMS = 2000


# ---------------------------------------------------------------------------- workload
def batches(seed: int, n: int = BATCH_ITEMS):
    return [workload(n, 600, 100 * seed + k) for k in range(N_BATCHES)]


# ---------------------------------------------------------------------------- checks
def _pair(name: str, kwargs: dict):
    from telesketch import gpu, sketches

    cls = "GapFilterSO" if name.startswith("so") else "GapFilterAO"
    return getattr(sketches, cls)(**kwargs), getattr(gpu, cls)(**kwargs)


def check_equal(name: str) -> str:
    """GPU flags == CPU flags batch after batch; same events and byte-identical state. '' if ok."""
    kwargs = {**SO_CASES, **AO_CASES}[name]
    cpu, dev = _pair(name, kwargs)
    total = 0
    for k, batch in enumerate(batches(kwargs["seed"])):
        want, got = cpu.update(batch), dev.update(batch)
        if not np.array_equal(want, got):
            return f"batch {k}: flags differ at {np.flatnonzero(want != got)[:10].tolist()}"
        total += int(want.sum())
    if total == 0:
        return "workload produced no gap reports: the comparison is vacuous"
    if cpu.gap_events().tobytes() != dev.gap_events().tobytes():
        return "gap_events differ"
    if cpu.to_bytes() != dev.to_bytes():
        return "serialised state differs"
    return ""


def check_roundtrip(kind: str) -> str:
    """Snapshots move CPU -> GPU, GPU -> CPU and GPU -> GPU and continue identically."""
    from telesketch import gpu, sketches

    name = f"{kind}_x"
    kwargs = dict(memory_bytes=2048, seed=21, fp_bits=8) if kind == "ao" else dict(memory_bytes=2048, seed=21)
    cpu, dev = _pair(name, kwargs)
    first, second = workload(2000, 400, 1), workload(2000, 400, 2)
    cpu.update(first)
    dev.update(first)
    cls = "GapFilterSO" if kind == "so" else "GapFilterAO"
    restored = {
        "cpu->gpu": getattr(gpu, cls).from_bytes(cpu.to_bytes()),
        "gpu->cpu": getattr(sketches, cls).from_bytes(dev.to_bytes()),
        "gpu->gpu": getattr(gpu, cls).from_bytes(dev.to_bytes()),
    }
    want = cpu.update(second)
    for how, sketch in restored.items():
        if not np.array_equal(sketch.update(second), want):
            return f"{how}: flags differ after restore"
        if sketch.to_bytes() != cpu.to_bytes():
            return f"{how}: state differs after restore and update"
    return ""


def mixed_workload(n: int, seed: int):
    """``workload`` with 40 % of the flows IPv6 (their addresses in ``src_ip6``/``dst_ip6``), one
    in five UDP, the SEQ in ``tcp_seq`` too: with ``seq_field="tcp_seq"`` IPv6 TCP packets are
    inspected under their folded 37-byte keys, IPv6 UDP packets skipped."""
    from telesketch.packets import PacketBatch

    base = workload(n, 300, seed)
    rng = np.random.default_rng(seed + 1)
    flow = (base.src_ip.astype(np.uint64) * 2654435761 % 1000).astype(np.int64)  # a stable flow id
    is6 = flow < 400
    addr6 = rng.integers(0, 256, (1000, 2, 16), np.uint8)
    cols = base.columns()
    cols.update(ipv6=is6.astype(np.uint8), src_ip=np.where(is6, 0, base.src_ip), dst_ip=np.where(is6, 0, base.dst_ip),
                src_ip6=np.where(is6[:, None], addr6[flow, 0], 0).astype(np.uint8),
                dst_ip6=np.where(is6[:, None], addr6[flow, 1], 0).astype(np.uint8),
                proto=np.where(flow % 5 == 0, 17, 6), tcp_seq=base.ip_id.astype(np.uint32))
    return PacketBatch.from_columns(**cols)


def check_mixed_ipv6(kind: str) -> str:
    """Mixed IPv4/IPv6 batches, ``seq_field="tcp_seq"``: GPU flags == CPU flags (IPv6 gaps among
    them), same events (with IPv6 addresses), coverage counters and serialised state."""
    kwargs = dict(memory_bytes=2048, seed=13, seq_field="tcp_seq")
    cpu, dev = _pair(f"{kind}_mixed", kwargs)
    six = 0
    for k in range(2):
        batch = mixed_workload(1500, 40 + k)
        want, got = cpu.update(batch), dev.update(batch)
        if not np.array_equal(want, got):
            return f"batch {k}: flags differ at {np.flatnonzero(want != got)[:10].tolist()}"
        six += int(want[batch.ipv6.astype(bool)].sum())
    if six == 0:
        return "no IPv6 gap reported: the comparison is vacuous"
    if not cpu.coverage()["skipped_packets"].get("not_tcp") or cpu.coverage() != dev.coverage():
        return f"coverage differs or is vacuous: {dev.coverage()} vs CPU {cpu.coverage()}"
    if cpu.gap_events().tobytes() != dev.gap_events().tobytes():
        return "gap_events differ"
    return "" if cpu.to_bytes() == dev.to_bytes() else "serialised state differs"


def check_device_hash() -> str:
    """The device port of ``hash64_5tuple`` equals the CPU hash, edge keys and seeds included."""
    from telesketch.gpu import device_hash_5tuple
    from telesketch.hashing import hash_5tuple
    from telesketch.packets import PacketBatch

    batch = workload(1500, 700, 5)
    edges = PacketBatch.from_columns(src_ip=[0, 2**32 - 1, 1], dst_ip=[0, 2**32 - 1, 2**31],
                                     src_port=[0, 65535, 1], dst_port=[0, 65535, 2**15],
                                     proto=[0, 255, 17])
    for b in (batch, edges):
        for seed in (0, 1, 12345, 2**63, 2**64 - 1):
            got, want = device_hash_5tuple(b, seed), hash_5tuple(b, seed)
            if got.dtype != np.uint64 or not np.array_equal(got, want):
                return f"seed {seed}: device hash differs at {np.flatnonzero(got != want)[:5].tolist()}"
    return ""


def check_merge_refused() -> str:
    from telesketch import gpu
    from telesketch.sketches.core import NotMergeableError

    for cls in (gpu.GapFilterSO, gpu.GapFilterAO):
        a, b = cls(memory_bytes=1024), cls(memory_bytes=1024)
        try:
            a.merge(b)
        except NotMergeableError:
            continue
        return f"{cls.__name__}.merge did not raise NotMergeableError"
    return ""


def check_memory_bytes() -> str:
    from telesketch import gpu, sketches

    for cls, kw in (("GapFilterSO", {}), ("GapFilterAO", {"fp_bits": 12})):
        want = getattr(sketches, cls)(memory_bytes=3000, **kw).memory_bytes
        got = getattr(gpu, cls)(memory_bytes=3000, **kw).memory_bytes
        if want != got:
            return f"{cls}: memory_bytes {got} != CPU {want}"
    return ""


def check_empty_batch() -> str:
    from telesketch import gpu

    sketch = gpu.GapFilterAO(memory_bytes=1024)
    flags = sketch.update(workload(0, 1, 0))
    return "" if flags.shape == (0,) and flags.dtype == np.bool_ else f"bad empty result {flags!r}"


def run_case(name: str) -> str:
    if name in EQUALITY_CASES:
        return check_equal(name)
    if name.startswith("roundtrip_"):
        return check_roundtrip(name.split("_")[1])
    if name.startswith("mixed_ipv6_"):
        return check_mixed_ipv6(name.split("_")[2])
    return {"device_hash": check_device_hash, "merge_refused": check_merge_refused, "memory_bytes": check_memory_bytes,
            "empty_batch": check_empty_batch}[name]()


class TestGapFilterGpuTwin(gpu_harness.TwinChecks):
    script, cases, run_case = __file__, EQUALITY_CASES + OTHER_CASES, staticmethod(run_case)
    # the default run keeps one equality case per kernel and path; the rest run with -m slow
    slow_cases = ["so_4k_modular", "so_2k_t", "so_one_bucket", "ao_4k_fp16_s4", "ao_1k_fp4_s0", "ao_3k_fp0_s8",
                  "ao_2k_civ_floor", "ao_one_bucket", "roundtrip_so", "roundtrip_ao", "mixed_ipv6_so"]


if __name__ == "__main__":
    from telesketch.gpu import GapFilterSO

    gpu_harness.script_main(TestGapFilterGpuTwin.cases, run_case, [lambda: GapFilterSO(memory_bytes=1024)])
