"""The HTTP edge: security headers on every answer, host, URL and header limits, CORS and proxies, the docs page."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.errors import error_response
from gateway.middleware import REQUEST_ID_HEADER
from libs.common import errors
from libs.common.config import GatewaySettings

# The API answers JSON only: nothing on a page of ours may load, run, frame or submit anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
SWAGGER_FAVICON = "https://fastapi.tiangolo.com/img/favicon.png"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

# Health probes come from the orchestrator with the pod's address as Host; they must not need a public name.
_HOST_EXEMPT_PREFIX = "/health/"


class SecurityHeadersMiddleware:
    """Adds the security headers to every answer that has none of its own, errors and 500s included.

    It wraps the whole application (see `SecuredFastAPI`), outside Starlette's own error middleware, because
    that middleware sends the 500 answers past every middleware added with `add_middleware`.
    """

    def __init__(self, app: ASGIApp, *, hsts_max_age_s: int | None):
        self.app = app
        self.headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Content-Security-Policy": API_CSP,
        }
        if hsts_max_age_s is not None:
            self.headers["Strict-Transport-Security"] = f"max-age={hsts_max_age_s}; includeSubDomains"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
                # Tokens and tenant data must stay out of browser and proxy caches.
                if private and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
                # A 500 is sent past RequestContextMiddleware; its id is in the scope all the same.
                request_id = scope.get("state", {}).get("request_id")
                if request_id and REQUEST_ID_HEADER not in headers:
                    headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecuredFastAPI(FastAPI):
    """FastAPI with `SecurityHeadersMiddleware` around everything, Starlette's outermost error middleware too."""

    def __init__(self, *, hsts_max_age_s: int | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.hsts_max_age_s = hsts_max_age_s

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack(), hsts_max_age_s=self.hsts_max_age_s)


def _host(scope: Scope) -> str:
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


class EdgeLimitsMiddleware:
    """Refuses unknown hosts (400), long URLs (414) and oversized or too many headers (431) before routing."""

    def __init__(
        self, app: ASGIApp, *, allowed_hosts: list[str], max_url_bytes: int, max_header_bytes: int, max_headers: int
    ):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.check_hosts = "*" not in allowed_hosts
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

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
            and not host_allowed(_host(scope), self.allowed_hosts)
        ):
            return errors.HOST_NOT_ALLOWED
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (spec := self._refusal(scope)) is not None:
            request_id = scope.get("state", {}).get("request_id")
            await error_response(spec, request_id=request_id)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_cors_and_proxies(app: FastAPI, settings: GatewaySettings) -> None:
    """CORS for the listed origins only, and client addresses from X-Forwarded-For of trusted proxies only.

    Call after adding the request-id and limit middlewares, so that these two wrap them: a 413 or 429 must
    still carry the CORS grant (a browser hides an answer without it), and every layer sees the real client.
    """
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)


def docs_csp(html: str) -> str:
    """The /docs policy: Swagger UI from its CDN and exactly the inline script of this page, nothing else."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src https://cdn.jsdelivr.net {hashes}; "
        "style-src https://cdn.jsdelivr.net 'unsafe-inline'; img-src 'self' data: https://fastapi.tiangolo.com; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def install_docs(app: FastAPI, path: str = "/docs") -> None:
    """Swagger UI at `path`, with its own (relaxed, but hash-pinned) Content-Security-Policy."""

    @app.get(path, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - docs",
            swagger_js_url=SWAGGER_JS,
            swagger_css_url=SWAGGER_CSS,
            swagger_favicon_url=SWAGGER_FAVICON,
        )
        html = bytes(page.body).decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": docs_csp(html)})
