"""GPU Hidden Sketch (``telesketch.gpu.hiddensketch``) against the CPU sketch: identical state and answers.

CI has no GPU: the checks run under the CUDA simulator in a subprocess (this file run as a script)
and, when this process has a CUDA device, in-process too; see ``tests/gpu_harness.py``.
Inputs are small (about a thousand items per sketch, small memories): the simulator runs every GPU
thread as a Python thread (about 2 s per thousand items here).
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_harness
from workloads import zipf_ranks

pytestmark = pytest.mark.gpu
pytest_generate_tests = gpu_harness.pytest_generate_tests  # parametrizes the twin checks by case

# 4-byte configuration: ss_bytes = 1200 + 1050 + 512 = 2762 (as tests/test_hiddensketch.py's SMALL)
SMALL = dict(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3)
# 13-byte configuration (the spec's 8-filter interval tree and 9 segments, 2 rows per filter to keep
# the simulator quick): ss_bytes = 1200 + 16 * 300 // 8 + 2 * 28672 // 8 = 8968
WIDE = dict(key="5tuple", memory_bytes=12 * 1024, blocks=2, bf_rows=2, bf_row_bits=300, cm_bytes=1200, phi=2e-3)

# name: (parameters, epochs, feed through PacketBatch `update` rather than `update_keys`)
EQUALITY_CASES = {
    "src_ip_fs8": (dict(SMALL, thresh=5, seed=5), 2, False),
    "src_ip_fs16_batch": (dict(SMALL, memory_bytes=6000, fs_counter_bits=16, thresh=9, seed=7), 1, True),
    "src_ip_saturated_fs": (dict(SMALL, memory_bytes=2762 + 3, thresh=30, seed=2), 1, False),  # 1 counter per row
    "5tuple": (dict(WIDE, thresh=3, seed=11), 2, True),
    # a CM of 3 x 6 counters: the peel stops, so the decode is partial (issue 20's graceful answer,
    # CPU code run on the device state's host copy: the twin agrees once the state does)
    "src_ip_partial": (dict(SMALL, cm_bytes=72, thresh=3, seed=3), 1, False),
}
OTHER_CASES = ["device_hash", "device_hash16", "mixed_families", "bytes_mixed", "bytes_saturated", "two_pass", "batch_split", "roundtrip", "merge_refused", "memory_bytes",
               "empty_batch", "bad_params"]
ALL_CASES = sorted(EQUALITY_CASES) + OTHER_CASES
N_BATCHES = 2
BATCH_ITEMS = 400


# ---------------------------------------------------------------------------- workload
def key_table(universe: int, epoch: int, wide: bool, seed: int) -> np.ndarray:
    """Rank -> key: ``uint32`` addresses or ``uint8[., 13]`` 5-tuples; epoch 1 swaps the top ranks
    with middle ones (heavy changers)."""
    rng = np.random.default_rng(seed)
    if wide:
        keys = rng.integers(0, 256, (universe, 13), np.uint8)
    else:
        keys = rng.choice(2**32, universe, replace=False).astype(np.uint32)
    if epoch:
        keys[[0, 1, 2, 40, 41, 42]] = keys[[40, 41, 42, 0, 1, 2]]
    return keys


def batch_of(keys: np.ndarray, wide: bool):
    """A PacketBatch whose sketch keys (src_ip, or the 13-byte 5-tuple) are ``keys``."""
    from telesketch.packets import PacketBatch

    if not wide:
        return PacketBatch.from_columns(src_ip=keys)
    be = lambda a: a.astype(np.uint64)  # noqa: E731
    return PacketBatch.from_columns(
        src_ip=(be(keys[:, 0]) << 24 | be(keys[:, 1]) << 16 | be(keys[:, 2]) << 8 | be(keys[:, 3])).astype(np.uint32),
        dst_ip=(be(keys[:, 4]) << 24 | be(keys[:, 5]) << 16 | be(keys[:, 6]) << 8 | be(keys[:, 7])).astype(np.uint32),
        src_port=(be(keys[:, 8]) << 8 | be(keys[:, 9])).astype(np.uint16),
        dst_port=(be(keys[:, 10]) << 8 | be(keys[:, 11])).astype(np.uint16),
        proto=keys[:, 12],
    )


def epoch_keys(params: dict, epoch: int, seed: int, n: int = N_BATCHES * BATCH_ITEMS) -> np.ndarray:
    wide = params.get("key") == "5tuple"
    universe = 150 if params["memory_bytes"] < 2800 else 400
    return key_table(universe, epoch, wide, seed)[zipf_ranks(n, universe, 1.1, 100 * seed + epoch)]


def feed(sketch, keys: np.ndarray, sizes, through_batch: bool = False):
    """Update ``sketch`` with consecutive slices of ``keys`` of the given sizes."""
    at = 0
    for size in sizes:
        part = keys[at:at + size]
        if through_batch:
            sketch.update(batch_of(part, keys.ndim == 2))
        else:
            sketch.update_keys(part)
        at += size
    return sketch


# ---------------------------------------------------------------------------- checks
def _classes():
    from telesketch.gpu.hiddensketch import HiddenSketch as Gpu
    from telesketch.sketches.hiddensketch import HiddenSketch as Cpu

    return Cpu, Gpu


def _state_diff(cpu, dev) -> str:
    """'' when every state array, ``n_items`` and the serialised bytes are identical."""
    for name in ("fs", "seg", "bf", "cm"):
        want, got = getattr(cpu, name), getattr(dev, name)
        if got.dtype != want.dtype or not np.array_equal(want, got):
            return f"state array {name} differs at {np.argwhere(want != got)[:5].tolist()}"
    if cpu.n_items != dev.n_items:
        return f"n_items {dev.n_items} != CPU {cpu.n_items}"
    return "" if cpu.to_bytes() == dev.to_bytes() else "serialised state differs"


def _answers_diff(cpu, dev, probe) -> str:
    """'' when decode results (items, counts, flags, candidate counts) and point estimates agree."""
    if cpu.decode() != dev.decode():
        return f"decode differs: {dev.decode()} != CPU {cpu.decode()}"
    if not np.array_equal(cpu.point_estimate(probe), dev.point_estimate(probe)):
        return "point estimates differ"
    return ""


def check_equal(name: str) -> str:
    """Per epoch: identical state after every batch, identical decode / estimates; then identical
    heavy changers between the epochs."""
    params, epochs, through_batch = EQUALITY_CASES[name]
    Cpu, Gpu = _classes()
    sketches = []
    for epoch in range(epochs):
        keys = epoch_keys(params, epoch, params["seed"])
        cpu, dev = Cpu(**params), Gpu(**params)
        for k in range(N_BATCHES):
            part = keys[k * BATCH_ITEMS:(k + 1) * BATCH_ITEMS]
            feed(cpu, part, [len(part)], through_batch)
            feed(dev, part, [len(part)], through_batch)
            if detail := _state_diff(cpu, dev):
                return f"epoch {epoch} batch {k}: {detail}"
        if int(cpu.cm.sum()) == 0 or not cpu.heavy_hitters():
            return f"epoch {epoch}: nothing reached the second stage: the comparison is vacuous"
        if name.endswith("_partial") and not (cpu.decode().partial and cpu.decode().bounded):
            return f"epoch {epoch}: the decode finished: the partial comparison is vacuous"
        if detail := _answers_diff(cpu, dev, keys[:200]):
            return f"epoch {epoch}: {detail}"
        sketches.append((cpu, dev))
    if epochs == 2:
        (c0, d0), (c1, d1) = sketches
        want = c1.heavy_changers(c0)
        if not want:
            return "no heavy changers: the comparison is vacuous"
        if d1.heavy_changers(d0) != want or d1.heavy_changers(c0) != want:
            return "heavy changers differ"
    return ""


def check_device_hash() -> str:
    """The device key hash equals telesketch.hashing: full 4- and 13-byte keys, partial keys, seeds."""
    from telesketch.gpu.hiddensketch import device_hash_key_words
    from telesketch.hashing import hash_5tuple, hash_keys, hash_u32
    from telesketch.sketches.hiddensketch import keys_to_words

    rng = np.random.default_rng(4)
    addrs = np.r_[rng.integers(0, 2**32, 300), [0, 1, 2**31, 2**32 - 1]].astype(np.uint32)
    flows = np.r_[rng.integers(0, 256, (300, 13)), np.zeros((1, 13)), np.full((1, 13), 255)].astype(np.uint8)
    for seed in (0, 12345, 2**63, 2**64 - 1):
        if not np.array_equal(device_hash_key_words(*keys_to_words(addrs, 4), 4, seed), hash_u32(addrs, seed)):
            return f"4-byte keys, seed {seed}: device hash differs"
        got = device_hash_key_words(*keys_to_words(flows, 13), 13, seed)
        via_batch = hash_5tuple(batch_of(flows, True), seed)
        if not (np.array_equal(got, hash_keys(flows, seed)) and np.array_equal(got, via_batch)):
            return f"13-byte keys, seed {seed}: device hash differs"
        for nbytes in (4, 13):  # partial keys: small integers, zero-padded little-endian buffers
            lo = rng.integers(0, 2**63, 200, dtype=np.uint64) >> rng.integers(0, 63, 200).astype(np.uint64)
            hi = np.zeros(200, np.uint64) if nbytes == 4 else rng.integers(0, 2**40, 200, dtype=np.uint64)
            lo = lo & np.uint64(0xFFFFFFFF) if nbytes == 4 else lo
            buf = np.stack([lo, hi], axis=1).astype("<u8").view(np.uint8).reshape(-1, 16)[:, :nbytes]
            if not np.array_equal(device_hash_key_words(lo, hi, nbytes, seed), hash_keys(buf, seed)):
                return f"{nbytes}-byte partial keys, seed {seed}: device hash differs"
    return ""


def check_device_hash16() -> str:
    """The device hash of 16-byte (IPv6 address) keys equals telesketch.hashing, partial keys too."""
    from telesketch.gpu.hiddensketch import device_hash_key_words
    from telesketch.hashing import hash_keys
    from telesketch.sketches.hiddensketch import keys_to_words

    rng = np.random.default_rng(16)
    keys = np.r_[rng.integers(0, 256, (300, 16)), np.zeros((1, 16)), np.full((1, 16), 255)].astype(np.uint8)
    for seed in (0, 12345, 2**64 - 1):
        if not np.array_equal(device_hash_key_words(*keys_to_words(keys, 16), 16, seed), hash_keys(keys, seed)):
            return f"16-byte keys, seed {seed}: device hash differs"
        lo = rng.integers(0, 2**63, 200, dtype=np.uint64) >> rng.integers(0, 63, 200).astype(np.uint64)
        hi = rng.integers(0, 2**62, 200, dtype=np.uint64) >> rng.integers(0, 62, 200).astype(np.uint64)
        buf = np.stack([lo, hi], axis=1).astype("<u8").view(np.uint8).reshape(-1, 16)
        if not np.array_equal(device_hash_key_words(lo, hi, 16, seed), hash_keys(buf, seed)):
            return f"16-byte partial keys, seed {seed}: device hash differs"
    return ""


def mixed_batch(n: int, epoch: int, seed: int):
    """``n`` packets, 40 % IPv6, sources from a Zipf law over 60 IPv4 and 60 IPv6 addresses (one
    /64); epoch 1 swaps the top ranks with middle ones (heavy changers in both families)."""
    from telesketch.packets import PacketBatch

    rng = np.random.default_rng(seed)
    v4 = rng.choice(2**32, 60, replace=False).astype(np.uint32)
    v6 = rng.integers(0, 256, (60, 16), np.uint8)
    v6[:, :8] = (0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 1)
    if epoch:
        v4[[0, 1, 30, 31]], v6[[0, 1, 30, 31]] = v4[[30, 31, 0, 1]], v6[[30, 31, 0, 1]]
    rank = zipf_ranks(n, 60, 1.1, 100 * seed + epoch)
    is6 = np.random.default_rng(seed + epoch).random(n) < 0.4
    return PacketBatch.from_columns(src_ip=np.where(is6, 0, v4[rank]).astype(np.uint32),
                                    src_ip6=np.where(is6[:, None], v6[rank], 0).astype(np.uint8),
                                    ipv6=is6.astype(np.uint8))


def check_mixed_families() -> str:
    """Mixed IPv4/IPv6 batches (the family split): identical 4-byte state and 16-byte companion
    state after every batch, identical decodes, point estimates of both key kinds, heavy changers."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, thresh=4, seed=3, ipv6_memory_bytes=62 * 1024)
    sketches = []
    for epoch in range(2):
        batch = mixed_batch(600, epoch, 3)
        cpu, dev = Cpu(**params), Gpu(**params)
        for part in batch.split(300):
            cpu.update(part)
            dev.update(part)
            if type(dev.ipv6) is not Gpu:
                return f"epoch {epoch}: the IPv6 companion of a GPU sketch is {type(dev.ipv6).__name__}"
            if detail := _state_diff(cpu, dev) or _state_diff(cpu.ipv6, dev.ipv6):
                return f"epoch {epoch}: {detail}"
        items = cpu.heavy_hitters()
        if not any(isinstance(k, bytes) for k, _ in items) or not any(isinstance(k, int) for k, _ in items):
            return f"epoch {epoch}: heavy hitters lack a family: the comparison is vacuous"
        probe = [k for k, _ in items] + [int(batch.src_ip[0]), bytes(16)]
        if cpu.decode() != dev.decode() or not np.array_equal(cpu.point_estimate(probe), dev.point_estimate(probe)):
            return f"epoch {epoch}: answers differ"
        sketches.append((cpu, dev))
    (c0, d0), (c1, d1) = sketches
    want = c1.heavy_changers(c0)
    if not any(isinstance(k, bytes) for k, _ in want):
        return "no IPv6 heavy changer: the comparison is vacuous"
    return "" if d1.heavy_changers(d0) == want else "heavy changers differ"


