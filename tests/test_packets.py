"""PacketBatch: construction, validation, slicing, concatenation and flow keys."""
import numpy as np
import pytest

from telesketch.packets import (
    COLUMN_DTYPES,
    COLUMNS,
    FLOW_KEY_BYTES,
    HEADER_BYTES,
    BatchError,
    PacketBatch,
    flow_key_bytes,
    format_ipv4,
    parse_ipv4,
    unpack_flow_key,
)


def small_batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return PacketBatch.from_columns(
        ts_ns=np.arange(n, dtype=np.uint64) * 1000,
        src_ip=rng.integers(0, 2**32, n, dtype=np.uint32),
        dst_ip=rng.integers(0, 2**32, n, dtype=np.uint32),
        src_port=rng.integers(0, 2**16, n),
        dst_port=rng.integers(0, 2**16, n),
        proto=rng.choice([6, 17], n),
        ip_id=np.arange(n),
        header=rng.integers(0, 256, (n, HEADER_BYTES), dtype=np.uint8),
    )


def test_absent_columns_are_zero_filled_with_documented_dtypes():
    batch = PacketBatch.from_columns(src_ip=[1, 2, 3])
    assert len(batch) == 3
    for name, dtype in COLUMN_DTYPES.items():
        column = getattr(batch, name)
        assert column.dtype == dtype, name
        if name != "src_ip":
            assert not column.any(), name
    assert batch.header.shape == (3, HEADER_BYTES)


def test_mismatched_column_lengths_name_the_column():
    with pytest.raises(BatchError, match="dst_ip.*2 values.*3"):
        PacketBatch.from_columns(src_ip=[1, 2, 3], dst_ip=[1, 2])


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"src_port": [70000]}, "outside"),
        ({"proto": [-1]}, "outside"),
        ({"ttl": [1.5]}, "integers"),
        ({"src_ip": [[1, 2]]}, "one-dimensional"),
        ({"header": np.zeros((1, 39), np.uint8)}, r"shape \(n, 40\)"),
        ({"header": np.zeros((1, 40), np.int32)}, "uint8"),
        ({"bogus": [1]}, "unknown column"),
    ],
)
def test_bad_columns_get_clear_errors(columns, message):
    with pytest.raises(BatchError, match=message):
        PacketBatch.from_columns(**columns)


def test_slicing_masks_and_concat_round_trip():
    batch = small_batch(10)
    parts = batch.split(3)
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert PacketBatch.concat(parts).equals(batch)
    mask = batch.proto == 6
    picked = batch[mask]
    assert len(picked) == int(mask.sum())
    assert np.array_equal(picked.src_ip, batch.src_ip[mask])
    assert batch[-1].equals(batch[9:10])
    assert len(PacketBatch.concat([])) == 0


def test_flow_keys_are_big_endian_13_byte_5_tuples():
    batch = PacketBatch.from_columns(
        src_ip=[parse_ipv4("10.0.0.1")], dst_ip=[parse_ipv4("192.168.1.2")], src_port=[443], dst_port=[51000], proto=[6]
    )
    keys = batch.flow_keys()
    assert keys.shape == (1, FLOW_KEY_BYTES)
    expected = bytes([10, 0, 0, 1, 192, 168, 1, 2, 0x01, 0xBB, 0xC7, 0x38, 6])
    assert keys[0].tobytes() == expected
    assert batch.flow_keys_void()[0].tobytes() == expected
    assert flow_key_bytes(0x0A000001, 0xC0A80102, 443, 51000, 6) == expected
    assert unpack_flow_key(expected) == (0x0A000001, 0xC0A80102, 443, 51000, 6)


def test_ipv4_text_round_trip_and_errors():
    assert format_ipv4(0x0A000001) == "10.0.0.1"
    assert parse_ipv4("255.255.255.255") == 0xFFFFFFFF
    # numpy scalars, and the low 32 bits of anything wider (as the octet-by-octet version did)
    assert format_ipv4(np.uint32(0xC0A80001)) == "192.168.0.1" and format_ipv4(np.int64(0)) == "0.0.0.0"
    assert format_ipv4((1 << 40) | 0x7F000001) == "127.0.0.1" and format_ipv4(-1) == "255.255.255.255"
    for value in np.random.default_rng(0).integers(0, 1 << 32, 1000).tolist():
        assert parse_ipv4(format_ipv4(value)) == value
    for bad in ("1.2.3", "1.2.3.256", "a.b.c.d"):
        with pytest.raises(ValueError):
            parse_ipv4(bad)


def test_columns_lists_every_field_once():
    assert len(set(COLUMNS)) == len(COLUMNS)
    assert set(small_batch().columns()) == set(COLUMNS)


# ---------------------------------------------------------------- both address families in one batch
def test_absent_family_column_means_ipv4_and_blocks_are_zero():
    from telesketch.packets import PacketBatch

    batch = PacketBatch.from_columns(src_ip=[1, 2], dst_ip=[3, 4])
    assert batch.ipv6.tolist() == [0, 0] and not batch.has_ipv6()
    assert batch.src_ip6.shape == (2, 16) and not batch.src_ip6.any() and not batch.dst_ip6.any()


