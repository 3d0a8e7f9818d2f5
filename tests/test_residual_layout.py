"""ResidualSketch layouts (issue 20): the "tuned" chooser's rule, and every layout it can return against the
naive model; the flat layout is CocoSketch bucket for bucket; selection errors and snapshots."""
import numpy as np
import pytest

import naive_residualsketch as naive
from workloads import hierarchical_addresses as hierarchical_stream
from telesketch.errors import ConfigurationError
from telesketch.service.sketchset import configure
from telesketch.sketches.core import SketchError
from telesketch.sketches.residual_layout import MARGIN, choose_layout
from telesketch.sketches.residualsketch import CocoSketch, ResidualSketch, ResidualSketchParams


def as_entries(naive_out):
    return sorted((p, L, e, c) for L, p, e, c in naive_out)


def tuned(memory: int, T: int, expected: int, **kwargs) -> ResidualSketchParams:
    """Params with ``layout="tuned"`` whose threshold resolves to exactly ``T`` (phi * expected, floored)."""
    params = ResidualSketchParams(memory_bytes=memory, phi=(T + 0.5) / expected, expected_packets=expected,
                                  layout="tuned", **kwargs)
    assert params.T == T
    return params


@pytest.mark.parametrize("memory, T, expected, name", [
    (32 * 1024, 5000, 2_500_000, "flat"),    # hard mix 32 KiB: r = 4096 * 2e-3 = 8.2, but < 64 KiB (rule 4)
    (64 * 1024, 5000, 2_500_000, "flat"),    # r = 16.4 but phi = 2e-3 > 7e-4 (rule 6; rule 4 picked 16-24)
    (128 * 1024, 2000, 4_000_000, "16-24"),  # phi 5e-4, r = 8.2
    (128 * 1024, 4000, 8_000_000, "16-24"),  # synth T = 4000: r = 8.2
    (128 * 1024, 5000, 2_500_000, "flat"),   # r = 32.8 > 20 (rule 3)
    (32 * 1024, 4000, 8_000_000, "flat"),    # synth: r = 2.05 (rule 1-2 picked the paper's layout)
    (32 * 1024, 15000, 8_000_000, "flat"),   # synth T = 15000: r = 7.7
    (2 * 1024, 94, 94_695, "flat"),          # starved: r = 0.25 (rule 1-2: paper)
    (32 * 1024, 40, 3_000, "flat"),          # r = 54
    (64 * 1024, 40, 3_000, "flat"),          # r = 109 ... and T < 50 (rule 2)
    (16 * 1024, 40, 1_000, "flat"),          # r = 8.2 but T < 50 (rule 2)
    (8 * 1024, 946, 94_695, "flat"),         # r = 10.2 but 8 KiB: quarter blocks too small (rule 2)
    (8 * 1024, 94, 94_695, "flat"),          # nDPI phi 1e-3, 8 KiB: r = 1.0, small T (the paper lost)
    (32 * 1024, 946, 94_695, "flat"),        # r = 41: the memory holds the traffic
])
def test_rule_regions(memory, T, expected, name):
    layout = choose_layout(memory, T, "byte", expected)
    assert layout.name == name, layout.why
    assert tuned(memory, T, expected).crucial_layers == layout.crucial_layers
    assert 0 < MARGIN < 0.05


def test_unknown_epoch_size_and_bit_mode_fall_back_to_cocosketch():
    assert choose_layout(32768, 100, "byte", None).name == "flat"
    assert choose_layout(256 * 1024, 4000, "bit", 8_000_000).name == "flat"
    params = ResidualSketchParams(memory_bytes=32768, threshold=100, layout="tuned")
    assert params.crucial_layers == () and params.split is None
    with pytest.raises(SketchError, match="mode"):
        choose_layout(32768, 100, "nibble", 10**6)


