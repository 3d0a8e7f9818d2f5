"""The protobuf wire format: round trip, validation of hostile messages, generated code freshness."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from telesketch import wire
from telesketch.packets import BatchError, PacketBatch
from telesketch.v1 import batch_pb2, service_pb2
from test_packets import mixed_batch, small_batch

REPO = Path(__file__).resolve().parents[1]


def _through_bytes(message):
    return batch_pb2.PacketBatch.FromString(message.SerializeToString())


@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_through_serialized_bytes_is_exact(version):
    batch = small_batch(100, seed=3)
    message = wire.batch_to_message(batch, sender_id="collector-1", sequence=42, schema_version=version)
    decoded_message = _through_bytes(message)
    assert decoded_message.sender_id == "collector-1" and decoded_message.sequence == 42
    assert decoded_message.schema_version == version
    assert wire.message_to_batch(decoded_message).equals(batch)


def test_mixed_families_round_trip_in_schema_2():
    batch = mixed_batch(50, seed=4)
    message = wire.batch_to_message(batch, sender_id="c", sequence=1)
    assert message.schema_version == 2 == wire.SCHEMA_VERSION
    decoded = wire.message_to_batch(_through_bytes(message))
    assert decoded.equals(batch) and decoded.ipv6_count() == 25
    assert np.array_equal(decoded.flow_keys37(), batch.flow_keys37())


def test_ipv4_only_batch_in_schema_2_costs_the_bytes_of_schema_1():
    batch = small_batch(64, seed=5)
    v1 = wire.batch_to_message(batch, schema_version=1).SerializeToString()
    v2 = wire.batch_to_message(batch).SerializeToString()
    assert len(v2) == len(v1)


def test_version_1_message_from_todays_clients_is_read_as_ipv4():
    """A message built field by field as a schema-1 client does (no IPv6 fields at all)."""
    batch = small_batch(10, seed=6)
    old = batch_pb2.PacketBatch(schema_version=1, count=10, header=batch.header.tobytes(),
                                **{name: getattr(batch, name).tobytes() for name in wire.V1_COLUMNS})
    decoded = wire.message_to_batch(_through_bytes(old))
    assert decoded.equals(batch) and not decoded.has_ipv6() and not decoded.src_ip6.any()


def test_schema_1_cannot_carry_ipv6_rows():
    with pytest.raises(BatchError, match="schema version 2"):
        wire.batch_to_message(mixed_batch(4), schema_version=1)
    with pytest.raises(BatchError, match="schema_version 3"):
        wire.batch_to_message(small_batch(4), schema_version=3)


@pytest.mark.parametrize("batch, kwargs", [
    (small_batch(100, seed=3), {}),
    (small_batch(100, seed=3), {"schema_version": 1, "sequence": 300}),
    (small_batch(1, seed=2), {"sender_id": "collector-\u00e9", "sequence": (1 << 64) - 1}),
    (mixed_batch(50, seed=4), {"sender_id": "c", "sequence": 127}),
    (mixed_batch(50, seed=4).split(7)[2], {"sequence": 128}),
    (PacketBatch.empty(), {}),
    (PacketBatch.empty(), {"sender_id": "e", "sequence": 1, "schema_version": 1}),
])
def test_batch_to_bytes_is_the_serialized_message_less_its_zero_columns(batch, kwargs):
    """The client sends ``batch_to_bytes`` in place of the message: the message's bytes with the
    all-zero optional columns left out, which decodes to the same batch."""
    raw = wire.batch_to_bytes(batch, **kwargs)
    message = wire.batch_to_message(batch, **kwargs)
    for name in wire._OPTIONAL_COLUMNS:
        if not any(getattr(message, name)):
            message.ClearField(name)
    assert raw == message.SerializeToString()
    decoded = wire.message_to_batch(batch_pb2.PacketBatch.FromString(raw))
    assert decoded.equals(batch) and decoded.equals(wire.message_to_batch(_through_bytes(message)))


def test_batch_to_bytes_leaves_out_only_all_zero_optional_columns():
    batch = small_batch(16, seed=1)
    header = np.zeros_like(batch.header)
    zero_header = PacketBatch(**{**{n: getattr(batch, n) for n in batch.__dataclass_fields__},
                                 "header": header, "hdr_len": np.zeros(16, np.uint8),
                                 "proto": np.zeros(16, np.uint8)})
    sent = batch_pb2.PacketBatch.FromString(wire.batch_to_bytes(zero_header))
    assert not sent.header and not sent.hdr_len
    assert len(sent.proto) == 16  # required columns travel even when zero
    header[3, 39] = 1  # one non-zero byte: the whole block travels
    sent = batch_pb2.PacketBatch.FromString(wire.batch_to_bytes(zero_header))
    assert len(sent.header) == 16 * 40 and wire.message_to_batch(sent).equals(zero_header)


def test_batch_to_bytes_of_non_contiguous_columns():
    batch = small_batch(64, seed=8)
    strided = PacketBatch(**{name: getattr(batch, name)[::2] for name in batch.__dataclass_fields__})
    assert not strided.ts_ns.flags.c_contiguous
    raw = wire.batch_to_bytes(strided, sequence=3)
    assert wire.message_to_batch(batch_pb2.PacketBatch.FromString(raw)).equals(strided)


def test_batch_to_bytes_refuses_what_batch_to_message_refuses():
    with pytest.raises(BatchError, match="schema version 2"):
        wire.batch_to_bytes(mixed_batch(4), schema_version=1)
    with pytest.raises(BatchError, match="schema_version 3"):
        wire.batch_to_bytes(small_batch(4), schema_version=3)


def test_empty_batch_round_trips():
    assert len(wire.message_to_batch(wire.batch_to_message(PacketBatch.empty()))) == 0


def test_decoded_batch_is_built_without_a_second_validation_pass(monkeypatch):
    """wire validates once; PacketBatch.from_columns (the validating constructor) is not called."""
    message = _through_bytes(wire.batch_to_message(mixed_batch(8)))

    def refuse(**columns):
        raise AssertionError("from_columns called on an already validated wire batch")

    monkeypatch.setattr(PacketBatch, "from_columns", staticmethod(refuse))
    assert len(wire.message_to_batch(message)) == 8


def _message(**overrides):
    message = wire.batch_to_message(small_batch(4))
    for name, value in overrides.items():
        setattr(message, name, value)
    return message


def _v6_message(**overrides):
    message = wire.batch_to_message(mixed_batch(4))
    for name, value in overrides.items():
        setattr(message, name, value)
    return message


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"schema_version": 3}, "schema_version 3"),
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


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"src_ip6": b"\x00" * 63}, "'src_ip6' has 63 bytes, expected count \\* 16 = 64"),
        ({"dst_ip6": b"\x00" * 65}, "'dst_ip6' has 65 bytes"),
        ({"ipv6": b"\x00\x01\x02\x01"}, "'ipv6' must hold 0 \\(IPv4\\) or 1 \\(IPv6\\); row 2 holds 2"),
        ({"ipv6": b"\x00\x01\x00"}, "'ipv6' holds 3 values but count is 4"),
        ({"flow_label": np.full(4, 1 << 20, "<u4").tobytes()}, "above 1048575"),
        ({"src_ip": np.full(4, 7, "<u4").tobytes()}, "'src_ip' must be 0 on IPv6 rows"),
        ({"dst_ip": np.full(4, 7, "<u4").tobytes()}, "'dst_ip' must be 0 on IPv6 rows"),
        ({"src_ip6": b"\x01" * 64}, "'src_ip6' must be zero on IPv4 rows"),
        ({"flow_label": np.full(4, 1, "<u4").tobytes()}, "'flow_label' must be zero on IPv4 rows"),
        ({"ipv6": b""}, "'src_ip6' is non-zero but no row is IPv6"),
        ({"schema_version": 1}, "schema_version 1 message carries version-2 column"),
    ],
)
def test_malformed_version_2_messages_raise_precise_errors(overrides, error):
    with pytest.raises(BatchError, match=error):
        wire.message_to_batch(_v6_message(**overrides))


def test_ack_round_trips_through_its_message():
    ack = wire.Ack("c", 7, False, 10, 9, 1, 42)
    message = service_pb2.Ack.FromString(wire.ack_to_message(ack).SerializeToString())
    assert wire.ack_from_message(message) == ack


def test_optional_columns_may_be_absent():
    message = _message(ttl=b"", header=b"", tcp_seq=b"")
    batch = wire.message_to_batch(message)
    assert not batch.ttl.any() and not batch.header.any() and len(batch) == 4


def test_ipv4_only_message_decodes_without_fresh_memory_for_the_columns_it_left_out():
    """Issue 18's no-sketch ingest row: an IPv4-only message leaves out the IPv6 columns (and here
    the header), and decoding must not allocate zeros for them on every batch (32+ bytes a packet
    of fresh memory, page faults included, made the no-sketch server 0.85x of 8b8d87d). Measured with
    tracemalloc (numpy reports its data allocations there) on the second decode of the same shape."""
    import tracemalloc

    count = 65536
    message = _through_bytes(wire.batch_to_message(small_batch(count, seed=9), schema_version=1))
    message.ClearField("header")
    first = wire.message_to_batch(message)
    tracemalloc.start()
    try:
        second = wire.message_to_batch(message)
        allocated = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # protobuf hands each sent column over as a new bytes object (the columns' own bytes); beyond
    # those, allow ~1 byte a packet (the IPv6 blocks alone are 2 MiB of this batch, the header 2.5 MiB)
    sent = sum(len(getattr(message, name)) for name in wire.V1_COLUMNS)
    assert allocated < sent + count, f"decoding allocated {allocated:,} bytes for {sent:,} bytes of columns"
    for batch in (first, second):
        assert not batch.has_ipv6() and not batch.header.any() and len(batch) == count
        for name in ("ipv6", "flow_label", "src_ip6", "dst_ip6", "header"):
            column = getattr(batch, name)
            assert not column.flags.writeable and column.flags.c_contiguous and not column.any(), name
        assert batch.src_ip6.shape == (count, 16) and batch.header.shape == (count, 40)
        assert batch.only_ipv4()[0] is batch and np.array_equal(batch.flow_keys37()[:, :10], np.zeros((count, 10)))


def test_absent_columns_fit_each_count_share_one_buffer_and_sent_columns_are_the_senders():
    """Absent columns match each batch's own count (any count: one shared buffer, so varying batch
    sizes do not each hold their own zeros), and a column that was sent is the sender's."""
    plain = {}
    for count in (1, 7, 7, 300, 5000, 3):
        mixed = mixed_batch(count + 1, seed=count)[1:]
        batch = wire.message_to_batch(_through_bytes(wire.batch_to_message(mixed)))
        assert batch.equals(mixed) and batch.has_ipv6() and batch.src_ip6.shape == (count, 16)
        plain[count] = wire.message_to_batch(_through_bytes(wire.batch_to_message(small_batch(count, seed=count))))
        assert plain[count].equals(small_batch(count, seed=count)) and not plain[count].has_ipv6()
        assert plain[count].src_ip6.shape == (count, 16) and plain[count].flow_label.shape == (count,)
    assert np.shares_memory(plain[1].dst_ip6, plain[300].dst_ip6) and np.shares_memory(plain[3].flow_label, plain[5000].flow_label)
    assert not any(b.src_ip6.any() or b.ipv6.any() for b in plain.values())


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


