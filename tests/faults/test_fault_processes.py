"""Processes SIGKILLed under load: the analysis worker in the middle of analyses (a long one among them), then the
analysis service in the middle of calls. The killed analyses run again elsewhere (here: in the restarted worker) and
end with one result; calls in flight and calls made while the service is down are answered 503."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from libs.devstack.servers import EmbeddedNats
from libs.devstack.stack import WORKER, Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, eventually, expect, ready_for_analysis, register
from tests.faults.conftest import (
    FAULT_ENV,
    Account,
    Load,
    checked,
    during,
    kill_service,
    restart_service,
    settled,
    succeeded_after,
    worker_started,
)


@pytest.fixture(scope="module")
def long_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose analysis runs for seconds: a worker killed meanwhile is killed in the middle of it."""
    files = {f"pkg{i // 500}/m{i}.py": f"VALUE = {i}\n\n\ndef f(a):\n    return a or VALUE\n" for i in range(1000)}
    return git_repository(tmp_path_factory.mktemp("long") / "long", files)


def _running_long_analysis(base_url: str, source: Path) -> Account:
    """A user whose analysis of `source` is running now."""
    with httpx.Client(base_url=base_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repository = expect(person.post("/api/v2/repositories", json={"name": "long", "url": str(source)}), 201)["id"]
        analysis = expect(person.post(f"/api/v2/repositories/{repository}/analyses", json={}), 202)["id"]
        eventually(
            lambda: person.get(f"/api/v2/analyses/{analysis}").json()["status"] == "running",
            timeout_s=30,
            what="the long analysis running",
        )
    return Account(person.username, person.user_id, person.personal_tenant_id, "", {repository: "long"}, [analysis])


@pytest.mark.timeout(240)
async def test_worker_and_analysis_service_killed_under_load(
    make_stack: Callable[..., Stack], own_nats: EmbeddedNats, checkout: Path, long_checkout: Path
) -> None:
    stack = await asyncio.to_thread(make_stack, fresh_database=True, nats_url=own_nats.url, extra_env=FAULT_ENV)
    await worker_started(stack)
    async with Load(stack.gateway_url, checkout, users=3) as load:
        await load.run_for(2)
        long = await asyncio.to_thread(_running_long_analysis, stack.gateway_url, long_checkout)
        load.accounts.append(long)  # checked with the others: it must succeed, once
        load.mark("worker killed")
        await kill_service(stack, WORKER)
        await load.run_for(2)
        await restart_service(stack, WORKER)
        await load.run_for(3)
        load.mark("analysis killed")
        await kill_service(stack, "analysis")
        await load.run_for(3)
        await restart_service(stack, "analysis")
        load.mark("analysis back")
        await load.run_for(4)
    checked(load)
    down = [a for a in during(load, "analysis killed", "analysis back") if a.status == 503]
    assert down, "nothing was refused while the analysis service was down"
    assert {a.code for a in down} == {"ERR_UPSTREAM_001"}
    succeeded_after(load, "analysis back", "start analysis")
    await settled(stack, load)
    # The long analysis ran twice: the killed worker's attempt, then the restarted worker's.
    attempts = await asyncio.to_thread(_attempts, stack.gateway_url, long)
    assert attempts == 2


def _attempts(base_url: str, account: Account) -> int:
    with httpx.Client(base_url=base_url, timeout=15) as client:
        person = Person(client, account.username, account.user_id, account.personal_tenant_id).login()
        analysis = expect(person.get(f"/api/v2/analyses/{account.analyses[0]}"), 200)
    assert analysis["status"] == "succeeded", analysis
    return int(analysis["attempts"])
