"""Quotas and fair scheduling on real stacks: each limit through the HTTP API, concurrent creates at a limit,
and a tenant with a backlog that cannot hold back another tenant's analysis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.servers import EmbeddedNats
from libs.devstack.stack import WORKER, Stack
from tests.conftest import own_stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, error_code, eventually, expect, ready_for_analysis, register, unique

LIMITS = {
    "TENANT_MAX_REPOSITORIES": "2",
    "TENANT_MAX_QUEUED_ANALYSES": "3",
    "TENANT_MAX_ANALYSES_PER_HOUR": "5",
    "USER_MAX_TENANTS": "2",
}
FINISHED = {"succeeded", "failed", "cancelled"}


def many_files(count: int) -> dict[str, str]:
    return {f"pkg{i // 500}/m{i}.py": f"VALUE = {i}\n\n\ndef f():\n    return VALUE\n" for i in range(count)}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quotas")


@pytest.fixture(scope="module")
def quota_stack(postgres_server_url: str, root: Path) -> Iterator[Stack]:
    """One stack with small limits for every limit test (database and NATS of its own, so that no other stack's
    services answer for it)."""
    with own_stack(postgres_server_url, root, LIMITS) as running:
        yield running


@pytest.fixture
def client(quota_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=quota_stack.gateway_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
def small_repository(root: Path) -> Path:
    return git_repository(root / "small", {"a.py": "x = 1\n"})


@pytest.fixture(scope="module")
def slow_repository(root: Path) -> Path:
    """Seconds of work for a worker, so that an analysis of it is still running a moment later."""
    return git_repository(root / "slow", many_files(3000))


def refused(response: httpx.Response, status: int, code: str, limit: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert error_code(response) == code
    details: dict[str, str] = response.json()["error"]["details"]
    assert details["limit"] == str(limit), details
    assert str(limit) in response.json()["error"]["message"]
    return details


def items(person: Person, path: str, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = expect(person.get(path, params={"limit": "100", **params}), 200)["items"]
    return found


def add_repository(person: Person, name: str, url: Path) -> httpx.Response:
    return person.post("/api/v2/repositories", json={"name": name, "url": str(url)})


def start(person: Person, repository_id: str) -> httpx.Response:
    return person.post(f"/api/v2/repositories/{repository_id}/analyses", json={})


def wait_until_finished(person: Person, ids: list[str], timeout_s: float = 60) -> None:
    def done() -> bool:
        return all(expect(person.get(f"/api/v2/analyses/{i}"), 200)["status"] in FINISHED for i in ids)

    eventually(done, timeout_s=timeout_s, what="analyses to finish")


def test_repositories_per_tenant(client: httpx.Client, small_repository: Path) -> None:
    person = ready_for_analysis(register(client))
    first = expect(add_repository(person, "one", small_repository), 201)
    expect(add_repository(person, "two", small_repository), 201)
    refused(add_repository(person, "three", small_repository), 403, "ERR_QUOTA_001", 2)
    assert sorted(r["name"] for r in items(person, "/api/v2/repositories")) == ["one", "two"]
    # At once, not ever: a deleted repository makes room.
    expect(person.delete(f"/api/v2/repositories/{first['id']}"), 204)
    expect(add_repository(person, "three", small_repository), 201)


def test_concurrent_creates_at_the_limit_let_exactly_the_limit_through(
    quota_stack: Stack, client: httpx.Client, small_repository: Path
) -> None:
    person = ready_for_analysis(register(client))

    async def create_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=quota_stack.gateway_url, timeout=15, headers=person.headers) as http:
            body = {"url": str(small_repository)}
            return await asyncio.gather(
                *(http.post("/api/v2/repositories", json={**body, "name": f"r{i}"}) for i in range(10))
            )

    responses = asyncio.run(create_all())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 2 + [403] * 8, [r.text for r in responses]
    assert {error_code(r) for r in responses if r.status_code == 403} == {"ERR_QUOTA_001"}
    assert len(items(person, "/api/v2/repositories")) == 2


def test_concurrent_creates_of_one_name_make_one_repository(
    quota_stack: Stack, client: httpx.Client, small_repository: Path
) -> None:
    person = ready_for_analysis(register(client))

    async def create_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=quota_stack.gateway_url, timeout=15, headers=person.headers) as http:
            body = {"url": str(small_repository), "name": "same"}
            return await asyncio.gather(*(http.post("/api/v2/repositories", json=body) for _ in range(6)))

    responses = asyncio.run(create_all())
    # The name is checked under the lock the count takes: the losers hear 409, not a unique index's 500.
    assert sorted(r.status_code for r in responses) == [201] + [409] * 5, [r.text for r in responses]
    assert {error_code(r) for r in responses if r.status_code == 409} == {"ERR_REPO_002"}


def test_queued_analyses_per_tenant(client: httpx.Client, slow_repository: Path) -> None:
    person = ready_for_analysis(register(client))
    repository = expect(add_repository(person, "slow", slow_repository), 201)
    # One runs (for seconds), the others wait for the repository: all three are queued or running.
    ids = [expect(start(person, repository["id"]), 202)["id"] for _ in range(3)]
    try:
        refused(start(person, repository["id"]), 429, "ERR_QUOTA_002", 3)
        assert sorted(a["id"] for a in items(person, "/api/v2/analyses")) == sorted(ids)
        # Queued or running at once: a cancelled one makes room.
        expect(person.post(f"/api/v2/analyses/{ids[-1]}/cancel"), 202)
        wait_until_finished(person, ids[-1:])
        ids.append(expect(start(person, repository["id"]), 202)["id"])
    finally:
        for analysis_id in ids:
            person.post(f"/api/v2/analyses/{analysis_id}/cancel")
    wait_until_finished(person, ids)


def test_analyses_per_hour_per_tenant(client: httpx.Client, small_repository: Path) -> None:
    person = ready_for_analysis(register(client))
    repository = expect(add_repository(person, "small", small_repository), 201)
    ids = []
    for _ in range(5):  # each cancelled at once: the hourly limit counts them all the same
        analysis_id = expect(start(person, repository["id"]), 202)["id"]
        expect(person.post(f"/api/v2/analyses/{analysis_id}/cancel"), 202)
        ids.append(analysis_id)
    wait_until_finished(person, ids)
    response = start(person, repository["id"])
    details = refused(response, 429, "ERR_QUOTA_003", 5)
    # The oldest of the hour leaves the window in a little under an hour.
    assert 3500 < int(details["retry_after_s"]) <= 3600, details
    assert response.headers["Retry-After"] == details["retry_after_s"]
    assert len(items(person, "/api/v2/analyses")) == 5


def test_organisations_per_user(client: httpx.Client) -> None:
    person = register(client)
    eventually(lambda: len(items(person, "/api/v2/tenants")) == 1, what="the personal tenant")  # made by an event
    slugs = [unique("org-") for _ in range(3)]
    created = [expect(person.post("/api/v2/tenants", json={"name": s, "slug": s}), 201) for s in slugs[:2]]
    # The personal tenant is not counted: two organisations are allowed next to it, not a third.
    refused(person.post("/api/v2/tenants", json={"name": slugs[2], "slug": slugs[2]}), 403, "ERR_QUOTA_004", 2)
    tenants = items(person, "/api/v2/tenants")
    assert sorted(t["slug"] for t in tenants if not t["personal"]) == sorted(slugs[:2])
    assert len(tenants) == 3
    # Owned at once: a deleted organisation makes room.
    person.switch(created[0]["id"])
    expect(person.delete("/api/v2/tenants/current"), 202)
    # The deletion ended the sessions in that tenant; a new login lands in the personal one once auth has heard.
    eventually(lambda: person.login().tenant_id == person.personal_tenant_id, what="a login into the personal tenant")
    expect(person.post("/api/v2/tenants", json={"name": slugs[2], "slug": slugs[2]}), 201)


# Fair scheduling: two workers of two analyses each, and at most two analyses of one tenant at once.
FAIR = {"WORKER_CONCURRENCY": "2", "TENANT_MAX_RUNNING_ANALYSES": "2", "LOG_LEVEL": "INFO"}
BACKLOG = 50


def test_a_tenant_with_a_backlog_does_not_hold_back_another(
    make_stack: Callable[..., Stack], own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    stack = make_stack(fresh_database=True, nats_url=own_nats.url, extra_env=FAIR)
    stack.supervisor.start("worker2", stack.argv(WORKER), env=stack.env(WORKER), cwd=stack.cwd)
    # One source registered as many repositories: the per-repository lock never makes A's analyses wait for each
    # other, so only the per-tenant share can keep them from filling every worker.
    source = git_repository(tmp_path / "src", many_files(300))
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as client:
        a, b = ready_for_analysis(register(client)), ready_for_analysis(register(client))
        a_repositories = [expect(add_repository(a, f"a{i}", source), 201)["id"] for i in range(BACKLOG)]
        b_repository = expect(add_repository(b, "b", source), 201)["id"]
        eventually(lambda: "worker.started" in stack.supervisor.logs("worker2"), timeout_s=30, what="the second worker")
        a_ids = [expect(start(a, r), 202)["id"] for r in a_repositories]
        b_id = expect(start(b, b_repository), 202)["id"]
        most_running = 0
        deadline = time.monotonic() + 60
        while True:
            most_running = max(most_running, len(items(a, "/api/v2/analyses", status="running")))
            b_analysis = expect(b.get(f"/api/v2/analyses/{b_id}"), 200)
            if b_analysis["started_at"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert b_analysis["started_at"] is not None, "B's analysis never started"
        a_analyses = [expect(a.get(f"/api/v2/analyses/{i}"), 200) for i in a_ids]
        not_started = [x for x in a_analyses if x["started_at"] is None]
        # B's analysis started before the last of A's: A's backlog was not all served first.
        assert not_started, "B's analysis started only after every analysis of A"
        assert most_running <= 2, f"{most_running} analyses of A ran at once"
        b_done = eventually_finished(b, b_id)
        assert b_done["status"] == "succeeded", b_done
    logs = stack.logs(WORKER), stack.supervisor.logs("worker2")
    assert all("analysis.started" in text for text in logs), "both workers ran analyses"


def eventually_finished(person: Person, analysis_id: str, timeout_s: float = 60) -> dict[str, Any]:
    wait_until_finished(person, [analysis_id], timeout_s)
    found: dict[str, Any] = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
    return found
