"""Domain errors map to one gRPC status and one HTTP status each, by class (subclasses as their
nearest listed ancestor); nothing inside names a status."""
from __future__ import annotations

import grpc
import pytest

from telesketch.distributed.service import ShardLostError
from telesketch.errors import (ConfigurationError, IngestRejected, NotFound, Precondition, QueryError,
                               TelesketchError, TooLarge, Unavailable)
from telesketch.service.config import ConfigError
from telesketch.service.epochs import BatchRejected
from telesketch.service.http import http_status
from telesketch.service.server import grpc_status
from telesketch.sketches.combine import FloorError

CASES = [  # error, gRPC status, HTTP status
    (QueryError("bad phi"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (NotFound("no sketch"), grpc.StatusCode.NOT_FOUND, 404),
    (Precondition("inactive"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (FloorError("below the floor"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (TooLarge("too many keys"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (Unavailable("shard gone"), grpc.StatusCode.UNAVAILABLE, 503),
    (ShardLostError("a shard actor died"), grpc.StatusCode.UNAVAILABLE, 503),
]


@pytest.mark.parametrize("error, code, status", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_domain_error_has_one_grpc_and_one_http_status(error, code, status):
    assert grpc_status(error) == code
    assert http_status(error) == status


def test_an_ingest_rejection_maps_as_its_refusal():
    assert grpc_status(BatchRejected(TooLarge, "oversized", "too big")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(BatchRejected(Precondition, "sequence_jump", "jump")) == grpc.StatusCode.FAILED_PRECONDITION
    rejected = BatchRejected(QueryError, "invalid", "bad column")
    assert isinstance(rejected, IngestRejected) and grpc_status(rejected) == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.reason == "invalid"


def test_anything_else_is_internal_and_config_errors_are_value_errors():
    assert grpc_status(RuntimeError("kernel failed")) == grpc.StatusCode.INTERNAL
    assert ConfigError is ConfigurationError and issubclass(ConfigError, (TelesketchError, ValueError))
