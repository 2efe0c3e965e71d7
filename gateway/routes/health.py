"""Probes and the public key set: /health/live, /health/ready, /.well-known/jwks.json."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.deps import BackendsDep
from gateway.schemas import HealthOut
from libs.common import errors
from libs.common.errors import AppError
from libs.common.grpc_client import call

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=HealthOut, summary="The process is up")
async def live() -> HealthOut:
    return HealthOut(status="ok")


async def _serving(channel: grpc.aio.Channel, deadline_s: float) -> bool:
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await call(stub.Check, health_pb2.HealthCheckRequest(), deadline_s=deadline_s)
    except AppError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@router.get(
    "/health/ready",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "A downstream service is not serving or keys are missing"}},
    summary="Every downstream service serves and the token keys are loaded",
)
async def ready(backends: BackendsDep) -> Response:
    timeout = backends.settings.ready_check_timeout_s
    auth_ok, tenants_ok, analysis_ok = await asyncio.gather(
        _serving(backends.auth_channel, timeout),
        _serving(backends.tenants_channel, timeout),
        _serving(backends.analysis_channel, timeout),
    )
    if auth_ok and not backends.verifier.has_keys:
        with contextlib.suppress(Exception):  # the check below reports the outcome
            await asyncio.wait_for(backends.verifier.refresh(), timeout=timeout)
    checks = {"auth": auth_ok, "tenants": tenants_ok, "analysis": analysis_ok, "keys": backends.verifier.has_keys}
    healthy = all(checks.values())
    body = HealthOut(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@router.get("/.well-known/jwks.json", summary="Public keys that verify access tokens (JWKS)")
async def jwks(backends: BackendsDep) -> Response:
    """The gateway's cached copy: an anonymous endpoint must not turn into load on the auth service."""
    if not backends.verifier.jwks:
        try:
            await backends.verifier.refresh()
        except Exception:
            raise AppError(errors.UPSTREAM_UNAVAILABLE) from None
    fields = ("kty", "crv", "x", "kid", "alg", "use")
    keys = [{f: key[f] for f in fields if f in key} for key in backends.verifier.jwks]
    return JSONResponse({"keys": keys}, headers={"Cache-Control": "public, max-age=300"})
