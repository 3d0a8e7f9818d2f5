"""The ``batch_invariant`` contract (``Sketch.batch_invariant``): a sketch that says ``True`` leaves,
after one update with batches joined in order, exactly the state (``dump_state`` bytes) it leaves after
the same batches one by one. The service joins the batches queued behind one another only for a
sketch set whose every sketch says so (``EpochManager.apply_many``), so a wrong ``True`` would change
what the service answers. Every registered kind is run with its main settings here, on IPv4 and on
mixed IPv4/IPv6 traffic, with cuts that fall inside flows and inside bursts."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from telesketch.packets import PacketBatch
from telesketch.service.sketchset import KINDS, SketchSet, configure
from telesketch.traces.generate import generate_batch

#: (case id, sketch spec, traffic, expected batch_invariant). Traffic: "v4" or "mixed" (40 % IPv6).
CASES = [
    ("gapfilter_so", {"kind": "gapfilter_so", "memory_bytes": 16384}, "mixed", True),
    ("gapfilter_ao", {"kind": "gapfilter_ao", "memory_bytes": 16384}, "mixed", True),
    ("gapfilter_ao-tiny-log", {"kind": "gapfilter_ao", "memory_bytes": 4096, "event_capacity": 5}, "v4", True),
    ("gapfilter_straw", {"kind": "gapfilter_straw", "memory_bytes": 16384}, "mixed", True),
    ("hiddensketch", {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4}, "mixed", True),
    ("hiddensketch-5tuple", {"kind": "hiddensketch", "memory_bytes": 120 * 1024, "phi": 1e-4, "key": "5tuple"}, "v4", True),
    ("hiddensketch-bytes", {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4, "weight": "bytes"}, "mixed",
     True),
    ("hiddensketch-two-pass", {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4, "mode": "two_pass"}, "v4",
     True),
    ("residualsketch-byte", {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "threshold": 50}, "mixed",
     True),
    ("residualsketch-bit", {"kind": "residualsketch", "mode": "bit", "memory_bytes": 32768, "threshold": 50}, "v4", True),
    ("residualsketch-bytes", {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "weight": "bytes",
                              "threshold": 20000}, "mixed", True),
    ("residualsketch-noconn", {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32768, "threshold": 50,
                               "connection": False}, "v4", True),
    ("llmsketch-default", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size", "estimator": "auto",
                           "keep_keys": True}, "mixed", True),
    ("llmsketch-default-v4", {"kind": "llmsketch", "memory_bytes": 16 * 1024, "task": "flow_size",
                              "estimator": "auto", "keep_keys": True}, "v4", True),
    ("llmsketch-constant", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size",
                            "estimator": "constant"}, "mixed", True),
    ("llmsketch-trees-rescore", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size",
                                 "estimator": "trees", "rescore": True, "floor_from": 64, "cache_flows": 512,
                                 "keep_keys": True}, "v4", True),
    ("llmsketch-bytes", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "flow_size", "estimator": "auto",
                         "weight": "bytes", "keep_keys": True}, "mixed", True),
    ("llmsketch-heavy-hitters", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "heavy_hitters",
                                 "estimator": "constant"}, "v4", True),
    ("llmsketch-heavy-hitters37", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "heavy_hitters37",
                                   "estimator": "auto"}, "mixed", True),
    ("llmsketch-hhh", {"kind": "llmsketch", "memory_bytes": 64 * 1024, "task": "hhh", "estimator": "constant"}, "v4",
     True),
    ("exact", {"kind": "exact"}, "mixed", True),
    ("exact-bytes", {"kind": "exact", "weight": "bytes"}, "mixed", True),
]


def _traffic(name: str) -> PacketBatch:
    share = 0.4 if name == "mixed" else 0.0
    batch = generate_batch(24_000, 1_500, seed=11, ipv6_share=share)
    return batch[np.argsort(batch.ts_ns, kind="stable")]


#: cuts: sizes of the batches the stream is sent as, and how many consecutive batches are joined
CUTS = [(777, [1, 3, 8, 2, 5, 64]), (4096, [2, 1, 4])]


def _groups(parts: list, sizes: list[int]) -> list[PacketBatch]:
    out, i, k = [], 0, 0
    while i < len(parts):
        n = sizes[k % len(sizes)]
        out.append(PacketBatch.concat(parts[i : i + n]))
        i, k = i + n, k + 1
    return out


def test_every_kind_is_covered():
    assert {spec["kind"] for _, spec, _, _ in CASES} == set(KINDS)


@pytest.mark.parametrize("case,spec,traffic,invariant", CASES, ids=[c[0] for c in CASES])
def test_joined_batches_leave_the_same_state(case, spec, traffic, invariant):
    (one,) = configure({"s": copy.deepcopy(spec)})
    assert one.active, one.note
    assert one.batch_invariant is invariant
    stream = _traffic(traffic)
    for size, joins in CUTS:
        (a,) = configure({"s": copy.deepcopy(spec)})
        (b,) = configure({"s": copy.deepcopy(spec)})
        sa, sb = a.build(), b.build()
        parts = stream.split(size)
        for part in parts:
            sa.update(part)
        for joined in _groups(parts, joins):
            sb.update(joined)
        assert a.dump_state(sa) == b.dump_state(sb), f"{case}: batches of {size} joined {joins} differ"


def test_the_default_set_is_invariant_and_joins_give_its_state():
    """The service's default sketches (what ``telesketch serve`` runs) say True, through the set."""
    from telesketch.service.config import DEFAULT_SKETCHES

    stream = _traffic("mixed")
    one, joined = (SketchSet.from_config(copy.deepcopy(DEFAULT_SKETCHES)) for _ in range(2))
    assert one.batch_invariant and joined.batch_invariant
    s1, s2 = one.new_states(0), joined.new_states(0)
    parts = stream.split(1000)
    for part in parts:
        one.update(s1, part)
    for group in _groups(parts, [8]):
        joined.update(s2, group)
    for cs in one.active:
        assert cs.dump_state(s1[cs.name]) == cs.dump_state(s2[cs.name]), cs.name


