"""Rate limits and the failed-login lock, counted in Redis when REDIS_URL is set (so every gateway process
shares them), else in this process's memory (one gateway in development).

The lock lives here rather than in the auth service: the gateway refuses before any password hash is
computed (an attacker cannot spend the auth service's CPU), it counts a username without knowing whether
it exists (so the lock itself reveals nothing), Redis expires the counters by itself, and a failed login
costs no database write. docs/architecture.md ("Rate limits") has the whole reasoning.

The lock is taken, not merely looked at: a login attempt takes a place in its username's lock before the
password is checked, in one step that checks every tier and adds the attempt only if all have room (a Lua
script on Redis; code with no await in memory, which asyncio cannot interleave). Looking first and counting
the failure afterwards let every guess sent at once see room before the first failure was counted. The place
is given back when auth answers anything but a wrong password, so counted attempts are failures (and the
attempts in flight): a success leaves the user's count where it was, and never clears it, which would hand
an attacker a fresh allowance each time the real user logs in.

Why our own script rather than the `limits` package's moving window (its `hit` is atomic too): `hit` counts
one tier at a time, so an attempt refused by a later tier stays counted in the earlier ones, and `limits` can
only `clear` a whole window, not remove one attempt from it, so giving back a success's place would erase
the attacker's failures with it. One sorted set per username (attempt id -> time) does both exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import error_response
from gateway.request_limit import RequestCounter
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
    """A named limit of a rare, sensitive action: one or more tiers ("5/minute;20/hour"), all of which must have
    room, counted in exact moving windows."""

    name: str
    tiers: tuple[RateLimitItem, ...]
    refusal: ErrorSpec = errors.RATE_LIMITED

    @classmethod
    def parse(cls, name: str, text: str, refusal: ErrorSpec = errors.RATE_LIMITED) -> Rule:
        return cls(name, tuple(parse_many(text)), refusal)


def hashed(value: str) -> str:
    """What a key holds instead of a username or address: Redis need not hold personal data to count it."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def client_address(request: Request) -> str:
    """The peer's address; behind TRUSTED_PROXIES, uvicorn's proxy middleware has already put the client's here."""
    return request.client.host if request.client is not None else "unknown"


# Tiers of the username lock as the lock takes them: (attempts allowed, window in milliseconds).
Tiers = tuple[tuple[int, int], ...]


class _UsernameLock(Protocol):
    """The failed-login lock's places: an attempt takes one before the password is checked."""

    async def take(self, who: str, attempt: str, tiers: Tiers) -> int | None:
        """Adds `attempt` if every tier has room, in one step; else adds nothing and returns the milliseconds
        until the fullest tier has room."""

    async def give_back(self, who: str, attempt: str) -> None:
        """Removes `attempt`, whichever tier it was counted in; nothing happens when it is already gone."""


# KEYS[1]: the username's attempts, a sorted set of attempt id -> milliseconds; ARGV[1]: this attempt's id;
# then each tier's limit and window in milliseconds. The time is Redis's own, so gateway clocks need not
# agree, and in integer milliseconds, which Lua and Redis pass around without rounding.
_TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local wait, longest = 0, 0
for i = 2, #ARGV, 2 do
    local limit, window = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    longest = math.max(longest, window)
    local since = '(' .. (now - window)
    if redis.call('ZCOUNT', KEYS[1], since, '+inf') >= limit then
        -- Room comes back when the limit-th newest attempt in the window ages out of it.
        local until_room = window
        if limit > 0 then
            local nth = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'WITHSCORES', 'LIMIT', limit - 1, 1)
            until_room = tonumber(nth[2]) + window - now
        end
        wait = math.max(wait, until_room, 1)
    end