# every layout the chooser can return, each on a stream where it is chosen, against the naive model
@pytest.mark.parametrize("memory, T, expected, name", [
    (131072, 60, 98_304, "16-24"),   # r = 16384 buckets * 60 / 98304 = 10, phi 6.1e-4 (rule 6)
    (4096, 60, 10_240, "flat"),      # r = 3
])
def test_each_chosen_layout_equals_the_naive_model(memory, T, expected, name):
    params = tuned(memory, T, expected, seed=3)
    assert params.chosen_layout.name == name, params.chosen_layout.why
    addresses = hierarchical_stream(12000, seed=8)
    rs = ResidualSketch(params)
    for chunk in np.array_split(addresses, 3):
        rs.update_addresses(chunk)
    shares = rs.params.block_shares()
    model = naive.NaiveResidualSketch(memory, T, params.crucial_layers, seed=3,
                                      shares=None if params.split is None else shares)
    model.update(addresses.tolist())
    blocks = [model.F] + [model.R[k] for k in model.crucial]
    assert len(blocks) == 1 + len(params.crucial_layers)
    for j, block in enumerate(blocks):
        w = rs.widths[j]
        np.testing.assert_array_equal(rs.ids[j, :, :w], np.array(block.ids, np.uint32))
        np.testing.assert_array_equal(rs.counts[j, :, :w], np.array(block.count, np.int32))
        np.testing.assert_array_equal(rs.occ[j, :, :w], np.array(block.occ, np.uint8))
    assert rs.layer_estimates() == model.layer_estimates()
    assert sorted(rs.hhh_entries()) == as_entries(model.hhh())
    assert rs.memory_bytes <= memory
    restored = ResidualSketch.from_bytes(rs.to_bytes())  # the chosen layout survives a snapshot
    assert restored.params == rs.params and restored.widths == rs.widths
    assert restored.hhh_entries() == rs.hhh_entries()


def test_paper_layout_equals_the_naive_model():
    """``layout = "paper"``, the other selectable layout (tuned never returns it), against the naive model."""
    addresses = hierarchical_stream(12000, seed=8)
    rs = ResidualSketch(memory_bytes=4096, threshold=40, seed=3, layout="paper")
    rs.update_addresses(addresses)
    model = naive.NaiveResidualSketch(4096, 40, (16,), seed=3)
    model.update(addresses.tolist())
    assert rs.params.chosen_layout.name == "paper" and rs.params.crucial_layers == (16,)
    assert rs.layer_estimates() == model.layer_estimates()
    assert sorted(rs.hhh_entries()) == as_entries(model.hhh())


@pytest.mark.parametrize("memory, T", [(2048, 30), (32768, 200)])
def test_flat_layout_is_cocosketch_bucket_for_bucket(memory, T):
    addresses = hierarchical_stream(20000, seed=4)
    flat = ResidualSketch(memory_bytes=memory, threshold=T, crucial_layers=(), seed=5)
    coco = CocoSketch(memory_bytes=memory, threshold=T, seed=5)
    flat.update_addresses(addresses)
    coco.update_addresses(addresses)
    np.testing.assert_array_equal(flat.cells, coco.cells)
    np.testing.assert_array_equal(flat.occ, coco.occ)
    assert flat.memory_bytes == coco.memory_bytes
    assert flat.hhh_entries() == coco.hhh_entries()
    assert ResidualSketchParams(memory_bytes=memory, threshold=T, layout="tuned").crucial_layers == ()


def test_bad_selection_is_a_clear_error():
    with pytest.raises(SketchError, match="layout must be one of"):
        ResidualSketchParams(threshold=10, layout="best")
    with pytest.raises(SketchError, match="chooses crucial_layers"):  # (16,) alone is rule 7's pick there
        tuned(128 * 1024, 2000, 4_000_000, crucial_layers=(24,))
    with pytest.raises(SketchError, match="chooses crucial_layers"):
        tuned(128 * 1024, 2000, 4_000_000, split=0.5)
    # the chosen ones may be given back (a snapshot's parameters carry them)
    again = tuned(128 * 1024, 2000, 4_000_000, crucial_layers=[24, 16], split=[0.5, 0.25, 0.25])
    assert again == tuned(128 * 1024, 2000, 4_000_000) and again.crucial_layers == (16, 24)


