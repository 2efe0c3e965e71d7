"""Who is calling: the verified access token of a gRPC call, checked against the deny-list."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from libs.common.grpc_server import metadata_value
from libs.common.revocation import RevocationList
from libs.common.tokens import AccessClaims, TokenVerifier, bearer_token


class CallerIdentity:
    """Verifies the bearer token each service call carries (defence in depth behind the gateway)."""

    def __init__(self, *, verifier: TokenVerifier, revocations: RevocationList | None = None):
        self.verifier = verifier
        self.revocations = revocations

    async def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> AccessClaims:
        claims = await self.verifier.verify(bearer_token(metadata_value(context, "authorization")))
        if self.revocations is not None:
            self.revocations.check(claims)
        structlog.contextvars.bind_contextvars(tenant_id=str(claims.tenant_id), user_id=str(claims.user_id))
        return claims
