"""Every kind follows the sketch contract: a ``Sketch`` subclass whose ``combine`` window answers
exactly the kind's queries, over epochs as over shards, with the kind's rule."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from telesketch.service.sketchset import KINDS, SketchSet
from telesketch.sketches.core import EPOCHS, Combined, Sketch, SketchError, Window, over_shards, window_threshold
from telesketch.traces import generate_batch

SPECS = {  # small and fast; one of each kind the service builds
    "gapfilter_so": {"memory_bytes": 4096}, "gapfilter_ao": {"memory_bytes": 4096},
    "gapfilter_straw": {"memory_bytes": 4096},
    "hiddensketch": {"memory_bytes": 56320, "phi": 0.01, "expected_epoch_items": 4_000},
    "residualsketch": {"memory_bytes": 32768, "mode": "byte", "threshold": 40},
    "llmsketch": {"memory_bytes": 64 * 1024, "estimator": "constant"},
    "exact": {},
}
CALLS = {  # query -> how a window is asked it
    "heavy_hitters": lambda w, n, keys: w.heavy_hitters(n, threshold=100),
    "heavy_changers": lambda w, n, keys: w.heavy_changers(w, n, threshold=100),
    "hhh": lambda w, n, keys: w.hhh(n),
    "gaps": lambda w, n, keys: w.gap_events(),
    "flow_size": lambda w, n, keys: w.flow_size(keys),
    "top_flows": lambda w, n, keys: w.top_flows(5),
}


@pytest.fixture(scope="module")
def epochs():
    return [generate_batch(4_000, 200, seed=s) for s in (1, 2)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_a_sketch_whose_window_answers_its_queries_only(kind, epochs):
    cs = SketchSet.from_config({"s": {"kind": kind, **SPECS[kind]}}).get("s")
    assert cs.active, cs.note
    assert issubclass(cs.cls, Sketch)
    states = []
    for batch in epochs:
        state = cs.build()
        state.update(batch)
        states.append(state)
    keys = epochs[0].flow_keys()[:3]
    n = sum(map(len, epochs))
    window = cs.window(states)
    assert isinstance(window, Window)
    for query, ask in CALLS.items():
        if query in KINDS[kind].queries:
            got = ask(window, n, keys)
            assert isinstance(got, Combined) and got.combine in (
                "merged", "sum of per-epoch estimates", "summed layer estimates", "union")
        else:
            with pytest.raises(SketchError, match=f"does not answer {query}"):
                ask(window, n, keys)


def test_one_shard_of_one_epoch_answers_as_the_sketch_itself(epochs):
    cs = SketchSet.from_config({"s": {"kind": "llmsketch", **SPECS["llmsketch"]}}).get("s")
    sketch = cs.build()
    sketch.update(epochs[0])
    keys = epochs[0].flow_keys()[:50]
    sharded = cs.cls.combine([cs.cls.combine([sketch], EPOCHS)], over_shards(lambda k: np.zeros(len(k), np.int64)))
    assert np.array_equal(sharded.flow_size(keys).rows, sketch.flow_size(keys))
    assert sharded.top_flows(10).rows == sorted(sketch.top_flows(10), key=lambda kv: (-kv[1], kv[0]))
    single = cs.window([sketch])
    assert single.top_flows(10) == Combined(list(sketch.top_flows(10)), "single")


def test_the_one_threshold_helper():
    assert window_threshold(None, 7, 1000) == 7.0
    assert window_threshold(0.01, None, 1000) == 10.0
    assert window_threshold(None, None, 1000) is None
    assert window_threshold(None, None, 1000, default_phi=0.5) == 500.0


def test_hidden_sketch_refuses_a_threshold_below_its_floor(epochs):
    from telesketch.errors import Precondition

    module = importlib.import_module(KINDS["hiddensketch"].module)
    sketch = module.HiddenSketch(**SPECS["hiddensketch"])
    sketch.update(epochs[0])
    floor = sketch.params.thresh
    with pytest.raises(Precondition, match=f"floor of {floor:,} packets"):
        sketch.combine([sketch]).check_floor(floor - 1, "heavy_hitters", "hh")
    sketch.combine([sketch]).check_floor(floor, "heavy_hitters", "hh")  # at the floor: answered


@pytest.mark.parametrize("kind", ["exact", "gapfilter_so"])
def test_gaps_are_answered_per_epoch_by_every_kind(kind, epochs):
    """A window's gaps are each epoch's events (the report pairs them with epoch ids), merged or not."""
    cs = SketchSet.from_config({"s": {"kind": kind, **SPECS[kind]}}).get("s")
    states = []
    for batch in epochs:
        state = cs.build()
        state.update(batch)
        states.append(state)
    got = cs.window(states).gap_events()
    assert got.combine == "union" and len(got.rows) == len(epochs)
    for events, state in zip(got.rows, states):
        np.testing.assert_array_equal(events, state.gap_events())
