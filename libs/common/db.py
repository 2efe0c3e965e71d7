"""Async PostgreSQL access: one engine per process, pool sized by settings, start-up retries."""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.common.config import CommonSettings
from libs.common.metrics import MeteredPool, track_pool
from libs.common.slow_queries import watch_slow_queries

log = structlog.get_logger(__name__)


def create_engine(settings: CommonSettings, *, application_name: str) -> AsyncEngine:
    """The process's engine. Timeouts and application name are set on every connection; slow statements logged."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        poolclass=MeteredPool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=settings.db_pool_recycle_s or -1,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_s,
            "application_name": application_name,
            "options": (
                f"-c statement_timeout={settings.db_statement_timeout_ms}"
                f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
            ),
        },
    )
    track_pool(engine, application_name)
    watch_slow_queries(engine, application=application_name, threshold_ms=settings.db_slow_query_ms)
    return engine


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool in autocommit mode, for reads: a lone SELECT costs one round trip, not BEGIN/SELECT/ROLLBACK."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def wait_for_database(engine: AsyncEngine, *, timeout_s: float) -> None:
    """Retries with backoff until PostgreSQL answers, so services start in any order."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, sa.exc.OperationalError, sa.exc.InterfaceError)),
        wait=wait_exponential(multiplier=0.2, max=3),
        stop=stop_after_delay(timeout_s),
        reraise=True,
        before_sleep=lambda state: log.warning("db.unavailable", attempt=state.attempt_number),
    ):
        with attempt:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))


async def database_is_up(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
