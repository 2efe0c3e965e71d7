"""Workers under stress: a SIGKILL mid-analysis, two workers on twenty jobs, cancellation while running."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import psycopg
import pytest
from nats.aio.msg import Msg

from libs.common.events import DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT_PREFIX, make_envelope
from libs.devstack.servers import EmbeddedNats
from libs.devstack.stack import WORKER, Stack
from repolens.events.v1 import events_pb2
from services.analysis.domain import JOBS_STREAM, JOBS_SUBJECT
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, expect, ready_for_analysis, register

# Each test has one tenant: its share of the workers is all four places, so two workers run four analyses at once.
FAST_REDELIVERY = {
    "JOB_ACK_WAIT_S": "3",
    "WORKER_CONCURRENCY": "2",
    "TENANT_MAX_RUNNING_ANALYSES": "4",
    "LOG_LEVEL": "INFO",
}


def many_files(count: int) -> dict[str, str]:
    """A repository whose inventory takes a while: `count` small Python files."""
    return {
        f"pkg{i // 500}/m{i}.py": f"# module {i}\nVALUE = {i}\n\n\ndef f():\n    return VALUE\n" for i in range(count)
    }


@pytest.fixture(scope="module")
def big_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return git_repository(tmp_path_factory.mktemp("big") / "big", many_files(12_000))


@pytest.fixture
def workers_stack(make_stack: Callable[..., Stack], own_nats: EmbeddedNats) -> Stack:
    """A stack of its own, NATS included: durable consumers are named per service, so two stacks on one
    NATS would share them and take each other's events."""
    return make_stack(fresh_database=True, nats_url=own_nats.url, extra_env=FAST_REDELIVERY)


