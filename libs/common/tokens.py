"""Access-token verification against the auth service's JWKS, with caching and refresh on unknown `kid`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from jwt.algorithms import OKPAlgorithm

from libs.common import errors
from libs.common.errors import AppError
from libs.common.logging import error_text

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["sub", "tid", "role", "sid", "jti", "iss", "aud", "iat", "exp"]

log = structlog.get_logger(__name__)

JwksFetcher = Callable[[], Awaitable[list[Mapping[str, Any]]]]


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says about its bearer."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    session_id: uuid.UUID
    token_id: str
    issued_at: int
    expires_at: int
    # None for a login's token (everything the role allows); a personal access token's scopes otherwise.
    scopes: frozenset[str] | None = None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` value, or the invalid-token error."""
    if not authorization:
        raise AppError(errors.INVALID_TOKEN)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AppError(errors.INVALID_TOKEN)
    return token.strip()


class TokenVerifier:
    """Verifies EdDSA access tokens offline; keys come from a fetcher (the auth service's JWKS).

    Unknown `kid`s trigger one refetch (at most once per `refresh_min_interval_s`), so a key
    rotation is picked up without waiting for the cache to expire.
    """

    def __init__(
        self,
        *,
        fetch_jwks: JwksFetcher,
        issuer: str,
        audience: str,
        cache_ttl_s: float = 300.0,
        refresh_min_interval_s: float = 2.0,
        verified_cache_size: int = 10_000,
    ):
        self._fetch = fetch_jwks
        self._issuer = issuer
        self._audience = audience
        self._cache_ttl_s = cache_ttl_s
        self._refresh_min_interval_s = refresh_min_interval_s
        self._keys: dict[str, Any] = {}
        self.jwks: list[dict[str, Any]] = []
        # Clients send the same token for its whole life: its signature need not be checked every time.
        self._verified: dict[str, AccessClaims] = {}
        self._verified_max = verified_cache_size
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    async def refresh(self, *, force: bool = False) -> None:
        """Fetches the key set unless it was fetched too recently."""
        async with self._lock:
            since = time.monotonic() - self._fetched_at
            if not force and since < self._refresh_min_interval_s:
                return
            jwks = await self._fetch()
            keys: dict[str, Any] = {}
            for jwk in jwks:
                if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("kid"):
                    keys[str(jwk["kid"])] = OKPAlgorithm.from_jwk(dict(jwk))
            if set(keys) != set(self._keys):
                self._verified.clear()
            self._keys = keys
            self.jwks = [dict(jwk) for jwk in jwks if str(jwk.get("kid")) in keys]
            self._fetched_at = time.monotonic()
            log.info("jwks.refreshed", kids=sorted(keys))

    async def _key(self, kid: str) -> Any:
        if time.monotonic() - self._fetched_at > self._cache_ttl_s:
            try:
                await self.refresh()
            except Exception as exc:  # keep verifying with the cached keys while auth is away
                log.warning("jwks.refresh_failed", error=error_text(exc))
        key = self._keys.get(kid)
        if key is None:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("jwks.refresh_failed", error=error_text(exc))
                raise AppError(errors.INVALID_TOKEN) from exc
            key = self._keys.get(kid)
        if key is None:
            raise AppError(errors.INVALID_TOKEN)
        return key

    async def verify(self, token: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at > time.time():
            return cached
        claims = await self._verify(token)
        if len(self._verified) >= self._verified_max:
            # Oldest first (dicts keep insertion order); expired entries go with them.
            for stale in list(self._verified)[: self._verified_max // 10 or 1]:
                del self._verified[stale]
        self._verified[token] = claims
        return claims

    async def _verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AppError(errors.INVALID_TOKEN) from exc
        # Only our algorithm: this shuts out `none` and HS256-with-the-public-key tokens.
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise AppError(errors.INVALID_TOKEN)
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                tenant_id=uuid.UUID(claims["tid"]),
                role=str(claims["role"]),
                session_id=uuid.UUID(claims["sid"]),
                token_id=str(claims["jti"]),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
                scopes=_scopes(claims.get("scp")),
            )
        except jwt.ExpiredSignatureError as exc:
            raise AppError(errors.TOKEN_EXPIRED) from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AppError(errors.INVALID_TOKEN) from exc


def _scopes(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(scope, str) for scope in value):
        raise ValueError("scp must be a list of strings")
    return frozenset(value)
