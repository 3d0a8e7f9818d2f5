"""The service feeds a sketch whose ``takes_ipv6`` is False (LLM-Sketch's IPv4-keyed
``heavy_hitters`` task) the IPv4 rows only and counts the IPv6 rows it withheld; the exact kind sees
both families."""
import numpy as np

from telesketch.service.sketchset import SketchSet

from test_exact_ipv6 import skewed_mixed_batch


def test_ipv4_only_sketch_gets_ipv4_rows_and_withheld_rows_are_counted():
    specs = {"hh": {"kind": "llmsketch", "task": "heavy_hitters", "estimator": "auto", "memory_bytes": 64 * 1024}, "truth": {"kind": "exact"}}
    sketches = SketchSet.from_config(specs)
    states = sketches.new_states(1)
    seen = {}
    for name, state in states.items():
        original = state.update

        def spy(batch, _name=name, _original=original):
            seen[_name] = batch
            return _original(batch)

        state.update = spy
    batch = skewed_mixed_batch(300, seed=9)
    sketches.update(states, batch)
    assert not seen["hh"].has_ipv6() and seen["hh"].equals(batch.family(4))
    assert seen["truth"] is batch
    assert sketches.ipv6_withheld == {"hh": batch.ipv6_count()} and batch.ipv6_count() > 0
    assert np.all(seen["hh"].src_ip != 0)  # no IPv6 row reaches it as source 0.0.0.0
