from telesketch.v1 import batch_pb2 as _batch_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddressFamilies(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAMILIES_IPV4: _ClassVar[AddressFamilies]
    FAMILIES_BOTH: _ClassVar[AddressFamilies]
    FAMILIES_IPV6: _ClassVar[AddressFamilies]
FAMILIES_IPV4: AddressFamilies
FAMILIES_BOTH: AddressFamilies
FAMILIES_IPV6: AddressFamilies

class Ack(_message.Message):
    __slots__ = ("sender_id", "sequence", "duplicate", "packets", "applied_packets", "late_packets", "epoch")
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    LATE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    sender_id: str
    sequence: int
    duplicate: bool
    packets: int
    applied_packets: int
    late_packets: int
    epoch: int
    def __init__(self, sender_id: _Optional[str] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ..., packets: _Optional[int] = ..., applied_packets: _Optional[int] = ..., late_packets: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class PushSummary(_message.Message):
    __slots__ = ("batches", "duplicate_batches", "packets", "applied_packets", "late_packets", "last_sequence", "epoch")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    LATE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    batches: int
    duplicate_batches: int
    packets: int
    applied_packets: int
    late_packets: int
    last_sequence: int
    epoch: int
    def __init__(self, batches: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., packets: _Optional[int] = ..., applied_packets: _Optional[int] = ..., late_packets: _Optional[int] = ..., last_sequence: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("sender_id",)
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    sender_id: str
    def __init__(self, sender_id: _Optional[str] = ...) -> None: ...

class ResumeReply(_message.Message):
    __slots__ = ("last_sequence",)
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    last_sequence: int
    def __init__(self, last_sequence: _Optional[int] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("epoch", "last", "closed_only")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    CLOSED_ONLY_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    last: int
    closed_only: bool
    def __init__(self, epoch: _Optional[int] = ..., last: _Optional[int] = ..., closed_only: _Optional[bool] = ...) -> None: ...

class WindowInfo(_message.Message):
    __slots__ = ("epochs", "packets", "sketch", "combine", "partial", "unit")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    COMBINE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    epochs: _containers.RepeatedScalarFieldContainer[int]
    packets: int
    sketch: str
    combine: str
    partial: bool
    unit: str
    def __init__(self, epochs: _Optional[_Iterable[int]] = ..., packets: _Optional[int] = ..., sketch: _Optional[str] = ..., combine: _Optional[str] = ..., partial: _Optional[bool] = ..., unit: _Optional[str] = ...) -> None: ...

class HeavyHittersRequest(_message.Message):
    __slots__ = ("window", "sketch", "phi", "threshold")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    phi: float
    threshold: float
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., phi: _Optional[float] = ..., threshold: _Optional[float] = ...) -> None: ...

class HeavyChangersRequest(_message.Message):
    __slots__ = ("window", "sketch", "phi", "threshold")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    phi: float
    threshold: float
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., phi: _Optional[float] = ..., threshold: _Optional[float] = ...) -> None: ...

class HHHRequest(_message.Message):
    __slots__ = ("window", "sketch", "phi", "threshold", "families")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    phi: float
    threshold: float
    families: AddressFamilies
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., phi: _Optional[float] = ..., threshold: _Optional[float] = ..., families: _Optional[_Union[AddressFamilies, str]] = ...) -> None: ...

class FlowGapsRequest(_message.Message):
    __slots__ = ("window", "sketch", "limit")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    limit: int
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class FlowSizeRequest(_message.Message):
    __slots__ = ("window", "sketch", "keys")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TopFlowsRequest(_message.Message):
    __slots__ = ("window", "sketch", "k")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    window: Window
    sketch: str
    k: int
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., sketch: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class KeyEstimate(_message.Message):
    __slots__ = ("key", "estimate", "text", "family")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    estimate: float
    text: str
    family: int
    def __init__(self, key: _Optional[bytes] = ..., estimate: _Optional[float] = ..., text: _Optional[str] = ..., family: _Optional[int] = ...) -> None: ...

class KeyEstimates(_message.Message):
    __slots__ = ("entries", "window")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[KeyEstimate]
    window: WindowInfo
    def __init__(self, entries: _Optional[_Iterable[_Union[KeyEstimate, _Mapping]]] = ..., window: _Optional[_Union[WindowInfo, _Mapping]] = ...) -> None: ...

class PrefixEstimate(_message.Message):
    __slots__ = ("prefix", "length", "estimate", "text", "family", "prefix_bytes", "undiscounted_estimate")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNDISCOUNTED_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    prefix: int
    length: int
    estimate: float
    text: str
    family: int
    prefix_bytes: bytes
    undiscounted_estimate: float
    def __init__(self, prefix: _Optional[int] = ..., length: _Optional[int] = ..., estimate: _Optional[float] = ..., text: _Optional[str] = ..., family: _Optional[int] = ..., prefix_bytes: _Optional[bytes] = ..., undiscounted_estimate: _Optional[float] = ...) -> None: ...

class PrefixEstimates(_message.Message):
    __slots__ = ("entries", "window")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[PrefixEstimate]
    window: WindowInfo
    def __init__(self, entries: _Optional[_Iterable[_Union[PrefixEstimate, _Mapping]]] = ..., window: _Optional[_Union[WindowInfo, _Mapping]] = ...) -> None: ...

class GapEvent(_message.Message):
    __slots__ = ("ts_ns", "key", "jump", "epoch", "text", "family")
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    JUMP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ts_ns: int
    key: bytes
    jump: int
    epoch: int
    text: str
    family: int
    def __init__(self, ts_ns: _Optional[int] = ..., key: _Optional[bytes] = ..., jump: _Optional[int] = ..., epoch: _Optional[int] = ..., text: _Optional[str] = ..., family: _Optional[int] = ...) -> None: ...

class GapEvents(_message.Message):
    __slots__ = ("events", "window")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[GapEvent]
    window: WindowInfo
    def __init__(self, events: _Optional[_Iterable[_Union[GapEvent, _Mapping]]] = ..., window: _Optional[_Union[WindowInfo, _Mapping]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EpochInfo(_message.Message):
    __slots__ = ("epoch", "start_ns", "end_ns", "packets", "batches", "closed")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    start_ns: int
    end_ns: int
    packets: int
    batches: int
    closed: bool
    def __init__(self, epoch: _Optional[int] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., packets: _Optional[int] = ..., batches: _Optional[int] = ..., closed: _Optional[bool] = ...) -> None: ...

class SketchInfo(_message.Message):
    __slots__ = ("name", "kind", "active", "note", "memory_bytes", "queries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    active: bool
    note: str
    memory_bytes: int
    queries: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., active: _Optional[bool] = ..., note: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., queries: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("packets", "batches", "late_packets", "duplicate_batches", "rejected_batches", "queue_depth", "queue_capacity", "open_epoch", "has_open_epoch", "epoch_seconds", "epochs", "sketches", "notes")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LATE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    OPEN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HAS_OPEN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SKETCHES_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    packets: int
    batches: int
    late_packets: int
    duplicate_batches: int
    rejected_batches: int
    queue_depth: int
    queue_capacity: int
    open_epoch: int
    has_open_epoch: bool
    epoch_seconds: float
    epochs: _containers.RepeatedCompositeFieldContainer[EpochInfo]
    sketches: _containers.RepeatedCompositeFieldContainer[SketchInfo]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, packets: _Optional[int] = ..., batches: _Optional[int] = ..., late_packets: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., rejected_batches: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., open_epoch: _Optional[int] = ..., has_open_epoch: _Optional[bool] = ..., epoch_seconds: _Optional[float] = ..., epochs: _Optional[_Iterable[_Union[EpochInfo, _Mapping]]] = ..., sketches: _Optional[_Iterable[_Union[SketchInfo, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class RotateEpochRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateEpochReply(_message.Message):
    __slots__ = ("closed", "closed_epoch", "open_epoch")
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    closed: bool
    closed_epoch: int
    open_epoch: int
    def __init__(self, closed: _Optional[bool] = ..., closed_epoch: _Optional[int] = ..., open_epoch: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotReply(_message.Message):
    __slots__ = ("files", "epoch")
    FILES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[str]
    epoch: int
    def __init__(self, files: _Optional[_Iterable[str]] = ..., epoch: _Optional[int] = ...) -> None: ...
