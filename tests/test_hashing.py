"""The shared hash family: one definition, three fast entry points that agree with it."""
import numpy as np
import pytest

from telesketch import hashing

from test_packets import small_batch


def test_vectorised_entry_points_agree_with_the_readable_definition():
    batch = small_batch(50, seed=1)
    for seed in (0, 1, 2**63 + 5):
        by_tuple = hashing.hash_5tuple(batch, seed)
        by_rows = hashing.hash_keys(batch.flow_keys(), seed)
        readable = [hashing.hash_bytes(bytes(row), seed) for row in batch.flow_keys()]
        assert by_tuple.dtype == np.uint64
        assert by_tuple.tolist() == by_rows.tolist() == readable
        by_u32 = hashing.hash_u32(batch.src_ip, seed)
        assert by_u32.tolist() == [hashing.hash_bytes(int(a).to_bytes(4, "big"), seed) for a in batch.src_ip]


def test_odd_key_lengths_hash_like_their_byte_strings():
    rows = np.random.default_rng(0).integers(0, 256, (20, 9), dtype=np.uint8)
    assert hashing.hash_keys(rows, 3).tolist() == [hashing.hash_bytes(bytes(r), 3) for r in rows]


def test_seeds_give_different_functions_and_bits_are_balanced():
    keys = np.arange(200_000, dtype=np.uint32)
    a, b = hashing.hash_u32(keys, 1), hashing.hash_u32(keys, 2)
    assert np.count_nonzero(a == b) == 0
    bits = ((a[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 0.01), bits  # sequential keys still give fair coin bits
    buckets = np.bincount((a % np.uint64(1000)).astype(np.int64), minlength=1000)
    assert buckets.min() > 120 and buckets.max() < 290  # ~200 +- 5 sigma


def test_length_is_part_of_the_key():
    assert hashing.hash_bytes(b"\x01", 0) != hashing.hash_bytes(b"\x01\x00", 0)


def test_bad_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        hashing.hash_u32(np.arange(3, dtype=np.uint32), -1)
