"""ResidualSketch and CocoSketch: against the naive model, the exact oracle, shards and snapshots."""
import numpy as np
import pytest

import naive_residualsketch as naive
from workloads import hierarchical_addresses as hierarchical_stream
from telesketch.hashing import hash_5tuple
from telesketch.packets import PacketBatch
from telesketch.sketches import exact, hierarchy
from telesketch.sketches.cocosketch import bob_hash, mix64, rand32
from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.residualsketch import (
    CocoSketch,
    ResidualSketch,
    ResidualSketchParams,
    hhh_pass,
    merged_hhh,
    shard_threshold,
)


def as_entries(naive_out):
    return sorted((p, L, e, c) for L, p, e, c in naive_out)


# ---------------------------------------------------------------------------- primitives
def test_hash_and_coins_match_the_pure_python_definitions():
    for x in (0, 1, 0x0A000001, 0xC0A80101, 0xFFFFFFFF):
        assert bob_hash(np.uint64(x), np.uint64(181 + 4)) == naive.bob(x, 0)
        assert bob_hash(np.uint64(x), np.uint64(5197 + 4)) == naive.bob(x, 1)
    for seed, n, j in ((0, 0, 0), (7, 12345, 2), (2**63 + 5, 2**40, 3)):
        assert rand32(mix64(np.uint64(seed)), np.uint64(n), np.uint64(j)) == naive.rand32(seed, n, j)


# ---------------------------------------------------------------------------- Numba == naive
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="byte", crucial=(16,), memory=2048, T=40),
        dict(mode="byte", crucial=(8, 16, 24), memory=3000, T=25, addback="ge"),
        dict(mode="bit", crucial=(12,), memory=4096, T=30),
        dict(mode="bit", crucial=(8, 12, 24), memory=4096, T=30, connection=False),
    ],
)
def test_residualsketch_equals_naive_model(kwargs):
    addresses = hierarchical_stream(12000, seed=5)
    extra = {k: kwargs[k] for k in ("addback", "connection") if k in kwargs}
    rs = ResidualSketch(mode=kwargs["mode"], memory_bytes=kwargs["memory"], crucial_layers=kwargs["crucial"],
                        threshold=kwargs["T"], seed=11, **extra)
    for chunk in np.array_split(addresses, 5):  # batch boundaries must not matter
        rs.update_addresses(chunk)
    model = naive.NaiveResidualSketch(kwargs["memory"], kwargs["T"], kwargs["crucial"], kwargs["mode"], 11, **extra)
    model.update(addresses.tolist())

    ids, counts, occ = model.state()
    np.testing.assert_array_equal(rs.ids, np.array(ids, np.uint32))
    np.testing.assert_array_equal(rs.counts, np.array(counts, np.int32))
    np.testing.assert_array_equal(rs.occ, np.array(occ, np.uint8))
    assert rs.layer_estimates() == model.layer_estimates()
    assert sorted(rs.hhh_entries()) == as_entries(model.hhh())
    assert sorted(rs.hhh_entries(threshold=60)) == as_entries(model.hhh(60))
    assert rs.packets == addresses.size


