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


@pytest.mark.parametrize("where", ["redis", "memory"])
async def test_concurrent_wrong_passwords_pass_the_lock_at_most_the_limit(
    make_limits: LimitsFactory, redis_url: str, prefix: str, where: str
) -> None:
    """Checking the lock and taking a place in it are one step: guesses in flight cannot all see room."""
    settings = {"rate_limit_key_prefix": prefix, "rate_limit_login_address": "1000/minute"}
    if where == "redis":
        gateways = [make_limits(redis_url=redis_url, **settings) for _ in range(2)]
        assert all(limits.shared for limits in gateways)
    else:
        gateways = [make_limits(**settings)]
    checked = 0

    async def guess(attempt: int) -> None:
        nonlocal checked
        limits = gateways[attempt % len(gateways)]
        async with limits.login_attempt(address=f"203.0.113.{attempt}", username="dave"):
            checked += 1
            await asyncio.sleep(0.05)  # the auth service checking the password
            raise AppError(errors.INVALID_CREDENTIALS)

    outcomes = await asyncio.gather(*(guess(attempt) for attempt in range(50)), return_exceptions=True)
    assert checked == 5
    refused = [o for o in outcomes if isinstance(o, RateLimitedError)]
    assert len(refused) == 45
    assert all(o.spec is errors.LOGIN_LOCKED and 1 <= o.retry_after_s <= 60 for o in refused)


@pytest.mark.parametrize("where", ["redis", "memory"])
async def test_only_a_wrong_password_keeps_its_place_in_the_lock(
    make_limits: LimitsFactory, redis_url: str, prefix: str, where: str
) -> None:
    """Successes, a deactivated account and a failed auth call are not failures: many of them lock nobody out,
    and they do not wipe out the failures counted before them."""
    limits = make_limits(
        redis_url=redis_url if where == "redis" else "",
        rate_limit_key_prefix=prefix,
        rate_limit_login_address="1000/minute",
    )
    for _ in range(4):
        with pytest.raises(AppError):
            await _fail_login(limits, username="erin", address="198.51.100.4")
    for attempt in range(8):  # the real user, from ever new addresses: none of them known yet
        await _login(limits, username="erin", address=f"192.0.2.{attempt}")
        for spec in (errors.USER_INACTIVE, errors.INTERNAL):
            with pytest.raises(AppError):
                async with limits.login_attempt(address=f"192.0.2.{100 + attempt}", username="erin"):
                    raise AppError(spec)
    with pytest.raises(AppError) as failed:
        await _fail_login(limits, username="erin", address="198.51.100.4")
    assert failed.value.spec is errors.INVALID_CREDENTIALS  # the fifth failure
    with pytest.raises(RateLimitedError):
        await _login(limits, username="erin", address="198.51.100.5")


async def test_two_gateways_on_one_redis_share_the_api_counts_at_each_flush(
    make_limits: LimitsFactory, redis_url: str, prefix: str
) -> None:
    first = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="3/day")
    second = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="3/day")
    await first.count_request("user-1")
    await first.count_request("user-1")
    await first.api.flush()
    await second.count_request("user-1")
    await second.api.flush()  # reads back 3: both gateways' counts
    with pytest.raises(RateLimitedError):
        await second.count_request("user-1")
    # The first has not heard of the second's request yet: it admits one more, then learns the total.
    await first.count_request("user-1")
    await first.api.flush()
    with pytest.raises(RateLimitedError):
        await first.count_request("user-1")
    await second.count_request("user-2")  # another user's count is their own
    assert first.shared
    assert second.shared


async def test_requests_sent_at_once_to_two_gateways_pass_the_limit_by_at_most_one_burst(
    make_limits: LimitsFactory, redis_url: str, prefix: str
) -> None:
    """100 a day leaves a burst of 2 unflushed per gateway: of 300 requests at once, 100 to 102 pass."""
    gateways = [make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="100/day")] * 2
    gateways[1] = make_limits(redis_url=redis_url, rate_limit_key_prefix=prefix, rate_limit_api="100/day")

    async def one(limits: RateLimits) -> bool:
        try:
            await limits.count_request("busy-user")
        except RateLimitedError:
            return False
        return True

    passed = await asyncio.gather(*(one(gateways[n % 2]) for n in range(300)))
    assert 100 <= sum(passed) <= 102
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for limits in gateways:
            await limits.api.flush()
        counted = [int(await client.get(key) or 0) async for key in client.scan_iter(match=f"{prefix}:*api/*")]
    finally:
        await client.aclose()
    assert counted == [sum(passed)]  # every admitted request counted once in Redis, none refused


async def test_without_redis_each_process_counts_alone(make_limits: LimitsFactory) -> None:
    first, second = make_limits(rate_limit_api="1/minute"), make_limits(rate_limit_api="1/minute")
    await first.count_request("user-1")
    await second.count_request("user-1")
    with pytest.raises(RateLimitedError) as caught:
        await first.count_request("user-1")
    assert 1 <= caught.value.retry_after_s <= 120
    assert not first.shared


async def test_a_dead_redis_leaves_the_api_limit_counting_in_memory(make_limits: LimitsFactory) -> None:
    limits = make_limits(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_api="50/day")
    started = time.monotonic()
    for _ in range(50):  # past the burst: the first forced flush fails, and requests stop waiting for flushes
        await limits.count_request("user-1")
    with pytest.raises(RateLimitedError):
        await limits.count_request("user-1")
    assert time.monotonic() - started < 2.0


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


async def test_with_redis_dead_the_username_lock_still_holds_in_memory(make_limits: LimitsFactory) -> None:
    limits = make_limits(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_login_address="1000/minute")
    await _login(limits, username="frank", address="192.0.2.20")  # a success gives its place back in memory
    for _ in range(5):
        with pytest.raises(AppError):
            await _fail_login(limits, username="frank", address="198.51.100.20")
    with pytest.raises(RateLimitedError) as caught:
        await _login(limits, username="frank", address="198.51.100.21")
    assert caught.value.spec is errors.LOGIN_LOCKED
    await _login(limits, username="frank", address="192.0.2.20")  # the known address, remembered in memory
