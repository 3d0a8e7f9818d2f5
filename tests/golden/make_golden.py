"""Write the golden snapshots: one ``KIND.tsk`` (``to_bytes()``) and ``KIND.json`` (its answers) per kind.

Run from the repository root, ``python tests/golden/make_golden.py``, only when adding a kind or
deliberately starting a new snapshot format; ``tests/test_golden.py`` checks that this version still
loads every committed snapshot and gives the recorded answers, so a snapshot written by one version
keeps loading in the next. Each sketch is small (a few KiB) and fed a fixed-seed workload.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN.parent))

from test_contract import CASES, HIDDEN_SMALL  # noqa: E402
from workloads import contract_batch  # noqa: E402

from telesketch.packets import PacketBatch  # noqa: E402

#: Per kind, parameters that keep its snapshot to a few KiB (the contract's, made smaller).
SMALLER = {
    "hiddensketch": dict(HIDDEN_SMALL, memory_bytes=4096, cm_bytes=600),
    "hiddensketch_two_pass": dict(HIDDEN_SMALL, memory_bytes=4096, cm_bytes=600, mode="two_pass"),
    "residualsketch": dict(memory_bytes=2048, threshold=20),
    "cocosketch": dict(memory_bytes=2048, threshold=20),
    "llmsketch": dict(memory_bytes=4096, seed=1),
}
PACKETS = {"exact": 150}  #: the exact sketch stores its packets: fewer of them
PROBE_COLUMNS = ("src_ip", "dst_ip", "src_port", "dst_port", "proto")
PROBE_PACKETS = 64


def golden_batch(kind: str) -> PacketBatch:
    """The fixed-seed workload a kind's snapshot was fed."""
    return contract_batch(600, flows=100, seed=3)[: PACKETS.get(kind, 600)]


def probe_batch(probe: dict) -> PacketBatch:
    """The packets whose keys the recorded answers query, from a golden JSON's ``probe``."""
    return PacketBatch.from_columns(**probe)


def build(kind: str):
    case = CASES[kind]
    return case.cls()(**SMALLER.get(kind, case.params))


def write(kind: str) -> dict:
    case = CASES[kind]
    sketch = build(kind)
    case.update(sketch, golden_batch(kind), 0)
    blob = sketch.to_bytes()
    batch = golden_batch(kind)[:PROBE_PACKETS]
    probe = {name: getattr(batch, name).tolist() for name in PROBE_COLUMNS}
    record = {"kind": kind, "class": case.cpu, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
              "probe": probe, "answers": case.answers(sketch, probe_batch(probe))}
    (GOLDEN / f"{kind}.tsk").write_bytes(blob)
    (GOLDEN / f"{kind}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


if __name__ == "__main__":
    for name in sorted(CASES):
        rec = write(name)
        print(f"{name}: {rec['bytes']} bytes")
