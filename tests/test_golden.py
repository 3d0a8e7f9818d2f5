"""Committed snapshots (``tests/golden/*.tsk``, written by ``tests/golden/make_golden.py``) still load
in this version and give the answers recorded beside them (``*.json``): a snapshot written by one
version of telesketch keeps loading in the next. A kind's state layout may change only with a new
layout version, and then old snapshots must still load (or this test says which one broke)."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from golden.make_golden import probe_batch
from test_contract import CASES

GOLDEN = Path(__file__).resolve().parent / "golden"
KINDS = sorted(p.stem for p in GOLDEN.glob("*.tsk"))


def test_every_kind_has_a_golden_snapshot():
    assert KINDS == sorted(CASES), "run python tests/golden/make_golden.py after adding a kind"


@pytest.mark.parametrize("kind", KINDS)
def test_golden_snapshot_loads_with_the_recorded_answers(kind):
    blob = (GOLDEN / f"{kind}.tsk").read_bytes()
    record = json.loads((GOLDEN / f"{kind}.json").read_text())
    assert len(blob) == record["bytes"] and hashlib.sha256(blob).hexdigest() == record["sha256"], "snapshot edited"
    assert len(blob) < 8 * 1024, "golden snapshots stay small"
    case = CASES[kind]
    sketch = case.cls().from_bytes(blob)
    assert case.answers(sketch, probe_batch(record["probe"])) == record["answers"]
    again = sketch.to_bytes()
    if _layout_version(again) == _layout_version(blob):
        assert again == blob, "the loaded snapshot re-serialises differently"
    else:  # an older layout: it upgrades on load, and the upgraded form keeps the answers
        upgraded = case.cls().from_bytes(again)
        assert case.answers(upgraded, probe_batch(record["probe"])) == record["answers"]


def _layout_version(blob: bytes):
    """The state layout version in a snapshot's envelope header (magic, u32 length, JSON)."""
    (length,) = struct.unpack_from("<I", blob, 4)
    return json.loads(blob[8 : 8 + length]).get("version")
