"""Hidden Sketch (spec hiddensketch.md): Numba == naive model, ground truth, overload, merge, state."""
from __future__ import annotations

import time

import numpy as np
import pytest

import naive_hiddensketch as naive
from workloads import zipf_addresses as zipf_keys
from workloads import zipf_flow_keys as zipf_flows
from telesketch.hashing import hash_u32
from telesketch.packets import PacketBatch
from telesketch.sketches import exact
from telesketch.sketches.core import NotMergeableError, SketchError
from telesketch.sketches.hiddensketch import HiddenSketch, HiddenSketchParams, heavy_hitters_union

# a small 4-byte configuration: ss_bytes = 1200 + 1050 + 512 = 2762, w_fs = 1810, w_cm = 100
SMALL = dict(memory_bytes=8 * 1024, blocks=4, bf_row_bits=400, cm_bytes=1200, phi=2e-3, thresh=30)


def feed(sketch: HiddenSketch, keys: np.ndarray, batch: int = 4096) -> HiddenSketch:
    for i in range(0, len(keys), batch):
        sketch.update_keys(keys[i:i + batch])
    return sketch


def naive_from(params: HiddenSketchParams, keys) -> naive.NaiveHiddenSketch:
    model = naive.NaiveHiddenSketch(params)
    model.update(keys.tolist() if keys.ndim == 1 else [bytes(k) for k in keys])
    return model


def assert_same_state(sketch: HiddenSketch, model: naive.NaiveHiddenSketch) -> None:
    state = sketch.unpacked_state()
    assert state["n_items"] == model.N
    np.testing.assert_array_equal(state["fs"], np.array(model.FS))
    np.testing.assert_array_equal(state["cm"], np.array(model.CM))
    for b in range(sketch.params.blocks):
        for i, bitmap in enumerate(state["seg"][b]):
            np.testing.assert_array_equal(bitmap, np.array(model.SEG[b][i], bool), err_msg=f"SEG[{b}][{i}]")
    for j, rows in enumerate(state["bf"]):
        for r, row in enumerate(rows):
            np.testing.assert_array_equal(row, np.array(model.BF[j][r], bool), err_msg=f"BF[{j}][{r}]")


def assert_same_decode(sketch: HiddenSketch, model: naive.NaiveHiddenSketch) -> None:
    """The spec's §7 decode (``partial=False``) equals the naive model's, failed decodes included."""
    got, want = sketch.decode(partial=False), model.decode()
    assert got.items == want["items"]
    assert got.ss_counts == want["ss_counts"]
    assert (got.decode_ok, got.overflow) == (want["decode_ok"], want["overflow"])
    assert (got.n_candidates, got.n_after_fs) == (want["n_candidates"], want["n_after_fs"])
    if not got.overflow:
        assert got.enumerated == want["enumerated"]


# ---------------------------------------------------------------------------- Numba == naive
def test_matches_naive_4byte():
    keys = zipf_keys(12_000, 2_000, 1.1, seed=3)
    params = HiddenSketchParams(**SMALL, seed=5)
    sketch, model = feed(HiddenSketch(params), keys, 1000), naive_from(params, keys)
    assert_same_state(sketch, model)
    assert_same_decode(sketch, model)
    assert sketch.decode_ok and sketch.heavy_hitters()
    probe = np.unique(keys)[:300]
    assert sketch.point_estimate(probe).tolist() == [model.query(int(k)) for k in probe]


def test_matches_naive_failed_decode():
    """An undersized CM: the peel fails; both give the same (partial) output, zero-counter branch included."""
    keys = zipf_keys(12_000, 2_000, 1.1, seed=4)
    params = HiddenSketchParams(**{**SMALL, "cm_bytes": 96, "thresh": 10}, seed=2)
    sketch, model = feed(HiddenSketch(params), keys), naive_from(params, keys)
    assert_same_state(sketch, model)
    assert_same_decode(sketch, model)
    assert not sketch.decode_ok and not sketch.overflowed


