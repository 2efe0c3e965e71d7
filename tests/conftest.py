"""Session-wide servers for the tests: PostgreSQL, a fresh database, NATS, Redis (Valkey), and the running stack."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from libs.devstack.servers import EmbeddedNats, EmbeddedPostgres, EmbeddedValkey, create_database, drop_database
from libs.devstack.stack import Stack

StackFactory = Callable[..., Stack]

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


def _new_database(server_url: str) -> tuple[str, str]:
    name = f"repolens_test_{secrets.token_hex(6)}"
    return name, create_database(server_url, name)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a database created for this session (so parallel runs on one server do not meet), then dropped."""
    name, url = _new_database(postgres_server_url)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


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
        extra_env={**RELAXED_RATE_LIMITS, "ENGINE_CACHE_DIR": str(tmp_path_factory.mktemp("engine-cache"))},
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
    databases: list[str] = []

    def factory(
        *,
        database_url: str = database_url,
        nats_url: str = nats_url,
        fresh_database: bool = False,
        extra_env: Mapping[str, str] | None = None,
        environment: str = "test",
    ) -> Stack:
        if fresh_database:
            name, database_url = _new_database(postgres_server_url)
            databases.append(name)
        new = Stack(
            database_url,
            nats_url,
            environment=environment,
            extra_env={**RELAXED_RATE_LIMITS, **(extra_env or {})},
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
        for name in databases:
            drop_database(postgres_server_url, name)
