"""``telesketch size`` models byte weighting (issue 17): a sketch configured with ``weight = "bytes"``
is sized by its byte F1 (keys above phi of the window's bytes against the exact byte truth), which a
brute-force sweep of byte-weighted sketches reproduces point for point."""
from __future__ import annotations

import numpy as np
import pytest

from telesketch.report import ReportOptions
from telesketch.service.config import ServiceConfig
from telesketch.sizing import pick_memory, render, size_sketches
from telesketch.sketches import exact
from telesketch.sketches.hiddensketch import HiddenSketch
from telesketch.traces import generate_capture, read_capture

PHI = 2e-3
CONFIGURED = 32768
FACTORS = (0.75, 1.0, 1.5)


def test_size_scores_a_byte_weighted_sketch_against_byte_truth(tmp_path):
    capture = tmp_path / "bytes.pcap"
    generate_capture(capture, packets=30_000, flows=3_000, zipf=1.0, seed=5)
    batches = list(read_capture(capture))
    src = np.concatenate([np.asarray(b.src_ip) for b in batches])
    length = np.concatenate([np.asarray(b.length) for b in batches])
    total = int(length.astype(np.int64).sum())
    spec = {"kind": "hiddensketch", "memory_bytes": CONFIGURED, "phi": PHI, "weight": "bytes",
            "expected_epoch_bytes": total // 2}
    config = ServiceConfig(epoch_seconds=3600.0, sketches={"hh_bytes": spec}).validate()
    (advice,) = size_sketches([str(capture)], config, ReportOptions(phi=PHI), target=0.9, factors=FACTORS)
    assert advice.unit == "bytes" and "heavy_hitters by bytes" in render([advice])

    true = exact.heavy_hitters(src, phi=PHI, weights=length)
    packet_true = exact.heavy_hitters(src, phi=PHI)
    assert set(true) != set(packet_true)  # bytes and packets rank these sources differently
    f1 = {}
    for factor in FACTORS:
        sketch = HiddenSketch(memory_bytes=int(CONFIGURED * factor), phi=PHI, weight="bytes",
                              expected_epoch_bytes=total // 2)
        for b in batches:
            sketch.update(b)
        reported = {k: v for k, v in sketch.heavy_hitters() if v > PHI * total}
        f1[sketch.memory_bytes] = exact.set_accuracy(true, reported).f1
    assert {p["memory_bytes"]: p["f1"] for p in advice.points} == pytest.approx(f1)
    assert advice.memory_bytes == pick_memory([{"memory_bytes": m, "f1": v} for m, v in f1.items()], 0.9)


def test_byte_weighted_exact_kind_answers_the_byte_oracles_and_round_trips():
    """The ``exact`` kind with ``weight = "bytes"`` (the byte truth): heavy hitters, HHH rows, flow sizes
    and heavy changers are the :mod:`telesketch.sketches.exact` answers with the lengths as weights,
    phi of the bytes; its state (layout 3) round-trips; a packet one's layout and answers are as before."""
    from telesketch.service.exactsketch import ExactSketch
    from telesketch.traces.generate import generate_batch

    batch = generate_batch(3000, 300, seed=3, ipv6_share=0.3)
    before = generate_batch(2000, 300, seed=4, ipv6_share=0.3)
    by_bytes, by_packets = ExactSketch(weight="bytes"), ExactSketch()
    prev = ExactSketch(weight="bytes")
    for s in (by_bytes, by_packets):
        s.update(batch)
    prev.update(before)
    total = int(batch.length.astype(np.int64).sum())
    assert by_bytes.volume == total and by_packets.volume == len(batch)
    assert dict(by_bytes.heavy_hitters(phi=0.01)) == exact.mixed_heavy_hitters(batch, "src_ip", phi=0.01, weight="bytes")
    assert dict(by_packets.heavy_hitters(phi=0.01)) == exact.mixed_heavy_hitters(batch, "src_ip", phi=0.01)
    v4 = batch.family(4)
    want4 = exact.hhh(v4.src_ip, threshold=0.05 * total, weights=v4.length)
    assert {(int.from_bytes(r.prefix, "big"), r.length): r.discounted
            for r in by_bytes.hhh_rows(phi=0.05) if r.family == 4} == want4
    flows = exact.mixed_count_dict(batch, "flow", weight="bytes")
    assert by_bytes.top_flows(3) == sorted(flows.items(), key=lambda kv: (-kv[1], isinstance(kv[0], bytes), kv[0]))[:3]
    old, new = (exact.mixed_count_dict(b, "src_ip", weight="bytes") for b in (before, batch))
    thr = 0.02 * max(total, int(before.length.astype(np.int64).sum()))
    want = {k: new.get(k, 0) - old.get(k, 0) for k in old.keys() | new.keys()}
    assert dict(by_bytes.heavy_changers(prev, phi=0.02)) == {k: d for k, d in want.items() if abs(d) > thr}
    back = ExactSketch.from_bytes(by_bytes.to_bytes())
    assert back.params.weight == "bytes" and back.to_bytes() == by_bytes.to_bytes()
    assert back.heavy_hitters(phi=0.01) == by_bytes.heavy_hitters(phi=0.01)
    assert b'"weight"' not in by_packets.to_bytes()[:2048]
    assert ExactSketch.from_bytes(by_packets.to_bytes()).heavy_hitters(phi=0.01) == by_packets.heavy_hitters(phi=0.01)