def test_paper_layout_is_unchanged_by_default():
    params = ResidualSketchParams(memory_bytes=32768, threshold=100)
    assert params.layout == "paper" and params.crucial_layers == (16,) and params.split is None
    assert params.chosen_layout.name == "paper"
    assert ResidualSketchParams(memory_bytes=32768, threshold=100, crucial_layers=(24,)).chosen_layout.name == "custom"


def test_service_config_selects_the_layout():
    """``layout`` in a ``[sketches.NAME]`` table reaches the sketch (TOML keys pass through to the params)."""
    spec = {"kind": "residualsketch", "memory_bytes": 131072, "phi": 5e-4, "expected_packets": 4_000_000}
    built = {layout: configure({"hhh": {**spec, "layout": layout}})[0].build() for layout in ("tuned", "paper")}
    assert built["tuned"].params.crucial_layers == (16, 24) and built["tuned"].params.split == (0.5, 0.25, 0.25)
    assert built["paper"].params.crucial_layers == (16,) and built["paper"].params.split is None
    with pytest.raises(ConfigurationError, match="layout must be one of"):
        configure({"hhh": {**spec, "layout": "best"}})


def test_sharded_specs_pin_the_layout_of_the_whole():
    """A shard gets T as a number (no expected_packets), so "tuned" alone would fall back to flat there: the
    front end pins the layout chosen for the whole stream (phi, and so the rule's r, is the same per shard)."""
    from telesketch.distributed.cluster import shard_specs

    spec = {"kind": "residualsketch", "memory_bytes": 131072, "phi": 5e-4, "expected_packets": 4_000_000,
            "layout": "tuned"}
    (shard,) = shard_specs({"hhh": spec}, 2).values()
    assert shard["crucial_layers"] == (16, 24) and shard["split"] == (0.5, 0.25, 0.25)
    assert shard["threshold"] == 1000 and "expected_packets" not in shard
    built = ResidualSketch(**{k: v for k, v in shard.items() if k not in ("kind", "global_threshold")})
    assert built.params.crucial_layers == (16, 24) and built.widths == (4096, 2048, 2048)


def test_byte_weighted_rule_reads_bytes_and_wide_buckets():
    """Byte-weighted: phi = T / expected_bytes and 12-byte buckets, so the same memory is 2/3 the buckets."""
    expected = 2_500_000 * 700  # bytes per epoch
    # 192 KiB: 16384 buckets x 5e-4 = 8.19 (16-24); 128 KiB: 10922 x 5e-4 = 5.46 (flat), where 8-byte buckets
    # read 8.19 (rule 6: phi 5e-4 <= 7e-4)
    params = ResidualSketchParams(memory_bytes=192 * 1024, phi=5e-4, expected_bytes=expected, weight="bytes",
                                  layout="tuned")
    assert params.chosen_layout.name == "16-24" and params.crucial_layers == (16, 24)
    assert "8.19" in params.chosen_layout.why
    assert choose_layout(128 * 1024, 5e-4 * expected, "byte", expected, "bytes").name == "flat"  # r = 5.46
    assert choose_layout(128 * 1024, 5e-4 * expected, "byte", expected, "packets").name == "16-24"  # r = 8.19
    # rule 3 (two blocks from 16 KiB) shows the bucket size alone moving r across the window's edge at 32 KiB
    assert choose_layout(32 * 1024, 2e-3 * expected, "byte", expected, "bytes", rule=3).name == "flat"  # r = 5.5
    assert choose_layout(32 * 1024, 2e-3 * expected, "byte", expected, "packets", rule=3).name == "16-24"  # r = 8.2


