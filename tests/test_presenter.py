"""The presenter is the one place keys, prefixes, flows, times and HHH rows become text."""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from telesketch.packets import V4_MAPPED_PREFIX, flow_key_bytes
from telesketch.presenter import (format_address, format_flow, format_prefix, hhh_rows, key_bytes, key_family,
                                  key_json, key_order, key_text, parse_address, parse_flow_key, parse_prefix, ranked,
                                  time_text)
from telesketch.sketches.cocosketch import HHHRow


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



# ---------------------------------------------------------------------------------------- IPv6
def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


@pytest.mark.parametrize("packed, text", [
    (bytes(16), "::"),                                                      # all zero
    (bytes(15) + b"\x01", "::1"),                                           # loopback
    (v6("2001:0db8:0000:0000:0000:0000:0000:0001"), "2001:db8::1"),         # leading zeros dropped
    (v6("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1"),                      # first of equal zero runs
    (v6("2001:0:0:1:0:0:0:1"), "2001:0:0:1::1"),                            # the longest zero run
    (v6("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1"),                   # one zero group is not ::
    (v6("2001:DB8::AB"), "2001:db8::ab"),                                   # lower case
    (V4_MAPPED_PREFIX + bytes([10, 0, 0, 1]), "::ffff:10.0.0.1"),           # v4-mapped, dotted
    (v6("fe80:0:0:0:1:0:0:0"), "fe80::1:0:0:0"),                            # equal runs: the first
    (v6("2001:db8:1:0:0:0:0:0"), "2001:db8:1::"),                           # longest run at the end
])
def test_ipv6_addresses_print_in_rfc5952_text(packed, text):
    assert format_address(packed) == key_text(packed) == text
    assert parse_address(text) == packed
    assert key_family(packed) == (4 if text.startswith("::ffff:1") else 6)


def test_every_key_form_prints_and_has_a_family():
    ipv4 = flow_key_bytes(0x0A000001, 0x0A000002, 1234, 80, 6)
    ipv6 = v6("2001:db8::1") + v6("2001:db8::2") + (443).to_bytes(2, "big") + (5353).to_bytes(2, "big") + b"\x11"
    mapped = V4_MAPPED_PREFIX + ipv4[:4] + V4_MAPPED_PREFIX + ipv4[4:8] + ipv4[8:]
    assert key_text(ipv6) == format_flow(ipv6) == "[2001:db8::1]:443 > [2001:db8::2]:5353 proto 17"
    assert key_text(mapped) == key_text(ipv4) == "10.0.0.1:1234 > 10.0.0.2:80 proto 6"
    assert [key_family(k) for k in (0x0A000001, bytes([10, 0, 0, 1]), ipv4, mapped, ipv6, v6("::1"))] == [4, 4, 4, 4, 6, 6]
    assert format_address(bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert key_bytes(ipv6) == ipv6
    assert key_json(v6("2001:db8::1")) == {"key": "20010db8" + "0" * 23 + "1", "text": "2001:db8::1", "family": 6}
    assert key_json(0x0A000001) == {"key": 0x0A000001, "text": "10.0.0.1", "family": 4}
    assert key_json(0x1234ABCD, "fingerprint") == {"key": 0x1234ABCD, "text": "fp:0x1234abcd", "family": 0}
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        format_address(b"\x01\x02")
    with pytest.raises(ValueError, match="13 or 37 bytes"):
        format_flow(b"\x00" * 12)


def test_prefixes_of_both_families():
    assert format_prefix(v6("2001:db8::"), 32) == "2001:db8::/32"
    assert format_prefix(int.from_bytes(v6("2001:db8::"), "big"), 32, family=6) == "2001:db8::/32"
    assert format_prefix(bytes(16), 0) == "::/0"
    assert format_prefix(bytes([10, 1, 0, 0]), 16) == format_prefix(0x0A010000, 16) == "10.1.0.0/16"
    assert parse_prefix("2001:db8::/32") == (6, v6("2001:db8::"), 32)
    assert parse_prefix("10.1.0.0/16") == (4, bytes([10, 1, 0, 0]), 16)
    for bad in ("2001:db8::1/32", "10.1.0.0/33", "nonsense"):
        with pytest.raises(ValueError, match="not a prefix"):
            parse_prefix(bad)


@pytest.mark.parametrize("text, hexkey", [
    ("10.0.0.1:1234 > 10.0.0.2:80 proto 6", "0a0000010a00000204d2005006"),
    ("10.0.0.1:1234 -> 10.0.0.2:80 tcp", "0a0000010a00000204d2005006"),
    ("0a0000010a00000204d2005006", "0a0000010a00000204d2005006"),
    ("[2001:db8::1]:443 -> [2001:db8::2]:5353 udp",
     "20010db8000000000000000000000001" "20010db8000000000000000000000002" "01bb14e911"),
    ("[2001:db8::1]:443 > [2001:db8::2]:5353 proto 17",
     "20010db8000000000000000000000001" "20010db8000000000000000000000002" "01bb14e911"),
    ("10.0.0.1:1 > [::1]:2 proto 58",  # mixed ends: the 37-byte key, IPv4 end v4-mapped
     "00000000000000000000ffff0a000001" "00000000000000000000000000000001" "000100023a"),
])
def test_flow_text_parses_to_the_key_it_prints_from(text, hexkey):
    key = parse_flow_key(text)
    assert key.hex() == hexkey
    assert parse_flow_key(key_text(key)) == key  # round trip through the printed form


@pytest.mark.parametrize("text, message", [
    ("zz", "not a flow key"), ("0a00", "26 or 74 digits"), ("10.0.0.1:1 > 10.0.0.2:2", "not a flow key"),
    ("[2001:db8::g]:1 > [::1]:2 udp", "not an IPv6 address"), ("10.0.0.1:70000 > 10.0.0.2:2 udp", "port 70000"),
    ("10.0.0.1:1 > 10.0.0.2:2 proto 300", "protocol 300"), ("10.0.0.1:1 > 10.0.0.2:2 bogus", "unknown protocol"),
    ("10.0.0.256:1 > 10.0.0.2:2 udp", "10.0.0.256"),
])
def test_bad_flow_text_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_flow_key(text)


def test_bad_address_text_is_a_clear_error():
    for bad in ("10.0.0", "2001:db8:::1", "host.example"):
        with pytest.raises(ValueError, match="not an"):
            parse_address(bad)
    assert parse_address("10.0.0.1") == 0x0A000001 and parse_address("[::1]") == v6("::1")


def test_mixed_rows_rank_by_value_then_ipv4_before_ipv6():
    rows = [(v6("2001:db8::2"), 5.0), (v6("2001:db8::1"), 5.0), (0x0A000002, 5.0), (0x0A000001, 7.0), (v6("::1"), 9.0)]
    assert [key_text(k) for k, _ in ranked(rows)] == ["::1", "10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"]
    assert [key_text(k) for k, _ in ranked([(v6("::1"), -9.0), (0x0A000001, 9.0)], by_magnitude=True)] == ["10.0.0.1", "::1"]
    assert key_order(0x0A000001) < key_order(v6("::1"))


def test_hhh_rows_of_both_families_keep_two_trees():
    rows = hhh_rows([HHHRow(6, v6("2001:db8::"), 32, 60, 30), HHHRow(4, bytes([10, 0, 0, 0]), 8, 90, 50),
                     HHHRow(6, v6("2001:db8:1::"), 48, 40, 20), HHHRow(4, bytes([10, 1, 0, 0]), 16, 40, 30)])
    assert [(r["family"], r["prefix"], r["parent"], r["depth"], r["estimate"]) for r in rows] == [
        (4, "10.0.0.0/8", "", 0, 50), (4, "10.1.0.0/16", "10.0.0.0/8", 1, 30),
        (6, "2001:db8::/32", "", 0, 30), (6, "2001:db8:1::/48", "2001:db8::/32", 1, 20)]
    assert rows[0]["value"] == 0x0A000000 and rows[2]["value"] == "20010db8" + "0" * 24
    # the IPv4-only tuple form and the 4-field form read the same
    assert hhh_rows([(0x0A000000, 8, 50)]) == hhh_rows([(4, bytes([10, 0, 0, 0]), 8, 50)]) == rows[:1]
    # an IPv6 /0 is no parent of an IPv4 prefix
    mixed = hhh_rows([(6, bytes(16), 0, 9), (4, bytes([10, 0, 0, 0]), 8, 5)])
    assert [(r["prefix"], r["parent"]) for r in mixed] == [("10.0.0.0/8", ""), ("::/0", "")]


def test_array_texts_are_key_text_row_for_row():
    """The array formatters (a gRPC reply's rows at once) print each key as :func:`key_text` does."""
    import numpy as np

    from telesketch.presenter import TEXT_WIDTH, fingerprint_texts, ipv4_texts

    rng = np.random.default_rng(3)
    keys = np.concatenate([np.array([0, 1, 9, 10, 99, 100, 255, 256, 0x0A000001, 0xFFFFFFFF], np.uint32),
                           rng.integers(0, 1 << 32, 300, dtype=np.uint64).astype(np.uint32)])
    for (chars, used), int_keys in ((ipv4_texts(keys.astype(">u4").view(np.uint8).reshape(-1, 4)), "ipv4"),
                                    (fingerprint_texts(keys), "fingerprint")):
        assert chars.shape == used.shape == (keys.size, TEXT_WIDTH)
        assert [bytes(c[u]).decode() for c, u in zip(chars, used)] == [key_text(int(k), int_keys) for k in keys]


def test_hhh_row_parts_tell_the_forms_apart_by_field_count():
    """HHHRow (5 fields: the discounted estimate), 4 and 3 fields; anything else is a clear error."""
    from telesketch.presenter import hhh_row_parts

    ten8 = bytes([10, 0, 0, 0])
    assert hhh_row_parts(HHHRow(4, ten8, 8, 90, 50)) == (4, ten8, 8, 50)
    assert hhh_row_parts((4, ten8, 8, 90, 50)) == (4, ten8, 8, 50)  # a plain 5-tuple reads as an HHHRow
    assert hhh_row_parts((6, 1, 128, 7)) == (6, (1).to_bytes(16, "big"), 128, 7)
    assert hhh_row_parts((0x0A000000, 8, 5)) == (4, ten8, 8, 5)
    assert hhh_row_parts((v6("2001:db8::"), 32, 5)) == (6, v6("2001:db8::"), 32, 5)
    for bad in [(1, 2), (4, ten8, 8, 90, 50, 0)]:
        with pytest.raises(ValueError, match=f"an HHH row has 5 fields .* got {len(bad)}"):
            hhh_row_parts(bad)
