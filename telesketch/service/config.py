"""Service configuration: embedded defaults, a TOML or JSON file, then command-line overrides.

``telesketch serve`` with no file and no flags starts with :data:`DEFAULTS` (loopback ports, the
four paper sketches with their papers' defaults, 10 s epochs, ``./telesketch-data``). A file names
only what it changes::

    [server]
    grpc_address = "0.0.0.0:50051"
    epoch_seconds = 5

    [sketches.hh]                 # a sketch instance called "hh"
    kind = "hiddensketch"         # see telesketch.service.sketchset.KINDS
    memory_bytes = 56320
    device = "gpu"                # optional: "cpu" or "gpu" (default: [server] device)

``[sketches]`` in a file replaces the default set as a whole (so a file can configure fewer).
"""
from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from telesketch.errors import ConfigurationError
from telesketch.kinds_config import BYTE_WEIGHTED_KINDS, kind_config

#: Default sketch set: the four paper sketches with the papers' defaults (skipped when not built).
DEFAULT_SKETCHES: dict[str, dict[str, Any]] = {
    "gaps": {"kind": "gapfilter_ao", "memory_bytes": 16 * 1024},
    "hh": {"kind": "hiddensketch", "memory_bytes": 56320, "phi": 1e-4},
    "hhh": {"kind": "residualsketch", "mode": "byte", "memory_bytes": 32 * 1024, "phi": 1e-3,
            "expected_packets": 2_500_000},
    # "auto": the shipped numpy trees (they beat the LM on real captures, issue #19; "lm" picks it);
    # keep_keys: top flows print as 5-tuples, not fingerprints (+130 KiB, charged: llmsketch.py)
    "flows": {"kind": "llmsketch", "memory_bytes": 400 * 1024, "task": "flow_size", "estimator": "auto",
              "keep_keys": True},
}


#: What a sketch counts (its ``weight`` key): every packet as 1, or its length in bytes
#: (``telesketch.sketches.cocosketch.WEIGHTS``; thresholds and answers are then bytes).
WEIGHTS = ("packets", "bytes")
# Kinds that take ``weight = "bytes"`` (BYTE_WEIGHTED_KINDS, imported above) and the other per-kind rules
# (keys a sharded kind refuses, parameter values that count packets only) are data in telesketch.kinds_config.


#: Where a sketch runs (``device`` in ``[server]`` and in each ``[sketches.NAME]``).
DEVICES = ("cpu", "gpu")


#: A configuration file or value is unusable; the message names the key.
ConfigError = ConfigurationError


