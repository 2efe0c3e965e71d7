"""Two pure ASGI layers around the routes, each one pass with one `send` wrapper (six layers, each wrapping `send`
again, cost a fifth of the gateway's CPU per request in bench/read_path.py's profiles):

- `OutermostMiddleware`, outside Starlette's error middleware: the security headers and the RED metrics of every
  answer, the 500s that error middleware sends included;
- `RequestMiddleware`, inside CORS and the proxy headers: the server span, the request id and the access log,
  then the edge's refusals (host, URL and header limits; body size and type) before any route runs.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response
from libs.common import errors, tracing
from libs.common.metrics import HTTP_DURATION, HTTP_REQUESTS

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests no route took: unknown paths (scanners, typos) and those the edge refused before routing (413, 415,
# 431...). One label for all of them: raw paths would make a series per URL.
UNMATCHED = "unmatched"
# Probes and scrapes would each start a trace and tell nothing about a request.
_UNTRACED_PATHS = ("/health/", "/metrics")
# Health probes come from the orchestrator with the pod's address as Host; they must not need a public name.
_HOST_EXEMPT_PREFIX = "/health/"
# The API answers JSON only: nothing on a page of ours may load, run, frame or submit anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

access_log = structlog.get_logger("gateway.access")


def _route(scope: Scope) -> str | None:
    """The template the router matched (`/api/v2/analyses/{analysis_id}`), never the concrete path."""
    return getattr(scope.get("route"), "path", None)


class OutermostMiddleware:
    """Adds the security headers to every answer that has none of its own, and counts and times every answer.

    It wraps the whole application (see `SecuredFastAPI`), outside Starlette's own error middleware, because that
    middleware sends the 500 answers past every middleware added with `add_middleware`.
    """

    def __init__(self, app: ASGIApp, *, hsts_max_age_s: int | None):
        self.app = app
        headers = {
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
            "referrer-policy": "no-referrer",
            "cross-origin-opener-policy": "same-origin",
            "content-security-policy": API_CSP,
        }
        if hsts_max_age_s is not None:
            headers["strict-transport-security"] = f"max-age={hsts_max_age_s}; includeSubDomains"
        self.headers = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends when the app raises before answering
        private = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                raw.extend(header for header in self.headers if header[0] not in present)
                # Tokens and tenant data must stay out of browser and proxy caches.
                if private and b"cache-control" not in present:
                    raw.append((b"cache-control", b"no-store"))
                # A 500 is sent past RequestMiddleware; its id is in the scope all the same.
                request_id = scope.get("state", {}).get("request_id")
                if request_id and REQUEST_ID_HEADER.encode() not in present:
                    raw.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = raw
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = _route(scope) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            HTTP_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()


def host_of(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # [::1]:8000
                return host[: host.find("]") + 1]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Exact names, "*" for any, "*.example.com" for its subdomains (not example.com itself)."""
    for pattern in allowed:
        if pattern == "*" or host == pattern.lower():
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:].lower()):
            return True
    return False


class _BodyTooLarge(StarletteHTTPException):
    """An HTTP exception, so that FastAPI's body parsing passes it on as a 413 instead of a 400."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class RequestMiddleware:
    """Per request, in this order: the server span (a client's `traceparent` continued, its sampling decided here);
    a sane `X-Request-ID` accepted or one made, returned and bound to every log line; the refusals of the edge,
    before routing: unknown hosts (400), long URLs (414), oversized or too many headers (431), bodies over the
    limit (413) or not JSON (415); then the access log line, with the trace id.

    Access log: every answer of 400 and above and every answer slower than `access_log_slow_ms`; of the others, a
    random `access_log_sample_rate` of them (the metrics count them all).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: list[str],
        max_url_bytes: int,
        max_header_bytes: int,
        max_headers: int,
        max_body_bytes: int,
        access_log_sample_rate: float = 1.0,
        access_log_slow_ms: float = 1000.0,
    ):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.check_hosts = "*" not in allowed_hosts
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.sample_rate = access_log_sample_rate
        self.slow_s = access_log_slow_ms / 1000

    def _refusal(self, scope: Scope) -> errors.ErrorSpec | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.max_headers or sum(len(n) + len(v) for n, v in headers) > self.max_header_bytes:
            return errors.HEADERS_TOO_LARGE
        path = scope.get("raw_path") or scope["path"].encode()
        if len(path) + len(scope.get("query_string", b"")) > self.max_url_bytes:
            return errors.URL_TOO_LONG
        if (
            self.check_hosts
            and not scope["path"].startswith(_HOST_EXEMPT_PREFIX)
            and not host_allowed(host_of(scope), self.allowed_hosts)
        ):
            return errors.HOST_NOT_ALLOWED
        if scope["method"] in _BODY_METHODS:
            return self._body_refusal(headers)
        return None

    def _body_refusal(self, headers: list[tuple[bytes, bytes]]) -> errors.ErrorSpec | None:
        length = content_type = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                length = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return errors.BODY_TOO_LARGE
        has_body = (length is not None and int(length) > 0) or chunked
        media_type = (content_type or "").split(";")[0].strip().lower()
        if has_body and media_type != "application/json" and not media_type.endswith("+json"):
            return errors.UNSUPPORTED_MEDIA_TYPE
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._span(scope) as span:
            await self._handle(scope, receive, send, span)

    def _span(self, scope: Scope) -> AbstractContextManager[Span | None]:
        if tracing.mode() is tracing.Mode.OFF or scope["path"].startswith(_UNTRACED_PATHS):
            return nullcontext()
        traceparent = tracestate = None
        for key, value in scope["headers"]:
            if key == b"traceparent":
                traceparent = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = value.decode("latin-1")
        return tracing.serving(
            scope["method"], kind=SpanKind.SERVER, traceparent=traceparent, tracestate=tracestate, edge=True
        )

    async def _handle(self, scope: Scope, receive: Receive, send: Send, span: Span | None) -> None:
        offered = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                offered = value.decode("latin-1")
                break
        request_id = offered if offered and _VALID_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(refusal, request_id=request_id)(scope, receive, send_with_id)
                return
            try:
                await self.app(scope, limited_receive if scope["method"] in _BODY_METHODS else receive, send_with_id)
            except _BodyTooLarge:
                if not response_started:
                    await error_response(errors.BODY_TOO_LARGE, request_id=request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if span is not None and span.is_recording():
                _describe(span, scope, status)
            if status >= 400 or elapsed >= self.slow_s or random.random() < self.sample_rate:  # noqa: S311 # nosec B311
                access_log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    elapsed_ms=round(elapsed * 1000, 1),
                )
            structlog.contextvars.clear_contextvars()


def _describe(span: Span, scope: Scope, status: int) -> None:
    """Names the span by the route template once routing has put it in the scope: one name for all ids."""
    method, route = scope["method"], _route(scope)
    span.update_name(f"{method} {route}" if route else method)
    attributes: dict[str, Any] = {"http.request.method": method, "http.response.status_code": status}
    if route:
        attributes["http.route"] = route
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