class _BatchScoredEstimator:
    """An estimator whose score of a row depends on the rows scored with it (as a model that
    normalises over its input batch would): not row-independent."""

    kind = "batch-normalised"
    row_independent = False

    def score(self, headers, hdr_len):
        ttl = np.asarray(headers)[:, 8].astype(np.float64)
        return np.clip(ttl / max(ttl.max(initial=1.0), 1.0), 0.0, 1.0)

    def score_packets(self, batch, idx):
        ttl = batch.header[idx, 8].astype(np.float64)
        return np.clip(ttl / max(ttl.max(initial=1.0), 1.0), 0.0, 1.0)


def test_a_scorer_that_is_not_row_independent_says_false():
    from telesketch.sketches.llmsketch import LLMSketch

    sketch = LLMSketch(16 * 1024, "flow_size", estimator=_BatchScoredEstimator(), scoring="sync")
    assert sketch.batch_invariant is False
    assert LLMSketch(16 * 1024, "flow_size", estimator="constant", scoring="sync").batch_invariant is True
    # async scoring: scores depend on when the worker catches up
    assert LLMSketch(16 * 1024, "flow_size", estimator="constant", scoring="async").batch_invariant is False


def test_a_sketch_set_with_one_non_invariant_sketch_says_false():
    sketches = SketchSet.from_config({"gaps": {"kind": "gapfilter_ao", "memory_bytes": 16384},
                                      "flows": {"kind": "llmsketch", "memory_bytes": 16384, "task": "flow_size",
                                                "estimator": "constant"}})
    assert sketches.batch_invariant
    sketches.get("flows").batch_invariant = False
    assert not sketches.batch_invariant


def test_the_base_class_says_false():
    from telesketch.sketches.core import Sketch

    assert Sketch().batch_invariant is False


def test_residual_gpu_twin_in_batched_mode_says_false():
    """The GPU twin's batched update is chunked from each batch's first packet (its state depends
    on the cuts: ``residual_batched``); in exact mode it streams packets in order."""
    pytest.importorskip("numba.cuda")
    from telesketch.gpu.residualsketch import ResidualSketch

    twin = object.__new__(ResidualSketch)
    twin.gpu_update = "batched"
    assert twin.batch_invariant is False
    twin.gpu_update = "exact"
    assert twin.batch_invariant is True


