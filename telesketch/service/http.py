"""HTTP on the second port: ``/metrics`` (Prometheus) and the JSON API under ``/api/v1/``.

The JSON API is shaped for Grafana's Infinity data source: every query endpoint returns a JSON
array of flat objects (one row each; times in milliseconds since the Unix epoch in ``time``), so a
panel needs only the URL and column selectors. Window parameters are the gRPC ones: ``epoch=<id>``
or ``last=<N>`` (default: the last epoch), ``closed_only=1``, ``sketch=<name>``.

==========================  ========================================================================
``/api/v1/health``          ``{"status": "ok"}`` (the data source's health check)
``/api/v1/stats``           counters, epochs and sketches (one object, as gRPC ``Stats``)
``/api/v1/epochs``          ``time epoch start_ns end_ns packets batches closed rate_pps``
``/api/v1/heavy_hitters``   ``key estimate partial`` (``phi`` or ``threshold``; ``partial``: the
                            decode could not finish, keys may be missing, estimates are bounds)
``/api/v1/heavy_changers``  ``key change partial`` (window vs the equally long window before it)
``/api/v1/hhh``             ``prefix value length estimate parent depth`` (``parent``: the nearest
                            reported enclosing prefix, ``""`` at the top; ``depth``: its level)
``/api/v1/gaps``            ``time ts_ns flow jump epoch`` (``limit``)
``/api/v1/gap_counts``      ``time epoch gaps``: gap events per epoch (the "gaps over time" panel)
``/api/v1/top_flows``       ``flow estimate`` (``k``, default 10)
``/api/v1/flow_size``       ``flow estimate`` for ``key=<26 hex digits>`` (repeatable)
==========================  ========================================================================

With a token configured, every path but ``/api/v1/health`` needs ``Authorization: Bearer <token>``
(401 otherwise). Errors are ``{"error": message}`` with 400 (bad parameters), 404 (unknown window or sketch),
409 (no active sketch answers) or 413 (too large).
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telesketch.packets import format_ipv4
from telesketch.service.queries import WindowSpec, key_text
from telesketch.service.sketchset import QueryError

log = logging.getLogger("telesketch.service")

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "RESOURCE_EXHAUSTED": 413}

#: Endpoint -> fields of every row it returns (the dashboard test checks panels against this and
#: against real answers).
ROUTES: dict[str, tuple[str, ...]] = {
    "/api/v1/health": ("status",),
    "/api/v1/stats": ("packets", "batches", "late_packets", "duplicate_batches", "rejected_batches",
                      "queue_depth", "queue_capacity", "open_epoch", "epoch_seconds", "epochs", "sketches"),
    "/api/v1/epochs": ("time", "epoch", "start_ns", "end_ns", "packets", "batches", "closed", "rate_pps"),
    "/api/v1/heavy_hitters": ("key", "estimate", "partial"),
    "/api/v1/heavy_changers": ("key", "change", "partial"),
    "/api/v1/hhh": ("prefix", "value", "length", "estimate", "parent", "depth"),
    "/api/v1/gaps": ("time", "ts_ns", "flow", "jump", "epoch"),
    "/api/v1/gap_counts": ("time", "epoch", "gaps"),
    "/api/v1/top_flows": ("flow", "estimate"),
    "/api/v1/flow_size": ("flow", "estimate"),
}


def _one(params: dict, name: str, parse, default=None):
    values = params.get(name)
    if not values:
        return default
    try:
        return parse(values[-1])
    except ValueError:
        raise QueryError("INVALID_ARGUMENT", f"parameter {name}={values[-1]!r} is not a valid {parse.__name__}") from None


def _window(params: dict) -> WindowSpec:
    return WindowSpec(epoch=_one(params, "epoch", int), last=_one(params, "last", int),
                      closed_only=_one(params, "closed_only", str, "0") in ("1", "true", "yes"))


def _hhh_rows(rows) -> list[dict]:
    out, reported = [], []
    for prefix, length, estimate in sorted(rows, key=lambda r: (r[1], r[0])):
        parents = [(p, n) for p, n in reported if n < length and (prefix >> (32 - n) if n else 0) == (p >> (32 - n) if n else 0)]
        parent = max(parents, key=lambda x: x[1]) if parents else None
        depth = sum(1 for _ in parents)
        reported.append((prefix, length))
        out.append({"prefix": f"{format_ipv4(prefix)}/{length}", "value": prefix, "length": length,
                    "estimate": estimate, "parent": f"{format_ipv4(parent[0])}/{parent[1]}" if parent else "",
                    "depth": depth})
    return out


class Api:
    """Turns a path and query parameters into a JSON-able answer; raises QueryError."""

    def __init__(self, service):
        self.service = service

    def handle(self, path: str, params: dict):
        q = self.service.queries
        s = self.service
        if path == "/api/v1/health":
            return {"status": "ok"}
        if path == "/api/v1/stats":
            return s.stats()
        if path == "/api/v1/epochs":
            return self._epochs()
        window = _window(params)
        sketch = _one(params, "sketch", str, "")
        phi, threshold = _one(params, "phi", float), _one(params, "threshold", float)
        if path == "/api/v1/heavy_hitters":
            a = q.heavy_hitters(window, sketch, phi, threshold)
            return [{"key": key_text(k, a.int_keys), "estimate": v, "partial": a.partial} for k, v in a.rows]
        if path == "/api/v1/heavy_changers":
            a = q.heavy_changers(window, sketch, phi, threshold)
            return [{"key": key_text(k, a.int_keys), "change": v, "partial": a.partial} for k, v in a.rows]
        if path == "/api/v1/hhh":
            return _hhh_rows(q.hhh(window, sketch, phi, threshold).rows)
        if path == "/api/v1/gaps":
            a = q.gaps(window, sketch, _one(params, "limit", int, 1000))
            return [{"time": ts // 1_000_000, "ts_ns": ts, "flow": key_text(k), "jump": j, "epoch": e}
                    for ts, k, j, e in a.rows]
        if path == "/api/v1/gap_counts":
            a = q.gaps(window, sketch, 0)
            ns = self.service.manager.epoch_ns
            return [{"time": e * ns // 1_000_000, "epoch": e, "gaps": n} for e, n in a.extra["per_epoch"].items()]
        if path == "/api/v1/top_flows":
            a = q.top_flows(window, _one(params, "k", int, 10), sketch)
            return [{"flow": key_text(k, a.int_keys), "estimate": v} for k, v in a.rows]
        if path == "/api/v1/flow_size":
            try:
                keys = [bytes.fromhex(k) for k in params.get("key", [])]
            except ValueError:
                raise QueryError("INVALID_ARGUMENT", "key must be 26 hex digits (a 13-byte flow key)") from None
            a = q.flow_size(window, keys, sketch)
            return [{"flow": key_text(k), "estimate": v} for k, v in a.rows]
        raise QueryError("NOT_FOUND", f"no such endpoint {path}; endpoints: {sorted(ROUTES)} and /metrics")

    def _epochs(self):
        stats = self.service.stats()
        seconds = stats["epoch_seconds"]
        return [{"time": e["start_ns"] // 1_000_000, **e, "rate_pps": e["packets"] / seconds} for e in stats["epochs"]]


class _Handler(BaseHTTPRequestHandler):
    server_version = "telesketch"
    api: Api = None  # set per server

    def do_GET(self):  # noqa: N802 - http.server naming
        url = urlparse(self.path)
        token = self.api.service.config.token
        if token and url.path != "/api/v1/health" and self.headers.get("Authorization", "") != f"Bearer {token}":
            return self._send(401, json.dumps({"error": "missing or wrong bearer token"}).encode(), "application/json")
        if url.path == "/metrics":
            self.api.service.stats()  # refreshes the gauges computed on demand
            return self._send(200, generate_latest(self.api.service.metrics.registry), CONTENT_TYPE_LATEST)
        try:
            body = self.api.handle(url.path.rstrip("/") or "/", parse_qs(url.query))
            status = 200
        except QueryError as exc:
            body, status = {"error": str(exc)}, HTTP_STATUS.get(exc.code, 400)
        except Exception as exc:  # noqa: BLE001
            log.exception("HTTP %s failed", self.path)
            body, status = {"error": f"internal error: {type(exc).__name__}: {exc}"}, 500
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):  # quiet: access logs go to the debug level
        log.debug("http %s - %s", self.address_string(), fmt % args)


class HttpServer:
    """``ThreadingHTTPServer`` in a daemon thread; ``port`` is the bound port (0 asks for a free one)."""

    def __init__(self, service, host: str, port: int):
        handler = type("Handler", (_Handler,), {"api": Api(service)})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="telesketch-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
