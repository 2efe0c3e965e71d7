"""Rate limits and the failed-login lock, counted in Redis when REDIS_URL is set (so every gateway process
shares them), else in this process's memory (one gateway in development).

The lock lives here rather than in the auth service: the gateway refuses before any password hash is
computed (an attacker cannot spend the auth service's CPU), it counts a username without knowing whether
it exists (so the lock itself reveals nothing), Redis expires the counters by itself, and a failed login
costs no database write. docs/architecture.md ("Rate limits") has the whole reasoning.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import error_response
from libs.common import errors, metrics
from libs.common.config import GatewaySettings
from libs.common.errors import AppError, ErrorSpec
from libs.common.logging import error_text

log = structlog.get_logger(__name__)

T = TypeVar("T")

# After Redis fails, this process counts in memory for a while before trying Redis again, so that an outage
# costs one failed call every few seconds rather than a timeout on every request.
REDIS_RETRY_AFTER_S = 5.0


class RateLimitedError(AppError):
    """A refusal with the seconds after which trying again can succeed (`Retry-After`)."""

    def __init__(self, spec: ErrorSpec, *, retry_after_s: int):
        super().__init__(spec, details={"retry_after_s": str(retry_after_s)})
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Rule:
    """A named limit: one or more tiers ("5/minute;20/hour"), all of which must have room."""

    name: str
    tiers: tuple[RateLimitItem, ...]
    # Moving windows are exact (login, registration); sliding window counters cost two keys (the busy API limit).
    strategy: Literal["moving", "sliding"]
    refusal: ErrorSpec = errors.RATE_LIMITED

    @classmethod
    def parse(
        cls,
        name: str,
        text: str,
        strategy: Literal["moving", "sliding"] = "moving",
        refusal: ErrorSpec = errors.RATE_LIMITED,
    ) -> Rule:
        return cls(name, tuple(parse_many(text)), strategy, refusal)


def hashed(value: str) -> str:
    """What a key holds instead of a username or address: Redis need not hold personal data to count it."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def client_address(request: Request) -> str:
    """The peer's address; behind TRUSTED_PROXIES, uvicorn's proxy middleware has already put the client's here."""
    return request.client.host if request.client is not None else "unknown"


