"""The HTTP edge's application: FastAPI wrapped in the outermost middleware, CORS and proxies, the docs page."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp
from swagger_ui_bundle import swagger_ui_path as _swagger_ui_path
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.middleware import OutermostMiddleware
from libs.common import errors
from libs.common.config import GatewaySettings
from libs.common.errors import AppError

# Swagger UI's files come with the package (swagger-ui-bundle-v2) and are served by the gateway: the docs load
# nothing from another host, so they work air-gapped. Only these three are served.
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


class SecuredFastAPI(FastAPI):
    """FastAPI with `OutermostMiddleware` around everything, Starlette's outermost error middleware too."""

    def __init__(self, *, hsts_max_age_s: int | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.hsts_max_age_s = hsts_max_age_s

    def build_middleware_stack(self) -> ASGIApp:
        return OutermostMiddleware(super().build_middleware_stack(), hsts_max_age_s=self.hsts_max_age_s)


def install_cors_and_proxies(app: FastAPI, settings: GatewaySettings) -> None:
    """CORS for the listed origins only, and client addresses from X-Forwarded-For of trusted proxies only.

    Call after adding RequestMiddleware, so that these two wrap it: a 413 or 429 must
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
    """The /docs policy: Swagger UI's files from this origin and exactly the inline script of this page."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def install_docs(app: FastAPI, path: str = "/docs") -> None:
    """Swagger UI at `path` and its files under `path`/assets, with their own (relaxed, but hash-pinned and
    same-origin) Content-Security-Policy."""

    @app.get(path, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        assets = f"{root}{path}/assets/{SWAGGER_UI_VERSION}"
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
        )
        html = bytes(page.body).decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": docs_csp(html)})

    @app.get(path + "/assets/{version}/{name}", include_in_schema=False)
    async def docs_asset(version: str, name: str) -> Response:
        if version != SWAGGER_UI_VERSION or name not in SWAGGER_ASSETS:
            raise AppError(errors.NOT_FOUND_ROUTE)
        # The version is in the URL, so a file never changes under it: browsers keep it.
        return Response(
            _asset(name),
            media_type=SWAGGER_ASSETS[name],
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )


SWAGGER_UI = Path(str(_swagger_ui_path))  # untyped in the package
SWAGGER_UI_VERSION = SWAGGER_UI.name.removeprefix("swagger-ui-")


@functools.cache
def _asset(name: str) -> bytes:
    return (SWAGGER_UI / name).read_bytes()