@dataclass
class ServiceConfig:
    """Everything ``telesketch serve`` needs. Units are in the names (seconds, bytes, packets)."""

    grpc_address: str = "127.0.0.1:50051"   #: host:port for gRPC (port 0: pick a free one)
    http_address: str = "127.0.0.1:9108"    #: host:port for /metrics and /api/v1 ("" disables)
    data_dir: str = "telesketch-data"       #: closed-epoch snapshots, open-epoch checkpoint, WAL
    epoch_seconds: float = 10.0             #: tumbling epoch length, by packet timestamp
    keep_epochs: int = 6                    #: closed epochs kept (memory and disk)
    queue_batches: int = 8                  #: batches admitted but not yet applied (backpressure)
    coalesce_packets: int = 65536           #: the worker applies the batches already queued behind one
                                            #: another as one group while their packets add up to at most this
                                            #: many (one pass through the sketch threads, one WAL fsync; the
                                            #: same states, answers and acks: only when every sketch is
                                            #: batch_invariant); 0 or 1: each batch on its own
    max_message_bytes: int = 64 << 20       #: gRPC receive limit; larger: RESOURCE_EXHAUSTED
    max_batch_packets: int = 1 << 20        #: packets per batch; more: RESOURCE_EXHAUSTED
    max_inflight_bytes: int = 256 << 20     #: batch bytes held at once by all ingest RPCs (received, queued,
                                            #: being applied); a batch that does not fit: RESOURCE_EXHAUSTED
                                            #: "busy", retried by the client (service/budget.py)
    wal: bool = True                        #: log each batch before applying and acking it (restart loses nothing)
    durability: str = "every-batch"         #: log fsync: "none", "interval" or "every-batch" (see epochs.DURABILITY_MODES)
    fsync_interval_seconds: float = 1.0     #: with durability = "interval": fsync at most this long after a write
    wal_fsync: bool = False                 #: older spelling of durability = "every-batch"
    recover: bool = False                   #: start from a damaged data directory, logging every loss
    max_future_skew_seconds: float = 300.0  #: packets stamped further ahead of the server clock: batch refused
    max_epochs_per_batch: int = 256         #: a batch spanning more epochs is refused
    max_sequence_jump: int = 1_000_000      #: a sender's sequence may run at most this far past its last one
    sender_ttl_seconds: float = 7 * 86400.0  #: a sender idle this long leaves the sequence table (0 = never)
    query_share: float = 0.25               #: queries run back to back use at most this share of wall time (a
                                            #: query waits when over it; 1.0 = no pacing): ingest keeps the rest
    token: str = ""                         #: bearer token required on every RPC except health ("" = none)
    admin_token: str = ""                   #: token for Admin calls ("" = Admin only from loopback peers)
    tls_cert: str = ""                      #: PEM certificate chain; with tls_key enables TLS
    tls_key: str = ""
    shards: int = 1                         #: >1: the open epoch's sketches on this many Ray actors
    ray_address: str = ""                   #: Ray cluster to join with shards > 1 ("" = start a local one)
    sketch_threads: int = 0                 #: threads applying a batch to the sketches (0 = the cores, 1 = serial)
    device: str = "cpu"                     #: where sketches with a GPU twin run: "cpu" or "gpu" (a sketch's own
                                            #: ``device`` key wins); "gpu" without a usable GPU is an error
    sketches: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_SKETCHES))

    def validate(self) -> "ServiceConfig":
        """Raise :class:`ConfigError` naming the first bad value; returns self."""
        if not self.epoch_seconds > 0:
            raise ConfigError(f"epoch_seconds must be positive, got {self.epoch_seconds}")
        for name in ("keep_epochs", "queue_batches", "max_message_bytes", "max_batch_packets", "shards",
                     "max_epochs_per_batch", "max_sequence_jump", "max_inflight_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.coalesce_packets, bool) or not isinstance(self.coalesce_packets, int) or self.coalesce_packets < 0:
            raise ConfigError(f"coalesce_packets must be a non-negative integer (packets; 0 or 1 = apply every batch "
                              f"on its own), got {self.coalesce_packets!r}")
        if isinstance(self.sketch_threads, bool) or not isinstance(self.sketch_threads, int) or self.sketch_threads < 0:
            raise ConfigError(f"sketch_threads must be a non-negative integer (0 = the available cores), "
                              f"got {self.sketch_threads!r}")

        if self.max_inflight_bytes < self.max_message_bytes:
            raise ConfigError(f"max_inflight_bytes ({self.max_inflight_bytes:,}) must be at least max_message_bytes "
                              f"({self.max_message_bytes:,}), or a batch of the largest accepted size could never "
                              f"be admitted")
        for name in ("fsync_interval_seconds", "max_future_skew_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.query_share <= 1.0:
            raise ConfigError(f"query_share must be in (0, 1] (1.0: queries are not paced), got {self.query_share}")
        if not self.sender_ttl_seconds >= 0:
            raise ConfigError(f"sender_ttl_seconds must be >= 0, got {self.sender_ttl_seconds}")
        from telesketch.service.epochs import DURABILITY_MODES

        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}")
        if self.admin_token and self.admin_token == self.token:
            raise ConfigError("admin_token must differ from token (the ingest token must not grant Admin calls)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both tls_cert and tls_key")
        for addr_name in ("grpc_address", "http_address"):
            addr = getattr(self, addr_name)
            if addr and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
                raise ConfigError(f"{addr_name} must be host:port, got {addr!r}")
            if addr and not 0 <= int(addr.rsplit(":", 1)[1]) <= 65535:
                raise ConfigError(f"{addr_name} port must be in 0..65535 (0: pick a free one), got {addr!r}")
        if not isinstance(self.sketches, dict):
            raise ConfigError("[sketches] must be a table of name -> {kind = ..., parameters}")
        for name, spec in self.sketches.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
                raise ConfigError(f"sketch {name!r} needs a 'kind' (e.g. kind = \"hiddensketch\")")
            _validate_weight(name, spec)
            model = spec.get("estimator_path")
            if model and not Path(model).exists():  # else the sketch would be skipped with a warning
                raise ConfigError(f"sketch {name!r}: estimator_path {str(model)!r} does not exist (a model directory "
                                  "written by `telesketch train-estimator --out DIR`; relative paths are from "
                                  f"the working directory {Path.cwd()})")
            kind = kind_config(spec["kind"])
            if self.shards > 1 and spec.get("key") in kind.unroutable_keys:
                raise ConfigError(f"sketch {name!r}: a {kind.title} keyed by {spec['key']} is not supported with shards > 1 "
                                  "yet (packets are routed by source or flow); run it with shards = 1")
        self._validate_devices()
        return self

    def _validate_devices(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        for name, spec in self.sketches.items():
            if spec.get("device", self.device) not in DEVICES:
                raise ConfigError(f"sketch {name!r}: device must be one of {list(DEVICES)}, got {spec['device']!r}")
        on_gpu = self.device == "gpu" or any(spec.get("device") == "gpu" for spec in self.sketches.values())
        if on_gpu and self.shards > 1:
            raise ConfigError("device = \"gpu\" with shards > 1 is not supported: run the GPU sketches unsharded "
                              "(shards = 1) or the sharded service on the CPU")

    @property
    def epoch_ns(self) -> int:
        return int(round(self.epoch_seconds * 1e9))

    @property
    def durability_mode(self) -> str:
        """The log's durability mode (``wal_fsync = true`` is the older spelling of every-batch)."""
        return "every-batch" if self.wal_fsync else self.durability


def _validate_weight(name: str, spec: dict[str, Any]) -> None:
    """``weight`` is "packets" (the default) or "bytes", and "bytes" only for kinds that count bytes."""
    weight = spec.get("weight", "packets")
    if weight not in WEIGHTS:
        raise ConfigError(f"sketch {name!r}: weight must be \"packets\" or \"bytes\", got {weight!r}")
    if weight == "bytes" and spec["kind"] not in BYTE_WEIGHTED_KINDS:
        raise ConfigError(f"sketch {name!r}: kind {spec['kind']!r} counts packets only; weight = \"bytes\" is "
                          f"supported by {', '.join(BYTE_WEIGHTED_KINDS)}")
    for rule in kind_config(spec["kind"]).packets_only if weight == "bytes" else ():
        if spec.get(rule.param) in rule.values:
            raise ConfigError(f"sketch {name!r}: {rule.reason}")
    if spec["kind"] not in BYTE_WEIGHTED_KINDS:
        spec.pop("weight", None)  # "packets" is what such a sketch counts anyway; its parameters lack the key


def _server_keys() -> set[str]:
    return {f.name for f in fields(ServiceConfig)} - {"sketches"}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServiceConfig:
    """Defaults, then the file (``.toml`` or ``.json``), then non-None ``overrides``; validated."""
    config = ServiceConfig()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
        unknown = set(data) - {"server", "sketches"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: server, sketches")
        _apply(config, data.get("server", {}))
        if "sketches" in data:
            config.sketches = copy.deepcopy(data["sketches"])
    _apply(config, {k: v for k, v in (overrides or {}).items() if v is not None})
    return config.validate()


def _apply(config: ServiceConfig, values: dict[str, Any]) -> None:
    unknown = set(values) - _server_keys()
    if unknown:
        raise ConfigError(f"unknown server setting(s) {sorted(unknown)}; known: {sorted(_server_keys())}")
    for name, value in values.items():
        expected = type(getattr(ServiceConfig(), name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"server setting {name} must be {expected.__name__}, got {value!r}")
        setattr(config, name, value)