def _with_lengths(batch, seed: int, zero_share: float = 0.05):
    """``batch`` with packet lengths 40..1500 (a few zero: those change nothing)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 1501, len(batch))
    lengths[rng.random(len(batch)) < zero_share] = 0
    batch.length[:] = lengths
    return batch


def check_bytes_mixed() -> str:
    """Byte weighting on mixed IPv4/IPv6 batches: identical 32-bit FS, 64-bit CM, bitmaps, filters
    and ``total_weight`` in both families after every batch; identical decodes and heavy changers."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, thresh=3000, seed=3, ipv6_memory_bytes=62 * 1024, weight="bytes")
    sketches = []
    for epoch in range(2):
        batch = _with_lengths(mixed_batch(600, epoch, 3), 50 + epoch)
        cpu, dev = Cpu(**params), Gpu(**params)
        for part in batch.split(300):
            cpu.update(part)
            dev.update(part)
            for c, d in ((cpu, dev), (cpu.ipv6, dev.ipv6)):
                if detail := _state_diff(c, d):
                    return f"epoch {epoch}: {detail}"
                if c.total_weight != d.total_weight or c.cm.dtype != np.uint64 or c.fs.dtype != np.uint32:
                    return f"epoch {epoch}: total_weight or dtypes differ"
        items = cpu.heavy_hitters()
        if not any(isinstance(k, bytes) for k, _ in items) or not any(isinstance(k, int) for k, _ in items):
            return f"epoch {epoch}: heavy hitters lack a family: the comparison is vacuous"
        if cpu.decode() != dev.decode():
            return f"epoch {epoch}: answers differ"
        sketches.append((cpu, dev))
    (c0, d0), (c1, d1) = sketches
    want = c1.heavy_changers(c0)
    return "" if want and d1.heavy_changers(d0) == want else "heavy changers differ (or none)"