def test_matches_naive_5tuple():
    keys = zipf_flows(3_000, 800, 1.2, seed=6)
    params = HiddenSketchParams(key="5tuple", memory_bytes=40_000, blocks=2, bf_row_bits=240,
                                cm_bytes=600, phi=5e-3, thresh=8, seed=1)
    sketch, model = feed(HiddenSketch(params), keys, 700), naive_from(params, keys)
    assert_same_state(sketch, model)
    assert_same_decode(sketch, model)
    assert sketch.decode_ok
    true = exact.heavy_hitters(keys, phi=5e-3)
    assert true and set(true) <= set(dict(sketch.heavy_hitters()))
    probe = [bytes(k) for k in np.unique(keys.view("V13").ravel())[:100].view(np.uint8).reshape(-1, 13)]
    assert sketch.point_estimate(probe).tolist() == [model.query(k) for k in probe]


# ---------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_one_and_no_undercount(seed):
    keys = zipf_keys(250_000, 60_000, 1.0, seed=10 + seed)
    phi = 1e-3
    sketch = feed(HiddenSketch(memory_bytes=20 * 1024, blocks=8, bf_row_bits=900, cm_bytes=4800,
                               phi=phi, thresh=int(phi * len(keys)) - 10, seed=seed), keys, 65536)
    result = sketch.decode()
    assert result.decode_ok and not result.overflow
    true = exact.heavy_hitters(keys, phi=phi)
    reported = dict(result.items)
    acc = exact.set_accuracy(true, reported)
    assert acc.recall == 1.0 and acc.precision > 0.5
    counts = exact.count_dict(keys)
    for key, est in reported.items():
        assert counts.get(key, 0) <= est <= counts.get(key, 0) + sketch.thresh  # one-sided, gate overestimate
    probe = np.array(list(counts)[:5000], np.uint32)
    assert np.all(sketch.point_estimate(probe) >= np.array([counts[int(k)] for k in probe]))


def test_heavy_changers_match_truth():
    before = zipf_keys(200_000, 50_000, 1.0, seed=21)
    rng = np.random.default_rng(22)
    burst = rng.choice(2**32, 20, replace=False).astype(np.uint32)
    after = np.concatenate([zipf_keys(190_000, 50_000, 1.0, seed=21)[:190_000], np.repeat(burst, 500)])
    rng.shuffle(after)
    kw = dict(memory_bytes=20 * 1024, blocks=8, bf_row_bits=900, cm_bytes=4800, phi=1e-3, thresh=190)
    a, b = feed(HiddenSketch(**kw), before, 65536), feed(HiddenSketch(**kw), after, 65536)
    assert a.decode_ok and b.decode_ok
    true = exact.heavy_changers(before, after, phi=1e-3)
    got = dict(b.heavy_changers(a))
    assert set(burst.tolist()) <= set(true)
    assert exact.set_accuracy(true, got).recall == 1.0
    for key in true:
        assert np.sign(got[key]) == np.sign(true[key])


def test_batch_entry_points_agree():
    n = 20_000
    flows = zipf_flows(n, 3_000, 1.1, seed=8)
    cols = flows.view(np.dtype([("s", ">u4"), ("d", ">u4"), ("sp", ">u2"), ("dp", ">u2"), ("p", "u1")])).ravel()
    batch = PacketBatch.from_columns(src_ip=cols["s"].astype(np.uint32), dst_ip=cols["d"].astype(np.uint32),
                                     src_port=cols["sp"].astype(np.uint16), dst_port=cols["dp"].astype(np.uint16),
                                     proto=cols["p"], ts_ns=np.arange(n, dtype=np.uint64))
    assert np.array_equal(batch.flow_keys(), flows)
    one, two = HiddenSketch(**SMALL), HiddenSketch(**SMALL)
    one.update(batch)
    two.update_keys(batch.src_ip)
    assert one.to_bytes() == two.to_bytes()
    kw = dict(key="5tuple", memory_bytes=90_000, blocks=2, bf_row_bits=600, phi=2e-3, thresh=20)
    three, four = HiddenSketch(**kw), HiddenSketch(**kw)
    three.update(batch)
    four.update_keys(batch.flow_keys_void())
    assert three.to_bytes() == four.to_bytes()
    assert all(isinstance(k, bytes) and len(k) == 13 for k, _ in three.heavy_hitters())


