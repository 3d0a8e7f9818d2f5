"""Bearer-token checks shared by the gRPC interceptor and the HTTP API.

Tokens are compared in constant time (``hmac.compare_digest``), so the time a refusal takes says
nothing about how much of a guessed token was right.
"""
from __future__ import annotations

import hmac


def bearer_matches(supplied: str | bytes, token: str) -> bool:
    """Whether an ``authorization`` header value is ``Bearer <token>`` (never true for no token)."""
    if not token:
        return False
    expected = f"Bearer {token}".encode()
    given = supplied.encode("utf-8", "surrogateescape") if isinstance(supplied, str) else supplied
    return hmac.compare_digest(given, expected)