def test_residual_batched_update_does_depend_on_the_cuts():
    """Why batched mode must say False: its CPU emulation, fed the same packets cut two ways."""
    from telesketch.sketches.residual_batched import emulate_update
    from telesketch.sketches.residualsketch import ResidualSketch

    rng = np.random.default_rng(3)
    addresses = (rng.zipf(1.3, 40_000) % 5000).astype(np.uint32) * np.uint32(2654435761)
    one, joined = (ResidualSketch(memory_bytes=8192, mode="byte", threshold=40) for _ in range(2))
    for start in range(0, len(addresses), 500):
        emulate_update(one, addresses[start : start + 500])
    for start in range(0, len(addresses), 4000):
        emulate_update(joined, addresses[start : start + 4000])
    assert one.to_bytes() != joined.to_bytes()


# ---------------------------------------------------------------------------- LLM-Sketch's flow names
def _llm_joined_and_one_by_one(parts: list, scores: list) -> tuple[bytes, bytes, object]:
    from telesketch.sketches.llmsketch import LLMSketch

    one, joined = (LLMSketch(2048, "flow_size", keep_keys=True) for _ in range(2))
    for part, s in zip(parts, scores):
        one.update(part, s)
    joined.update(PacketBatch.concat(parts), np.concatenate(scores))
    return one.to_bytes(), joined.to_bytes(), one


def test_llm_names_widen_at_the_first_ipv6_flow_wherever_the_cut():
    """An IPv6 flow that takes a slot in one batch and loses it in the next widened the names when
    the batches came one by one, not when they came joined (found writing the contract test)."""
    rng = np.random.default_rng(1)
    n6 = 50
    six = PacketBatch.from_columns(src_port=rng.integers(1, 60000, n6).astype(np.uint16), dst_port=[443] * n6,
                                   proto=[6] * n6, ipv6=[1] * n6,
                                   src_ip6=rng.integers(0, 256, (n6, 16)).astype(np.uint8),
                                   dst_ip6=rng.integers(0, 256, (n6, 16)).astype(np.uint8))
    v4 = generate_batch(20_000, 5_000, seed=2)
    one, joined, sketch = _llm_joined_and_one_by_one([six, v4], [np.full(n6, 0.1), np.full(len(v4), 0.9)])
    assert sketch.slot_names.shape[-1] == 37
    assert one == joined


def _colliding_flows() -> PacketBatch:
    """Two distinct IPv4 flows with the same 32-bit fingerprint (so the same heavy slot)."""
    from telesketch.sketches.llmsketch import fingerprint

    rng = np.random.default_rng(5)
    # distinct flows, two address words varying (with one only, mmh3 is a bijection: no collisions)
    src = np.unique(rng.integers(1, 2**32, 300_000, dtype=np.uint64)).astype(np.uint32)
    n = src.shape[0]
    flows = PacketBatch.from_columns(src_ip=src, dst_ip=rng.integers(1, 2**32, n, dtype=np.uint64).astype(np.uint32),
                                     src_port=np.full(n, 1000, np.uint16),
                                     dst_port=np.full(n, 80, np.uint16), proto=np.full(n, 6, np.uint8))
    fp = fingerprint(flows.flow_keys()).view("<u4").reshape(-1)
    order = np.argsort(fp, kind="stable")
    same = np.flatnonzero(fp[order][1:] == fp[order][:-1])
    assert same.size, "no fingerprint collision among the generated flows"
    first, second = order[same[0]], order[same[0] + 1]
    return flows[np.array([first, second])]


def test_llm_names_of_flows_sharing_a_fingerprint_do_not_depend_on_the_cut():
    """Flow P takes a slot; flow Q, with P's fingerprint, then hits that slot in the next batch. One
    by one the slot kept P's name (it changed in the first batch only), joined it took Q's (the
    last packet with the key): the name depended on the cut."""
    pair = _colliding_flows()
    p, q = pair[np.array([0, 0, 0])], pair[np.array([1, 1])]
    one, joined, sketch = _llm_joined_and_one_by_one([p, q], [np.full(3, 0.9), np.full(2, 0.9)])
    assert one == joined
    named = sketch.slot_names[sketch.occ.astype(bool)]
    assert q.flow_keys()[0].tobytes() in {row.tobytes() for row in named}  # the last packet's flow
