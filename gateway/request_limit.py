"""The per-user API limit (RATE_LIMIT_API), which every authenticated request pays: counted in this process's
memory, with no network round trip on the way of a request, and shared through Redis in the background.

Each tier is a sliding window counter (the window's count plus the previous window's, weighted by how much of
it still overlaps the last `period` seconds), kept per user digest. With Redis, a flush every
RATE_LIMIT_FLUSH_S adds each process's new counts to the window's key (`INCRBY`) and reads back the total of
every process, which the next requests are checked against. So a request costs a dictionary look-up, and the
Redis traffic is one pipelined round trip per flush, whatever the request rate.

The price is a bounded lag: what the other gateway processes admitted since their last flush is not seen yet.
A process also flushes, and makes the request wait for that one round trip, once a user has `burst` requests
not flushed yet (2% of the tier's limit, at least 1), so with P gateway processes a user gets at most the limit
plus (P - 1) x burst in a window, however fast the requests come: the process whose last flush reached Redis
last saw every other process's counts up to their own last flush, and each of them admitted at most `burst`
after it. Without Redis each process counts alone
(development, one gateway). While Redis fails, counting goes on in memory and the counts are sent once it is
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from limits import RateLimitItem
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.logging import error_text

log = structlog.get_logger(__name__)

# After a flush fails, requests stop waiting for flushes this long (the periodic ones go on): an outage costs
# no request a timeout, and counting goes on in memory meanwhile.
REDIS_PAUSE_S = 5.0


@dataclass
class _Window:
    index: int  # floor(now / period) of the window counted in `counted`
    counted: int = 0  # requests in that window: every process's as last read from Redis, plus this one's since
    previous: int = 0  # requests in the window before it


@dataclass(frozen=True)
class _Tier:
    limit: int
    period_s: int
    burst: int


class RequestCounter:
    """Sliding windows per user and tier; `check` admits or refuses a request without awaiting anything unless
    the user has `burst` requests waiting to be flushed."""

    def __init__(self, tiers: Sequence[RateLimitItem], *, redis: Redis | None = None, key_prefix: str = ""):
        self._tiers = tuple(_Tier(tier.amount, tier.get_expiry(), max(1, tier.amount // 50)) for tier in tiers)
        self._redis = redis
        self._key_prefix = key_prefix
        self._windows: dict[tuple[str, int], _Window] = {}  # (user digest, tier) -> its window
        self._unsent: dict[tuple[str, int, int], int] = {}  # (user digest, tier, window index) -> not flushed yet
        self._flushing: asyncio.Task[None] | None = None
        self._swept_at = time.monotonic()
        self._paused_until = 0.0  # after a failed flush, no request waits for one until then

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def check(self, who: str) -> int | None:
        """Counts one request of `who` in every tier, or none when a tier is full: then the seconds to wait."""
        now = time.time()
        while self._backlog(who, now):
            await self.flush()
            now = time.time()
        wait = 0
        windows = []
        for number, tier in enumerate(self._tiers):
            window = self._window(who, number, now)
            windows.append(window)
            overlap = 1 - (now - window.index * tier.period_s) / tier.period_s
            if window.previous * overlap + window.counted + 1 > tier.limit:
                wait = max(wait, _until_room(window, tier, now))
        if wait:
            return wait
        for number, window in enumerate(windows):
            window.counted += 1
            if self._redis is not None:
                key = (who, number, window.index)
                self._unsent[key] = self._unsent.get(key, 0) + 1
        self._sweep(now)
        return None

    def _backlog(self, who: str, now: float) -> bool:
        """Whether `who` has `burst` requests not flushed yet in a tier, while Redis answers: then this request
        waits for a flush. Every request woken by it checks again, so `burst` at most are admitted per flush."""
        return (
            self._redis is not None
            and time.monotonic() >= self._paused_until
            and any(
                self._unsent.get((who, number, int(now // tier.period_s)), 0) >= tier.burst
                for number, tier in enumerate(self._tiers)
            )
        )

    def _window(self, who: str, number: int, now: float) -> _Window:
        index = int(now // self._tiers[number].period_s)
        window = self._windows.get((who, number))
        if window is None:
            window = self._windows[(who, number)] = _Window(index)
        elif window.index != index:
            window.previous = window.counted if window.index == index - 1 else 0
            window.index, window.counted = index, 0
        return window

    async def flush(self) -> None:
        """Sends the counts not sent yet and reads every process's totals back; one flush at a time, and callers
        arriving meanwhile wait for the one under way."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        if self._redis is None or not self._unsent:
            return
        sent, self._unsent = self._unsent, {}
        pipe = self._redis.pipeline(transaction=False)
        for (who, number, index), count in sent.items():
            key = self._key(who, number, index)
            pipe.incrby(key, count)
            pipe.expire(key, 2 * self._tiers[number].period_s)
            pipe.get(self._key(who, number, index - 1))
        try:
            replies = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("ratelimit.flush_failed", error=error_text(exc), retry_in_s=REDIS_PAUSE_S)
            self._paused_until = time.monotonic() + REDIS_PAUSE_S
            for unsent, count in sent.items():  # counted again at the next flush
                self._unsent[unsent] = self._unsent.get(unsent, 0) + count
            return
        for position, (who, number, index) in enumerate(sent):
            window = self._windows.get((who, number))
            if window is None or window.index != index:
                continue  # the window has moved on meanwhile: the next flush reads the new one
            total, previous = int(replies[3 * position]), int(replies[3 * position + 2] or 0)
            window.counted = total + self._unsent.get((who, number, index), 0)
            window.previous = previous

    def _key(self, who: str, number: int, index: int) -> str:
        return f"{self._key_prefix}:api/{who}/{number}/{index}"

    def _sweep(self, now: float) -> None:
        """Forgets users with no request in their last two windows: memory is bounded by the active users."""
        if time.monotonic() - self._swept_at < 60:
            return
        self._swept_at = time.monotonic()
        for (who, number), window in list(self._windows.items()):
            if window.index < int(now // self._tiers[number].period_s) - 1:
                del self._windows[(who, number)]

    async def run(self, interval_s: float) -> None:
        """Flushes every `interval_s` until cancelled (the gateway's lifespan runs it); nothing to do without Redis."""
        while self._redis is not None:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):  # flush logs its own failures; a bug must not stop the loop
                await self.flush()


def _until_room(window: _Window, tier: _Tier, now: float) -> int:
    """Seconds until one more request fits, when nobody sends any meanwhile: until the previous window's weight
    has shrunk enough, or, when this window is full already, until it has become the previous one and shrunk."""
    elapsed = now - window.index * tier.period_s
    if window.counted + 1 > tier.limit:  # in the next window, this one's weight must drop to limit - 1
        needed = tier.period_s + tier.period_s * (1 - (tier.limit - 1) / window.counted)
    else:  # the previous window's weight must drop to what this one leaves
        needed = tier.period_s * (1 - (tier.limit - window.counted - 1) / window.previous)
    return max(1, math.ceil(needed - elapsed))
