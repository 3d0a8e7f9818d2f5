from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PacketBatch(_message.Message):
    __slots__ = ("schema_version", "sender_id", "sequence", "count", "ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "length", "ip_id", "ttl", "tos", "tcp_flags", "tcp_window", "tcp_seq", "hdr_len", "header", "ipv6", "flow_label", "src_ip6", "dst_ip6")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    SRC_IP_FIELD_NUMBER: _ClassVar[int]
    DST_IP_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    IP_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    TOS_FIELD_NUMBER: _ClassVar[int]
    TCP_FLAGS_FIELD_NUMBER: _ClassVar[int]
    TCP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    TCP_SEQ_FIELD_NUMBER: _ClassVar[int]
    HDR_LEN_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    FLOW_LABEL_FIELD_NUMBER: _ClassVar[int]
    SRC_IP6_FIELD_NUMBER: _ClassVar[int]
    DST_IP6_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    sender_id: str
    sequence: int
    count: int
    ts_ns: bytes
    src_ip: bytes
    dst_ip: bytes
    src_port: bytes
    dst_port: bytes
    proto: bytes
    length: bytes
    ip_id: bytes
    ttl: bytes
    tos: bytes
    tcp_flags: bytes
    tcp_window: bytes
    tcp_seq: bytes
    hdr_len: bytes
    header: bytes
    ipv6: bytes
    flow_label: bytes
    src_ip6: bytes
    dst_ip6: bytes
    def __init__(self, schema_version: _Optional[int] = ..., sender_id: _Optional[str] = ..., sequence: _Optional[int] = ..., count: _Optional[int] = ..., ts_ns: _Optional[bytes] = ..., src_ip: _Optional[bytes] = ..., dst_ip: _Optional[bytes] = ..., src_port: _Optional[bytes] = ..., dst_port: _Optional[bytes] = ..., proto: _Optional[bytes] = ..., length: _Optional[bytes] = ..., ip_id: _Optional[bytes] = ..., ttl: _Optional[bytes] = ..., tos: _Optional[bytes] = ..., tcp_flags: _Optional[bytes] = ..., tcp_window: _Optional[bytes] = ..., tcp_seq: _Optional[bytes] = ..., hdr_len: _Optional[bytes] = ..., header: _Optional[bytes] = ..., ipv6: _Optional[bytes] = ..., flow_label: _Optional[bytes] = ..., src_ip6: _Optional[bytes] = ..., dst_ip6: _Optional[bytes] = ...) -> None: ...
