"""What routes depend on: the gRPC stubs, deadlines and metadata, and the verified caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import grpc
import structlog
from fastapi import Depends, Request

from gateway.access_tokens import AccessTokenExchange
from gateway.ratelimit import rate_limits
from libs.common.config import GatewaySettings
from libs.common.grpc_client import call
from libs.common.grpc_server import REQUEST_ID_KEY
from libs.common.identity import SERVICE_TOKEN_KEY
from libs.common.revocation import RevocationList
from libs.common.tokens import AccessClaims, TokenVerifier, bearer_token
from repolens.analysis.v1 import analysis_pb2_grpc
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc
from repolens.tenants.v1 import tenants_pb2_grpc


@dataclass
class Backends:
    """Persistent channels and stubs, made once at start-up."""

    settings: GatewaySettings
    auth_channel: grpc.aio.Channel
    tenants_channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthServiceStub
    tenants: tenants_pb2_grpc.TenantsServiceStub
    analysis_channel: grpc.aio.Channel
    analysis: analysis_pb2_grpc.AnalysisServiceStub
    verifier: TokenVerifier
    revocations: RevocationList
    access_tokens: AccessTokenExchange

    async def call(
        self,
        method: Any,
        message: Any,
        *,
        request: Request,
        token: str | None = None,
        as_gateway: bool = False,
    ) -> Any:
        """One RPC with the deadline, the request id and the bearer token when acting for a user, or the gateway's
        own credential for the calls made before a user has a token (register, login, refresh, logout)."""
        metadata = [(REQUEST_ID_KEY, request.state.request_id)]
        if token is not None:
            metadata.append(("authorization", f"Bearer {token}"))
        if as_gateway:
            metadata.append((SERVICE_TOKEN_KEY, self.settings.service_token.get_secret_value()))
        return await call(method, message, deadline_s=self.settings.grpc_deadline_s, metadata=metadata)


async def get_backends(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


BackendsDep = Annotated[Backends, Depends(get_backends)]


@dataclass(frozen=True)
class Caller:
    claims: AccessClaims
    token: str


async def current_caller(request: Request, backends: BackendsDep) -> Caller:
    """The verified bearer of the request; the tenant comes from this token and nowhere else."""
    token = bearer_token(request.headers.get("authorization"))
    if AccessTokenExchange.applies_to(token):
        # The personal token goes no further than auth: the services behind see the exchanged one.

        async def exchange(personal: str) -> str:
            reply: auth_pb2.ExchangeAccessTokenResponse = await backends.call(
                backends.auth.ExchangeAccessToken,
                auth_pb2.ExchangeAccessTokenRequest(token=personal),
                request=request,
                as_gateway=True,
            )
            return reply.access_token

        token, claims = await backends.access_tokens.claims(token, exchange)
    else:
        claims = await backends.verifier.verify(token)
    backends.revocations.check(claims)
    structlog.contextvars.bind_contextvars(tenant_id=str(claims.tenant_id), user_id=str(claims.user_id))
    # Per user, not per token: logging in again must not buy a fresh allowance.
    await rate_limits(request).count_request(str(claims.user_id))
    return Caller(claims=claims, token=token)


CurrentCaller = Annotated[Caller, Depends(current_caller)]