class _Counters:
    """One storage with a limiter per strategy."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.limiters: dict[str, RateLimiter] = {
            "moving": MovingWindowRateLimiter(storage),
            "sliding": SlidingWindowCounterRateLimiter(storage),
        }


class RateLimits:
    """Every limit of the gateway; see the RATE_LIMIT_* settings."""

    def __init__(self, settings: GatewaySettings):
        self.login_address = Rule.parse("login-address", settings.rate_limit_login_address)
        self.login_username = Rule.parse(
            "login-username", settings.rate_limit_login_username, refusal=errors.LOGIN_LOCKED
        )
        self.register = Rule.parse("register", settings.rate_limit_register)
        self.invitations = Rule.parse("invitations", settings.rate_limit_invitations)
        self.tokens = Rule.parse("tokens", settings.rate_limit_tokens)
        self.api = Rule.parse("api", settings.rate_limit_api, "sliding")
        self.known_address_ttl_s = settings.login_known_address_ttl_s
        self._memory = _Counters(MemoryStorage())
        self._redis: _Counters | None = None
        self._pool: ConnectionPool | None = None
        self._redis_down_until = 0.0
        if settings.redis_url:
            # No retries and short timeouts: redis-py 8 otherwise retries with backoff, and a request would
            # wait for a dead Redis far longer than the memory fallback needs.
            self._pool = ConnectionPool.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            options: dict[str, Any] = {"connection_pool": self._pool}
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=f"{settings.rate_limit_key_prefix}:ratelimit",
                **options,
            )
            self._redis = _Counters(storage)

    @property
    def shared(self) -> bool:
        """Whether the counters live in Redis (and so hold across gateway processes)."""
        return self._redis is not None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def _run(self, operation: Callable[[_Counters], Awaitable[T]]) -> T:
        """On Redis, or in memory while Redis fails: limits per process are better than none."""
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await operation(self._redis)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("ratelimit.redis_unavailable", error=error_text(exc), retry_in_s=REDIS_RETRY_AFTER_S)
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
        return await operation(self._memory)

    async def acquire(self, rule: Rule, *identities: str) -> None:
        """Counts one request against every tier for each identity (a user id, an address...); refuses (429)
        when a tier is full."""

        async def run(counters: _Counters) -> int | None:
            limiter = counters.limiters[rule.strategy]
            for who in map(hashed, identities):
                for tier in rule.tiers:
                    if not await limiter.hit(tier, rule.name, who):
                        return await _retry_after(limiter, tier, rule.name, who)
            return None

        retry_after = await self._run(run)
        if retry_after is not None:
            raise RateLimitedError(rule.refusal, retry_after_s=retry_after)

    async def check(self, rule: Rule, who: str) -> None:
        """Refuses (429) when a tier is full, without counting this request."""
        who = hashed(who)

        async def run(counters: _Counters) -> int | None:
            limiter = counters.limiters[rule.strategy]
            waits = [
                await _retry_after(limiter, tier, rule.name, who)
                for tier in rule.tiers
                if not await limiter.test(tier, rule.name, who)
            ]
            return max(waits) if waits else None

        retry_after = await self._run(run)
        if retry_after is not None:
            raise RateLimitedError(rule.refusal, retry_after_s=retry_after)

    async def record(self, rule: Rule, who: str) -> None:
        """Counts an event (a failed login) against every tier that still has room."""
        who = hashed(who)

        async def run(counters: _Counters) -> None:
            limiter = counters.limiters[rule.strategy]
            for tier in rule.tiers:
                await limiter.hit(tier, rule.name, who)

        await self._run(run)

    @contextlib.asynccontextmanager
    async def login_attempt(self, *, address: str, username: str) -> AsyncIterator[None]:
        """Wraps one login: per-address limit, the username's lock, then counting a failure or remembering
        the address of a success.

        A locked username still lets in an address that logged this user in before (within
        LOGIN_KNOWN_ADDRESS_TTL_S): failures sent from elsewhere cannot lock the real user out.
        Such an address is only ever recorded after the right password, so it tells an attacker nothing.
        """
        user, place = username.strip().lower(), address
        await self.acquire(self.login_address, place)
        try:
            await self.check(self.login_username, user)
        except RateLimitedError:
            if not await self._is_known(user, place):
                metrics.LOGINS.labels(result="locked_out").inc()
                raise
        try:
            yield
        except AppError as exc:
            if exc.spec is errors.INVALID_CREDENTIALS:
                await self.record(self.login_username, user)
            raise
        await self._remember(user, place)

    async def _is_known(self, user: str, place: str) -> bool:
        if self.known_address_ttl_s <= 0:
            return False

        async def run(counters: _Counters) -> bool:
            return await counters.storage.get(_known_key(user, place)) > 0

        return await self._run(run)

    async def _remember(self, user: str, place: str) -> None:
        if self.known_address_ttl_s <= 0:
            return

        async def run(counters: _Counters) -> None:
            # Cleared first so that the expiry restarts: a user who keeps logging in stays known.
            await counters.storage.clear(_known_key(user, place))
            await counters.storage.incr(_known_key(user, place), self.known_address_ttl_s)

        await self._run(run)


def _known_key(user: str, place: str) -> str:
    return f"known-address/{hashed(user)}/{hashed(place)}"


async def _retry_after(limiter: RateLimiter, tier: RateLimitItem, *key: str) -> int:
    stats = await limiter.get_window_stats(tier, *key)
    return max(1, math.ceil(stats.reset_time - time.time()))


def rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


def install_rate_limits(app: FastAPI, settings: GatewaySettings) -> RateLimits:
    """Puts the limits on `app.state` and answers refusals with 429, the error shape and `Retry-After`."""
    limits = RateLimits(settings)
    app.state.rate_limits = limits

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RateLimitedError)
        return error_response(
            exc.spec,
            request_id=getattr(request.state, "request_id", None),
            details=exc.details,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    app.add_exception_handler(RateLimitedError, refused)
    return limits
