"""ResidualSketch's batched update (spec §5, ``telesketch.sketches.residual_batched``) on the CPU path.

The GPU twin's ``gpu_update="batched"`` runs the same code (``tests/test_gpu_residualsketch.py``
checks, under the CUDA simulator, that it gives this CPU emulation's state bit for bit), so these
tests hold for it: it equals exact mode when no key changes bucket ownership inside a batch (the
spec's statement), it never loses or under-counts what the spec keeps exact (F's mass, a held key's
packets), and its answers are within F1 0.02 of exact mode, mean of 3 seeds.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workloads import hierarchical_addresses

from telesketch.sketches import exact, hierarchy
from telesketch.sketches.cocosketch import _ROW0, bob_hash, fastmod
from telesketch.sketches.residual_batched import emulate_update
from telesketch.sketches.residualsketch import ResidualSketch

from conftest import SHARED_TRACES

GEN = SHARED_TRACES.parent / "tools" / "residualsketch_gen.py"  # ../shared/tools (TELESKETCH_SHARED_TRACES moves it)
RECORD = np.dtype([("src", "<u4"), ("dst", "<u4"), ("sp", "<u2"), ("dp", "<u2"), ("proto", "u1"), ("ts", "<u8")])


def batched_run(addresses: np.ndarray, batch: int, **kwargs) -> tuple[ResidualSketch, ResidualSketch]:
    """``(exact, batched)`` sketches with ``kwargs`` fed ``addresses`` in batches of ``batch``."""
    ex, bt = ResidualSketch(**kwargs), ResidualSketch(**kwargs)
    for k in range(0, addresses.shape[0], batch):
        ex.update_addresses(addresses[k:k + batch])
        emulate_update(bt, addresses[k:k + batch])
    return ex, bt


def row0_position(sketch: ResidualSketch, key: int, block: int) -> int:
    widths, wmagics = sketch._geometry
    return int(fastmod(bob_hash(np.uint64(key), _ROW0), wmagics[block], widths[block]))


def collision_free_keys(sketch: ResidualSketch, count: int, seed: int) -> np.ndarray:
    """``count`` addresses that own distinct row-0 buckets of F and whose prefixes at every crucial
    layer are distinct and own distinct row-0 buckets of their block: nobody ever contends."""
    rng = np.random.default_rng(seed)
    taken: list[set] = [set() for _ in range(1 + len(sketch.crucial_layers))]
    prefixes: list[set] = [set() for _ in sketch.crucial_layers]
    out = []
    while len(out) < count:
        x = int(rng.integers(0, 2**32))
        spots = [row0_position(sketch, x, 0)]
        pre = [x & int(m) for m in sketch._masks]
        spots += [row0_position(sketch, p, j + 1) for j, p in enumerate(pre)]
        if any(s in taken[j] for j, s in enumerate(spots)) or any(p in prefixes[j] for j, p in enumerate(pre)):
            continue
        for j, s in enumerate(spots):
            taken[j].add(s)
        for j, p in enumerate(pre):
            prefixes[j].add(p)
        out.append(x)
    return np.array(out, np.uint32)


@pytest.mark.parametrize("kwargs", [dict(mode="byte", memory_bytes=8192, threshold=50, seed=3),
                                    dict(mode="bit", memory_bytes=16384, crucial_layers=(8, 12, 24), threshold=40,
                                         seed=5),
                                    dict(mode="byte", memory_bytes=8192, threshold=50, seed=3, connection=False),
                                    # layout "tuned"'s picks: no Residual Block (CocoSketch's layout), and two
                                    # blocks with an unequal split (unequal widths per block)
                                    dict(mode="byte", memory_bytes=4096, crucial_layers=(), threshold=50, seed=6),
                                    dict(mode="byte", memory_bytes=8192, crucial_layers=(16, 24),
                                         split=(0.5, 0.25, 0.25), threshold=50, seed=7)])
def test_equals_exact_mode_when_no_key_changes_bucket_ownership(kwargs):
    """Spec §5: "Batched mode matches the exact semantics when no key changes bucket ownership within
    a batch". Keys that never contend, some crossing T inside a batch (the decrement), some heavy
    from the start (bypass), some light: the batched state equals the exact one after every batch."""
    probe = ResidualSketch(**kwargs)
    keys = collision_free_keys(probe, 40, seed=kwargs["seed"])
    rng = np.random.default_rng(kwargs["seed"])
    per_key = np.r_[rng.integers(1, 30, 20), rng.integers(60, 400, 20)]  # light ones, and ones that pass T
    stream = rng.permutation(np.repeat(keys, per_key))
    ex, bt = batched_run(stream, 97, **kwargs)  # a batch boundary lands inside most keys' crossing
    assert np.array_equal(ex.ids, bt.ids) and np.array_equal(ex.occ, bt.occ)
    assert np.array_equal(ex.counts, bt.counts)
    assert ex.packets == bt.packets == stream.shape[0]
    assert ex.hhh_entries() == bt.hhh_entries() and ex.layer_estimates() == bt.layer_estimates()
    assert (per_key < ex.T).any() and (per_key > ex.T).any()  # not vacuous: light keys and crossings
    # each block holds exactly the light keys' packets (a key that reached T took its T back), or all
    want = int(per_key[per_key < ex.T].sum()) if kwargs.get("connection", True) else int(per_key.sum())
    for j in range(1, 1 + len(ex.crucial_layers)):
        assert int(bt.counts[j].sum()) == want


def test_f_keeps_every_packet_and_never_undercounts_a_held_key():
    """Under contention (ten times more keys than F has buckets): every packet adds one to exactly one
    F bucket (F's total is the packet count, as in exact mode), a key held before and after a batch
    gained at least its packets of the batch, and no block count goes negative."""
    sketch = ResidualSketch(mode="byte", memory_bytes=2048, threshold=30, seed=9)
    stream = hierarchical_addresses(60_000, seed=4, pool_size=1500)
    fed = 0
    for k in range(0, stream.shape[0], 5000):
        batch = stream[k:k + 5000]
        before = {int(i): int(c) for i, c, o in zip(sketch.ids[0].ravel(), sketch.counts[0].ravel(),
                                                    sketch.occ[0].ravel()) if o}
        emulate_update(sketch, batch)
        fed += batch.shape[0]
        assert int(sketch.counts[0].sum()) == fed
        assert (sketch.counts >= 0).all()
        keys, sent = np.unique(batch, return_counts=True)
        sent_of = dict(zip(keys.tolist(), sent.tolist()))
        after = {int(i): int(c) for i, c, o in zip(sketch.ids[0].ravel(), sketch.counts[0].ravel(),
                                                   sketch.occ[0].ravel()) if o}
        kept = [x for x in before if x in after]
        assert kept or k == 0
        for x in kept:
            assert after[x] - before[x] >= sent_of.get(x, 0), x
    assert sketch.packets == fed


def f1(sketch: ResidualSketch, truth: dict, T: int) -> float:
    """Spec §6 headline F1: HHH pairs pooled over every layer except /32."""
    true_set = {(p, L) for (p, L) in truth if L != 32}
    got = {(e.prefix, e.length) for e in sketch.hhh_entries() if e.length != 32}
    return exact.set_accuracy(true_set, got).f1


def f1_gap(addresses: np.ndarray, mode: str, memory: int, T: int, batch: int, seeds=(0, 1, 2)) -> tuple:
    truth = hierarchy.hhh_from_counts(exact.prefix_counts(addresses, hierarchy.layers_for(mode)), T)
    exact_f1, batched_f1 = [], []
    for seed in seeds:
        ex, bt = batched_run(addresses, batch, mode=mode, memory_bytes=memory, threshold=T, seed=seed)
        exact_f1.append(f1(ex, truth, T))
        batched_f1.append(f1(bt, truth, T))
    return float(np.mean(exact_f1)), float(np.mean(batched_f1))


@pytest.mark.parametrize("memory", [4096, 8192])
def test_f1_within_002_of_exact_mode_over_three_seeds(memory):
    """Spec §5's validation on the test helpers' hierarchical Zipf workload (small, default run), byte
    mode, batches of 2048 packets (1.4 % of the stream, as 64 Ki of the spec's 8 M is 0.8 %). At this
    size bit mode has too few HHH for a 0.02 bound to mean anything (its F1 moves by more between
    seeds); the spec-scale table in BENCHMARKS.md ("issue 22b") covers bit mode."""
    addresses = hierarchical_addresses(150_000, seed=2, pool_size=6000)
    exact_f1, batched_f1 = f1_gap(addresses, "byte", memory, T=150, batch=2048)
    assert exact_f1 > 0.5  # the sketch is under memory pressure but answers something
    assert abs(exact_f1 - batched_f1) <= 0.02, (exact_f1, batched_f1)


@pytest.mark.slow
def test_f1_within_002_of_exact_mode_on_the_spec_workload(tmp_path):
    """The same on the spec's `synth` generator (§8/§9, scaled to 400 000 packets; phi 5e-4 as T = 4000
    at 8 M), byte mode, 32 KiB, 4096-packet batches (1 % of the stream), 3 seeds."""
    if not GEN.exists():
        pytest.skip(f"the spec's generator is not at {GEN}")
    out = tmp_path / "synth.dat"
    subprocess.run([sys.executable, str(GEN), "--out", str(out), "--packets", "400000", "--seed", "1"], check=True,
                   stdout=subprocess.DEVNULL)
    addresses = np.ascontiguousarray(np.fromfile(out, RECORD)["src"])
    exact_f1, batched_f1 = f1_gap(addresses, "byte", 32768, T=200, batch=4096)
    assert exact_f1 > 0.5
    assert abs(exact_f1 - batched_f1) <= 0.02, (exact_f1, batched_f1)


def test_emulation_refuses_byte_weighting():
    with pytest.raises(ValueError, match="packets only"):
        emulate_update(ResidualSketch(threshold=5, weight="bytes"), np.zeros(3, np.uint32))


@pytest.mark.parametrize("chunk", [0, -1, -16384, 2.5, True, "16"])
def test_a_bad_chunk_is_a_clear_error_not_a_silent_skip(chunk):
    """Bug (second review): ``chunk=-1`` applied nothing and returned (the packets were lost, the
    packet index did not move), ``chunk=0`` failed inside ``range``. Now: a ValueError naming it."""
    sketch = ResidualSketch(mode="byte", memory_bytes=4096, threshold=20, seed=1)
    before = sketch.to_bytes()
    with pytest.raises(ValueError, match="chunk"):
        emulate_update(sketch, hierarchical_addresses(20_000, seed=1, pool_size=500), chunk)
    assert sketch.to_bytes() == before and sketch.packets == 0


def _loaded(seed: int = 1, **kwargs) -> ResidualSketch:
    """A small sketch with state in both trees (IPv4 through the batched update, IPv6 exact)."""
    from test_ipv6_hhh import mixed_batch

    sketch = ResidualSketch(**{**dict(mode="byte", memory_bytes=4096, ipv6_memory_bytes=6000, threshold=20,
                                      seed=seed), **kwargs})
    batch = mixed_batch(3000, seed)
    v6 = batch.ipv6.astype(bool)
    emulate_update(sketch, batch.src_ip[~v6])
    sketch.update_addresses6(batch.src_ip6[v6])
    assert sketch.occ.any() and sketch.packets6 > 0
    return sketch


def test_an_empty_batch_changes_nothing():
    """An empty batch (with or without a chunk size): same bytes, same packet index, IPv6 tree too."""
    sketch = _loaded()
    before, packets = sketch.to_bytes(), sketch.packets
    for chunk in (None, 1, 16384):
        emulate_update(sketch, np.zeros(0, np.uint32), chunk)
    assert sketch.to_bytes() == before and sketch.packets == packets


def test_chunks_are_consecutive_updates_and_a_full_chunk_is_one():
    """``chunk``: a batch of 2.5 chunks is exactly three updates in a row (packet indices continue, so
    the coins do), a batch of exactly one chunk is one update, and the default is CHUNK_PACKETS."""
    from telesketch.sketches.residual_batched import CHUNK_PACKETS

    stream = hierarchical_addresses(2 * CHUNK_PACKETS + 5000, seed=6, pool_size=3000)
    kwargs = dict(mode="byte", memory_bytes=2048, threshold=60, seed=8)
    chunked, parts, whole = ResidualSketch(**kwargs), ResidualSketch(**kwargs), ResidualSketch(**kwargs)
    head = stream[:2500]
    emulate_update(chunked, head, chunk=1000)
    for k in range(0, 2500, 1000):
        emulate_update(parts, head[k:k + 1000], chunk=None)
    emulate_update(whole, head, chunk=None)
    assert chunked.to_bytes() == parts.to_bytes() and chunked.packets == parts.packets == 2500
    assert chunked.to_bytes() != whole.to_bytes()  # not vacuous: where batches are cut matters
    one, none = ResidualSketch(**kwargs), ResidualSketch(**kwargs)
    emulate_update(one, stream[:1000], chunk=1000)
    emulate_update(none, stream[:1000], chunk=None)
    assert one.to_bytes() == none.to_bytes()
    default, manual = ResidualSketch(**kwargs), ResidualSketch(**kwargs)
    emulate_update(default, stream)
    for k in range(0, stream.shape[0], CHUNK_PACKETS):
        emulate_update(manual, stream[k:k + CHUNK_PACKETS], chunk=None)
    assert default.to_bytes() == manual.to_bytes() and default.packets == stream.shape[0]


def test_ipv4_tree_only_the_ipv6_tree_is_left_alone():
    """Scope (module docstring): the batched update is the IPv4 tree's; it refuses IPv6 addresses and
    never touches the IPv6 tree's arrays or packet index."""
    from telesketch.sketches.core import SketchError

    sketch = _loaded()
    six = [np.array(getattr(sketch, name), copy=True) for name in ("hi6", "lo6", "counts6", "occ6")]
    packets6 = sketch.packets6
    emulate_update(sketch, hierarchical_addresses(5000, seed=3, pool_size=400))
    assert all(np.array_equal(a, getattr(sketch, name)) for a, name in zip(six, ("hi6", "lo6", "counts6", "occ6")))
    assert sketch.packets6 == packets6
    with pytest.raises(SketchError, match="1-D uint32"):
        emulate_update(sketch, np.zeros((4, 16), np.uint8))
