"""The server span of each HTTP request: the trace every gRPC call and event of the request belongs to."""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common import tracing

# Probes and scrapes would each start a trace and tell nothing about a request.
_UNTRACED_PATHS = ("/health/", "/metrics")


class TracingMiddleware:
    """Pure ASGI (no task per request): continues a client's `traceparent` or starts a trace.

    Outside the request-id middleware, so its access log line carries the trace id too. Attributes, the route
    template and the status are only gathered when the trace is recorded.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or tracing.mode() is tracing.Mode.OFF or scope["path"].startswith(_UNTRACED_PATHS):
            await self.app(scope, receive, send)
            return
        traceparent = tracestate = None
        for key, value in scope["headers"]:
            if key == b"traceparent":
                traceparent = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = value.decode("latin-1")
        method = scope["method"]
        with tracing.serving(
            method, kind=SpanKind.SERVER, traceparent=traceparent, tracestate=tracestate, edge=True
        ) as span:
            if not span.is_recording():
                await self.app(scope, receive, send)
                return
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                # The route template, once routing has put it in the scope: one name for all ids, never the path.
                route = getattr(scope.get("route"), "path", None)
                span.update_name(f"{method} {route}" if route else method)
                span.set_attributes({"http.request.method": method, "http.response.status_code": status})
                if route:
                    span.set_attribute("http.route", route)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
