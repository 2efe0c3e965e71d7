"""The one place where errors become HTTP answers, all in the `{"error": {...}}` shape."""

from __future__ import annotations

import re
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common import errors
from libs.common.errors import AppError, ErrorSpec

log = structlog.get_logger(__name__)

# Seconds a 503 answer asks the client to wait before it tries again (`Retry-After`, docs/faults.md): about the time
# a restarted backend or PostgreSQL takes to answer again (the gateway reconnects within 2 s), short enough that a
# client that honours it loses little once the outage is over.
RETRY_AFTER_UNAVAILABLE_S = 2


def error_response(
    spec: ErrorSpec,
    *,
    request_id: str | None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": spec.code,
            "message": message or spec.message,
            "request_id": request_id,
            "details": details or {},
        }
    }
    if spec.http_status == 503 and not (headers and "Retry-After" in headers):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}
    return JSONResponse(body, status_code=spec.http_status, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path takes (Starlette names only those of the first route it matched, and a
    path served by several routes, GET and PATCH of one resource, takes the methods of all), from the API's own
    document of its paths; HEAD wherever GET is."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
            methods = {method.upper() for method in operations}
            table.append((pattern, methods | ({"HEAD"} if "GET" in methods else set())))
        request.app.state.allowed_methods = table
    path = request.url.path
    return ", ".join(sorted({m for pattern, methods in table if pattern.fullmatch(path) for m in methods}))


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, without echoing the submitted values (they may be passwords)."""
    fields = []
    for item in exc.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        fields.append({"field": ".".join(location) or "body", "type": item.get("type"), "message": item.get("msg")})
    return fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.spec.http_status == 401 else None
        if exc.spec.http_status == 429 and "retry_after_s" in exc.details:  # a quota that frees with time
            headers = {"Retry-After": exc.details["retry_after_s"]}
        details: dict[str, Any] = dict(exc.details)
        if exc.spec is errors.VALIDATION and "field" in details:
            # A service found it: the same shape as the gateway's own validation errors.
            details = {"fields": [{"field": details["field"], "type": "invalid", "message": details.get("reason")}]}
        return error_response(
            exc.spec, request_id=_request_id(request), message=exc.message, details=details, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            errors.VALIDATION, request_id=_request_id(request), details={"fields": _field_errors(exc)}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        spec = {
            404: errors.NOT_FOUND_ROUTE,
            405: errors.METHOD_NOT_ALLOWED,
            413: errors.BODY_TOO_LARGE,
            415: errors.UNSUPPORTED_MEDIA_TYPE,
        }.get(exc.status_code)
        if spec is None:
            log.warning("http.unmapped_status", status=exc.status_code)
            spec = errors.VALIDATION if 400 <= exc.status_code < 500 else errors.INTERNAL
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)  # RFC 9110: which methods the path does take
        return error_response(spec, request_id=_request_id(request), headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.crashed", path=request.url.path)
        return error_response(errors.INTERNAL, request_id=_request_id(request))