def check_bytes_saturated() -> str:
    """Byte weighting with 16-bit FS counters and one counter per row: every row saturates within
    the batch; the GPU's prefix sums must drop saturated rows from the gate exactly as the CPU loop."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, memory_bytes=2762 + 6, fs_counter_bits=16, thresh=20_000, seed=2, weight="bytes")
    keys = epoch_keys(dict(params, memory_bytes=2000), 0, 2, 500)
    weights = np.random.default_rng(8).integers(0, 1501, keys.shape[0])
    cpu, dev = Cpu(**params), Gpu(**params)
    for at in (0, 200):
        cpu.update_keys(keys[at:at + 300 - at // 2], weights[at:at + 300 - at // 2])
        dev.update_keys(keys[at:at + 300 - at // 2], weights[at:at + 300 - at // 2])
        if detail := _state_diff(cpu, dev):
            return detail
    if int(cpu.fs.max()) != 65_535 or not cpu.heavy_hitters():
        return "the first stage did not saturate or nothing was reported: the check is vacuous"
    return "" if cpu.decode() == dev.decode() else "answers differ"


def check_two_pass() -> str:
    """Two shards, two passes, merges in between: GPU == CPU, and == one two-pass sketch of it all."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, thresh=6, seed=9, mode="two_pass")
    keys = epoch_keys(params, 0, 9, 700)
    shards = (keys[:400], keys[400:])
    results = {}
    for label, cls_a, cls_b in (("cpu", Cpu, Cpu), ("gpu", Gpu, Gpu), ("mixed", Gpu, Cpu)):
        a, b = cls_a(**params), cls_b(**params)
        feed(a, shards[0], [150, 250])
        feed(b, shards[1], [300])
        merged = cls_a.from_bytes(a.to_bytes())
        merged.merge(b)
        a.begin_second_pass(merged)
        b.begin_second_pass(merged)
        feed(a, shards[0], [400])
        feed(b, shards[1], [300])
        a.merge(b)
        results[label] = a
    single = Gpu(**params)
    feed(single, keys, [700])
    single.begin_second_pass()
    feed(single, keys, [700])
    cpu = results["cpu"]
    if not cpu.heavy_hitters():
        return "two-pass run reported nothing: the comparison is vacuous"
    for label, sketch in (("gpu", results["gpu"]), ("mixed", results["mixed"]), ("single gpu", single)):
        if detail := _state_diff(cpu, sketch) or _answers_diff(cpu, sketch, keys[:100]):
            return f"{label}: {detail}"
    return ""


