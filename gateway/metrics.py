"""HTTP metrics of the gateway: requests by route template, method and status, with latency."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.metrics import HTTP_DURATION, HTTP_REQUESTS

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests no route took: unknown paths (scanners, typos) and those a middleware refused before routing (413, 415,
# edge limits). One label for all of them: raw paths would make a series per URL.
UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    """Pure ASGI, outermost: it times the whole answer, the other middleware's refusals (413, 415) included.

    The route label is the template the router matched (`/api/v2/analyses/{analysis_id}`), read from the scope
    after the request, never the concrete path, so ids do not become label values.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends when the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            HTTP_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