def test_key_routed_one_pass_shards_union():
    """Shards routed by a hash of the sketch key run one-pass and union their reports (spec §12)."""
    keys = zipf_keys(250_000, 60_000, 1.0, seed=51)
    route = (hash_u32(keys, 99) & np.uint64(1)).astype(bool)
    kw = dict(memory_bytes=20 * 1024, blocks=8, bf_row_bits=900, cm_bytes=4800, phi=1e-3, thresh=240)
    shards = [feed(HiddenSketch(**kw), keys[route == side], 65536) for side in (False, True)]
    assert all(s.decode_ok for s in shards)
    union = dict(heavy_hitters_union(shards))
    true = exact.heavy_hitters(keys, phi=1e-3)
    assert exact.set_accuracy(true, union).recall == 1.0
    counts = exact.count_dict(keys)
    assert all(counts[k] <= est for k, est in union.items())


# ---------------------------------------------------------------------------- overload
def test_overload_reports_overflow_promptly():
    keys = np.random.default_rng(9).choice(2**32, 60_000, replace=False).astype(np.uint32)
    sketch = HiddenSketch(memory_bytes=20 * 1024, blocks=1, bf_row_bits=300, cm_bytes=1200, thresh=0)
    sketch.update_keys(keys)  # every item passes the gate: 60 k keys in one block
    start = time.perf_counter()
    result = sketch.decode()
    assert time.perf_counter() - start < 10.0
    assert result.overflow and sketch.overflowed and not sketch.decode_ok
    assert result.items == []


def test_overflow_cap_is_per_block():
    keys = zipf_keys(20_000, 3_000, 1.1, seed=13)
    params = HiddenSketchParams(**{**SMALL, "max_enum": 250}, seed=5)
    sketch, model = feed(HiddenSketch(params), keys), naive_from(params, keys)
    got = sketch.decode()
    assert got.overflow and not got.decode_ok
    assert got.n_candidates > 0
    full = feed(HiddenSketch(**SMALL, seed=5), keys).decode()
    assert set(got.ss_counts) < set(full.ss_counts)  # overflowing blocks drop out, the others decode
    assert_same_decode(sketch, model)


# ---------------------------------------------------------------------------- merge (two-pass, §9)
def test_two_pass_merge_equals_single():
    keys = zipf_keys(200_000, 40_000, 1.0, seed=31)
    kw = dict(memory_bytes=20 * 1024, blocks=8, bf_row_bits=900, cm_bytes=4800, phi=1e-3, thresh=190,
              mode="two_pass", seed=4)
    shard = np.random.default_rng(3).integers(0, 2, len(keys)).astype(bool)  # 5-tuple-like routing
    parts = [keys[shard], keys[~shard]]
    whole = feed(HiddenSketch(**kw), keys, 65536)
    whole.begin_second_pass()
    feed(whole, keys, 65536)

    shards = [feed(HiddenSketch(**kw), part, 65536) for part in parts]
    merged_fs = shards[0].copy()
    merged_fs.merge(shards[1])
    for s, part in zip(shards, parts):
        s.begin_second_pass(merged_fs)
        feed(s, part, 65536)
    shards[0].merge(shards[1])
    assert shards[0].to_bytes() == whole.to_bytes()
    assert shards[0].heavy_hitters() == whole.heavy_hitters()

    result = whole.decode()
    assert result.decode_ok
    counts = exact.count_dict(keys)
    true = exact.heavy_hitters(keys, phi=1e-3)
    assert exact.set_accuracy(true, dict(result.items)).f1 == 1.0  # exact counts: no gate overestimate
    assert all(counts[k] == est for k, est in result.items)


def test_two_pass_merge_checks():
    kw = dict(**SMALL, mode="two_pass")
    a, b = HiddenSketch(**kw), HiddenSketch(**kw)
    a.update_keys(zipf_keys(2000, 500, 1.0, 1))
    b.update_keys(zipf_keys(2000, 500, 1.0, 2))
    a.begin_second_pass()
    with pytest.raises(SketchError, match="pass"):
        a.merge(b)
    b.begin_second_pass()
    with pytest.raises(SketchError, match="same merged first stage"):
        a.merge(b)
    with pytest.raises(SketchError, match="different parameters"):
        HiddenSketch(**{**kw, "seed": 9}).merge(HiddenSketch(**kw))


def test_one_pass_merge_not_mergeable():
    with pytest.raises(NotMergeableError, match="two_pass"):
        HiddenSketch(**SMALL).merge(HiddenSketch(**SMALL))


