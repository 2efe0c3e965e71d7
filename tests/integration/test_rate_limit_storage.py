"""The gateway's rate limits on a real Redis (Valkey) and in memory: tiers, the login lock, known addresses,
sharing between processes, and what happens when Redis is gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from gateway.ratelimit import RateLimitedError, RateLimits
from libs.common import errors, metrics
from libs.common.config import GatewaySettings
from libs.common.errors import AppError
from libs.devstack.servers import free_port

LimitsFactory = Callable[..., RateLimits]


@pytest.fixture
async def make_limits() -> AsyncIterator[LimitsFactory]:
    made: list[RateLimits] = []

    def factory(**settings: object) -> RateLimits:
        limits = RateLimits(GatewaySettings(**settings))  # type: ignore[arg-type]
        made.append(limits)
        return limits

    yield factory
    for limits in made:
        await limits.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own: the session's Redis is shared."""
    return "test-" + uuid.uuid4().hex[:8]


async def _fail_login(limits: RateLimits, *, username: str, address: str) -> None:
    async with limits.login_attempt(address=address, username=username):
        raise AppError(errors.INVALID_CREDENTIALS)


async def _login(limits: RateLimits, *, username: str, address: str) -> None:
    async with limits.login_attempt(address=address, username=username):
        pass


async def test_tiers_refuse_with_the_time_to_wait(make_limits: LimitsFactory) -> None:
    limits = make_limits(rate_limit_register="2/minute;3/hour")
    await limits.acquire(limits.register, "198.51.100.7")
    await limits.acquire(limits.register, "198.51.100.7")
    with pytest.raises(RateLimitedError) as caught:
        await limits.acquire(limits.register, "198.51.100.7")
    assert caught.value.spec is errors.RATE_LIMITED
    assert 50 <= caught.value.retry_after_s <= 60
    assert caught.value.details == {"retry_after_s": str(caught.value.retry_after_s)}
    await limits.acquire(limits.register, "198.51.100.8")  # another address has its own allowance


async def test_the_sixth_failure_for_a_username_is_refused_from_anywhere(
    make_limits: LimitsFactory, redis_url: str, prefix: str
) -> None:
    limits = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix)
    for attempt in range(5):
        with pytest.raises(AppError) as failed:
            await _fail_login(limits, username="Victim", address=f"203.0.113.{attempt}")
        assert failed.value.spec is errors.INVALID_CREDENTIALS
    locked_out = metrics.LOGINS.labels(result="locked_out")._value.get()
    with pytest.raises(RateLimitedError) as caught:
        await _login(limits, username=" victim ", address="203.0.113.99")  # the same name as auth sees it
    assert caught.value.spec is errors.LOGIN_LOCKED
    assert 1 <= caught.value.retry_after_s <= 60
    assert metrics.LOGINS.labels(result="locked_out")._value.get() == locked_out + 1


async def test_an_address_that_logged_the_user_in_before_is_not_locked_out(
    make_limits: LimitsFactory, redis_url: str, prefix: str
) -> None:
    limits = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_login_username="2/minute")
    await _login(limits, username="alice", address="192.0.2.10")
    for _ in range(2):
        with pytest.raises(AppError):
            await _fail_login(limits, username="alice", address="198.51.100.66")
    with pytest.raises(RateLimitedError):
        await _login(limits, username="alice", address="198.51.100.66")
    await _login(limits, username="alice", address="192.0.2.10")  # the real user, from home


async def test_the_lock_lifts_by_itself(make_limits: LimitsFactory, redis_url: str, prefix: str) -> None:
    limits = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_login_username="2 per 2 seconds")
    for _ in range(2):
        with pytest.raises(AppError):
            await _fail_login(limits, username="bob", address="192.0.2.1")
    with pytest.raises(RateLimitedError) as caught:
        await _login(limits, username="bob", address="192.0.2.2")
    assert caught.value.retry_after_s <= 2
    await asyncio.sleep(caught.value.retry_after_s + 0.2)
    await _login(limits, username="bob", address="192.0.2.2")


async def test_two_gateways_on_one_redis_share_the_counts(
    make_limits: LimitsFactory, redis_url: str, prefix: str
) -> None:
    first = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="3/minute")
    second = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="3/minute")
    await first.acquire(first.api, "user-1")
    await second.acquire(second.api, "user-1")
    await first.acquire(first.api, "user-1")
    with pytest.raises(RateLimitedError):
        await second.acquire(second.api, "user-1")
    assert first.shared
    assert second.shared


async def test_without_redis_each_process_counts_alone(make_limits: LimitsFactory) -> None:
    first, second = make_limits(rate_limit_api="1/minute"), make_limits(rate_limit_api="1/minute")
    await first.acquire(first.api, "user-1")
    await second.acquire(second.api, "user-1")
    with pytest.raises(RateLimitedError):
        await first.acquire(first.api, "user-1")
    assert not first.shared


async def test_redis_holds_no_username_or_address(make_limits: LimitsFactory, redis_url: str, prefix: str) -> None:
    limits = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix)
    await _login(limits, username="carol-the-user", address="192.0.2.77")
    with pytest.raises(AppError):
        await _fail_login(limits, username="carol-the-user", address="192.0.2.77")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}:*")]
    finally:
        await client.aclose()
    assert len(keys) >= 3  # the address's attempts, the username's failures, the known address
    assert not [key for key in keys if "carol" in key or "192.0.2.77" in key]


async def test_a_dead_redis_falls_back_to_memory_at_once(make_limits: LimitsFactory) -> None:
    limits = make_limits(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_register="1/minute")
    started = time.monotonic()
    await limits.acquire(limits.register, "192.0.2.5")
    with pytest.raises(RateLimitedError):
        await limits.acquire(limits.register, "192.0.2.5")  # still limited, in this process's memory
    assert time.monotonic() - started < 2.0
