"""Async PostgreSQL access: one engine per process, pool sized by settings, start-up retries."""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.common.config import CommonSettings
from libs.common.metrics import MeteredPool, track_pool

log = structlog.get_logger(__name__)


def create_engine(settings: CommonSettings, *, application_name: str) -> AsyncEngine:
    """The process's engine. Statement timeout and application name are set on every connection."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        poolclass=MeteredPool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_s,
            "application_name": application_name,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
        },
    )
    track_pool(engine, application_name)
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
