"""Who is calling a gRPC method: a user (verified access token, deny-list) or a service (its credential)."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import structlog

from libs.common import errors
from libs.common.errors import AppError
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


SERVICE_TOKEN_KEY = "x-service-token"  # noqa: S105 # nosec B105 # a metadata key, not a secret


class ServiceIdentity:
    """Which service is calling an internal RPC, from its credential; user tokens never qualify."""

    def __init__(self, credentials: dict[str, str]):
        self._credentials = {name: token.encode() for name, token in credentials.items() if token}

    def __call__(self, context: grpc.aio.ServicerContext[Any, Any], *, allowed: set[str]) -> str:
        offered = (metadata_value(context, SERVICE_TOKEN_KEY) or "").encode()
        for name, token in self._credentials.items():
            # Constant time, and every credential is compared: timing tells nothing about which one is close.
            if hmac.compare_digest(offered, token) and name in allowed:
                structlog.contextvars.bind_contextvars(caller_service=name)
                return name
        raise AppError(errors.SERVICE_IDENTITY_REQUIRED)
