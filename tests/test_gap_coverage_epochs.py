"""A continuous GapFilter's closed epochs keep their coverage (packets inspected, IPv6 packets
skipped by reason) next to their gap events, through a checkpoint and a restart, so the report and
the metrics count every retained epoch, not only the open one. Checked against the exact per-epoch
counts of the traffic and the epoch's gap events against an offline GapFilter."""
from __future__ import annotations

import numpy as np

from telesketch.report import LocalSource
from telesketch.service.epochs import EpochManager
from telesketch.service.metrics import gap_coverage
from telesketch.service.sketchset import SketchSet
from telesketch.sketches.gapfilter import GapFilterAO
from telesketch.traces.generate import generate_batch
from workloads import BASE_EPOCH, EPOCH_NS

#: ip_id sequences: every IPv4 packet inspected, every IPv6 one skipped (``no_ip_id``)
SPECS = {"gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024}}
EPOCHS = 3


def mixed_epochs() -> dict[int, object]:
    batch = generate_batch(6000, 200, seed=4, duration_s=float(EPOCHS), start_s=float(BASE_EPOCH), ipv6_share=0.4)
    eids = batch.ts_ns // np.uint64(EPOCH_NS)
    return {int(e): batch[eids == e] for e in np.unique(eids)}


def expected(part) -> dict:
    n6 = int(np.count_nonzero(part.ipv6))
    return {"covered_packets": len(part) - n6, "skipped_packets": {"no_ip_id": n6}}


def test_closed_gapfilter_epochs_keep_their_ipv6_coverage(tmp_path):
    parts = mixed_epochs()
    assert len(parts) == EPOCHS and all(0 < expected(p)["skipped_packets"]["no_ip_id"] < len(p) for p in parts.values())
    manager = EpochManager(SketchSet.from_config(SPECS), EPOCH_NS, 6, tmp_path / "data")
    offline = GapFilterAO(memory_bytes=SPECS["gaps"]["memory_bytes"])
    offline_events = {}
    for i, (eid, part) in enumerate(parts.items()):
        manager.apply(part, "c", i + 1)
        offline.start_epoch(eid)
        offline.update(part)
        offline_events[eid] = offline.gap_events()
    manager.checkpoint()
    want = {eid: expected(p) for eid, p in parts.items()}
    assert gap_coverage(manager)["gaps"] == want  # two closed epochs and the open one
    for epoch in manager.epochs()[:-1]:
        np.testing.assert_array_equal(epoch.states["gaps"].gap_events(), offline_events[epoch.id])
    total = LocalSource(manager).ipv6(EPOCHS)["gap_coverage"]["gaps"]
    assert total["covered_packets"] + total["skipped_packets"]["no_ip_id"] == sum(len(p) for p in parts.values())
    assert total["epochs"] == sorted(parts)
    manager.close()

    restored = EpochManager(SketchSet.from_config(SPECS), EPOCH_NS, 6, tmp_path / "data")
    try:
        closed = {e.id: e.states["gaps"] for e in restored.epochs() if e.closed}
        assert len(closed) == EPOCHS - 1
        assert {eid: s.coverage() for eid, s in closed.items()} == {eid: want[eid] for eid in closed}
        for eid, state in closed.items():
            np.testing.assert_array_equal(state.gap_events(), offline_events[eid])
    finally:
        restored.close()