# ---------------------------------------------------------------------------- serialisation
def test_copy_is_the_same_state_and_independent():
    """``copy`` (arrays copied, layout shared; a service copies per query) equals a round trip
    through bytes, and updating either side leaves the other as it was."""
    keys = zipf_keys(40_000, 5_000, 1.1, seed=43)
    original = feed(HiddenSketch(**SMALL, seed=5), keys[:20_000])
    before = original.to_bytes()
    original.heavy_hitters()  # a cached decode must not leak into the copy's later answers
    clone = original.copy()
    assert clone.to_bytes() == before and clone.heavy_hitters() == original.heavy_hitters()
    feed(clone, keys[20_000:])
    assert original.to_bytes() == before
    straight = feed(HiddenSketch(**SMALL, seed=5), keys)
    assert clone.to_bytes() == straight.to_bytes() and clone.heavy_hitters() == straight.heavy_hitters()
    feed(original, keys[20_000:30_000])
    assert clone.to_bytes() == straight.to_bytes()


@pytest.mark.parametrize("mode", ["one_pass", "two_pass"])
def test_round_trip_then_continue(mode):
    keys = zipf_keys(40_000, 5_000, 1.1, seed=41)
    kw = dict(**SMALL, mode=mode, seed=3)
    straight = feed(HiddenSketch(**kw), keys)
    half = feed(HiddenSketch(**kw), keys[:17_000])
    resumed = HiddenSketch.from_bytes(half.to_bytes())
    feed(resumed, keys[17_000:])
    assert resumed.to_bytes() == straight.to_bytes()
    assert resumed.heavy_hitters() == straight.heavy_hitters()
    if mode == "two_pass":
        straight.begin_second_pass()
        feed(straight, keys)
        again = HiddenSketch.from_bytes(straight.to_bytes())
        assert again.phase == "second" and again.heavy_hitters() == straight.heavy_hitters()


def test_from_bytes_refuses_mismatch():
    blob = HiddenSketch(**SMALL).to_bytes()
    with pytest.raises(SketchError, match="parameters"):
        HiddenSketch.from_bytes(blob, params=HiddenSketchParams(**{**SMALL, "seed": 1}))
    with pytest.raises(SketchError):
        HiddenSketch.from_bytes(blob[:-8])
    with pytest.raises(SketchError, match="magic"):
        HiddenSketch.from_bytes(b"XXXX" + blob[4:])


