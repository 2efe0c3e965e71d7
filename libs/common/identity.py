"""Who is calling an RPC, settled by the server's interceptor before any handler runs.

Every RPC takes a user's access token unless its service lists it otherwise (`Access`): public RPCs
need nothing, internal ones a service's credential. A handler never authenticates by itself; it reads
the caller the interceptor found with `caller()` (a user) or `calling_service()` (a service), so a
new RPC is protected without anyone remembering a line.
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from nats.js import JetStreamContext

from libs.common import errors
from libs.common.config import CommonSettings
from libs.common.errors import AppError
from libs.common.grpc_server import metadata_value
from libs.common.jwks import grpc_jwks_fetcher
from libs.common.revocation import RevocationFeed, RevocationList
from libs.common.tokens import AccessClaims, TokenVerifier, bearer_token

SERVICE_TOKEN_KEY = "x-service-token"  # noqa: S105 # nosec B105 # a metadata key, not a secret

_CALLER: contextvars.ContextVar[AccessClaims | None] = contextvars.ContextVar("repolens_caller", default=None)
_SERVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("repolens_calling_service", default=None)


def caller() -> AccessClaims:
    """The verified user of the RPC being served; refused when the interceptor found none."""
    claims = _CALLER.get()
    if claims is None:
        raise AppError(errors.INVALID_TOKEN)
    return claims


def calling_service() -> str:
    """The service whose credential the RPC being served carried."""
    name = _SERVICE.get()
    if name is None:
        raise AppError(errors.SERVICE_IDENTITY_REQUIRED)
    return name


def rpc_name(service: Any, method: str) -> str:
    """`/package.Service/Method` of a method of a service descriptor (the name interceptors see)."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


@dataclass(frozen=True)
class Access:
    """How a service's RPCs are authenticated; any RPC not named here takes a user's access token."""

    public: frozenset[str] = frozenset()
    # RPC name -> the services whose credential it accepts (user tokens never qualify).
    services: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # RPC name -> the scope a personal access token needs for it (libs/common/access_tokens.py); an RPC not named
    # here takes a login's token only.
    scopes: Mapping[str, str] = field(default_factory=dict)


class CallerIdentity:
    """Verifies the bearer token a call carries (defence in depth behind the gateway), deny-list included."""

    def __init__(self, *, verifier: TokenVerifier, revocations: RevocationList | None = None):
        self.verifier = verifier
        self.revocations = revocations

    async def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> AccessClaims:
        claims = await self.verifier.verify(bearer_token(metadata_value(context, "authorization")))
        if self.revocations is not None:
            self.revocations.check(claims)
        return claims


class ServiceIdentity:
    """Which service is calling, from its credential."""

    def __init__(self, credentials: Mapping[str, str]):
        self._credentials = {name: token.encode() for name, token in credentials.items() if token}

    def __call__(self, context: grpc.aio.ServicerContext[Any, Any], *, allowed: frozenset[str]) -> str:
        offered = (metadata_value(context, SERVICE_TOKEN_KEY) or "").encode()
        found = None
        for name, token in self._credentials.items():
            # Constant time, and every credential is compared: timing tells nothing about which one is close.
            if hmac.compare_digest(offered, token) and name in allowed:
                found = name
        if found is None:
            raise AppError(errors.SERVICE_IDENTITY_REQUIRED)
        return found


class Authenticator:
    """The interceptor's check of one call, by the RPC's entry in `Access`."""

    def __init__(self, *, access: Access, users: CallerIdentity | None = None, services: ServiceIdentity | None = None):
        self._access = access
        self._users = users
        self._services = services or ServiceIdentity({})

    async def __call__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        _CALLER.set(None)
        _SERVICE.set(None)
        if method in self._access.public:
            return
        allowed = self._access.services.get(method)
        if allowed is not None:
            name = self._services(context, allowed=allowed)
            _SERVICE.set(name)
            structlog.contextvars.bind_contextvars(caller_service=name)
            return
        if self._users is None:
            raise AppError(errors.INVALID_TOKEN)
        claims = await self._users(context)
        if claims.scopes is not None and self._access.scopes.get(method) not in claims.scopes:
            raise AppError(errors.SCOPE_MISSING)
        _CALLER.set(claims)
        structlog.contextvars.bind_contextvars(tenant_id=str(claims.tenant_id), user_id=str(claims.user_id))


def token_verifier(settings: CommonSettings, auth_channel: grpc.aio.Channel) -> TokenVerifier:
    """Verifies access tokens with the auth service's public keys, fetched over `auth_channel` and cached."""
    return TokenVerifier(
        fetch_jwks=grpc_jwks_fetcher(auth_channel, deadline_s=settings.grpc_deadline_s),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        cache_ttl_s=settings.jwks_cache_ttl_s,
        refresh_min_interval_s=settings.jwks_refresh_min_interval_s,
    )


async def revocation_feed(
    settings: CommonSettings, *, js: JetStreamContext, revocations: RevocationList
) -> RevocationFeed:
    """Keeps `revocations` current from events: started (it has replayed what is still relevant); stop it when the
    process stops."""
    feed = RevocationFeed(js=js, revocations=revocations, access_token_ttl_s=settings.access_token_ttl_s)
    await feed.start()
    return feed


async def follow_users(
    settings: CommonSettings, *, js: JetStreamContext, auth_channel: grpc.aio.Channel
) -> tuple[CallerIdentity, RevocationFeed]:
    """The caller check of a service outside auth: tokens verified offline, the deny-list kept by events."""
    revocations = RevocationList(access_token_ttl_s=settings.access_token_ttl_s)
    feed = await revocation_feed(settings, js=js, revocations=revocations)
    return CallerIdentity(verifier=token_verifier(settings, auth_channel), revocations=revocations), feed