def check_batch_split() -> str:
    """The same items in one batch or in uneven pieces give identical state (and equal the CPU)."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, thresh=4, seed=13)
    keys = epoch_keys(params, 0, 13, 600)
    whole = feed(Gpu(**params), keys, [600])
    pieces = feed(Gpu(**params), keys, [1, 2, 61, 200, 336])
    cpu = feed(Cpu(**params), keys, [600])
    return _state_diff(cpu, whole) or _state_diff(cpu, pieces) or _answers_diff(cpu, pieces, keys[:100])


def check_roundtrip() -> str:
    """Snapshots move CPU -> GPU, GPU -> CPU and GPU -> GPU and continue identically."""
    Cpu, Gpu = _classes()
    params = dict(SMALL, thresh=5, seed=21)
    keys = epoch_keys(params, 0, 21, 1000)
    cpu, dev = feed(Cpu(**params), keys[:500], [500]), feed(Gpu(**params), keys[:500], [500])
    restored = {"cpu->gpu": Gpu.from_bytes(cpu.to_bytes()), "gpu->cpu": Cpu.from_bytes(dev.to_bytes()),
                "gpu->gpu": dev.copy()}
    if type(restored["gpu->gpu"]) is not Gpu:
        return "copy() of a GPU sketch is not a GPU sketch"
    feed(cpu, keys[500:], [500])
    for how, sketch in restored.items():
        feed(sketch, keys[500:], [500])
        if detail := _state_diff(cpu, sketch) or _answers_diff(cpu, sketch, keys[:100]):
            return f"{how}: {detail}"
    return ""


def check_merge_refused() -> str:
    from telesketch.sketches.core import NotMergeableError

    _, Gpu = _classes()
    a, b = Gpu(**SMALL, thresh=5), Gpu(**SMALL, thresh=5)
    try:
        a.merge(b)
    except NotMergeableError:
        return ""
    return "one-pass GPU merge did not raise NotMergeableError"


def check_memory_bytes() -> str:
    Cpu, Gpu = _classes()
    for params in (dict(SMALL, thresh=5), dict(WIDE, thresh=3), {}):
        if Cpu(**params).memory_bytes != Gpu(**params).memory_bytes:
            return f"memory_bytes differs for {params}"
    return ""


def check_empty_batch() -> str:
    Cpu, Gpu = _classes()
    cpu, dev = Cpu(**SMALL, thresh=5), Gpu(**SMALL, thresh=5)
    for sketch in (cpu, dev):
        sketch.update_keys(np.zeros(0, np.uint32))
        sketch.update(batch_of(np.zeros(0, np.uint32), False))
    return _state_diff(cpu, dev) or ("" if dev.n_items == 0 else "empty batch counted items")


def check_bad_params() -> str:
    from telesketch.sketches.core import SketchError

    _, Gpu = _classes()
    for bad in (dict(thresh=255), dict(key="ipv6"), dict(memory_bytes=1000)):
        try:
            Gpu(**bad)
        except SketchError:
            continue
        return f"{bad} did not raise SketchError"
    return ""


def run_case(name: str) -> str:
    if name in EQUALITY_CASES:
        return check_equal(name)
    return globals()[f"check_{name}"]()


class TestHiddenSketchGpuTwin(gpu_harness.TwinChecks):
    script, cases, run_case = __file__, ALL_CASES, staticmethod(run_case)
    # the default run keeps one equality case per kernel and path; the rest run with -m slow
    # Simulator CPU seconds (gpu_harness verdicts): two_pass 6.8, 5tuple 5.3, src_ip_fs8 5.3, roundtrip 4.3,
    # batch_split 3.6, src_ip_fs16_batch 3.3: the default run keeps src_ip_fs16_batch and the instant ones.
    # bytes_mixed: 33 s (both families byte-weighted); bytes_saturated (3.7 s) keeps the weighted kernels in the default run
    # src_ip_partial (3.7 s) keeps a partial decode of the device state in the default run
    slow_cases = ["src_ip_fs8", "two_pass", "src_ip_saturated_fs", "5tuple", "batch_split", "roundtrip", "bytes_mixed",
                  "bytes_saturated"]


if __name__ == "__main__":
    from telesketch.gpu.hiddensketch import HiddenSketch

    gpu_harness.script_main(TestHiddenSketchGpuTwin.cases, run_case, [lambda: HiddenSketch(**SMALL, thresh=5)])