def _wait(person: Person, analysis_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        analysis: dict[str, Any] = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
        if done(analysis) or time.monotonic() > deadline:
            return analysis
        time.sleep(0.05)


def _start(person: Person, repository_id: str) -> str:
    return str(expect(person.post(f"/api/v2/repositories/{repository_id}/analyses", json={}), 202)["id"])


def test_a_killed_worker_leads_to_one_retry_and_one_result(workers_stack: Stack, big_repository: Path) -> None:
    with httpx.Client(base_url=workers_stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repository = expect(person.post("/api/v2/repositories", json={"name": "big", "url": str(big_repository)}), 201)
        analysis_id = _start(person, repository["id"])
        running = _wait(person, analysis_id, lambda a: a["status"] != "queued", 30)
        assert running["status"] == "running", running
        pid = workers_stack.supervisor.pid(WORKER)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        workers_stack.supervisor.wait(WORKER, 10)
        workers_stack.start_service(WORKER, wait=False)
        done = _wait(person, analysis_id, lambda a: a["status"] in ("succeeded", "failed", "cancelled"), 90)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        report = expect(person.get(f"/api/v2/analyses/{analysis_id}/report"), 200)
        assert report["inventory"]["languages"]["Python"]["files"] == 12_000
        time.sleep(1)
        ended = [line for line in workers_stack.logs(WORKER).splitlines() if "analysis.ended" in line]
        assert len([line for line in ended if analysis_id in line]) == 1, ended


def test_two_workers_twenty_jobs_no_overlap(workers_stack: Stack, tmp_path: Path) -> None:
    workers_stack.supervisor.start(
        "worker2", workers_stack.argv(WORKER), env=workers_stack.env(WORKER), cwd=workers_stack.cwd
    )
    with httpx.Client(base_url=workers_stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repositories = []
        for index in range(4):
            source = git_repository(tmp_path / f"r{index}", many_files(300))
            repositories.append(
                expect(person.post("/api/v2/repositories", json={"name": f"r{index}", "url": str(source)}), 201)["id"]
            )
        ids = [_start(person, repositories[i % 4]) for i in range(20)]
        finished = [_wait(person, i, lambda a: a["status"] in ("succeeded", "failed", "cancelled"), 180) for i in ids]
    assert [a["status"] for a in finished] == ["succeeded"] * 20, [a for a in finished if a["status"] != "succeeded"]
    assert {a["attempts"] for a in finished} == {1}
    by_repository: dict[str, list[tuple[str, str]]] = {}
    for analysis in finished:
        by_repository.setdefault(analysis["repository_id"], []).append(
            (analysis["started_at"], analysis["finished_at"])
        )
    for runs in by_repository.values():
        runs.sort()
        for (_, end), (start, _) in itertools.pairwise(runs):
            assert end <= start, f"two analyses of one repository overlapped: {runs}"
    logs = workers_stack.logs(WORKER) + workers_stack.supervisor.logs("worker2")
    assert "worker.started" in workers_stack.supervisor.logs("worker2")
    assert logs.count("analysis.ended") == 20


@pytest.mark.parametrize("step", ["fetch", "scan"])
def test_cancel_while_running(step: str, workers_stack: Stack, big_repository: Path, tmp_path: Path) -> None:
    with httpx.Client(base_url=workers_stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repository = expect(person.post("/api/v2/repositories", json={"name": "big", "url": str(big_repository)}), 201)
        analysis_id = _start(person, repository["id"])
        if step == "fetch":  # the first step: cancel as soon as the analysis runs
            seen = _wait(person, analysis_id, lambda a: a["status"] != "queued", 30)
        else:
            seen = _wait(
                person,
                analysis_id,
                lambda a: a["step"] == "scan" or (a["status"] != "running" and a["status"] != "queued"),
                30,
            )
        assert seen["status"] == "running", seen
        asked = time.monotonic()
        expect(person.post(f"/api/v2/analyses/{analysis_id}/cancel"), 202)
        done = _wait(person, analysis_id, lambda a: a["status"] != "running", 10)
        assert done["status"] == "cancelled", done
        assert time.monotonic() - asked < 5
        small = git_repository(tmp_path / "small", {"a.py": "x = 1\n"})
        other = expect(person.post("/api/v2/repositories", json={"name": "small", "url": str(small)}), 201)
        after = _wait(person, _start(person, other["id"]), lambda a: a["status"] in ("succeeded", "failed"), 30)
        assert after["status"] == "succeeded"


def _started_on(stack: Stack, analysis_id: str) -> str:
    """Which worker process logged the start of the analysis."""
    for name in (WORKER, "worker2"):
        if any("analysis.started" in line and analysis_id in line for line in stack.supervisor.logs(name).splitlines()):
            return name
    raise AssertionError(f"no worker started {analysis_id}")


def test_a_stalled_holder_loses_its_repository_within_the_lease(workers_stack: Stack, big_repository: Path) -> None:
    """A worker frozen mid-analysis (a hung machine, a partition: its database session stays open) keeps no lock:
    its lease lapses within 2 x JOB_ACK_WAIT_S (6 s here), the repository's next analysis runs on the other worker,
    and the frozen one's analysis is retried there."""
    workers_stack.supervisor.start(
        "worker2", workers_stack.argv(WORKER), env=workers_stack.env(WORKER), cwd=workers_stack.cwd
    )
    with httpx.Client(base_url=workers_stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repository = expect(person.post("/api/v2/repositories", json={"name": "big", "url": str(big_repository)}), 201)
        first = _start(person, repository["id"])
        assert _wait(person, first, lambda a: a["status"] != "queued", 30)["status"] == "running"
        time.sleep(0.5)  # its start is logged
        frozen = _started_on(workers_stack, first)
        pid = workers_stack.supervisor.pid(frozen)
        assert pid is not None
        os.killpg(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            second = _start(person, repository["id"])
            running = _wait(person, second, lambda a: a["status"] != "queued", 30)
            assert running["status"] in ("running", "succeeded"), running
            waited = time.monotonic() - stopped
            assert waited < 20, f"the next analysis waited {waited:.1f} s for a frozen worker's repository"
            done = [_wait(person, i, lambda a: a["status"] in ("succeeded", "failed"), 120) for i in (first, second)]
        finally:
            os.killpg(pid, signal.SIGCONT)
    assert [a["status"] for a in done] == ["succeeded", "succeeded"], done
    assert done[0]["attempts"] == 2  # retried on the live worker


async def _dead_letters(nats_url: str, count: int) -> list[Msg]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe(
            f"{DEAD_LETTER_SUBJECT_PREFIX}.analysis-workers", stream=DEAD_LETTER_STREAM
        )
        messages: list[Msg] = []
        deadline = time.monotonic() + 15
        while len(messages) < count and time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.TimeoutError):
                messages += await subscription.fetch(count - len(messages), timeout=1)
        return messages
    finally:
        await nc.close()


async def _publish_jobs(nats_url: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for payload in payloads:
            await js.publish(JOBS_SUBJECT, payload)
    finally:
        await nc.close()


async def test_poison_jobs_are_dead_lettered_or_dropped_and_never_block_the_queue(
    workers_stack: Stack, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    with httpx.Client(base_url=workers_stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        poison = [
            b"\xff\x00 not protobuf at all",
            make_envelope(
                event_type="analysis.requested", payload=events_pb2.UserActivated(user_id="x")
            ).SerializeToString(),
            make_envelope(
                event_type="analysis.requested",
                payload=events_pb2.AnalysisRequested(tenant_id="nope", analysis_id="1", repository_id="2"),
            ).SerializeToString(),
        ]
        harmless = [  # well-formed, but there is nothing to do: dropped
            make_envelope(
                event_type="analysis.requested",
                payload=events_pb2.AnalysisRequested(
                    tenant_id=tenant, analysis_id=str(uuid.uuid4()), repository_id=str(uuid.uuid4())
                ),
            ).SerializeToString()
            for tenant in (person.tenant_id, str(uuid.uuid4()))  # an unknown analysis; an unknown tenant
        ]
        await _publish_jobs(own_nats.url, poison + harmless)
        source = git_repository(tmp_path / "small", {"a.py": "x = 1\n"})
        repository = expect(person.post("/api/v2/repositories", json={"name": "small", "url": str(source)}), 201)
        real = _start(person, repository["id"])  # queued behind the poison: it runs all the same
        assert _wait(person, real, lambda a: a["status"] in ("succeeded", "failed"), 60)["status"] == "succeeded"
    letters = await _dead_letters(own_nats.url, len(poison))
    assert sorted(m.data for m in letters) == sorted(poison)
    assert all(m.headers and "not an analysis job" in m.headers["Repolens-Error"] for m in letters)
    # An unknown tenant's job waits a few seconds (a tenant's schema may be on its way) before it is dropped.
    nc = await nats.connect(own_nats.url)
    try:
        deadline = time.monotonic() + 15
        while True:
            info = await nc.jetstream().consumer_info(JOBS_STREAM, "analysis-workers")
            if (info.num_pending, info.num_ack_pending) == (0, 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


def test_a_job_handed_back_too_often_fails_its_analysis(
    make_stack: Callable[..., Stack], own_nats: EmbeddedNats, big_repository: Path
) -> None:
    stack = make_stack(
        fresh_database=True, nats_url=own_nats.url, extra_env={**FAST_REDELIVERY, "JOB_MAX_DELIVERIES": "3"}
    )
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        repository = expect(person.post("/api/v2/repositories", json={"name": "big", "url": str(big_repository)}), 201)
        with psycopg.connect(stack.database_url, autocommit=True) as conn:  # someone holds the repository for an hour
            conn.execute(
                "INSERT INTO analysis.leases (key, holder, expires_at) VALUES (%s, 'elsewhere', now() + %s)",
                (f"repository:{repository['id']}", dt.timedelta(hours=1)),
            )
        analysis_id = _start(person, repository["id"])
        done = _wait(person, analysis_id, lambda a: a["status"] != "queued", 30)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "ERR_ANALYSIS_005"
    assert done["attempts"] == 0