# ---------------------------------------------------------------- issue 20, second pass: rule 4
@pytest.mark.parametrize("memory, T, expected, rule3, rule4", [
    (32 * 1024, 8000, 4_000_000, "16-24", "flat"),   # spec generator seed 5, r = 8.2: the 16-24 loss (-0.028)
    (32 * 1024, 5000, 2_500_000, "16-24", "flat"),   # hard mix 32 KiB, r = 8.2
    (64 * 1024, 5000, 2_500_000, "16-24", "16-24"),  # r = 16.4, /16 block of 1024 buckets a row
    (64 * 1024, 8000, 8_000_000, "16-24", "16-24"),  # synth T = 8000, r = 8.2
    (128 * 1024, 4000, 8_000_000, "16-24", "16-24"),  # synth T = 4000, r = 8.2
    (128 * 1024, 5000, 2_500_000, "flat", "flat"),   # r = 32.8 > 20
    (16 * 1024, 4883, 1_000_000, "16-24", "flat"),   # 16 KiB, r = 2048 * 4.883e-3 = 10.0
])
def test_rule4_needs_64_kib_for_two_blocks(memory, T, expected, rule3, rule4):
    from telesketch.sketches.residual_layout import load_ratio

    assert (8 <= load_ratio(memory, T, expected) <= 20) == (rule3 == "16-24")
    assert choose_layout(memory, T, "byte", expected, rule=3).name == rule3
    assert choose_layout(memory, T, "byte", expected, rule=4).name == rule4
    for rule in (3, 4):  # bit mode: only flat stayed at or above CocoSketch on the bit rows (BENCHMARKS.md)
        bit = choose_layout(memory, T, "bit", expected, rule=rule)
        assert bit.name == "flat" and bit.crucial_layers == () and "bit mode" in bit.why
    with pytest.raises(SketchError, match="rule must be one of"):
        choose_layout(memory, T, "byte", expected, rule=2)


@pytest.mark.parametrize("current", [3, 4, 6])
def test_a_snapshot_taken_under_either_rule_loads(monkeypatch, current):
    """A tuned sketch's snapshot carries the crucial layers and split its rule chose. After the rule changes (rule 3
    -> rule 4 moved the 32 KiB two-block rows to flat), the same parameters still resolve to the snapshot's layout,
    and its state loads bit for bit; a new sketch without them gets the current rule's layout."""
    from telesketch.sketches import residualsketch as rs_module

    addresses = hierarchical_stream(6000, seed=2)
    monkeypatch.setattr(rs_module, "RULE", 3)
    old = ResidualSketch(tuned(32 * 1024, 5000, 2_500_000, seed=1))
    assert old.params.chosen_layout.name == "16-24"
    old.update_addresses(addresses)
    blob = old.to_bytes()
    monkeypatch.setattr(rs_module, "RULE", current)
    restored = ResidualSketch.from_bytes(blob)
    assert restored.params.crucial_layers == (16, 24) and restored.params.chosen_layout.name == "16-24"
    assert restored.to_bytes() == blob and restored.hhh_entries() == old.hhh_entries()
    fresh = tuned(32 * 1024, 5000, 2_500_000)
    assert fresh.chosen_layout.name == ("16-24" if current == 3 else "flat")
    with pytest.raises(SketchError, match="chooses crucial_layers"):  # a layout no rule picks is still refused
        tuned(32 * 1024, 5000, 2_500_000, crucial_layers=(24,))


