"""Async PostgreSQL access: one engine per process, pool sized by settings, start-up retries; and the hot reads'
own pool (`FastReads`)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.common.config import CommonSettings
from libs.common.deadlines import outgoing_timeout
from libs.common.metrics import MeteredPool, track_pool, track_read_pool
from libs.common.slow_queries import SlowQueryWatch, watch_slow_queries

log = structlog.get_logger(__name__)


def _connect_args(settings: CommonSettings, application_name: str) -> dict[str, Any]:
    """Timeouts and the application name, set on every connection of either pool."""
    return {
        "connect_timeout": settings.db_connect_timeout_s,
        "application_name": application_name,
        "options": (
            f"-c statement_timeout={settings.db_statement_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
        ),
    }


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
        connect_args=_connect_args(settings, application_name),
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


# PostgreSQL going away: shutting down (57P01 admin, 57P02 crash), starting up or recovering (57P03), full (53300).
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc`, or the driver error it wraps, says the database cannot be reached or used right now: the
    connection failed, broke or was refused (class 08, a shutdown, a server still starting up or recovering, too many
    clients), or no pooled connection came free in time. A retry later can succeed; an error PostgreSQL answered for
    the statement itself (a constraint, a statement timeout, a syntax error) is not one of these.

    Measured by tests/faults/test_fault_postgres.py: a SIGKILLed PostgreSQL surfaces as SQLAlchemy's
    OperationalError around psycopg's ("server closed the connection unexpectedly", "Connection refused", "the
    database system is starting up", "... not yet accepting connections"), and as psycopg's own on the FastReads
    pool."""
    for _ in range(8):  # a few wrappers deep, never around a cycle
        if exc is None:
            return False
        if isinstance(exc, (sa.exc.TimeoutError, PoolTimeout)):  # every connection of a pool busy past its timeout
            return True
        if isinstance(exc, sa.exc.PendingRollbackError):  # the connection broke inside the use case's transaction
            return True
        if isinstance(exc, sa.exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            exc = exc.orig
            continue
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            state = exc.sqlstate
            # No SQLSTATE: the client's own report of a connection that failed or broke (libpq had no answer).
            return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES
        exc = exc.__cause__
    return False


async def database_is_up(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False


_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
# Left of a call's deadline for answering once a read gave up waiting for a connection.
_ANSWER_S = 0.5
# How long the read pool tries to replace a lost connection (after 1 s, 2 s, 4 s... apart) before giving that one up;
# the next read that finds none starts a fresh attempt at once. psycopg-pool's default (5 minutes, the delays doubling
# all along) left the pool empty for about as long again as PostgreSQL had been down once it was back.
_RECONNECT_S = 5.0


class FastReads:
    """The reads every authenticated call makes (the caller's session, an analysis a CI job polls), done by psycopg
    on a pool of its own, in autocommit, with prepared statements: one round trip each, and no ORM layer.

    Measured by bench/read_path.py's profiles, the same one-row SELECT cost about 590 us of CPU through the
    engine (checkout, compilation cache, result processing; 710 us with the pre-ping) and 80 us here. The
    statements are still written with SQLAlchemy, next to the tables they read: each is compiled once (per tenant
    schema, for tenant tables) into psycopg's text and cached. Writes and transactions stay on the engine.

    A connection lost under a read (PostgreSQL restarted) is dropped by the pool and the read tried once more on
    a fresh one, so a restart costs no failed call once PostgreSQL is back; while it is down, a read waits for a
    connection until shortly before its call's deadline, then fails (DATABASE_UNAVAILABLE, 503 at the gateway), and
    the pool keeps trying to connect at most a couple of seconds apart (`_RECONNECT_S`).
    """

    def __init__(self, settings: CommonSettings, *, application_name: str):
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.db_read_pool_size,
            max_size=settings.db_read_pool_size,
            timeout=settings.db_pool_timeout_s,
            max_lifetime=float(settings.db_pool_recycle_s or 3600 * 24 * 365),
            kwargs={**_connect_args(settings, f"{application_name}-reads"), "autocommit": True},
            name=f"{application_name}-reads",
            open=False,
            reconnect_timeout=_RECONNECT_S,
        )
        self._timeout_s = settings.db_pool_timeout_s
        self._compiled: dict[tuple[int, str | None], tuple[Executable, str]] = {}
        self._opened = False
        self._slow = (
            SlowQueryWatch(application=application_name, threshold_ms=settings.db_slow_query_ms)
            if settings.db_slow_query_ms > 0
            else None
        )
        track_read_pool(self.pool, f"{application_name}-reads")

    async def _open(self) -> None:
        """At the first read, without waiting for the connections (they come in the background): a process that
        never reads this way opens none."""
        if not self._opened:
            self._opened = True
            await self.pool.open(wait=False)

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()

    def _wait_s(self) -> float:
        """How long a read waits for a connection: the pool's timeout, but never past the deadline of the call it
        serves (less a moment to answer). While PostgreSQL is down the pool has none to give, and the caller hears
        DATABASE_UNAVAILABLE in time rather than its own deadline passing."""
        return max(0.05, outgoing_timeout(self._timeout_s + _ANSWER_S) - _ANSWER_S)

    def sql(self, statement: Executable, *, schema: str | None = None) -> str:
        """The statement as psycopg runs it (named parameters), with unqualified tables in `schema` when given."""
        key = (id(statement), schema)
        found = self._compiled.get(key)
        if found is None:
            options: dict[str, Any] = {}
            if schema is not None:
                options = {"schema_translate_map": {None: schema}, "render_schema_translate": True}
            compiled = statement.compile(dialect=_DIALECT, **options)  # type: ignore[attr-defined]
            found = self._compiled[key] = (statement, compiled.string)  # the statement kept: its id stays its own
        return found[1]

    async def one(self, statement: Executable, params: dict[str, Any], *, schema: str | None = None) -> Any:
        """The first row of `statement` (a named tuple: columns by name), or None."""
        text = self.sql(statement, schema=schema)
        await self._open()
        for attempt in (1, 2):
            started = time.perf_counter()
            lost = False
            try:
                async with self.pool.connection(timeout=self._wait_s()) as conn:
                    try:
                        cursor = conn.cursor(row_factory=namedtuple_row)
                        await cursor.execute(text, params, prepare=True)
                        row = await cursor.fetchone()
                    except psycopg.OperationalError:
                        lost = conn.broken  # the pool drops a broken connection when it comes back
                        raise
            except psycopg.OperationalError as exc:
                if self._slow is not None:
                    self._slow.timed(text, time.perf_counter() - started, error=exc)
                if lost and attempt == 1:
                    continue
                raise  # a second loss, or an error PostgreSQL answered (a statement timeout)
            if self._slow is not None:
                self._slow.timed(text, time.perf_counter() - started)
            return row
        raise AssertionError("unreachable")  # pragma: no cover