end
if wait > 0 then
    return wait
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], longest)
return 0
"""


class _RedisUsernameLock:
    def __init__(self, client: Redis, key_prefix: str):
        self._client = client
        self._key_prefix = key_prefix
        self._take = client.register_script(_TAKE_SCRIPT)

    def _key(self, who: str) -> str:
        return f"{self._key_prefix}:login-username/{who}"

    async def take(self, who: str, attempt: str, tiers: Tiers) -> int | None:
        limits = [value for tier in tiers for value in tier]
        wait_ms = int(await self._take(keys=[self._key(who)], args=[attempt, *limits]))
        return wait_ms or None

    async def give_back(self, who: str, attempt: str) -> None:
        await self._client.zrem(self._key(who), attempt)


class _MemoryUsernameLock:
    # How often usernames nobody tried for a whole window are forgotten: memory stays bounded by the
    # usernames tried within the longest window, not all since the start.
    SWEEP_EVERY_S = 60.0

    def __init__(self) -> None:
        self._attempts: dict[str, dict[str, int]] = {}  # username digest -> attempt id -> milliseconds
        self._longest_ms = 0
        self._swept_at = time.monotonic()

    async def take(self, who: str, attempt: str, tiers: Tiers) -> int | None:
        # No await from here to the end: asyncio runs no other attempt in between, so this is one step.
        now = time.time_ns() // 1_000_000
        self._longest_ms = max(self._longest_ms, *(window for _, window in tiers))
        self._sweep(now)
        mine = self._attempts.setdefault(who, {})
        wait = 0
        for limit, window in tiers:
            inside = sorted((at for at in mine.values() if at > now - window), reverse=True)
            if len(inside) >= limit:
                until_room = inside[limit - 1] + window - now if limit > 0 else window
                wait = max(wait, until_room, 1)
        if wait:
            return wait
        mine[attempt] = now
        return None

    async def give_back(self, who: str, attempt: str) -> None:
        mine = self._attempts.get(who)
        if mine is not None:
            mine.pop(attempt, None)

    def _sweep(self, now: int) -> None:
        if time.monotonic() - self._swept_at < self.SWEEP_EVERY_S:
            return
        self._swept_at = time.monotonic()
        for who, mine in list(self._attempts.items()):
            for attempt, at in list(mine.items()):
                if at <= now - self._longest_ms:
                    del mine[attempt]
            if not mine:
                del self._attempts[who]


class _Counters:
    """One storage with its moving-window limiter, and the username lock kept next to them."""

    def __init__(self, storage: Storage, username_lock: _UsernameLock):
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)
        self.username_lock = username_lock


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
        self.known_address_ttl_s = settings.login_known_address_ttl_s
        self.flush_interval_s = settings.rate_limit_flush_s
        self._memory = _Counters(MemoryStorage(), _MemoryUsernameLock())
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
            key_prefix = f"{settings.rate_limit_key_prefix}:ratelimit"
            storage = RedisStorage("async+redis://", implementation="redispy", key_prefix=key_prefix, **options)
            client = Redis(connection_pool=self._pool)
            self._redis = _Counters(storage, _RedisUsernameLock(client, key_prefix))
            self.api = RequestCounter(parse_many(settings.rate_limit_api), redis=client, key_prefix=key_prefix)
        else:
            self.api = RequestCounter(parse_many(settings.rate_limit_api))

    @property
    def shared(self) -> bool:
        """Whether the counters live in Redis (and so hold across gateway processes)."""
        return self._redis is not None

    async def close(self) -> None:
        if self._pool is not None:
            await self.api.flush()  # the last counts; a failure is logged and the counts age out with the process
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
            limiter = counters.limiter
            for who in map(hashed, identities):
                for tier in rule.tiers:
                    if not await limiter.hit(tier, rule.name, who):
                        return await _retry_after(limiter, tier, rule.name, who)
            return None

        retry_after = await self._run(run)
        if retry_after is not None:
            raise RateLimitedError(rule.refusal, retry_after_s=retry_after)

    async def count_request(self, user: str) -> None:
        """Counts one authenticated request of `user` against RATE_LIMIT_API; refuses (429) when a tier is full."""
        retry_after = await self.api.check(hashed(user))
        if retry_after is not None:
            raise RateLimitedError(errors.RATE_LIMITED, retry_after_s=retry_after)

    @contextlib.asynccontextmanager
    async def login_attempt(self, *, address: str, username: str) -> AsyncIterator[None]:
        """Wraps one login: per-address limit, a place in the username's lock (kept by a wrong password,
        given back otherwise), then remembering the address of a success.

        A locked username still lets in an address that logged this user in before (within
        LOGIN_KNOWN_ADDRESS_TTL_S), without a place: failures sent from elsewhere cannot lock the real user
        out. Such an address is only ever recorded after the right password, so it tells an attacker nothing.
        """
        user, place = username.strip().lower(), address
        await self.acquire(self.login_address, place)
        attempt = uuid.uuid4().hex
        holder, retry_after = await self._take_place(user, attempt)
        if retry_after is not None and not await self._is_known(user, place):
            metrics.LOGINS.labels(result="locked_out").inc()
            raise RateLimitedError(self.login_username.refusal, retry_after_s=retry_after)
        # Only a wrong password keeps the place. A deactivated account (answered only after the right password)
        # and a failed call tell nothing about the password; anything that is not an AppError (a cancelled
        # request, a bug) keeps it too, since whether the password was checked is then unknown.
        try:
            yield
        except AppError as exc:
            if exc.spec is not errors.INVALID_CREDENTIALS:
                await self._give_back(holder, user, attempt)
            raise
        await self._give_back(holder, user, attempt)
        await self._remember(user, place)

    async def _take_place(self, user: str, attempt: str) -> tuple[_Counters | None, int | None]:
        """The counters holding the attempt's place (None when refused), or the seconds to wait."""
        tiers = tuple((tier.amount, tier.get_expiry() * 1000) for tier in self.login_username.tiers)
        holder: _Counters | None = None

        async def run(counters: _Counters) -> int | None:
            nonlocal holder
            wait_ms = await counters.username_lock.take(hashed(user), attempt, tiers)
            if wait_ms is None:
                holder = counters
                return None
            return max(1, math.ceil(wait_ms / 1000))

        retry_after = await self._run(run)
        return holder, retry_after

    async def _give_back(self, holder: _Counters | None, user: str, attempt: str) -> None:
        """Where the place was taken, not where `_run` would go now: a place taken in memory while Redis was
        down is given back in memory. Should Redis fail now, the place stays and ages out like a failure."""
        if holder is None:
            return
        try:
            await holder.username_lock.give_back(hashed(user), attempt)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("ratelimit.place_not_given_back", error=error_text(exc))

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


async def _retry_after(limiter: MovingWindowRateLimiter, tier: RateLimitItem, *key: str) -> int:
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