# ---------------------------------------------------------------- issue 20, third pass: rule 5
@pytest.mark.parametrize("memory, T, expected, rule4, rule5", [
    (64 * 1024, 8000, 4_000_000, "16-24", "flat"),    # spec generator s41, phi 2e-3, r = 16.4: rule 4's held-out loss
    (64 * 1024, 5000, 2_500_000, "16-24", "flat"),    # the hard mix at 64 KiB, phi 2e-3 (rule 4 won there: +0.047)
    (64 * 1024, 4000, 4_000_000, "16-24", "16-24"),   # phi 1e-3, r = 8.2
    (128 * 1024, 4000, 4_000_000, "16-24", "16-24"),  # phi 1e-3, r = 16.4
    (128 * 1024, 2000, 4_000_000, "16-24", "16-24"),  # phi 5e-4, r = 8.2
    (128 * 1024, 8000, 4_000_000, "flat", "flat"),    # phi 2e-3, r = 32.8 > 20
    (80 * 1024, 6800, 4_000_000, "16-24", "flat"),    # phi 1.7e-3, r = 17.4
    (96 * 1024, 5600, 4_000_000, "16-24", "16-24"),   # phi 1.4e-3, r = 17.2: just inside the phi bound
    (32 * 1024, 4000, 4_000_000, "flat", "flat"),     # r = 4.1
    (256 * 1024, 1000, 4_000_000, "16-24", "16-24"),  # phi 2.5e-4, r = 8.2
])
def test_rule5_keeps_two_blocks_to_phi_at_most_1_5e_3(memory, T, expected, rule4, rule5):
    from telesketch.sketches.residual_layout import RULES

    assert RULES[5].max_phi == 1.5e-3
    assert choose_layout(memory, T, "byte", expected, rule=4).name == rule4
    chosen = choose_layout(memory, T, "byte", expected, rule=5)
    assert chosen.name == rule5, chosen.why
    assert (rule5 == "16-24") == (rule4 == "16-24" and T / expected <= RULES[5].max_phi)
    if rule4 == "16-24" and rule5 == "flat":
        assert "phi" in chosen.why and "rule 5" in chosen.why
    bit = choose_layout(memory, T, "bit", expected, rule=5)  # bit mode: flat under every rule
    assert bit.name == "flat" and bit.crucial_layers == ()


def test_rule5_only_turns_two_block_points_flat_on_the_measured_grid():
    """Over the benchmark's memory x phi grid (16 KiB .. 256 KiB, phi 2.5e-4 .. 1e-2, several epoch sizes), rule 5
    picks 16-24 exactly where rule 4 does and phi <= 1.5e-3, and flat everywhere else: it never picks a layout
    rule 4 did not measure."""
    picked = {4: 0, 5: 0}
    for kib in (16, 32, 48, 64, 80, 96, 128, 192, 256):
        for phi in (2.5e-4, 5e-4, 1e-3, 1.2e-3, 1.4e-3, 1.7e-3, 2e-3, 1e-2):
            for expected in (94_695, 2_000_000, 4_000_000, 8_000_000):
                T = int(phi * expected)
                four = choose_layout(kib * 1024, T, "byte", expected, rule=4)
                five = choose_layout(kib * 1024, T, "byte", expected, rule=5)
                assert five.name in ("flat", "16-24") and four.name in ("flat", "16-24")
                assert (five.name == "16-24") == (four.name == "16-24" and T / expected <= 1.5e-3), (kib, phi)
                picked[4] += four.name == "16-24"
                picked[5] += five.name == "16-24"
    assert 0 < picked[5] < picked[4]


@pytest.mark.parametrize("current", [5, 6])
def test_a_rule4_snapshot_at_phi_2e_3_loads_under_rule5(monkeypatch, current):
    """A sketch built under rule 4 at 64 KiB, phi 2e-3 has the two blocks; rules 5 and 6 answer flat for new
    sketches there, and the old snapshot still loads bit for bit with its own layout."""
    from telesketch.sketches import residualsketch as rs_module

    monkeypatch.setattr(rs_module, "RULE", 4)
    old = ResidualSketch(tuned(64 * 1024, 5000, 2_500_000, seed=2))
    assert old.params.chosen_layout.name == "16-24"
    old.update_addresses(hierarchical_stream(6000, seed=5))
    blob = old.to_bytes()
    monkeypatch.setattr(rs_module, "RULE", current)
    restored = ResidualSketch.from_bytes(blob)
    assert restored.params.crucial_layers == (16, 24) and restored.params.split == (0.5, 0.25, 0.25)
    assert restored.to_bytes() == blob and restored.hhh_entries() == old.hhh_entries()
    assert tuned(64 * 1024, 5000, 2_500_000).chosen_layout.name == "flat"


