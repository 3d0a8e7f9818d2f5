"""The protobuf wire format: round trip, validation of hostile messages, generated code freshness."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from telesketch import wire
from telesketch.packets import BatchError, PacketBatch
from telesketch.v1 import batch_pb2
from test_packets import small_batch

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_through_serialized_bytes_is_exact():
    batch = small_batch(100, seed=3)
    message = batch.to_message(sender_id="collector-1", sequence=42)
    decoded_message = batch_pb2.PacketBatch.FromString(message.SerializeToString())
    assert decoded_message.sender_id == "collector-1" and decoded_message.sequence == 42
    assert PacketBatch.from_message(decoded_message).equals(batch)


def test_empty_batch_round_trips():
    assert len(PacketBatch.from_message(PacketBatch.empty().to_message())) == 0


def _message(**overrides):
    message = small_batch(4).to_message()
    for name, value in overrides.items():
        setattr(message, name, value)
    return message


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"schema_version": 2}, "schema_version 2"),
        ({"schema_version": 0}, "schema_version 0"),
        ({"src_port": b"\x00" * 7}, "not a multiple of its 2-byte"),
        ({"dst_ip": b"\x00" * 12}, "3 values but count is 4"),
        ({"count": 5}, "count is 5"),
        ({"src_ip": b""}, "'src_ip' is missing"),
        ({"header": b"\x00" * 41}, "expected count"),
        ({"hdr_len": b"\x29" * 4}, "above 40"),
    ],
)
def test_malformed_messages_raise_precise_errors(overrides, error):
    with pytest.raises(BatchError, match=error):
        wire.message_to_batch(_message(**overrides))


def test_optional_columns_may_be_absent():
    message = _message(ttl=b"", header=b"", tcp_seq=b"")
    batch = wire.message_to_batch(message)
    assert not batch.ttl.any() and not batch.header.any() and len(batch) == 4


def _serialized_descriptor(path: Path) -> str:
    match = re.search(r"AddSerializedFile\((b'.*?')\)", path.read_text(), re.S)
    assert match, f"no serialized descriptor in {path}"
    return match.group(1)


def test_generated_code_matches_the_proto_sources(tmp_path):
    """Fails when a .proto changed without `make proto` regenerating the committed modules."""
    pytest.importorskip("grpc_tools")
    protos = sorted((REPO / "proto" / "telesketch" / "v1").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"--python_out={tmp_path}"]
        + [str(p) for p in protos],
        check=True,
    )
    for proto in protos:
        module = f"{proto.stem}_pb2.py"
        fresh = tmp_path / "telesketch" / "v1" / module
        committed = REPO / "telesketch" / "v1" / module
        assert _serialized_descriptor(committed) == _serialized_descriptor(fresh), f"{module} is stale: run `make proto`"
