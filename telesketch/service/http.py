"""HTTP on the second port: ``/metrics`` (Prometheus) and the JSON API under ``/api/v1/``.

The JSON API is shaped for Grafana's Infinity data source: every query endpoint returns a JSON
array of flat objects (one row each; times in milliseconds since the Unix epoch in ``time``), so a
panel needs only the URL and column selectors. Window parameters are the gRPC ones: ``epoch=<id>``
or ``last=<N>`` (default: the last epoch), ``closed_only=1``, ``sketch=<name>``. Endpoints with a
``time`` column take ``clock=now`` to shift times so that the newest epoch ends at the current wall
time (the packet time stays in ``packet_time``): a dashboard's "last 15 minutes" then shows a
replayed capture; ``clock=packet`` (default) keeps packet times.

==========================  ========================================================================
``/api/v1/health``          ``{"status": "ok"}`` (the data source's health check)
``/api/v1/stats``           counters, epochs and sketches (one object, as gRPC ``Stats``)
``/api/v1/epochs``          ``time epoch start_ns end_ns packets batches closed rate_pps``
``/api/v1/heavy_hitters``   ``key family estimate partial`` (``phi`` or ``threshold``; ``partial``:
                            the decode could not finish, keys may be missing, estimates are bounds)
``/api/v1/heavy_changers``  ``key family change partial`` (window vs the equally long window before)
``/api/v1/hhh``             ``family prefix value length estimate parent depth`` (``parent``: the
                            nearest reported enclosing prefix of the same family, ``""`` at the top;
                            ``depth``: its level; ``value``: an int for IPv4, 32 hex digits for IPv6)
``/api/v1/gaps``            ``time ts_ns flow family jump epoch`` (``limit``)
``/api/v1/gap_counts``      ``time epoch gaps``: gap events per epoch (the "gaps over time" panel)
``/api/v1/top_flows``       ``flow family estimate`` (``k``, default 10; ``family`` 0: a fingerprint)
``/api/v1/flow_size``       ``flow family estimate`` for ``key=<flow>`` (repeatable): 26 or 74 hex
                            digits, or flow text ``10.0.0.1:1234 > 10.0.0.2:80 proto 6`` /
                            ``[2001:db8::1]:443 > [2001:db8::2]:53 udp``
==========================  ========================================================================

Rows of a byte-weighted sketch (``weight = "bytes"``: heavy hitters/changers, HHH, top flows, flow
sizes) carry one more column, ``unit`` = ``bytes``: their estimates and thresholds are bytes.

Keys and prefixes are text (IPv6 per RFC 5952, ``2001:db8::1``, ``2001:db8::/32``; IPv6 flow
endpoints bracketed); ``family`` (4 or 6) lets a panel filter or group the two families. Rows
with equal values list IPv4 before IPv6, then by key bytes, so an answer's order is stable.

``/`` is a read-only status page (server-rendered HTML with inline SVG, refreshed every 10 s): the
open epoch, ingest rate per epoch, heavy hitters, the HHH tree, top flows and gap events.

With a token configured, every path but ``/api/v1/health`` needs ``Authorization: Bearer <token>``
(401 otherwise). Errors are ``{"error": message}`` with 400 (bad parameters), 404 (unknown window or sketch),
409 (no active sketch answers), 413 (too large) or 503 (a state out of reach, a lost Ray shard:
retry later), by :data:`HTTP_STATUS`. ``last=N`` with fewer than N epochs retained
answers over the epochs there are and says so in an ``X-Telesketch-Note`` header (a dashboard
asking for the last 3 epochs of a service that has seen one shows that one, not an error).

With ``tls_cert``/``tls_key`` configured (the gRPC certificate), the port speaks HTTPS only. A token
over plain HTTP on a non-loopback address is logged as a warning at start (it travels in clear).
At most :data:`MAX_CONCURRENT_REQUESTS` connections are served at once (more get 503 at once), and a
connection idle for :data:`REQUEST_TIMEOUT_S` seconds is closed, so idle clients cannot hold threads.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telesketch.service.auth import bearer_matches
from telesketch.presenter import gap_rows, hhh_rows, key_family, key_text, parse_flow_key, ranked
from telesketch.service.queries import WindowSpec
from telesketch.errors import NotFound, Precondition, QueryError, TelesketchError, TooLarge, Unavailable

log = logging.getLogger("telesketch.service")

#: The one table from domain errors (:mod:`telesketch.errors`) to HTTP statuses; an error maps as its
#: nearest listed class (see :func:`http_status`). A lost Ray shard is ``Unavailable``: 503, retry later.
HTTP_STATUS: dict[type, int] = {QueryError: 400, NotFound: 404, Precondition: 409, TooLarge: 413, Unavailable: 503}


def http_status(error: TelesketchError) -> int:
    """The HTTP status of a domain error (400 for one the table does not list)."""
    return next((HTTP_STATUS[cls] for cls in type(error).__mro__ if cls in HTTP_STATUS), 400)


#: Connections served at once; one more gets ``503`` without a thread of its own.
MAX_CONCURRENT_REQUESTS = 32
#: Seconds a connection may sit without sending its request (or reading the answer) before it is closed.
REQUEST_TIMEOUT_S = 10.0
#: Response header carrying a note about the answer (e.g. a window shortened to what is retained).
NOTE_HEADER = "X-Telesketch-Note"

#: Endpoint -> fields of every row it returns (the dashboard test checks panels against this and
#: against real answers).
ROUTES: dict[str, tuple[str, ...]] = {
    "/api/v1/health": ("status",),
    "/api/v1/stats": ("packets", "batches", "late_packets", "duplicate_batches", "rejected_batches",
                      "queue_depth", "queue_capacity", "open_epoch", "epoch_seconds", "epochs", "sketches"),
    "/api/v1/epochs": ("time", "epoch", "start_ns", "end_ns", "packets", "batches", "closed", "rate_pps"),
    "/api/v1/heavy_hitters": ("key", "family", "estimate", "partial"),
    "/api/v1/heavy_changers": ("key", "family", "change", "partial"),
    "/api/v1/hhh": ("family", "prefix", "value", "length", "estimate", "parent", "depth"),
    "/api/v1/gaps": ("time", "ts_ns", "flow", "family", "jump", "epoch"),
    "/api/v1/gap_counts": ("time", "epoch", "gaps"),
    "/api/v1/top_flows": ("flow", "family", "estimate"),
    "/api/v1/flow_size": ("flow", "family", "estimate"),
}


def _one(params: dict, name: str, parse, default=None):
    values = params.get(name)
    if not values:
        return default
    try:
        return parse(values[-1])
    except ValueError:
        raise QueryError(f"parameter {name}={values[-1]!r} is not a valid {parse.__name__}") from None


def flow_keys(texts: list[str]) -> list[bytes]:
    """The ``key`` parameters of ``/api/v1/flow_size`` as flow keys (hex or flow text, either family,
    see :func:`telesketch.presenter.parse_flow_key`); a bad one is a ``QueryError`` (400) naming it."""
    try:
        return [parse_flow_key(text) for text in texts]
    except ValueError as exc:
        raise QueryError(f"key: {exc}") from None


def _window(params: dict) -> WindowSpec:
    return WindowSpec(epoch=_one(params, "epoch", int), last=_one(params, "last", int),
                      closed_only=_one(params, "closed_only", str, "0") in ("1", "true", "yes"))


def _fit_window(window: WindowSpec, retained: int, windows: int = 1) -> tuple[WindowSpec, str]:
    """``last=N`` shortened to what is retained (``windows`` back-to-back windows: 2 for heavy
    changers); returns the window and a note ("" when unchanged). Too few for even one epoch per
    window: unchanged, so the query answers 404 with its own message."""
    if window.last is None or window.epoch is not None or window.last < 1:
        return window, ""
    fits = retained // windows
    if window.last <= fits or fits < 1:
        return window, ""
    note = f"last={window.last} asked, {retained} epochs retained: answered over the last {fits}"
    return WindowSpec(epoch=None, last=fits, closed_only=window.closed_only), note


class Api:
    """Turns a path and query parameters into a JSON-able answer; raises :mod:`telesketch.errors`."""

    def __init__(self, service):
        self.service = service
        self.note = threading.local()  # per request: the note for NOTE_HEADER

    def _retained(self, closed_only: bool) -> int:
        manager = self.service.manager
        with manager.lock:
            return sum(1 for e in manager.epochs() if e.closed or not closed_only)

    def handle(self, path: str, params: dict):
        q = self.service.queries
        s = self.service
        self.note.text = ""
        if path == "/api/v1/health":
            return {"status": "ok"}
        if path == "/api/v1/stats":
            return s.stats()
        if path == "/api/v1/epochs":
            return self._shift(self._epochs(), params)
        window = _window(params)
        if path in ROUTES and path != "/api/v1/flow_size":
            windows = 2 if path == "/api/v1/heavy_changers" else 1
            window, self.note.text = _fit_window(window, self._retained(window.closed_only), windows)
        sketch = _one(params, "sketch", str, "")
        phi, threshold = _one(params, "phi", float), _one(params, "threshold", float)
        if path == "/api/v1/heavy_hitters":
            a = q.heavy_hitters(window, sketch, phi, threshold)
            unit = {"unit": a.extra["unit"]} if "unit" in a.extra else {}  # byte-weighted sketches say so
            return [{"key": key_text(k, a.int_keys), "family": key_family(k, a.int_keys), "estimate": v,
                     "partial": a.partial, **unit}
                    for k, v in ranked(a.rows)]
        if path == "/api/v1/heavy_changers":
            a = q.heavy_changers(window, sketch, phi, threshold)
            unit = {"unit": a.extra["unit"]} if "unit" in a.extra else {}
            return [{"key": key_text(k, a.int_keys), "family": key_family(k), "change": v, "partial": a.partial,
                     **unit}
                    for k, v in ranked(a.rows, by_magnitude=True)]
        if path == "/api/v1/hhh":
            a = q.hhh(window, sketch, phi, threshold)
            unit = {"unit": a.extra["unit"]} if "unit" in a.extra else {}  # byte-weighted sketches say so
            return [{**row, **unit} for row in hhh_rows(a.rows)]  # IPv4 tree, then IPv6, by length
        if path == "/api/v1/gaps":
            a = q.gaps(window, sketch, _one(params, "limit", int, 1000))
            return self._shift([{"time": r["ts_ns"] // 1_000_000, "ts_ns": r["ts_ns"], "flow": r["text"],
                                 "family": key_family(r["key"]), "jump": r["jump"],
                                 "epoch": r["epoch"]} for r in gap_rows(a.rows)], params)
        if path == "/api/v1/gap_counts":
            a = q.gaps(window, sketch, 0, with_rows=False)
            ns = self.service.manager.epoch_ns
            return self._shift([{"time": e * ns // 1_000_000, "epoch": e, "gaps": n}
                                for e, n in a.extra["per_epoch"].items()], params)
        if path == "/api/v1/top_flows":
            a = q.top_flows(window, _one(params, "k", int, 10), sketch)
            unit = {"unit": a.extra["unit"]} if "unit" in a.extra else {}  # byte-weighted sketches say so
            return [{"flow": key_text(k, a.int_keys), "family": key_family(k, a.int_keys), "estimate": v, **unit}
                    for k, v in ranked(a.rows)]
        if path == "/api/v1/flow_size":
            a = q.flow_size(window, flow_keys(params.get("key", [])), sketch)
            unit = {"unit": a.extra["unit"]} if "unit" in a.extra else {}
            return [{"flow": key_text(k), "family": key_family(k), "estimate": v, **unit} for k, v in a.rows]
        raise NotFound(f"no such endpoint {path}; endpoints: {sorted(ROUTES)} and /metrics")

    def _shift(self, rows: list[dict], params: dict) -> list[dict]:
        """``clock=now``: move every ``time`` so that the newest retained epoch ends now (a replayed
        capture from years ago then lands in a dashboard's "last 15 minutes"); the packet time stays
        in ``packet_time``. ``clock=packet`` (default): times are packet times."""
        clock = _one(params, "clock", str, "packet")
        if clock not in ("packet", "now"):
            raise QueryError(f"clock must be 'packet' or 'now', got {clock!r}")
        if clock == "packet":
            return rows
        manager = self.service.manager
        with manager.lock:
            newest = max((e.id for e in manager.epochs()), default=-1)
        newest_end_ms = (newest + 1) * manager.epoch_ns // 1_000_000
        offset = int(time.time() * 1000) - newest_end_ms
        return [{**r, "packet_time": r["time"], "time": r["time"] + offset} for r in rows]

    def _epochs(self):
        stats = self.service.stats()
        seconds = stats["epoch_seconds"]
        return [{"time": e["start_ns"] // 1_000_000, **e, "rate_pps": e["packets"] / seconds} for e in stats["epochs"]]


class _Handler(BaseHTTPRequestHandler):
    server_version = "telesketch"
    api: Api = None  # set per server

    timeout = REQUEST_TIMEOUT_S  # socket timeout: an idle or slow client is dropped, its thread freed

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError) as exc:  # the client left
            log.debug("HTTP connection from %s ended early: %s", self.client_address[0], exc)

    def do_GET(self):  # noqa: N802 - http.server naming
        url = urlparse(self.path)
        token = self.api.service.config.token
        if token and url.path != "/api/v1/health" and not bearer_matches(self.headers.get("Authorization", ""), token):
            return self._send(401, json.dumps({"error": "missing or wrong bearer token"}).encode(), "application/json")
        if url.path == "/metrics":
            self.api.service.stats()  # refreshes the gauges computed on demand
            return self._send(200, generate_latest(self.api.service.metrics.registry), CONTENT_TYPE_LATEST)
        if url.path in ("/", "/index.html"):
            from telesketch.service.status_page import render_status_page

            return self._send(200, render_status_page(self.api.service).encode(), "text/html; charset=utf-8")
        try:
            body = self.api.handle(url.path.rstrip("/") or "/", parse_qs(url.query))
            status = 200
        except TelesketchError as exc:
            body, status = {"error": str(exc)}, http_status(exc)
        except Exception as exc:  # noqa: BLE001
            log.exception("HTTP %s failed", self.path)
            body, status = {"error": f"internal error: {type(exc).__name__}: {exc}"}, 500
        note = getattr(self.api.note, "text", "") if status == 200 else ""
        self._send(status, json.dumps(body).encode(), "application/json", {NOTE_HEADER: note} if note else None)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):  # quiet: access logs go to the debug level
        log.debug("http %s - %s", self.address_string(), fmt % args)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with at most ``max_requests`` connections served at once.

    A connection over the bound is answered ``503`` and closed on the accepting thread (a short
    write with a timeout), so a flood of connections costs no threads. TLS (``ssl_context``) is
    wrapped per connection in the handler thread, so a slow handshake holds no other client."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, handler, max_requests: int, ssl_context: ssl.SSLContext | None = None):
        self._slots = threading.BoundedSemaphore(max_requests)
        self.ssl_context = ssl_context
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.warning("HTTP: %d connections in service, refusing %s with 503", MAX_CONCURRENT_REQUESTS,
                        client_address[0])
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            if self.ssl_context is not None:
                request.settimeout(REQUEST_TIMEOUT_S)
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.debug("HTTPS handshake with %s failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        body = json.dumps({"error": "too many concurrent HTTP requests; retry later"}).encode()
        try:
            if self.ssl_context is None:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from the PEM files the gRPC port uses (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class HttpServer:
    """The HTTP(S) server in a daemon thread; ``port`` is the bound port (0 asks for a free one).

    ``tls_cert``/``tls_key`` (the service's gRPC certificate) make it HTTPS only; a bearer token
    over plain HTTP on an address other than loopback is logged as a warning."""

    def __init__(self, service, host: str, port: int):
        cfg = service.config
        handler = type("Handler", (_Handler,), {"api": Api(service)})
        context = ssl_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        self._httpd = _BoundedHTTPServer((host, port), handler, MAX_CONCURRENT_REQUESTS, context)
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if context else "http"
        if cfg.token and context is None and not _is_loopback(host):
            log.warning("HTTP on %s:%d is plain HTTP and a bearer token is configured: the token travels in "
                        "clear. Configure tls_cert/tls_key (HTTPS) or listen on loopback only.", host, self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="telesketch-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
