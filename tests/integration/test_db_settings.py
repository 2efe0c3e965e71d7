"""The engine every process makes: pool and timeouts from settings, and slow statements logged and counted."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from libs.common.config import CommonSettings
from libs.common.db import create_engine
from libs.common.slow_queries import STATEMENT_CHARS, statement_text

EngineFactory = Callable[..., tuple[AsyncEngine, str]]


def slow_count(application: str) -> float:
    return REGISTRY.get_sample_value("repolens_db_slow_queries_total", {"application": application}) or 0.0


@pytest.fixture
async def make_engine(database_url: str) -> AsyncIterator[EngineFactory]:
    """Engines made by `create_engine`, each with an application name of its own (the counter's label)."""
    made: list[AsyncEngine] = []

    def factory(**settings: Any) -> tuple[AsyncEngine, str]:
        name = f"db-test-{uuid.uuid4().hex[:8]}"
        engine = create_engine(CommonSettings(database_url=database_url, **settings), application_name=name)
        made.append(engine)
        return engine, name

    yield factory
    for engine in made:
        await engine.dispose()


async def test_pool_and_session_settings_reach_every_connection(make_engine: EngineFactory) -> None:
    engine, application = make_engine(
        db_pool_size=3,
        db_max_overflow=2,
        db_pool_timeout_s=1.5,
        db_pool_recycle_s=120,
        db_pool_pre_ping=False,
        db_statement_timeout_ms=1234,
        db_idle_in_transaction_timeout_ms=4321,
    )
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle, pool._pre_ping) == (3, 2, 1.5, 120, False)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT current_setting('statement_timeout'),"
                    " current_setting('idle_in_transaction_session_timeout'), current_setting('application_name')"
                )
            )
        ).one()
    assert row[0] == "1234ms"
    assert row[1] == "4321ms"
    assert row[2] == application

    never, _ = make_engine(db_pool_recycle_s=0)
    assert never.sync_engine.pool._recycle == -1  # 0 means never, as SQLAlchemy spells it


async def test_a_transaction_left_idle_is_ended_by_the_server(make_engine: EngineFactory) -> None:
    engine, _ = make_engine(db_idle_in_transaction_timeout_ms=200, db_pool_pre_ping=True)
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))  # autobegin: the session is now inside a transaction
        await asyncio.sleep(0.6)
        with pytest.raises(sa.exc.DBAPIError):
            await conn.execute(sa.text("SELECT 1"))
    # The pool hands out a working connection afterwards (the dead one is discarded).
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT 2"))).scalar_one() == 2


async def test_a_slow_statement_is_logged_and_counted_without_its_values(make_engine: EngineFactory) -> None:
    engine, application = make_engine(db_slow_query_ms=200)
    secret = "sk-ant-api03-" + uuid.uuid4().hex
    literal = "literal-" + uuid.uuid4().hex
    before = slow_count(application)
    with structlog.testing.capture_logs() as logs:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            await conn.execute(sa.text("SELECT CAST(:token AS text)"), {"token": secret})
            assert [e for e in logs if e["event"] == "db.slow_query"] == []  # fast ones are not logged
            await conn.execute(
                sa.text(f"SELECT pg_sleep(0.3), CAST(:token AS text), '{literal}'"),
                {"token": secret},
            )
    slow = [e for e in logs if e["event"] == "db.slow_query"]
    assert len(slow) == 1, logs
    [entry] = slow
    assert entry["application"] == application
    assert entry["duration_ms"] >= 300
    assert entry["threshold_ms"] == 200
    assert "pg_sleep(0.3)" in entry["statement"]
    assert "%(token)s" in entry["statement"]  # the placeholder, never the value
    assert "'?'" in entry["statement"]
    assert secret not in json.dumps(logs)
    assert literal not in json.dumps(logs)
    assert slow_count(application) == before + 1


async def test_a_statement_cancelled_by_the_timeout_counts_as_slow(make_engine: EngineFactory) -> None:
    engine, application = make_engine(db_slow_query_ms=100, db_statement_timeout_ms=250)
    with structlog.testing.capture_logs() as logs:
        async with engine.connect() as conn:
            with pytest.raises(sa.exc.OperationalError):
                await conn.execute(sa.text("SELECT pg_sleep(2)"))
    [entry] = [e for e in logs if e["event"] == "db.slow_query"]
    assert entry["error"] == "QueryCanceled"
    assert 250 <= entry["duration_ms"] < 2000
    assert slow_count(application) == 1


async def test_zero_turns_the_watch_off(make_engine: EngineFactory) -> None:
    engine, application = make_engine(db_slow_query_ms=0)
    with structlog.testing.capture_logs() as logs:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(0.05)"))
    assert [e for e in logs if e["event"] == "db.slow_query"] == []
    # No watch installed at all: its series would exist (at 0) otherwise.
    assert REGISTRY.get_sample_value("repolens_db_slow_queries_total", {"application": application}) is None


def test_statement_text_is_one_masked_bounded_line() -> None:
    text = statement_text("SELECT  'a''b', E'x',\n $tag$ body $tag$, %(p)s FROM t WHERE x = 'y'" + " OR 1=1" * 200)
    assert "\n" not in text
    assert "a''b" not in text
    assert "body" not in text
    assert "'y'" not in text
    assert text.startswith("SELECT '?', '?', '?', %(p)s FROM t WHERE x = '?'")
    assert len(text) == STATEMENT_CHARS
    assert text.endswith("…")
