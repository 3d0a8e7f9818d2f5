"""Window rules over mixed IPv4/IPv6 states: HHH windows answer both trees, flow-size queries take
37-byte keys (:mod:`telesketch.sketches.combine`, :mod:`telesketch.service.queries`)."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.errors import QueryError
from telesketch.packets import FLOW_KEY37_BYTES
from telesketch.service.exactsketch import ExactSketch
from telesketch.service.queries import _flow_key_array, ipv4_triples
from telesketch.sketches import exact
from telesketch.sketches.cocosketch import HHHRow, hhh_rows, merged_hhh
from telesketch.sketches.residualsketch import ResidualSketch
from telesketch.traces.generate import generate_batch

T = 150


@pytest.fixture(scope="module")
def epochs():
    whole = generate_batch(12_000, 300, seed=5, ipv6_share=0.4)
    return [whole[:5000], whole[5000:]]


def _residual(batch):
    sketch = ResidualSketch(mode="byte", memory_bytes=128 * 1024, threshold=T)
    sketch.update(batch)
    return sketch


def test_hhh_window_sums_each_tree_over_epochs(epochs):
    states = [_residual(b) for b in epochs]
    got = ResidualSketch.combine(states).hhh_rows(sum(map(len, epochs)), threshold=2 * T)
    assert got.combine == "summed layer estimates"
    assert got.rows == hhh_rows(merged_hhh(states, 2 * T, family=4), merged_hhh(states, 2 * T, family=6))
    assert {r.family for r in got.rows} == {4, 6}
    # the IPv4 rows are the window's IPv4 answer, as before IPv6
    v4 = ResidualSketch.combine(states).hhh(sum(map(len, epochs)), threshold=2 * T).rows
    assert [(int.from_bytes(r.prefix, "big"), r.length, r.discounted) for r in got.rows if r.family == 4] == v4


def test_hhh_window_of_one_state_is_the_states_answer(epochs):
    state = _residual(epochs[0])
    got = ResidualSketch.combine([state]).hhh_rows(len(epochs[0]), threshold=T)
    assert got.combine == "single" and got.rows == state.hhh_rows(T)


def test_exact_kind_answers_both_trees_over_merged_epochs(epochs):
    states = []
    for b in epochs:
        states.append(ExactSketch(hhh_phi=0.01))
        states[-1].update(b)
    got = ExactSketch.combine(states).hhh_rows(sum(map(len, epochs)), threshold=T)
    whole = epochs[0].concat(epochs)
    four = exact.hhh(whole.family(4).src_ip, threshold=T)
    six = exact.hhh6(whole.family(6).src_ip6, threshold=T)
    assert got.combine == "merged"
    assert {(r.family, int.from_bytes(r.prefix, "big"), r.length): r.discounted for r in got.rows} == {
        **{(4, p, n): c for (p, n), c in four.items()}, **{(6, p, n): c for (p, n), c in six.items()}}
    assert all(isinstance(r, HHHRow) and len(r.prefix) == (4 if r.family == 4 else 16) for r in got.rows)
    assert all(r.estimate >= r.discounted for r in got.rows)
    # the IPv4 rows are the exact kind's IPv4 answer, as before IPv6
    assert ipv4_triples(got.rows) == ExactSketch.combine(states).hhh(sum(map(len, epochs)), threshold=T).rows


def test_flow_keys_of_both_widths_read_as_one_37_byte_array(epochs):
    batch = epochs[0]
    four = batch.family(4).flow_keys()[:3]
    six = batch.family(6).flow_keys37()[:2]
    array = _flow_key_array([bytes(k) for k in four] + [bytes(k) for k in six])
    assert array.shape == (5, FLOW_KEY37_BYTES)
    assert np.array_equal(array[:3], batch.family(4).flow_keys37()[:3])  # IPv4 keys v4-mapped
    assert np.array_equal(array[3:], six)
    assert _flow_key_array([bytes(k) for k in four]).shape == (3, 13)  # IPv4-only: as before
    with pytest.raises(QueryError, match="13 bytes .IPv4. or 37 bytes"):
        _flow_key_array([bytes(16)])
