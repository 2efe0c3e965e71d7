"""Personal access tokens at the edge: each is exchanged with the auth service for a short-lived access token,
kept until shortly before that expires, so a pipeline polling an analysis costs one exchange per ACCESS_TOKEN_TTL_S
and gateway process, not one per request.

The cache decides nothing on its own: every request still goes through the deny-list, where a revoked token (its id
is the exchanged token's session), a deactivated creator, a removal from the tenant or a deleted tenant ends the
exchanged token within a second; and the exchanged token never outlives the personal one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from libs.common import access_tokens, errors
from libs.common.errors import AppError
from libs.common.tokens import AccessClaims, TokenVerifier

# Exchange again this long before the exchanged token expires: a request never carries one about to lapse.
RENEW_BEFORE_S = 30.0

Exchange = Callable[[str], Awaitable[str]]


class AccessTokenExchange:
    """Personal access token -> (exchanged access token, its claims), by the token's SHA-256, bounded."""

    def __init__(self, *, verifier: TokenVerifier, max_entries: int = 10_000):
        self._verifier = verifier
        self._max = max_entries
        self._cache: dict[bytes, tuple[str, AccessClaims]] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}

    @staticmethod
    def applies_to(token: str) -> bool:
        return token.startswith(access_tokens.PREFIX)

    def _fresh(self, key: bytes) -> tuple[str, AccessClaims] | None:
        found = self._cache.get(key)
        if found is not None and found[1].expires_at - RENEW_BEFORE_S > time.time():
            return found
        return None

    async def claims(self, token: str, exchange: Exchange) -> tuple[str, AccessClaims]:
        if not access_tokens.looks_like_token(token):  # a typo or a guess costs auth nothing
            raise AppError(errors.INVALID_TOKEN)
        key = access_tokens.token_hash(token)
        found = self._fresh(key)
        if found is not None:
            return found
        # Parallel first requests of one pipeline make one exchange, not one each.
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                found = self._fresh(key)
                if found is not None:
                    return found
                exchanged = await exchange(token)
                claims = await self._verifier.verify(exchanged)
                self._remember(key, (exchanged, claims))
                return exchanged, claims
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    def _remember(self, key: bytes, entry: tuple[str, AccessClaims]) -> None:
        if len(self._cache) >= self._max:
            now = time.time()
            self._cache = {k: v for k, v in self._cache.items() if v[1].expires_at > now}
            for stale in list(self._cache)[: max(len(self._cache) - self._max + 1, 0)]:
                del self._cache[stale]
        self._cache[key] = entry