def test_flow_keys37_maps_ipv4_and_carries_ipv6_bytes():
    from telesketch.packets import PacketBatch, parse_ipv6

    v6 = np.frombuffer(parse_ipv6("2001:db8::1") + parse_ipv6("2001:db8::2"), np.uint8).reshape(2, 16)
    batch = PacketBatch.from_columns(
        src_ip=[0x0A000001, 0], dst_ip=[0x0A000002, 0], src_port=[1000, 443], dst_port=[80, 5353],
        proto=[6, 17], ipv6=[0, 1], src_ip6=np.stack([np.zeros(16, np.uint8), v6[0]]),
        dst_ip6=np.stack([np.zeros(16, np.uint8), v6[1]]),
    )
    keys = batch.flow_keys37()
    assert bytes(keys[0]) == (parse_ipv6("::ffff:10.0.0.1") + parse_ipv6("::ffff:10.0.0.2")
                              + (1000).to_bytes(2, "big") + (80).to_bytes(2, "big") + b"\x06")
    assert bytes(keys[1]) == (parse_ipv6("2001:db8::1") + parse_ipv6("2001:db8::2")
                              + (443).to_bytes(2, "big") + (5353).to_bytes(2, "big") + b"\x11")


def test_family_column_refuses_values_other_than_0_and_1():
    from telesketch.packets import BatchError, PacketBatch

    with pytest.raises(BatchError, match="'ipv6'"):
        PacketBatch.from_columns(src_ip=[1], ipv6=[4])
    with pytest.raises(BatchError, match="'src_ip6'.*shape"):
        PacketBatch.from_columns(src_ip=[1], src_ip6=np.zeros((1, 4), np.uint8))


def test_ipv6_text_is_rfc5952():
    from telesketch.packets import format_ipv6, parse_ipv6

    assert format_ipv6(parse_ipv6("2001:0DB8:0000:0000:0000:0000:0000:0001")) == "2001:db8::1"
    assert format_ipv6(parse_ipv6("2001:db8:0:0:1:0:0:1")) == "2001:db8::1:0:0:1"
    assert format_ipv6(parse_ipv6("::ffff:10.0.0.1")) == "::ffff:10.0.0.1"
    with pytest.raises(ValueError, match="not an IPv6 address"):
        parse_ipv6("2001:db8::g")


def mixed_batch(n=8, seed=0):
    """``n`` packets, every other one IPv6 (random addresses, flow labels), valid per the wire rules."""
    from telesketch.packets import PacketBatch

    base = small_batch(n, seed)
    rng = np.random.default_rng(seed + 100)
    v6 = (np.arange(n) % 2).astype(np.uint8)
    cols = base.columns()
    cols["ipv6"] = v6
    cols["src_ip"] = np.where(v6 == 1, 0, base.src_ip).astype(np.uint32)
    cols["dst_ip"] = np.where(v6 == 1, 0, base.dst_ip).astype(np.uint32)
    cols["flow_label"] = np.where(v6 == 1, rng.integers(0, 1 << 20, n), 0).astype(np.uint32)
    for name in ("src_ip6", "dst_ip6"):
        cols[name] = rng.integers(0, 256, (n, 16), dtype=np.uint8) * v6[:, None]
    return PacketBatch.from_columns(**cols)


def test_family_selects_rows_and_only_ipv4_counts_what_it_left_out():
    batch = mixed_batch(9, seed=2)
    v4, skipped = batch.only_ipv4()
    assert skipped == 4 == batch.ipv6_count() and len(v4) == 5 and not v4.has_ipv6()
    assert v4.equals(batch[batch.ipv6 == 0]) and batch.family(6).equals(batch[batch.ipv6 == 1])
    plain = small_batch(6)
    assert plain.family(4) is plain and plain.only_ipv4() == (plain, 0) and len(plain.family(6)) == 0
    with pytest.raises(ValueError, match="4 or 6"):
        batch.family(5)


def test_src_keys16_and_flow_keys37_void_agree_with_flow_keys37():
    batch = mixed_batch(6, seed=3)
    keys = batch.flow_keys37()
    assert np.array_equal(batch.src_keys16(), keys[:, :16])
    assert [k.tobytes() for k in batch.flow_keys37_void()] == [bytes(k) for k in keys]
    assert bytes(batch.src_keys16()[0]) == bytes(10) + b"\xff\xff" + int(batch.src_ip[0]).to_bytes(4, "big")
    assert bytes(batch.src_keys16()[1]) == bytes(batch.src_ip6[1])


def test_format_key_prints_every_key_form():
    from telesketch.packets import flow_key_bytes, format_key, parse_ipv6

    v6 = parse_ipv6("2001:db8::1")
    assert format_key(0x0A000001) == "10.0.0.1" == format_key(b"\x0a\x00\x00\x01")
    assert format_key(v6) == "2001:db8::1"
    assert format_key(flow_key_bytes(0x0A000001, 0x0A000002, 1234, 80, 6)) == "10.0.0.1:1234 > 10.0.0.2:80 proto 6"
    key37 = v6 + parse_ipv6("2001:db8::2") + (443).to_bytes(2, "big") + (5000).to_bytes(2, "big") + b"\x11"
    assert format_key(key37) == "[2001:db8::1]:443 > [2001:db8::2]:5000 proto 17"
    batch = PacketBatch.from_columns(src_ip=[0x0A000001], dst_ip=[0x0A000002], src_port=[1], dst_port=[2], proto=[6])
    assert format_key(bytes(batch.flow_keys37()[0])) == "10.0.0.1:1 > 10.0.0.2:2 proto 6"
    assert format_key(b"\x01\x02") == "0102"


def test_batch_error_is_the_domain_error():
    """One BatchError: packets re-exports errors' class, so the edges map it like any domain error."""
    from telesketch import errors, packets

    assert packets.BatchError is errors.BatchError
    assert issubclass(packets.BatchError, errors.TelesketchError) and issubclass(packets.BatchError, ValueError)
    with pytest.raises(errors.BatchError):
        packets.PacketBatch.from_columns(src_ip=[1, 2], dst_ip=[1])
