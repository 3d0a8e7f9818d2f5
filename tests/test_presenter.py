"""The presenter is the one place keys, prefixes, flows, times and HHH rows become text."""
from __future__ import annotations

import numpy as np

from telesketch.packets import flow_key_bytes
from telesketch.presenter import (format_address, format_flow, format_prefix, hhh_rows, key_bytes, key_text,
                                  time_text)


def test_addresses_prefixes_flows_and_fingerprints():
    assert format_address(0x0A000001) == "10.0.0.1"
    assert format_prefix(0x0A010000, 16) == "10.1.0.0/16"
    key = flow_key_bytes(0x0A000001, 0x0A000002, 1234, 80, 6)
    assert format_flow(key) == "10.0.0.1:1234 > 10.0.0.2:80 proto 6" == key_text(key)
    assert key_text(np.uint32(0x1234ABCD), "fingerprint") == "fp:0x1234abcd"
    assert key_text(0x0A000001) == "10.0.0.1"
    assert key_bytes(0x0A000001) == b"\n\x00\x00\x01" and key_bytes(key) == key


def test_times_are_iso_utc_with_microseconds():
    assert time_text(1_700_000_000_521_010_999) == "2023-11-14T22:13:20.521010Z"


def test_hhh_rows_name_the_closest_reported_parent():
    rows = hhh_rows([(0x0A000000, 8, 50.0), (0x0A010000, 16, 30.0), (0x0A010200, 24, 20.0), (0x0B000000, 8, 5.0)])
    assert [(r["prefix"], r["parent"], r["depth"]) for r in rows] == [
        ("10.0.0.0/8", "", 0), ("10.1.0.0/16", "10.0.0.0/8", 1), ("10.1.2.0/24", "10.1.0.0/16", 2), ("11.0.0.0/8", "", 0)]
