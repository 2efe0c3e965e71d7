"""Valkey (the rate limits' Redis) stopped, then frozen, under login and API load: the gateway goes on answering and
counting every limit in its own memory (docs/faults.md: neither open nor closed), the failed-login lock included,
and shares the counts through Valkey again once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from libs.devstack.servers import EmbeddedValkey
from tests.conftest import own_stack
from tests.e2e.people import PASSWORD, unique
from tests.faults.conftest import (
    FAULT_ENV,
    Account,
    Load,
    checked,
    during,
    settled,
    succeeded_after,
    summary,
    worker_started,
)

# The failed-login lock at its shipped strength (the other limits stay relaxed: the load comes from one address).
LIMITS = {"RATE_LIMIT_LOGIN_USERNAME": "5/minute", "RATE_LIMIT_KEY_PREFIX": "faults"}
# A gateway retries Redis this long after it failed (gateway/ratelimit.py REDIS_RETRY_AFTER_S).
REDIS_RETRY_S = 5.0


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        if server.running and server.pid is not None:  # a failed test may have left it frozen
            os.kill(server.pid, signal.SIGCONT)
        server.delete()


async def _logins(load: Load, account: Account, stop: asyncio.Event) -> None:
    """The user of `account` logging in again and again: every login passes the address limit and the lock."""
    while not stop.is_set():
        await load.send(
            "login again", "POST", "/api/v2/auth/login", json={"username": account.username, "password": PASSWORD}
        )
        await asyncio.sleep(0.1)


Seen = list[tuple[int, str, str | None]]


async def _guess(load: Load, username: str, times: int) -> Seen:
    """Wrong passwords for `username`, one after the other: (status, code, Retry-After) of each."""
    seen: Seen = []
    for _ in range(times):
        body = {"username": username, "password": "wrong-password"}
        response = await load.send("guess", "POST", "/api/v2/auth/login", json=body)
        assert response is not None
        seen.append((response.status_code, load.answers[-1].code, response.headers.get("Retry-After")))
    return seen


def _locked_after_five(seen: Seen) -> None:
    assert [status for status, _, _ in seen[:5]] == [401] * 5, seen
    status, code, retry_after = seen[5]
    assert (status, code) == (429, "ERR_RATE_002"), seen
    assert retry_after is not None
    assert 1 <= int(retry_after) <= 60


async def _shared_keys(url: str) -> list[bytes]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match="faults:*")]
    finally:
        await client.aclose()


@pytest.mark.timeout(240)
async def test_valkey_stopped_then_frozen_under_login_and_api_load(
    postgres_server_url: str, own_valkey: EmbeddedValkey, checkout: Path, tmp_path: Path
) -> None:
    env = {**FAULT_ENV, **LIMITS, "REDIS_URL": own_valkey.url}
    with own_stack(postgres_server_url, tmp_path, env) as stack:
        await worker_started(stack)
        async with Load(stack.gateway_url, checkout, users=3) as load:
            await load.run_for(2)
            assert load.accounts, summary(load.answers)
            assert await _shared_keys(own_valkey.url), "the limits were not counted in Valkey"
            stop = asyncio.Event()
            relogging = asyncio.create_task(_logins(load, load.accounts[0], stop))
            try:
                load.mark("stopped")
                await asyncio.to_thread(own_valkey.stop)
                await load.run_for(1)
                # The lock holds without Valkey, in this gateway's memory: the sixth guess is refused.
                _locked_after_five(await _guess(load, unique("victim"), 6))
                await load.run_for(2)
                await asyncio.to_thread(own_valkey.start)  # empty: it keeps nothing on disk
                load.mark("started")
                await load.run_for(REDIS_RETRY_S + 1)
                assert await _shared_keys(own_valkey.url), "the limits did not go back to Valkey"
                # Frozen rather than gone: every call to it would hang, for its timeout at most.
                load.mark("frozen")
                assert own_valkey.pid is not None
                os.kill(own_valkey.pid, signal.SIGSTOP)
                await load.run_for(1)
                _locked_after_five(await _guess(load, unique("victim"), 6))
                await load.run_for(2)
                os.kill(own_valkey.pid, signal.SIGCONT)
                load.mark("thawed")
                await load.run_for(2)
            finally:
                stop.set()
                await relogging
        checked(load)
        for start, end in (("stopped", "started"), ("frozen", "thawed")):
            refused = [a for a in during(load, start, end) if a.status is not None and a.status >= 500]
            assert not refused, f"answered {refused} without Valkey: only the limits need it"
            assert [a for a in during(load, start, end) if a.action == "login again" and a.status == 200]
        succeeded_after(load, "thawed")
        assert "ratelimit.redis_unavailable" in stack.logs("gateway")
        await settled(stack, load)
