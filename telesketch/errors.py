"""The service's domain errors: raised where the problem is found, mapped to a status at the edges.

Every error the service answers with is one of these classes. The gRPC servicer maps them to a
status code in one table (``GRPC_STATUS`` in :mod:`telesketch.service.server`), the HTTP API to an
HTTP status in one table (``HTTP_STATUS`` in :mod:`telesketch.service.http`); nothing inside names a
gRPC code. A subclass maps as its nearest listed ancestor.

* :class:`ConfigurationError`: a configuration that cannot run (bad values, no active sketch);
* :class:`BatchError`: packet columns (or their wire message) that do not form a batch: wrong
  dtype, length, shape or version (``packets.BatchError`` is this class, re-exported; it is a
  ``ValueError`` too; the wire layer turns it into an ingest rejection);
* :class:`IngestRejected`: a batch the service refuses (``reason`` labels the rejection metric,
  ``refusal`` says which query-error kind it maps like);
* :class:`QueryError` (a query asked wrongly) and its kinds :class:`NotFound` (no such sketch,
  epoch or endpoint), :class:`Precondition` (not answerable in the service's state: an inactive
  sketch, a threshold below a sketch's floor) and :class:`TooLarge` (more than a query may ask);
* :class:`Unavailable`: a state that cannot be reached now (a lost Ray shard): retry later.
"""
from __future__ import annotations


class TelesketchError(Exception):
    """Base of the domain errors."""


class ConfigurationError(TelesketchError, ValueError):
    """A configuration that cannot run; the message names the setting."""


class BatchError(TelesketchError, ValueError):
    """Packet columns (or their wire message) that do not form a batch: wrong dtype, length, shape or
    version. Raised by :mod:`telesketch.packets` and :mod:`telesketch.wire`."""


class IngestRejected(TelesketchError):
    """A batch the service refuses as a whole; nothing of it was logged or applied.

    ``refusal``: which kind of refusal it is, as a query error class (:class:`QueryError`: bad
    content, :class:`TooLarge`: over a size limit, :class:`Precondition`: not acceptable in the
    service's state, e.g. a sequence jump), so the edges map it like that error; ``reason``: the
    label of ``telesketch_batches_rejected`` (``invalid``, ``oversized``, ...).
    """

    def __init__(self, refusal: type, reason: str, message: str):
        super().__init__(message)
        self.refusal, self.reason = refusal, reason


class QueryError(TelesketchError):
    """A query that cannot be answered as asked (a bad parameter)."""


class NotFound(QueryError):
    """The query names a sketch, epoch or endpoint that does not exist."""


class Precondition(QueryError):
    """The query is well formed but cannot be answered in the service's present state."""


class TooLarge(QueryError):
    """The query asks for more than one query may (keys, rows)."""


class Unavailable(TelesketchError):
    """A state cannot be reached now (a lost Ray shard): the caller should retry later."""
