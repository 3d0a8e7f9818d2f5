"""The array-at-a-time ``KeyEstimates`` entries (telesketch/service/replies.py) equal the reply
built one ``KeyEstimate`` per row, field for field and byte for byte once serialised."""

import numpy as np
import pytest

from telesketch.packets import V4_MAPPED_PREFIX
from telesketch.presenter import key_bytes, key_family, key_text
from telesketch.service.queries import Answer
from telesketch.service.replies import int_key_entries
from telesketch.service.server import _keys
from telesketch.v1 import service_pb2


def per_row(keys, values, int_keys):
    return service_pb2.KeyEstimates(entries=[
        service_pb2.KeyEstimate(key=key_bytes(k), estimate=float(v), text=key_text(k, int_keys), family=key_family(k, int_keys))
        for k, v in zip(keys, values)])


@pytest.mark.parametrize("int_keys", ["ipv4", "fingerprint"])
def test_int_keys_encode_as_the_per_row_reply(int_keys):
    rng = np.random.default_rng(7)
    keys = [0, 1, 9, 10, 99, 100, 255, 256, 0x0A000001, 0xC0A80101, 0xFFFFFFFF, np.uint32(0x01020304), np.int64(77)]
    keys += [int(k) for k in rng.integers(0, 1 << 32, 500)]
    values = [0.0, -3.0, 1.5, 2.0**40, 1e-9] + [float(v) for v in rng.normal(0, 1e5, len(keys) - 5)]
    built = service_pb2.KeyEstimates.FromString(int_key_entries(keys, values, int_keys))
    expected = per_row(keys, values, int_keys)
    assert built == expected
    assert built.SerializeToString() == expected.SerializeToString()
    assert built.entries[0].text == ("0.0.0.0" if int_keys == "ipv4" else "fp:0x00000000")


def test_other_keys_are_left_to_the_per_row_build():
    assert int_key_entries([b"\x0a\x00\x00\x01", 5], [1.0, 2.0]) is None  # any byte key: None
    assert int_key_entries([1 << 32], [1.0]) is None  # wider than 4 bytes (key_bytes would refuse it)
    assert int_key_entries([-1], [1.0]) is None
    assert service_pb2.KeyEstimates.FromString(int_key_entries([], [])) == service_pb2.KeyEstimates()


def test_grpc_key_replies_take_the_presenters_family():
    """Every key form a gRPC ``KeyEstimates`` reply carries gets the presenter's family (as HTTP,
    the CLI and the report give it): a v4-mapped 16-byte address is IPv4, as is a 37-byte key of
    two v4-mapped ends. (server.py decided this by itself and called the 16-byte v4-mapped key 6.)"""
    mapped = V4_MAPPED_PREFIX + bytes([10, 0, 0, 1])
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    tail = bytes([4, 210, 0, 80, 6])
    keys = [bytes([10, 0, 0, 1]), bytes([10, 0, 0, 1, 10, 0, 0, 2]) + tail, mapped, v6, mapped + mapped + tail,
            v6 + mapped + tail]
    answer = Answer(rows=[(k, float(i)) for i, k in enumerate(keys)], epochs=[0], packets=1, sketch="s", combine="sum")
    reply = _keys(answer)
    assert [e.family for e in reply.entries] == [key_family(k) for k in keys] == [4, 4, 4, 6, 4, 6]
    assert [e.text for e in reply.entries] == [key_text(k) for k in keys]
