"""Workers under stress: a SIGKILL mid-analysis, two workers on twenty jobs, cancellation while running."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.servers import EmbeddedNats
from libs.devstack.stack import WORKER, Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, expect, ready_for_analysis, register

FAST_REDELIVERY = {"JOB_ACK_WAIT_S": "3", "WORKER_CONCURRENCY": "2", "LOG_LEVEL": "INFO"}


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
