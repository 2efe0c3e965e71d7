"""The one place where errors become HTTP answers, all in the `{"error": {...}}` shape."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common import errors
from libs.common.errors import AppError, ErrorSpec

log = structlog.get_logger(__name__)


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
    return JSONResponse(body, status_code=spec.http_status, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


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
        return error_response(spec, request_id=_request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.crashed", path=request.url.path)
        return error_response(errors.INTERNAL, request_id=_request_id(request))
