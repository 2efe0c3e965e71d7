"""Session-wide servers for the tests: PostgreSQL, a fresh database, NATS, Redis (Valkey), and the running stack."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from libs.devstack.servers import EmbeddedNats, EmbeddedPostgres, EmbeddedValkey, create_database, drop_database
from libs.devstack.stack import Stack

StackFactory = Callable[..., Stack]

# Every process this test run starts inherits this variable (children of children, orphans re-parented to init
# too): at the end, any process that still carries it was left behind, and fails the run.
RUN_MARK = "REPOLENS_TEST_RUN"
LEFTOVER_GRACE_S = 10.0


def _marked_processes(mark: str) -> dict[int, str]:
    """pid -> command line of the running processes whose environment carries this run's mark."""
    needle = f"{RUN_MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            status, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if status == "Z":  # a zombie is dead already; its parent only has not reaped it
            continue
        if int(parent) == os.getpid() and "multiprocessing.resource_tracker" in command:
            continue  # this process's own tracker (process pools start it); it ends when this process does
        found[int(entry.name)] = command
    return found


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(RUN_MARK, secrets.token_hex(8))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if a process it started is still running once every fixture has stopped its own."""
    if not Path("/proc").is_dir():  # pragma: no cover - Linux only
        return
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := _marked_processes(os.environ[RUN_MARK])) and time.monotonic() < deadline:
        time.sleep(0.2)  # a process told to stop may take a moment
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) started by the tests were still running, now killed:"]
    lines += [f"  {pid}: {command[:300]}" for pid, command in sorted(left.items())]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    else:  # pragma: no cover
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Shared stacks serve every test from 127.0.0.1, registering and logging in hundreds of users: the real limits
# would refuse them. tests/e2e/test_rate_limits.py runs gateways of its own with the defaults.
RELAXED_RATE_LIMITS = dict.fromkeys(
    (
        "RATE_LIMIT_LOGIN_ADDRESS",
        "RATE_LIMIT_LOGIN_USERNAME",
        "RATE_LIMIT_REGISTER",
        "RATE_LIMIT_INVITATIONS",
        "RATE_LIMIT_TOKENS",
        "RATE_LIMIT_API",
    ),
    "1000000/minute",
)
# A reused refresh token counts as a concurrent refresh for this long (10 s by default): short, so that the tests of a
# reuse after it need not wait long.
REFRESH_GRACE = {"REFRESH_REUSE_GRACE_S": "1"}


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server to create databases on: TEST_DATABASE_URL, else an embedded one deleted afterwards."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's basetemp: the wheel loosens permissions of every parent of the data dir.
    root = Path(tempfile.mkdtemp(prefix="repolens-test-pg-"))
    server = EmbeddedPostgres(root / "data", "postgres", delete_on_stop=True)
    server.start()
    try:
        yield server.server_url("postgres")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "repolens_test") -> Iterator[str]:
    """The one way the tests make a database: a new one on the server, its URL, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, name)


@contextlib.contextmanager
def own_stack(postgres_server_url: str, root: Path, extra_env: Mapping[str, str]) -> Iterator[Stack]:
    """A started stack with a database and a NATS of its own (durable consumers are named per service: two stacks
    on one NATS would take each other's events), the relaxed test limits under `extra_env`; logs in `root`."""
    nats = EmbeddedNats(root / "nats")
    nats.start()
    try:
        with scratch_database(postgres_server_url) as url:
            env = {**RELAXED_RATE_LIMITS, **REFRESH_GRACE, **extra_env}
            with Stack(url, nats.url, environment="test", extra_env=env, log_file=root / "stack.log") as running:
                yield running
    finally:
        nats.delete()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a database created for this session (so parallel runs on one server do not meet), then dropped."""
    with scratch_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """NATS with JetStream: TEST_NATS_URL, else an embedded server on a free port, removed afterwards."""
    configured = os.environ.get("TEST_NATS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedNats(tempfile.mkdtemp(prefix="repolens-test-nats-"))
    server.start()
    try:
        yield server.url
    finally:
        server.delete()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis: TEST_REDIS_URL, else an embedded Valkey on a free port (never the 6379 a machine may have).

    Shared by the session: tests keep apart with a key prefix of their own (RATE_LIMIT_KEY_PREFIX).
    """
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedValkey(tempfile.mkdtemp(prefix="repolens-test-valkey-"))
    server.start()
    try:
        yield server.url
    finally:
        server.delete()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A private NATS (always embedded, even with TEST_NATS_URL) that the test may stop and start."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.delete()


@pytest.fixture(scope="session")
def stack(database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """auth, tenants and the gateway (ENVIRONMENT=test) as processes on the session database and NATS.

    Shared by the whole session: a test that stops a service must start it again (or use `make_stack`).
    """
    running = Stack(
        database_url,
        nats_url,
        environment="test",
        # The worker keeps an engine cache, as it does under `make run` and in a cluster.
        extra_env={
            **RELAXED_RATE_LIMITS,
            **REFRESH_GRACE,
            "ENGINE_CACHE_DIR": str(tmp_path_factory.mktemp("engine-cache")),
        },
        log_file=tmp_path_factory.mktemp("stack") / "stack.log",
    )
    running.start()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def make_stack(postgres_server_url: str, database_url: str, nats_url: str, tmp_path: Path) -> Iterator[StackFactory]:
    """A factory of extra started stacks, closed (and their fresh databases dropped) after the test.

    `make_stack(nats_url=own_nats.url, fresh_database=True, extra_env={...}, environment="test")`; by default
    a new stack shares the session database and NATS.
    """
    made: list[Stack] = []
    databases = contextlib.ExitStack()

    def factory(
        *,
        database_url: str = database_url,
        nats_url: str = nats_url,
        fresh_database: bool = False,
        extra_env: Mapping[str, str] | None = None,
        environment: str = "test",
    ) -> Stack:
        if fresh_database:
            database_url = databases.enter_context(scratch_database(postgres_server_url))
        new = Stack(
            database_url,
            nats_url,
            environment=environment,
            extra_env={**RELAXED_RATE_LIMITS, **REFRESH_GRACE, **(extra_env or {})},
            log_file=tmp_path / f"stack-{len(made)}.log",
        )
        made.append(new)
        new.start()
        return new

    try:
        yield factory
    finally:
        for each in reversed(made):
            each.close()
        databases.close()