# ---------------------------------------------------------------------------- parameters
def test_default_sizes_follow_spec():
    p = HiddenSketchParams()
    assert (p.memory_bytes, p.ss_bytes, p.fs_bytes, p.fs_width, p.cm_width) == (56_320, 18_063, 38_257, 12_752, 853)
    assert p.thresh == 240  # trunc(1e-4 * 2.5 M - 10)
    assert HiddenSketch().memory_bytes <= 56_320
    wide = HiddenSketchParams(key="5tuple")
    assert wide.seg_bits == (11, 11, 11, 11, 12, 12, 12, 12, 12) and wide.bf_rows == (10,) + (12,) * 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(thresh=255), "thresh"),
        (dict(expected_epoch_items=3_000_000), "thresh"),
        (dict(fs_counter_bits=12), "fs_counter_bits"),
        (dict(seg_bits=(8, 8, 8)), "sum"),
        (dict(bf_intervals=((0, 16), (0, 8))), "whole key"),
        (dict(bf_intervals=((0, 32), (8, 16))), "contiguous"),
        (dict(bf_intervals=((0, 32), (0, 12))), "whole segments"),
        (dict(bf_rows=(7, 7)), "one entry per Bloom filter"),
        (dict(memory_bytes=18_000), "no room"),
        (dict(mode="sharded"), "mode"),
        (dict(key="dst_port"), "key"),  # dst_ip is a key since issue 17
        (dict(phi=0.0), "phi"),
        (dict(max_enum=0), "max_enum"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(SketchError, match=message):
        HiddenSketch(**kwargs)


def test_sixteen_bit_counters_allow_large_threshold():
    sketch = HiddenSketch(memory_bytes=100 * 1024, fs_counter_bits=16, expected_epoch_items=10_000_000)
    assert sketch.thresh == 990 and sketch.fs.dtype == np.uint16


def test_bad_keys():
    with pytest.raises(SketchError):
        HiddenSketch().update_keys(np.array([-1, 5]))
    with pytest.raises(SketchError):
        HiddenSketch(key="5tuple", memory_bytes=128 * 1024).update_keys(np.zeros((3, 12), np.uint8))


# ---------------------------------------------------------------------- issue 17: keyed by destination
def test_keyed_by_destination_reports_the_victim_of_many_sources():
    """A SYN flood: 2,000 spoofed sources, one packet each, all to one destination."""
    from telesketch.packets import PacketBatch

    n = 2_000
    rng = np.random.default_rng(5)
    victim = 0x0A0A0A0A  # 10.10.10.10
    background_dst = rng.integers(1, 2**32 - 1, 300, dtype=np.uint32)
    dst = np.concatenate([np.full(n, victim, np.uint32), background_dst])
    src = rng.integers(1, 2**32 - 1, dst.shape[0], dtype=np.uint32)
    batch = PacketBatch.from_columns(
        ts_ns=np.arange(dst.shape[0], dtype=np.uint64), src_ip=src, dst_ip=dst,
        src_port=np.full(dst.shape[0], 1234, np.uint16), dst_port=np.full(dst.shape[0], 80, np.uint16),
        proto=np.full(dst.shape[0], 6, np.uint8), ip_id=np.zeros(dst.shape[0], np.uint16))
    by_dst = HiddenSketch(key="dst_ip", phi=0.1, thresh=20)
    by_src = HiddenSketch(key="src_ip", phi=0.1, thresh=20)
    by_dst.update(batch)
    by_src.update(batch)
    assert [k for k, _ in by_dst.heavy_hitters()] == [victim]
    assert by_dst.heavy_hitters()[0][1] >= n and by_dst.estimate(victim) >= n
    assert by_src.heavy_hitters() == []  # nothing points at the victim when keyed by source
    again = HiddenSketch.from_bytes(by_dst.to_bytes())
    assert again.params.key == "dst_ip" and again.heavy_hitters() == by_dst.heavy_hitters()


# ---------------------------------------------------------------------------- partial decode (issue 20)
def _partial_case(overflow: bool, seed: int):
    """A sketch whose decode cannot finish: an undersized CM (the peel stops) or an enumeration cap."""
    keys = zipf_keys(12_000 if not overflow else 20_000, 2_000 if not overflow else 3_000, 1.1, seed=60 + seed)
    extra = {"max_enum": 250} if overflow else {"cm_bytes": 360, "thresh": 10}
    return keys, feed(HiddenSketch(**{**SMALL, **extra, "seed": seed}), keys)


@pytest.mark.parametrize("overflow", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_partial_answer_is_flagged_and_never_undercounts(overflow, seed):
    keys, sketch = _partial_case(overflow, seed)
    result, paper = sketch.decode(), sketch.decode(partial=False)
    assert not result.decode_ok and result.partial and paper.partial
    assert result.overflow == overflow and result.bounded
    counts = exact.count_dict(keys)
    reported = dict(result.items)
    assert reported and all(est >= counts.get(k, 0) for k, est in reported.items())
    assert all(c + sketch.thresh >= counts.get(k, 0) for k, c in result.ss_counts.items())
    true = exact.heavy_hitters(keys, phi=SMALL["phi"])
    recall, paper_recall = (exact.set_accuracy(true, dict(r.items)).recall for r in (result, paper))
    if overflow:  # the overflowing blocks' keys are lost either way
        assert recall >= paper_recall
    else:  # every block enumerated: no heavy hitter is missed, where the spec's decode finds ~none
        assert recall == 1.0 and paper_recall < 0.1


def test_stuck_peel_keeps_exact_counts_of_peeled_keys():
    """No overflow: the candidate set is complete, so a peeled key keeps its exact spec estimate."""
    keys, sketch = _partial_case(False, 0)
    result, paper = sketch.decode(), sketch.decode(partial=False)
    peeled = {k for k, c in paper.ss_counts.items()}
    assert peeled and not (peeled & result.bounded)
    for k in peeled:
        assert result.ss_counts[k] == paper.ss_counts[k]


def test_far_too_small_cm_reports_only_the_largest_bounds():
    """Past what the CM can tell apart (PEEL_LIMIT * 3 * cm_width keys), the largest bounds only."""
    keys = zipf_keys(12_000, 2_000, 1.1, seed=60)
    sketch = feed(HiddenSketch(**{**SMALL, "cm_bytes": 240, "thresh": 10}), keys)
    result = sketch.decode()
    cap = int(HiddenSketch.PEEL_LIMIT * 3 * sketch.params.cm_width)
    above = sum(1 for k, c in result.ss_counts.items() if c + sketch.thresh > SMALL["phi"] * len(keys))
    assert result.partial and above > cap >= len(result.items)
    counts = exact.count_dict(keys)
    assert all(est >= counts.get(k, 0) for k, est in result.items)
    top = sorted(counts, key=counts.get, reverse=True)[:10]
    assert set(top) <= dict(result.items).keys()


def test_complete_decode_is_not_partial():
    keys = zipf_keys(12_000, 2_000, 1.1, seed=3)
    result = feed(HiddenSketch(**SMALL, seed=5), keys, 1000).decode()
    assert result.decode_ok and not result.partial and not result.bounded


def _partial_sketch(case: str):
    """Keys and a sketch whose default decode is partial in the way ``case`` names (or complete)."""
    if case == "stuck":      # undersized CM: the peel stops, every block enumerated
        return _partial_case(False, 1)
    if case == "overflow":   # enumeration cap: some blocks overflow
        return _partial_case(True, 1)
    keys = zipf_keys(12_000, 2_000, 1.1, seed=60)
    if case == "room":       # far too small a CM: only the largest bounds fit
        return keys, feed(HiddenSketch(**{**SMALL, "cm_bytes": 240, "thresh": 10}), keys)
    return keys, feed(HiddenSketch(**SMALL, seed=5), keys, 1000)


@pytest.mark.parametrize("case", ["stuck", "overflow", "room", "complete"])
def test_partial_decode_matches_naive(case):
    """The default (graceful) decode equals the naive model's readable version of it: the same keys,
    bounds, bounded set and truncation, partial or not."""
    keys, sketch = _partial_sketch(case)
    got, want = sketch.decode(), naive_from(sketch.params, keys).decode_partial()
    assert got.partial == want["partial"] == (case != "complete")
    assert (got.decode_ok, got.overflow) == (want["decode_ok"], want["overflow"])
    assert (got.n_candidates, got.n_after_fs) == (want["n_candidates"], want["n_after_fs"])
    assert got.items == want["items"]
    assert got.ss_counts == want["ss_counts"]
    assert set(got.bounded) == want["bounded"] and bool(got.bounded) == got.partial
    counts = exact.count_dict(keys)
    assert all(est >= counts.get(k, 0) for k, est in got.items)    # never an under-count


def test_update_hash_constants_are_the_same_hashes():
    """The update kernels' ``_hash_pre(init, ...)`` and ``_fastmod(h, w, magic)`` (issue 21, fourth
    pass) give exactly ``_hash_key(lo, hi, nbytes, seed) % w`` for 4-, 13- and 16-byte keys and
    for widths from 1 to 2**63 - 1, including the extreme hash values."""
    from telesketch.hashing import _initial_state
    from telesketch.sketches import hiddensketch as hsm

    rng = np.random.default_rng(5)
    u64 = np.uint64
    lo = rng.integers(0, 2**64, 500, dtype=np.uint64)
    hi = rng.integers(0, 2**64, 500, dtype=np.uint64)
    for nbytes, hi_words in ((4, np.zeros_like(hi)), (13, hi >> u64(24)), (16, hi)):
        for seed in (0, 1000003 * 7 + 300, 2**64 - 1):
            init = u64(_initial_state(u64(seed), u64(nbytes)))
            for a, b in zip(lo[:100], hi_words[:100]):
                assert hsm._hash_pre(init, a, b, nbytes) == hsm._hash_key(a, b, nbytes, u64(seed))
    values = np.concatenate([rng.integers(0, 2**64, 2000, dtype=np.uint64),
                             np.array([0, 1, 2**63, 2**64 - 2, 2**64 - 1], np.uint64)])
    for width in (1, 2, 3, 7, 853, 2200, 12752, 2**31 - 1, 2**32, 2**32 + 1, 2**62 + 3, 2**63 - 1):
        magic = hsm._fastmod_magic(width)
        extra = np.array([width - 1, width, width + 1, 2 * width - 1, (2**64 - 1) // width * width], np.uint64)
        for h in np.concatenate([values, extra]):
            assert hsm._fastmod(h, u64(width), magic) == h % u64(width), (int(h), width)
    with pytest.raises(SketchError):
        hsm._fastmod_magic(0)