def test_both_schema_versions_through_a_real_server(tmp_path):
    """A v2 client's mixed batch and a v1 client's IPv4 batch on one loopback server: the exact kind
    counts the IPv6 flows and sources exactly, the IPv4-only sketch is fed the IPv4 rows only."""
    from telesketch.client import Client
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from telesketch.sketches import exact
    from test_exact_ipv6 import skewed_mixed_batch

    epoch_ns = 1_700_000_000 * 10**9
    mixed = skewed_mixed_batch(400, seed=11)
    mixed = PacketBatch.from_columns(**{**mixed.columns(), "ts_ns": mixed.ts_ns + np.uint64(epoch_ns)})
    older = small_batch(50, seed=12)
    older = PacketBatch.from_columns(**{**older.columns(), "ts_ns": older.ts_ns + np.uint64(epoch_ns + 10)})
    cfg = ServiceConfig(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                        epoch_seconds=1.0, sketches={"exact": {"kind": "exact", "key": "src_ip", "phi": 0.05},
                                                     "hh": {"kind": "llmsketch", "task": "heavy_hitters", "estimator": "auto", "memory_bytes": 64 * 1024}})
    svc = ServiceThread(cfg).start()
    try:
        with Client(f"127.0.0.1:{svc.grpc_port}", sender_id="v2") as new, \
                Client(f"127.0.0.1:{svc.grpc_port}", sender_id="v1", schema_version=1) as old:
            with pytest.raises(BatchError, match="schema version 2"):
                old.push_one(mixed)  # refused before anything is sent
            ack = new.push_one(mixed)
            assert (ack.packets, ack.applied_packets, ack.duplicate) == (400, 400, False)
            assert old.push_one(older).applied_packets == 50
            both = PacketBatch.concat([mixed, older])
            want = exact.mixed_heavy_hitters(both, "src_ip", phi=0.05)
            got = dict(new.heavy_hitters(epoch=1_700_000_000, sketch="exact"))
            assert got == want and any(isinstance(k, bytes) and len(k) == 16 for k in got)
        assert svc.service.sketchset.ipv6_withheld == {"hh": mixed.ipv6_count()}
    finally:
        svc.stop()


def test_all_zero_sees_the_last_byte_of_columns_past_the_zero_buffer():
    big = np.zeros((3 << 20) // 40 + 1, dtype=[("b", "u1", 40)])["b"]  # > 1 MiB: the buffer grows
    big = np.ascontiguousarray(big)
    assert wire._all_zero(big) and len(wire._ZERO_BYTES) >= big.nbytes
    big[-1, -1] = 1
    assert not wire._all_zero(big)
    assert not wire._all_zero(np.array([0, 0, 256], np.uint16)) and wire._all_zero(np.zeros(3, np.uint32))