@pytest.mark.parametrize("crucial, split", [((16,), 0.75), ((16, 24), (0.5, 0.2, 0.3))])
def test_unequal_split_equals_naive_model(crucial, split):
    """An unequal memory split (``split``: F's share, or one share per block) gives each block its own
    width; state (padded to the widest block), estimates and HHH equal the naive model's."""
    addresses = hierarchical_stream(12000, seed=8)
    rs = ResidualSketch(memory_bytes=4096, crucial_layers=crucial, threshold=40, seed=3, split=split)
    for chunk in np.array_split(addresses, 3):
        rs.update_addresses(chunk)
    shares = rs.params.block_shares()
    model = naive.NaiveResidualSketch(4096, 40, crucial, seed=3, shares=shares)
    model.update(addresses.tolist())
    widths = [int(4096 * s) // 16 for s in shares]
    assert rs.widths == tuple(widths) and len(set(widths)) > 1
    assert rs.memory_bytes == sum(widths) * 2 * 8 <= 4096
    blocks = [model.F] + [model.R[k] for k in model.crucial]
    for j, (block, w) in enumerate(zip(blocks, widths)):
        np.testing.assert_array_equal(rs.ids[j, :, :w], np.array(block.ids, np.uint32))
        np.testing.assert_array_equal(rs.counts[j, :, :w], np.array(block.count, np.int32))
        np.testing.assert_array_equal(rs.occ[j, :, :w], np.array(block.occ, np.uint8))
        assert not rs.occ[j, :, w:].any() and not rs.counts[j, :, w:].any()  # the padding stays unused
    assert rs.layer_estimates() == model.layer_estimates()
    assert sorted(rs.hhh_entries()) == as_entries(model.hhh())
    restored = ResidualSketch.from_bytes(rs.to_bytes())  # a split survives a snapshot
    assert restored.params == rs.params and restored.widths == rs.widths
    assert restored.hhh_entries() == rs.hhh_entries()


def test_unequal_split_byte_weighted_equals_naive_model():
    """``split`` with 12-byte (byte-weighted) buckets: widths and answers as the naive model's."""
    addresses = hierarchical_stream(6000, seed=3)
    weights = np.random.default_rng(1).integers(40, 1500, addresses.size)
    rs = ResidualSketch(memory_bytes=4800, threshold=20000, weight="bytes", split=0.7, seed=2)
    rs.update_addresses(addresses, weights)
    model = naive.NaiveResidualSketch(4800, 20000, (16,), seed=2, weight="bytes", shares=rs.params.block_shares())
    model.update(addresses.tolist(), weights.tolist())
    assert rs.widths == (4800 * 7 // 10 // 24, int(4800 * 0.3) // 24) == (model.F.w, model.R[16].w)
    assert rs.layer_estimates() == model.layer_estimates()
    assert sorted(rs.hhh_entries()) == as_entries(model.hhh())


def test_cocosketch_equals_naive_model():
    addresses = hierarchical_stream(10000, seed=2)
    cs = CocoSketch(memory_bytes=1600, threshold=30, seed=4)
    cs.update_addresses(addresses[:3333])
    cs.update_addresses(addresses[3333:])
    model = naive.NaiveResidualSketch(1600, 30, crucial=(), seed=4)
    model.update(addresses.tolist())
    ids, counts, occ = model.state()
    np.testing.assert_array_equal(cs.ids, np.array(ids, np.uint32))
    np.testing.assert_array_equal(cs.counts, np.array(counts, np.int32))
    np.testing.assert_array_equal(cs.occ, np.array(occ, np.uint8))
    assert cs.layer_estimates() == model.layer_estimates()
    assert sorted(cs.hhh_entries()) == as_entries(model.hhh())
    assert cs.full_keys() == model.F.all()


@pytest.mark.parametrize("cls", ["residual", "coco"])
def test_kernel_over_batches_cut_inside_a_hashing_chunk_equals_naive_model(cls):
    """Batches that end inside a hashing chunk (``_CHUNK``), at a memory past the other tests':
    state as the naive model's."""
    from telesketch.sketches.cocosketch import _CHUNK

    memory = 96 * 1024
    addresses = hierarchical_stream(9000, seed=7)
    crucial = (16,) if cls == "residual" else ()
    sketch = (ResidualSketch(memory_bytes=memory, crucial_layers=crucial, threshold=20, seed=5) if crucial
              else CocoSketch(memory_bytes=memory, threshold=20, seed=5))
    for chunk in np.split(addresses, [_CHUNK // 3, _CHUNK + 7, 5000]):
        sketch.update_addresses(chunk)
    model = naive.NaiveResidualSketch(memory, 20, crucial, seed=5)
    model.update(addresses.tolist())
    ids, counts, occ = model.state()
    np.testing.assert_array_equal(sketch.ids, np.array(ids, np.uint32))
    np.testing.assert_array_equal(sketch.counts, np.array(counts, np.int32))
    np.testing.assert_array_equal(sketch.occ, np.array(occ, np.uint8))


def test_cocosketch_f_only_loop_equals_the_general_loop():
    """CocoSketch's kernel (``masks`` None: F alone, compiled apart) and ResidualSketch's general loop
    with no crucial layers give the same state, packet-counted and byte-weighted."""
    addresses = hierarchical_stream(6000, seed=9)
    weights = np.random.default_rng(9).integers(0, 1500, addresses.size)
    for weight, w in (("packets", None), ("bytes", weights)):
        coco = CocoSketch(memory_bytes=2400, threshold=30, seed=6, weight=weight)
        general = ResidualSketch(memory_bytes=2400, crucial_layers=(), threshold=30, seed=6, weight=weight)
        coco.update_addresses(addresses, w)
        general.update_addresses(addresses, w)
        np.testing.assert_array_equal(coco.cells, general.cells)
        np.testing.assert_array_equal(coco.occ, general.occ)


@pytest.mark.parametrize("weight", ["packets", "bytes"])
def test_f_alone_select_step_equals_naive_model(weight):
    """F alone (CocoSketch; ResidualSketch with no crucial layer) runs the block step through selects
    (issue 20): on a stream with key 0, zero-weight packets (bytes) and buckets fought over by many keys,
    the state equals the naive model's, for both classes."""
    addresses = hierarchical_stream(8000, seed=11)
    addresses[::97] = 0  # key 0: id 0 is also an empty bucket's id, only occ tells them apart
    weights = None
    if weight == "bytes":
        weights = np.random.default_rng(11).integers(40, 1500, addresses.size)
        weights[::13] = 0  # a zero weight changes nothing
    model = naive.NaiveResidualSketch(960, 3000 if weights is not None else 25, crucial=(), seed=7, weight=weight)
    model.update(addresses.tolist(), None if weights is None else weights.tolist())
    ids, counts, occ = model.state()
    for sketch in (CocoSketch(memory_bytes=960, threshold=model.T, seed=7, weight=weight),
                   ResidualSketch(memory_bytes=960, crucial_layers=(), threshold=model.T, seed=7, weight=weight)):
        for part in np.array_split(np.arange(addresses.size), 3):
            sketch.update_addresses(addresses[part], None if weights is None else weights[part])
        np.testing.assert_array_equal(sketch.ids, np.array(ids, np.uint32))
        np.testing.assert_array_equal(sketch.counts, np.array(counts, sketch.counts.dtype))
        np.testing.assert_array_equal(sketch.occ, np.array(occ, np.uint8))
        assert sketch.layer_estimates() == model.layer_estimates()


def test_key_zero_is_counted_not_taken_for_an_empty_bucket():
    rs = ResidualSketch(memory_bytes=1024, threshold=5)
    rs.update_addresses(np.zeros(20, np.uint32))
    assert rs.estimate(0, 32) == 20
    assert (0, 32, 20) in rs.hhh()


# ---------------------------------------------------------------------------- HHH pass vs oracle
@pytest.mark.parametrize("mode", ["byte", "bit"])
def test_hhh_pass_over_exact_counts_equals_exact_hhh(mode):
    addresses = hierarchical_stream(20000, seed=8, pool_size=2000)
    counts = exact.prefix_counts(addresses, hierarchy.layers_for(mode))
    for T in (50, 200, 900):
        got = {(e.prefix, e.length): e.discounted for e in hhh_pass(counts, T)}
        assert got == exact.hhh(addresses, threshold=T, mode=mode)
        for e in hhh_pass(counts, T):
            assert e.estimate == counts[e.length][e.prefix]


def test_hhh_pass_carries_covered_mass_past_a_missing_parent():
    # /32 reported, its /16 absent from the estimates: /0 must still be discounted.
    est = {32: {0x0A010203: 100}, 16: {}, 0: {0: 150}}
    entries = hhh_pass(est, 60)
    assert [(e.length, e.discounted) for e in entries] == [(32, 100)]


def test_ample_memory_is_exact():
    addresses = hierarchical_stream(20000, seed=9)
    rs = ResidualSketch(memory_bytes=1 << 18, threshold=100, addback="ge")
    rs.update_addresses(addresses)
    truth = exact.prefix_counts(addresses, hierarchy.BYTE_LAYERS)
    assert rs.layer_estimates() == truth
    assert {(p, L): c for p, L, c in rs.hhh()} == exact.hhh(addresses, threshold=100)
    prefix16 = int(addresses[0]) & 0xFFFF0000
    assert rs.estimate(prefix16, 16) == truth[16][prefix16]
    assert rs.estimate(prefix16 & 0xFFF00000, 12) == int(np.sum((addresses & 0xFFF00000) == prefix16 & 0xFFF00000))


# ---------------------------------------------------------------------------- sharding
def test_two_shards_give_the_same_hhh_as_one_sketch():
    addresses = hierarchical_stream(30000, seed=3)
    rng = np.random.default_rng(0)
    batch = PacketBatch.from_columns(src_ip=addresses, dst_ip=rng.integers(0, 2**32, addresses.size, dtype=np.uint64),
                                     src_port=rng.integers(0, 65536, addresses.size), proto=np.full(addresses.size, 6))
    T, shards = 300, 2
    one = ResidualSketch(memory_bytes=1 << 18, threshold=T, addback="ge")
    one.update(batch)
    shard_of = hash_5tuple(batch, seed=99) % np.uint64(shards)
    parts = []
    for s in range(shards):
        sk = ResidualSketch(memory_bytes=1 << 18, threshold=shard_threshold(T, shards), seed=s, addback="ge")
        sk.update_addresses(addresses[shard_of == s])
        parts.append(sk)
    combined = {(e.prefix, e.length) for e in merged_hhh(parts, threshold=T)}
    assert combined == {(p, L) for p, L, _ in one.hhh()} == set(exact.hhh(addresses, threshold=T))
    with pytest.raises(NotMergeableError, match="merged_hhh"):
        one.merge(parts[0])
    with pytest.raises(NotMergeableError):
        CocoSketch(threshold=5).merge(CocoSketch(threshold=5))


# ---------------------------------------------------------------------------- snapshots
@pytest.mark.parametrize("cls", [ResidualSketch, CocoSketch])
def test_round_trip_continues_identically(cls):
    addresses = hierarchical_stream(9000, seed=4)
    kwargs = dict(memory_bytes=1536, threshold=40, seed=6, mode="bit")
    a = cls(**kwargs)
    a.update_addresses(addresses[:4000])
    b = cls.from_bytes(a.to_bytes())
    assert b.params == a.params and b.packets == 4000
    a.update_addresses(addresses[4000:])
    b.update_addresses(addresses[4000:])
    assert a.to_bytes() == b.to_bytes()
    assert a.hhh() == b.hhh()


def test_from_bytes_refuses_other_state():
    blob = ResidualSketch(threshold=10).to_bytes()
    with pytest.raises(SketchError, match="not 'cocosketch'"):
        CocoSketch.from_bytes(blob)
    with pytest.raises(SketchError):
        ResidualSketch.from_bytes(blob[:-8])


# ---------------------------------------------------------------------------- parameters and API
def test_parameters_and_threshold_resolution():
    p = ResidualSketchParams(phi=1e-3, expected_packets=8_000_000)
    assert p.T == 8000 and p.memory_bytes == 32768 and p.crucial_layers == (16,)
    assert ResidualSketchParams(phi=1e-4, expected_packets=10).T == 1
    bit = ResidualSketch(mode="bit", threshold=10, crucial_layers=[24, 12])
    assert bit.crucial_layers == (12, 24) and bit.memory_bytes == 3 * 2 * (262144 // 3 // 16) * 8
    assert ResidualSketch(threshold=1, dimension="dst_ip").params.dimension == "dst"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "threshold"),
        (dict(threshold=0), "positive integer"),
        (dict(threshold=5, expected_packets=100), "not both"),
        (dict(phi=1.5, expected_packets=100), "phi"),
        (dict(threshold=5, mode="nibble"), "mode"),
        (dict(threshold=5, crucial_layers=(12,)), "crucial"),
        (dict(threshold=5, crucial_layers=(32,)), "crucial"),
        (dict(threshold=5, mode="bit", crucial_layers=(0,)), "crucial"),
        (dict(threshold=5, memory_bytes=31), "bucket"),
        (dict(threshold=5, memory_bytes=-1), "memory_bytes"),
        (dict(threshold=5, dimension="ttl"), "dimension"),
        (dict(threshold=5, addback="maybe"), "addback"),
        (dict(threshold=5, seed=-1), "seed"),
        (dict(threshold=5, split=1.0), "split"),
        (dict(threshold=5, split=(0.5, 0.6)), "split"),
        (dict(threshold=5, split=(0.5,)), "split"),
        (dict(threshold=5, split="half"), "split"),
        (dict(threshold=5, memory_bytes=64, split=0.9), "bucket"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, message):
    with pytest.raises(SketchError, match=message):
        ResidualSketch(**kwargs)


def test_bad_queries_and_inputs_raise():
    rs = ResidualSketch(threshold=5)
    with pytest.raises(SketchError, match="host bits"):
        rs.estimate(0x0A000001, 8)
    with pytest.raises(SketchError, match="length"):
        rs.estimate(0, 33)
    with pytest.raises(SketchError, match="PacketBatch"):
        rs.update(np.zeros(3, np.uint32))
    with pytest.raises(SketchError, match="uint32"):
        rs.update_addresses(np.array([-1, 2]))
    with pytest.raises(SketchError, match="no threshold"):
        CocoSketch().hhh()


def test_destination_hierarchy_reads_dst_ip():
    dst = hierarchical_stream(5000, seed=1)
    batch = PacketBatch.from_columns(src_ip=np.zeros(dst.size, np.uint32), dst_ip=dst)
    rs = ResidualSketch(threshold=200, dimension="dst", memory_bytes=1 << 17, addback="ge")
    rs.update(batch)
    assert {(p, L) for p, L, _ in rs.hhh()} == set(exact.hhh(dst, threshold=200))


def test_merged_hhh_refuses_mixed_hierarchies_and_missing_threshold():
    byte, bit = ResidualSketch(threshold=5), ResidualSketch(threshold=5, mode="bit")
    with pytest.raises(SketchError, match="hierarchies"):
        merged_hhh([byte, bit], threshold=10)
    with pytest.raises(SketchError, match="report threshold"):
        merged_hhh([byte], threshold=None)
    with pytest.raises(SketchError, match="at least one"):
        merged_hhh([], threshold=10)


@pytest.mark.parametrize("weighted", [False, True])
def test_coco_insert_matches_the_naive_block_step_by_step(weighted):
    """``coco_insert`` itself (the readable form of the block step that ``stream_kernel`` writes out)
    against ``NaiveCoco.insert``: return value and the block's ids, counts and occupancy after every
    insert, over plain inserts and decrementing ones (``dec``), in blocks 0 and 2 (the coin depends
    on the block), with few keys in a narrow block so keys collide and take buckets over."""
    from telesketch.sketches.cocosketch import (BUCKET_DTYPE, BUCKET_DTYPE_BYTES, coco_insert, fastmod_magic,
                                                seed_mix)

    w, seed, blocks = 13, 11, 3
    cells = np.zeros((blocks, 2, w), BUCKET_DTYPE_BYTES if weighted else BUCKET_DTYPE)
    occ = np.zeros((blocks, 2, w), np.uint8)
    models = {blk: naive.NaiveCoco(w) for blk in (0, 2)}
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 1 << 32, 40, dtype=np.uint64)
    for n in range(3000):
        blk = int(rng.choice([0, 2]))
        x = int(keys[rng.integers(0, keys.size)])
        wt = int(rng.integers(40, 1500)) if weighted else 1
        decrement = bool(rng.random() < 0.2)
        dec = int(rng.integers(0, 3 * wt)) if decrement else 0
        got = coco_insert(cells, occ, blk, np.uint64(x), np.uint64(w), fastmod_magic(w), seed_mix(seed),
                          np.uint64(n), np.int64(wt), np.int64(dec), decrement)
        want = models[blk].insert(x, naive.rand32(seed, n, blk), dec, decrement, wt)
        assert got == want, n
        m = models[blk]
        assert cells[blk]["count"].tolist() == m.count, n
        assert occ[blk].tolist() == m.occ, n
        assert np.where(occ[blk] == 1, cells[blk]["id"], 0).tolist() == \
            [[i if o else 0 for i, o in zip(ids, os)] for ids, os in zip(m.ids, m.occ)], n
    assert not cells[1]["count"].any() and not occ[1].any()  # block 1 was never touched
    assert all(len(m.all()) > 5 for m in models.values())  # the blocks filled and held keys