# ---------------------------------------------------------------- issue 20, third pass: rule 6 (phi <= 7e-4)
@pytest.mark.parametrize("memory, T, expected, rule4, rule6", [
    (64 * 1024, 4000, 4_000_000, "16-24", "flat"),     # spec-gen phi 1e-3, r = 8.2 (fresh set 4 lost rows here)
    (128 * 1024, 4000, 4_000_000, "16-24", "flat"),    # phi 1e-3, r = 16.4 (s53: -0.008)
    (64 * 1024, 4800, 4_000_000, "16-24", "flat"),     # phi 1.2e-3 (s51: -0.010)
    (128 * 1024, 2000, 4_000_000, "16-24", "16-24"),   # phi 5e-4, r = 8.2 (every set: +0.026 or more)
    (256 * 1024, 2000, 4_000_000, "16-24", "16-24"),   # phi 5e-4, r = 16.4
    (256 * 1024, 1000, 4_000_000, "16-24", "16-24"),   # phi 2.5e-4, r = 8.2
    (128 * 1024, 2800, 4_000_000, "16-24", "16-24"),   # phi 7e-4, r = 11.5: on the bound
    (128 * 1024, 3200, 4_000_000, "16-24", "flat"),    # phi 8e-4, r = 13.1: just over it
    (96 * 1024, 2800, 4_000_000, "16-24", "16-24"),    # phi 7e-4, r = 8.6
    (64 * 1024, 2800, 4_000_000, "flat", "flat"),      # phi 7e-4, r = 5.7 < 8
    (128 * 1024, 15, 30_000, "flat", "flat"),          # phi 5e-4 but T < 50
])
def test_rule6_keeps_two_blocks_to_phi_at_most_7e_4(memory, T, expected, rule4, rule6):
    from telesketch.sketches.residual_layout import RULES

    assert RULES[6].max_phi == 7e-4
    assert choose_layout(memory, T, "byte", expected, rule=4).name == rule4
    chosen = choose_layout(memory, T, "byte", expected, rule=6)
    assert chosen.name == rule6, chosen.why
    if rule4 == "16-24" and rule6 == "flat":
        assert "rule 6" in chosen.why
    assert choose_layout(memory, T, "bit", expected, rule=6).name == "flat"


def test_rule6_two_blocks_are_a_subset_of_rule5_and_rule4():
    """On the measured grid rule 6's 16-24 points are rule 5's with phi <= 7e-4, and rule 5's are rule 4's."""
    sets = {4: set(), 5: set(), 6: set()}
    for kib in (32, 64, 96, 128, 192, 256, 512, 1024):
        for phi in (1.25e-4, 2.5e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 1e-3, 1.4e-3, 2e-3):
            for expected in (2_000_000, 4_000_000, 8_000_000):
                T = int(phi * expected)
                for rule in sets:
                    if choose_layout(kib * 1024, T, "byte", expected, rule=rule).name == "16-24":
                        sets[rule].add((kib, phi, expected))
    assert sets[6] == {p for p in sets[5] if int(p[1] * p[2]) / p[2] <= 7e-4}
    assert sets[6] < sets[5] < sets[4] and len(sets[6]) > 0


