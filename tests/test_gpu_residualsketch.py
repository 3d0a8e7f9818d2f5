"""GPU ResidualSketch / CocoSketch (``telesketch.gpu.residualsketch``) against the CPU sketches:
identical state and answers.

CI has no GPU: the checks run under the CUDA simulator in a subprocess (this file run as a script)
and, when this process has a CUDA device, in-process too; see ``tests/gpu_harness.py``.
Inputs are small (a few thousand packets): the device path is one thread (spec §5 exact mode) and
the simulator runs it as Python.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpu_harness
from workloads import address_pool, zipf_ranks

pytestmark = pytest.mark.gpu
pytest_generate_tests = gpu_harness.pytest_generate_tests  # parametrizes the twin checks by case

# case -> (class name, keyword parameters): byte/bit, src/dst, several memories, thresholds and seeds
EQUALITY = {
    "rs_byte_src_2k": ("ResidualSketch", dict(mode="byte", memory_bytes=2048, threshold=40, seed=11)),
    "rs_byte_dst_3k_ge": ("ResidualSketch", dict(mode="byte", dimension="dst", memory_bytes=3000,
                                                  crucial_layers=(8, 16, 24), threshold=25, addback="ge", seed=4)),
    "rs_bit_src_4k": ("ResidualSketch", dict(mode="bit", memory_bytes=4096, threshold=30, seed=7)),
    "rs_bit_dst_multi": ("ResidualSketch", dict(mode="bit", dimension="dst_ip", memory_bytes=4096,
                                                 crucial_layers=(8, 12, 24), threshold=20, seed=2**63 + 5)),
    "rs_bit_noconn": ("ResidualSketch", dict(mode="bit", memory_bytes=3000, crucial_layers=(8, 12, 24),
                                              threshold=30, connection=False, seed=1)),
    "rs_byte_split": ("ResidualSketch", dict(mode="byte", memory_bytes=3000, crucial_layers=(16, 24),
                                             split=(0.5, 0.2, 0.3), threshold=30, seed=5)),  # unequal widths
    "rs_layout_flat": ("ResidualSketch", dict(mode="byte", memory_bytes=1024, crucial_layers=(), threshold=30,
                                              seed=4)),  # layout "tuned"'s CocoSketch layout: no Residual Block
    "rs_layout_16_24": ("ResidualSketch", dict(mode="byte", memory_bytes=3000, crucial_layers=(16, 24),
                                               split=(0.5, 0.25, 0.25), threshold=30, seed=6)),  # "tuned"'s two blocks
    "coco_byte_src_1k": ("CocoSketch", dict(mode="byte", memory_bytes=1024, threshold=30, seed=3)),
    "coco_bit_dst_2k": ("CocoSketch", dict(mode="bit", dimension="dst", memory_bytes=2048, threshold=20, seed=9)),
}
OTHER_CASES = ["device_hash", "batch_split", "snapshot", "empty_batch", "merge_refused", "sizes", "ipv6_mixed",
               "bytes_mixed", "bytes_wide",
               "ipv6_snapshot", "batched_equals_emulation", "batched_modes_and_errors", "batched_multi_layer",
               "batched_f1_three_seeds", "batched_ipv6_and_empty"]
N_BATCHES = 3
BATCH_PACKETS = 1000
POOL = 1500  # distinct addresses: more than F's 2 * w buckets in every EQUALITY case


# ---------------------------------------------------------------------------- workload
def workload(n: int, seed: int):
    """A PacketBatch of ``n`` packets: finite-Zipf(1.0) source and destination addresses over two
    pools (skewed: the top addresses pass the thresholds; the long tail overflows the buckets)."""
    from telesketch.packets import PacketBatch

    rng = np.random.default_rng(seed)
    src, dst = address_pool(seed, POOL), address_pool(seed + 7919, POOL)
    return PacketBatch.from_columns(src_ip=src[zipf_ranks(n, POOL, 1.0, rng)],
                                    dst_ip=dst[zipf_ranks(n, POOL, 1.0, rng)])


def batches(seed: int) -> list:
    return [workload(BATCH_PACKETS, 100 * (seed % 1000) + k) for k in range(N_BATCHES)]


def addresses_of(sketch, batch) -> np.ndarray:
    return batch.src_ip if sketch.params.dimension == "src" else batch.dst_ip


# ---------------------------------------------------------------------------- comparisons
def _classes(cls_name: str):
    """``(CPU class, GPU class)`` of ``ResidualSketch`` or ``CocoSketch``."""
    from telesketch.gpu import residualsketch as gpu
    from telesketch.sketches import residualsketch as cpu

    return getattr(cpu, cls_name), getattr(gpu, cls_name)


def _pair(cls_name: str, **kwargs):
    Cpu, Gpu = _classes(cls_name)
    return Cpu(**kwargs), Gpu(**kwargs)


def same_state(want, got) -> str:
    """'' when ``ids``, ``counts``, ``occ`` (values and dtypes), the packet index and the serialised
    bytes agree."""
    for name in ("ids", "counts", "occ"):
        a, b = getattr(want, name), getattr(got, name)
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            return f"state {name!r} differs at {np.argwhere(a != b)[:5].tolist() if a.shape == b.shape else 'shape'}"
    if want.packets != got.packets:
        return f"packet index {got.packets} != CPU {want.packets}"
    return "" if want.to_bytes() == got.to_bytes() else "serialised state differs"


def same_answers(want, got, probe: np.ndarray) -> str:
    """'' when layer estimates, hhh(), hhh_entries at three thresholds and point estimates (several
    lengths, addresses from ``probe``) agree."""
    if want.layer_estimates() != got.layer_estimates():
        return "layer_estimates differ"
    if want.hhh() != got.hhh():
        return f"hhh() differs: {got.hhh()} != CPU {want.hhh()}"
    for threshold in (5, 15, 60):
        if want.hhh_entries(threshold) != got.hhh_entries(threshold):
            return f"hhh_entries({threshold}) differs"
    for x in probe[:8].tolist():
        for length in (0, 8, 12, 16, 24, 32):
            p = x & (0 if length == 0 else (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
            if want.estimate(p, length) != got.estimate(p, length):
                return f"estimate({p:#x}, {length}) differs"
    return ""


def connection_firings(sketch, addresses: np.ndarray) -> int:
    """How often the Residual Connection fires (F's count of a key reaches exactly T) on
    ``addresses``, counted by the pure-Python model (tests/naive_residualsketch.py) with the
    sketch's parameters; the model's final state must equal the sketch's (same stream)."""
    import naive_residualsketch as naive

    p = sketch.params
    model = naive.NaiveResidualSketch(p.memory_bytes, sketch.T,
                                      p.crucial_layers, p.mode, p.seed, p.addback, p.connection,
                                      shares=None if p.split is None else p.block_shares())
    fired = 0
    plain_insert = model.F.insert

    def counting_insert(x, u, *args, **kwargs):
        nonlocal fired
        c = plain_insert(x, u, *args, **kwargs)
        fired += c == model.T
        return c

    model.F.insert = counting_insert
    model.update(addresses)
    ids, counts, occ = (padded(a, sketch.occ.shape) for a in model.state())
    if not (np.array_equal(ids, sketch.ids) and np.array_equal(counts, sketch.counts)
            and np.array_equal(occ, sketch.occ)):
        return -1
    return fired


def padded(blocks, shape) -> np.ndarray:
    """The naive model's ``[block][row][bucket]`` lists in an array of the sketch's ``shape``: blocks
    narrower than the widest (an unequal ``split``) are zero-padded, as the sketch leaves them."""
    out = np.zeros(shape, np.int64)
    for j, block in enumerate(blocks):
        row = np.array(block, np.int64)
        out[j, :, :row.shape[1]] = row
    return out


def not_vacuous(cpu, addresses: np.ndarray) -> str:
    """The buckets must overflow (more distinct keys than F's buckets, all full), HHH must report
    something, and with the connection on it must have fired."""
    if len(np.unique(addresses)) <= cpu.occ[0].size or not cpu.occ[0].all():
        return "F is not overfull: no replacement pressure"
    if not cpu.hhh():
        return "hhh() is empty: the comparison is vacuous"
    if getattr(cpu.params, "connection", False):
        fired = connection_firings(cpu, addresses)
        if fired < 0:
            return "the naive model's state differs from the CPU sketch's: cannot count the connection"
        if fired == 0:
            return "the Residual Connection never fired"
    return ""


def check_equal(name: str) -> str:
    """GPU == CPU after every batch (state) and at the end (queries); the workload exercises it."""
    cls_name, kwargs = EQUALITY[name]
    cpu, dev = _pair(cls_name, **kwargs)
    fed = []
    for k, batch in enumerate(batches(kwargs["seed"])):
        cpu.update(batch)
        dev.update(batch)
        fed.append(addresses_of(cpu, batch))
        if detail := same_state(cpu, dev):
            return f"batch {k}: {detail}"
    addresses = np.concatenate(fed)
    return same_answers(cpu, dev, addresses) or not_vacuous(cpu, addresses)


def check_device_hash() -> str:
    """``device_bob_hash`` equals the CPU ``bob_hash`` (and the pure-Python lookup2) for edge and
    random keys, both rows."""
    import naive_residualsketch as naive
    from telesketch.gpu.residualsketch import device_bob_hash
    from telesketch.sketches.cocosketch import ROW_INITS, bob_hash

    rng = np.random.default_rng(3)
    keys = np.r_[[0, 1, 2**31, 2**32 - 1], rng.integers(0, 2**32, 200)].astype(np.uint32)
    for row in (0, 1):
        got = device_bob_hash(keys, row)
        want = np.array([bob_hash(np.uint64(x), np.uint64(ROW_INITS[row] + 4)) for x in keys], np.uint64)
        if got.dtype != np.uint64 or not np.array_equal(got, want):
            return f"row {row}: device hash differs at {np.flatnonzero(got != want)[:5].tolist()}"
        if got[:4].tolist() != [naive.bob(int(x), row) for x in keys[:4]]:
            return f"row {row}: differs from the pure-Python lookup2"
    if device_bob_hash(np.zeros(0, np.uint32), 0).shape != (0,):
        return "empty key array"
    return ""


def check_batch_split() -> str:
    """The same packets in one batch or in uneven pieces (single packets included): same state as
    the CPU sketch fed one batch."""
    from telesketch.packets import PacketBatch

    batch = PacketBatch.concat([workload(600, 31), workload(600, 32)])
    for cls_name, kwargs in (("ResidualSketch", dict(mode="bit", memory_bytes=3000, crucial_layers=(8, 16),
                                                     threshold=15, seed=6)),
                             ("CocoSketch", dict(memory_bytes=1024, threshold=15, seed=6))):
        cpu, whole = _pair(cls_name, **kwargs)
        _, pieces = _pair(cls_name, **kwargs)
        cpu.update(batch)
        whole.update(batch)
        for cut in np.split(np.arange(len(batch)), [1, 2, 400, 401, 1100]):
            pieces.update(batch[cut])
        if detail := same_state(cpu, whole) or same_state(cpu, pieces) or same_answers(cpu, pieces, batch.src_ip):
            return f"{cls_name}: {detail}"
    return ""


def check_snapshot() -> str:
    """Snapshots move CPU -> GPU, GPU -> CPU and GPU -> GPU and continue updating identically."""
    first, second = workload(800, 41), workload(800, 42)
    for cls_name, kwargs in (("ResidualSketch", dict(memory_bytes=2048, threshold=20, seed=13)),
                             ("CocoSketch", dict(mode="bit", memory_bytes=1024, threshold=20, seed=13))):
        Cpu, Gpu = _classes(cls_name)
        cpu, dev = Cpu(**kwargs), Gpu(**kwargs)
        cpu.update(first)
        dev.update(first)
        restored = {"cpu->gpu": Gpu.from_bytes(cpu.to_bytes()), "gpu->cpu": Cpu.from_bytes(dev.to_bytes()),
                    "gpu->gpu": Gpu.from_bytes(dev.to_bytes())}
        for how in ("cpu->gpu", "gpu->gpu"):
            if type(restored[how]) is not Gpu or restored[how].device_backend is None:
                return f"{cls_name} {how}: from_bytes did not build a GPU sketch"
        cpu.update(second)
        for how, sketch in restored.items():
            sketch.update(second)
            if detail := same_state(cpu, sketch) or same_answers(cpu, sketch, second.src_ip):
                return f"{cls_name} {how}: {detail}"
    return ""


def check_empty_batch() -> str:
    from telesketch.packets import PacketBatch

    for cls_name, kwargs in (("ResidualSketch", dict(memory_bytes=2048, threshold=10)), ("CocoSketch", {})):
        cpu, dev = _pair(cls_name, **kwargs)
        empty = PacketBatch.from_columns(src_ip=np.zeros(0, np.uint32), dst_ip=np.zeros(0, np.uint32))
        for sketch in (cpu, dev):
            sketch.update(empty)
            sketch.update_addresses(np.zeros(0, np.uint32))
        if detail := same_state(cpu, dev) or ("" if dev.packets == 0 and not dev.occ.any() else "state moved"):
            return f"{cls_name}: {detail}"
    return ""


def check_merge_refused() -> str:
    """``merge`` raises the CPU class's NotMergeableError (same message)."""
    from telesketch.sketches.core import NotMergeableError

    for cls_name, kwargs in (("ResidualSketch", dict(threshold=10)), ("CocoSketch", {})):
        messages = []
        for sketch_a, sketch_b in zip(_pair(cls_name, **kwargs), _pair(cls_name, **kwargs)):
            try:
                sketch_a.merge(sketch_b)
            except NotMergeableError as exc:
                messages.append(str(exc))
            else:
                return f"{type(sketch_a).__module__}.{cls_name}.merge did not raise NotMergeableError"
        if messages[0] != messages[1]:
            return f"{cls_name}: message differs from the CPU's: {messages[1]!r}"
    return ""


def check_sizes() -> str:
    """``memory_bytes``, ``width`` and the state arrays' shapes and dtypes equal the CPU sketch's."""
    for cls_name, kwargs in (("ResidualSketch", dict(threshold=10)),
                             ("ResidualSketch", dict(mode="bit", threshold=10)),
                             ("ResidualSketch", dict(memory_bytes=3000, crucial_layers=(8, 16, 24), threshold=5)),
                             ("CocoSketch", {}), ("CocoSketch", dict(mode="bit", memory_bytes=1000))):
        cpu, dev = _pair(cls_name, **kwargs)
        if (cpu.memory_bytes, cpu.width) != (dev.memory_bytes, dev.width):
            return f"{cls_name}({kwargs}): sizes differ"
        for name in ("ids", "counts", "occ"):
            a, b = getattr(cpu, name), getattr(dev, name)
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                return f"{cls_name}({kwargs}): {name} shape/dtype differs"
    return ""


def same_ipv6(want, got) -> str:
    """'' when the IPv6 trees' arrays, packet index and answers agree."""
    for name in ("hi6", "lo6", "counts6", "occ6"):
        a, b = getattr(want, name), getattr(got, name)
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            return f"IPv6 state {name!r} differs"
    if want.packets6 != got.packets6:
        return f"IPv6 packet index {got.packets6} != CPU {want.packets6}"
    if want.layer_estimates6() != got.layer_estimates6() or want.hhh_rows() != got.hhh_rows():
        return "IPv6 answers differ"
    for threshold in (5, 40):
        if want.hhh6_entries(threshold) != got.hhh6_entries(threshold):
            return f"hhh6_entries({threshold}) differs"
    return ""


def check_ipv6_mixed() -> str:
    """Mixed traffic (40 % IPv6): both trees of the GPU twin equal the CPU's after every batch, and
    the IPv6 tree reports prefixes above /128 (not vacuous)."""
    from test_ipv6_hhh import mixed_batch

    cases = (("ResidualSketch", dict(memory_bytes=2048, ipv6_memory_bytes=4000, ipv6_crucial_layers=(32, 64),
                                     threshold=20, seed=5)),
             ("ResidualSketch", dict(memory_bytes=2048, ipv6_memory_bytes=3000, threshold=20, addback="ge",
                                     connection=False, seed=6)),
             ("CocoSketch", dict(memory_bytes=1024, ipv6_memory_bytes=2000, threshold=20, seed=7)))
    for cls_name, kwargs in cases:
        cpu, dev = _pair(cls_name, **kwargs)
        for k, batch in enumerate(mixed_batch(2400, seed=kwargs["seed"]).split(800)):
            cpu.update(batch)
            dev.update(batch)
            if detail := same_state(cpu, dev) or same_ipv6(cpu, dev):
                return f"{cls_name} batch {k}: {detail}"
        if not any(e.length < 128 for e in cpu.hhh6_entries()):
            return f"{cls_name}: vacuous, no IPv6 prefix above /128 reported"
    return ""


def check_bytes_mixed() -> str:
    """Byte-weighted (``weight="bytes"``) on mixed traffic with real lengths and a few zero-length rows:
    both trees of the GPU twin equal the CPU's after every batch (weighted coins, Residual Connection)."""
    from telesketch.traces.generate import generate_batch

    cases = (("ResidualSketch", dict(memory_bytes=2400, ipv6_memory_bytes=4800, threshold=20_000, seed=5)),
             ("ResidualSketch", dict(mode="bit", memory_bytes=4800, crucial_layers=(8, 24), threshold=15_000,
                                     addback="ge", seed=6)),
             ("ResidualSketch", dict(memory_bytes=2400, threshold=20_000, connection=False, seed=8)),
             ("CocoSketch", dict(memory_bytes=1200, ipv6_memory_bytes=2400, threshold=20_000, seed=7)))
    batch = generate_batch(2400, 300, seed=3, ipv6_share=0.3)
    batch.length[::97] = 0  # zero-weight rows change nothing
    for cls_name, kwargs in cases:
        cpu, dev = _pair(cls_name, weight="bytes", **kwargs)
        for k, part in enumerate(batch.split(800)):
            cpu.update(part)
            dev.update(part)
            if detail := same_state(cpu, dev) or same_ipv6(cpu, dev):
                return f"{cls_name} {kwargs} batch {k}: {detail}"
        if not cpu.hhh() or cpu.hhh() != dev.hhh():
            return f"{cls_name}: answers differ or are vacuous: {cpu.hhh()[:3]} vs {dev.hhh()[:3]}"
    return ""


def check_bytes_wide() -> str:
    """Counts past 2^32 (int64 buckets, the float64 coin) agree between the twins."""
    rng = np.random.default_rng(1)
    keys = address_pool(3, 40)[rng.integers(0, 40, 600)]
    weights = rng.integers(1, 3 * 2**31, 600, dtype=np.int64)
    for cls_name in ("ResidualSketch", "CocoSketch"):
        cpu, dev = _pair(cls_name, memory_bytes=480, threshold=2**34, weight="bytes", seed=2)
        cpu.update_addresses(keys, weights)
        dev.update_addresses(keys, weights)
        if detail := same_state(cpu, dev):
            return f"{cls_name}: {detail}"
        if cpu.counts.max() <= 2**32:
            return f"{cls_name}: vacuous, no count past 2^32"
    return ""


def check_ipv6_snapshot() -> str:
    """Snapshots with an IPv6 tree move CPU <-> GPU and continue identically."""
    from test_ipv6_hhh import mixed_batch

    first, second = mixed_batch(700, seed=11), mixed_batch(700, seed=12)
    Cpu, Gpu = _classes("ResidualSketch")
    kwargs = dict(memory_bytes=2048, ipv6_memory_bytes=3000, threshold=15, seed=3)
    cpu, dev = Cpu(**kwargs), Gpu(**kwargs)
    cpu.update(first)
    dev.update(first)
    restored = {"cpu->gpu": Gpu.from_bytes(cpu.to_bytes()), "gpu->cpu": Cpu.from_bytes(dev.to_bytes())}
    cpu.update(second)
    for how, sketch in restored.items():
        sketch.update(second)
        if detail := same_state(cpu, sketch) or same_ipv6(cpu, sketch):
            return f"{how}: {detail}"
    return ""


# ---------------------------------------------------------------------------- batched mode (spec §5)
def _batched_equal(kwargs: dict, seed: int) -> str:
    """The GPU twin with ``gpu_update="batched"`` against the CPU emulation of the same algorithm
    (``telesketch.sketches.residual_batched.emulate_update``): the same state bit for bit after every
    batch, and F keeps every packet."""
    from telesketch.gpu import residualsketch as gpu
    from telesketch.sketches import residualsketch as cpu
    from telesketch.sketches.residual_batched import emulate_update

    want, got = cpu.ResidualSketch(**kwargs), gpu.ResidualSketch(gpu_update="batched", **kwargs)
    fed = []
    for k, batch in enumerate(batches(seed)):
        emulate_update(want, addresses_of(want, batch))
        got.update(batch)
        fed.append(addresses_of(want, batch))
        if detail := same_state(want, got):
            return f"batch {k}: {detail}"
        if int(got.counts[0].sum()) != sum(len(a) for a in fed):
            return f"batch {k}: F's total is not the packet count"
    addresses = np.concatenate(fed)
    if not want.hhh() or len(np.unique(addresses)) <= want.occ[0].size:
        return "vacuous: no HHH or no replacement pressure"
    return same_answers(want, got, addresses)


def check_batched_equals_emulation() -> str:
    return _batched_equal(dict(mode="byte", memory_bytes=2048, threshold=40, seed=11), 11)


def check_batched_multi_layer() -> str:
    """Bit mode, three Residual Blocks, an unequal split; and the noConn ablation."""
    return (_batched_equal(dict(mode="bit", dimension="dst", memory_bytes=4096, crucial_layers=(8, 12, 24),
                                split=(0.4, 0.2, 0.2, 0.2), threshold=20, seed=2**63 + 5), 5)
            or _batched_equal(dict(mode="byte", memory_bytes=3000, crucial_layers=(16, 24), threshold=30,
                                   connection=False, seed=1), 1))


def check_batched_modes_and_errors() -> str:
    """``gpu_update``: default exact; a bad value, byte weighting with batched: clear errors; the mode
    survives ``from_bytes(gpu_update=...)`` and ``copy()``; a snapshot moves between the modes."""
    from telesketch.gpu import residualsketch as gpu
    from telesketch.sketches.core import SketchError

    if gpu.ResidualSketch(threshold=5).gpu_update != "exact":
        return "default is not exact"
    for bad in (dict(gpu_update="fast"), dict(gpu_update="batched", weight="bytes"),
                dict(gpu_update="batched", batched_chunk=0)):
        try:
            gpu.ResidualSketch(threshold=5, **bad)
        except SketchError as exc:
            if "gpu_update" not in str(exc) and "batched_chunk" not in str(exc):
                return f"{bad}: unclear error {exc}"
        else:
            return f"{bad}: accepted"
    sketch = gpu.ResidualSketch(memory_bytes=2048, threshold=20, seed=3, gpu_update="batched", batched_chunk=300)
    sketch.update(workload(500, 3))
    if (sketch.copy().gpu_update, sketch.copy().batched_chunk) != ("batched", 300):
        return "copy() lost the mode"
    restored = gpu.ResidualSketch.from_bytes(sketch.to_bytes(), gpu_update="batched", batched_chunk=300)
    if restored.gpu_update != "batched" or restored.batched_chunk != 300 or same_state(sketch, restored):
        return "from_bytes(gpu_update='batched') differs"
    from telesketch.sketches import residualsketch as cpu
    from telesketch.sketches.residual_batched import emulate_update

    want, batch = cpu.ResidualSketch(memory_bytes=2048, threshold=20, seed=3), workload(700, 4)
    emulate_update(want, batch.src_ip, chunk=300)  # 300 + 300 + 100 packets
    got = gpu.ResidualSketch(memory_bytes=2048, threshold=20, seed=3, gpu_update="batched", batched_chunk=300)
    got.update(batch)
    if detail := same_state(want, got):
        return f"batched_chunk=300: {detail}"
    if gpu.ResidualSketch.from_bytes(sketch.to_bytes()).gpu_update != "exact":
        return "from_bytes default is not exact"
    byte_snapshot = gpu.ResidualSketch(threshold=5, weight="bytes").to_bytes()
    for data, bad in ((sketch.to_bytes(), dict(gpu_update="fast")), (sketch.to_bytes(), dict(batched_chunk=0)),
                      (byte_snapshot, dict(gpu_update="batched"))):
        try:
            gpu.ResidualSketch.from_bytes(data, **bad)
        except SketchError as exc:
            if "gpu_update" not in str(exc) and "batched_chunk" not in str(exc):
                return f"from_bytes {bad}: unclear error {exc}"
        else:
            return f"from_bytes {bad}: accepted"
    return ""


def check_batched_ipv6_and_empty() -> str:
    """``gpu_update="batched"`` on mixed traffic: the IPv4 tree equals the CPU emulation, the IPv6 tree
    (exact mode, spec §5's batched scope is IPv4) the CPU's exact update, after every batch; an empty
    batch then changes neither."""
    from test_ipv6_hhh import mixed_batch

    from telesketch.gpu import residualsketch as gpu
    from telesketch.packets import PacketBatch
    from telesketch.sketches import residualsketch as cpu
    from telesketch.sketches.residual_batched import emulate_update

    kwargs = dict(memory_bytes=2048, ipv6_memory_bytes=3000, threshold=20, seed=3)
    want, got = cpu.ResidualSketch(**kwargs), gpu.ResidualSketch(gpu_update="batched", batched_chunk=400, **kwargs)
    for k in range(3):
        batch = mixed_batch(900, 40 + k)
        v6 = batch.ipv6.astype(bool)
        emulate_update(want, batch.src_ip[~v6], chunk=400)
        want.update_addresses6(batch.src_ip6[v6])
        got.update(batch)
        if detail := same_state(want, got) or same_ipv6(want, got):
            return f"batch {k}: {detail}"
    if not want.hhh6_entries() or not want.packets6:
        return "vacuous: no IPv6 packets or prefixes"
    before = got.to_bytes()
    got.update(PacketBatch.from_columns(src_ip=np.zeros(0, np.uint32), dst_ip=np.zeros(0, np.uint32)))
    got.update_addresses(np.zeros(0, np.uint32))
    return "" if got.to_bytes() == before else "an empty batch changed the state"


def check_batched_f1_three_seeds() -> str:
    """Spec §5's validation with the GPU twin itself: mean F1 of ``gpu_update="batched"`` within 0.02 of
    the exact CPU sketch over 3 seeds (tests/test_residual_batched.py's workload and scoring: byte mode,
    4 KiB, T = 150, 2048-packet batches of 150 000 hierarchical Zipf addresses)."""
    from telesketch.gpu import residualsketch as gpu
    from telesketch.sketches import exact, hierarchy
    from telesketch.sketches import residualsketch as cpu
    from test_residual_batched import f1
    from workloads import hierarchical_addresses

    addresses = hierarchical_addresses(150_000, seed=2, pool_size=6000)
    truth = hierarchy.hhh_from_counts(exact.prefix_counts(addresses, hierarchy.layers_for("byte")), 150)
    scores = {"exact": [], "batched": []}
    for seed in range(3):
        kwargs = dict(mode="byte", memory_bytes=4096, threshold=150, seed=seed)
        ex, dev = cpu.ResidualSketch(**kwargs), gpu.ResidualSketch(gpu_update="batched", **kwargs)
        for k in range(0, addresses.shape[0], 2048):
            ex.update_addresses(addresses[k:k + 2048])
            dev.update_addresses(addresses[k:k + 2048])
        scores["exact"].append(f1(ex, truth, 150))
        scores["batched"].append(f1(dev, truth, 150))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    if abs(means["exact"] - means["batched"]) > 0.02:
        return f"mean F1 exact {means['exact']:.3f} vs batched {means['batched']:.3f}: more than 0.02 apart"
    return "" if means["exact"] > 0.5 else f"exact F1 {means['exact']:.3f}: vacuous"


def run_case(name: str) -> str:
    if name in EQUALITY:
        return check_equal(name)
    return globals()[f"check_{name}"]()


class TestResidualSketchGpuTwin(gpu_harness.TwinChecks):
    script, cases, run_case = __file__, sorted(EQUALITY) + OTHER_CASES, staticmethod(run_case)
    # the default run keeps one equality case per kernel and path; the rest run with -m slow
    slow_cases = ["batched_f1_three_seeds", "rs_byte_dst_3k_ge", "rs_bit_src_4k", "rs_bit_noconn", "coco_bit_dst_2k", "batch_split", "snapshot",
                  "bytes_wide", "ipv6_snapshot"]


if __name__ == "__main__":
    from telesketch.gpu.residualsketch import CocoSketch, ResidualSketch

    gpu_harness.script_main(TestResidualSketchGpuTwin.cases, run_case,
                            [lambda: ResidualSketch(threshold=10), lambda: CocoSketch()])
