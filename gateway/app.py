"""The FastAPI application: the only public HTTP surface, forwarding to the services over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient

from gateway.access_tokens import AccessTokenExchange
from gateway.deps import Backends
from gateway.edge import SecuredFastAPI, install_cors_and_proxies, install_docs
from gateway.errors import install_error_handlers
from gateway.middleware import RequestMiddleware
from gateway.ratelimit import install_rate_limits
from gateway.route_index import add_routes
from gateway.routes import access_tokens, analysis, auth, badges, health, tenants
from gateway.routes import settings as settings_routes
from libs.common.config import GatewaySettings
from libs.common.events import connect_nats, ensure_streams
from libs.common.grpc_client import open_channel
from libs.common.identity import revocation_feed, token_verifier
from libs.common.logging import error_text
from libs.common.revocation import RevocationFeed, RevocationList
from repolens.analysis.v1 import analysis_pb2_grpc
from repolens.auth.v1 import auth_pb2_grpc
from repolens.tenants.v1 import tenants_pb2_grpc

log = structlog.get_logger(__name__)

DESCRIPTION = """
RepoLens analyses source-code repositories for organisations.

**Authentication.** Register, then log in to get an access token (15 minutes) and a refresh token.
Send `Authorization: Bearer <access_token>`; the token carries your current tenant and role.
Refresh with `POST /api/v2/auth/refresh`; a refresh token works once.

**Errors.** Every error has the shape `{"error": {"code", "message", "request_id", "details"}}`;
the codes are listed in API_ERRORS.md. Send `X-Request-ID` to correlate logs; it is echoed back.

**Lists** take `?limit=` (at most 100) and `?cursor=` and answer `{"items": [...], "next_cursor": ...}`.
"""


async def _follow_revocations(settings: GatewaySettings, revocations: RevocationList) -> None:
    """Connects to NATS in the background: the gateway serves while NATS is still coming up."""
    nc: NatsClient | None = None
    feed: RevocationFeed | None = None
    try:
        while feed is None:
            try:
                nc = await connect_nats(settings, name="gateway")
                js = nc.jetstream(timeout=settings.nats_request_timeout_s)
                await ensure_streams(js)
                feed = await revocation_feed(settings, js=js, revocations=revocations)
                log.info("revocations.following")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocations.unavailable", error=error_text(exc))
                if nc is not None:
                    await nc.close()
                nc, feed = None, None
                await asyncio.sleep(2)
        while True:
            await asyncio.sleep(60)
            revocations.prune()
    finally:
        if feed is not None:
            await feed.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2)


# Every route of the API, in the order they are matched.
ROUTERS = (
    auth.router,
    access_tokens.router,
    tenants.router,
    settings_routes.router,
    analysis.router,
    badges.router,
    health.router,
)


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        auth_channel = open_channel(settings.auth_grpc_target)
        tenants_channel = open_channel(settings.tenants_grpc_target)
        analysis_channel = open_channel(settings.analysis_grpc_target)
        revocations = RevocationList(access_token_ttl_s=settings.access_token_ttl_s)
        verifier = token_verifier(settings, auth_channel)
        app.state.backends = Backends(
            settings=settings,
            auth_channel=auth_channel,
            tenants_channel=tenants_channel,
            auth=auth_pb2_grpc.AuthServiceStub(auth_channel),
            tenants=tenants_pb2_grpc.TenantsServiceStub(tenants_channel),
            analysis_channel=analysis_channel,
            analysis=analysis_pb2_grpc.AnalysisServiceStub(analysis_channel),
            verifier=verifier,
            revocations=revocations,
            access_tokens=AccessTokenExchange(verifier=verifier),
        )
        follower = asyncio.create_task(_follow_revocations(settings, revocations))
        flusher = asyncio.create_task(rate_limits.api.run(rate_limits.flush_interval_s))
        try:
            await verifier.refresh()
        except Exception as exc:  # auth not up yet: readiness says so, and the first request retries
            log.warning("jwks.unavailable", error=error_text(exc))
        log.info("gateway.started")
        try:
            yield
        finally:
            follower.cancel()
            flusher.cancel()
            await asyncio.gather(follower, flusher, return_exceptions=True)
            await auth_channel.close()
            await tenants_channel.close()
            await analysis_channel.close()
            await rate_limits.close()
            log.info("gateway.stopped")

    app = SecuredFastAPI(
        hsts_max_age_s=settings.hsts_max_age_s if settings.is_production else None,
        title="RepoLens API",
        version="2.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves it, with its own Content-Security-Policy
        redoc_url=None,
        debug=settings.debug,
        # FastAPI's own OpenTelemetry hooks switch on once a tracer provider is installed (ours always is): spans
        # per dependency and serialisation, a uuid4 per request, metrics and logs we already have from our own
        # middleware (gateway/middleware.py). They are off; our spans and metrics stay.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    rate_limits = install_rate_limits(app, settings)
    install_docs(app)
    add_routes(app, ROUTERS)
    # One pass per request (span, request id, access log, edge limits), wrapped by CORS and the proxy headers so
    # that its refusals carry the CORS grant; the security headers and metrics wrap everything (SecuredFastAPI).
    app.add_middleware(
        RequestMiddleware,
        allowed_hosts=settings.allowed_hosts,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_body_bytes=settings.max_body_bytes,
        access_log_sample_rate=settings.access_log_sample_rate,
        access_log_slow_ms=settings.access_log_slow_ms,
    )
    install_cors_and_proxies(app, settings)
    return app