# ---------------------------------------------------------------- issue 20, speed: rule 7 (paper inside rule 6's region)
def test_rule7_picks_the_paper_layout_exactly_where_rule6_picks_16_24():
    """Rule 7 is rule 6 with the paper's /16 block (equal split) in place of the two blocks, and flat everywhere
    rule 6 is flat, over the measured memory x phi grid; bit mode stays flat."""
    from telesketch.sketches.residual_layout import RULE, RULES

    assert RULE == 6 and RULES[7].layout == "paper" and RULES[6].layout == "16-24"
    assert (RULES[7].min_memory, RULES[7].max_phi) == (RULES[6].min_memory, RULES[6].max_phi)
    picked = 0
    for kib in (32, 64, 96, 128, 192, 256, 512, 1024):
        for phi in (1.25e-4, 2.5e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 1e-3, 2e-3):
            for expected in (2_000_000, 4_000_000, 8_000_000):
                T = int(phi * expected)
                six = choose_layout(kib * 1024, T, "byte", expected, rule=6)
                seven = choose_layout(kib * 1024, T, "byte", expected, rule=7)
                if six.name == "16-24":
                    picked += 1
                    assert (seven.name, seven.crucial_layers, seven.split) == ("paper", (16,), None), seven.why
                    assert "rule 7" in seven.why
                else:
                    assert (seven.name, seven.crucial_layers, seven.split) == (six.name, six.crucial_layers, six.split)
                assert choose_layout(kib * 1024, T, "bit", expected, rule=7).name == "flat"
    assert picked > 0


@pytest.mark.parametrize("memory, T, expected, rule7", [
    (128 * 1024, 2000, 4_000_000, "paper"),   # phi 5e-4, r = 8.2
    (128 * 1024, 2800, 4_000_000, "paper"),   # phi 7e-4, r = 11.5: on the bound
    (128 * 1024, 3200, 4_000_000, "flat"),    # phi 8e-4: over it
    (64 * 1024, 2800, 4_000_000, "flat"),     # r = 5.7 < 8
    (512 * 1024, 500, 4_000_000, "paper"),    # phi 1.25e-4, r = 8.2
    (64 * 1024, 5000, 2_500_000, "flat"),     # the hard mix, phi 2e-3
])
def test_rule7_points(memory, T, expected, rule7):
    assert choose_layout(memory, T, "byte", expected, rule=7).name == rule7


def test_a_region_with_an_unknown_layout_is_refused():
    from telesketch.sketches.residual_layout import TwoBlockRegion

    with pytest.raises(SketchError, match="layout"):
        TwoBlockRegion(64 * 1024, 7e-4, "24")


@pytest.mark.parametrize("built, loaded", [(7, 6), (6, 7)])
def test_rule6_and_rule7_snapshots_load_under_the_other(monkeypatch, built, loaded):
    """A sketch built under rule 7 at 128 KiB, phi 5e-4 carries the paper's /16 block, one built under rule 6 the
    two blocks; each snapshot loads bit for bit, with its own layout, whichever rule is current."""
    from telesketch.sketches import residualsketch as rs_module

    monkeypatch.setattr(rs_module, "RULE", built)
    old = ResidualSketch(tuned(128 * 1024, 2000, 4_000_000, seed=3))
    want = {6: ((16, 24), (0.5, 0.25, 0.25)), 7: ((16,), None)}[built]
    assert (old.params.crucial_layers, old.params.split) == want
    assert old.params.chosen_layout.name == {6: "16-24", 7: "paper"}[built]
    old.update_addresses(hierarchical_stream(6000, seed=5))
    blob = old.to_bytes()
    monkeypatch.setattr(rs_module, "RULE", loaded)
    restored = ResidualSketch.from_bytes(blob)
    assert (restored.params.crucial_layers, restored.params.split) == want
    assert restored.to_bytes() == blob and restored.hhh_entries() == old.hhh_entries()
    assert tuned(128 * 1024, 2000, 4_000_000).chosen_layout.name == {6: "16-24", 7: "paper"}[loaded]


def test_tuned_layouts_names_every_rules_block_layout():
    """tuned_layouts walks every rule's region: flat, 16-24 and (rule 7) the paper's layout in byte mode."""
    from telesketch.sketches.residualsketch import tuned_layouts

    names = {layout.name for layout in tuned_layouts("byte")}
    assert {"flat", "16-24", "paper"} <= names
    assert {layout.name for layout in tuned_layouts("bit")} == {"flat"}
