"""Slow statements: every statement of an engine is timed; those over the threshold are logged and counted.

The log line (`db.slow_query`) carries the statement's text as the driver received it, with placeholders where
the values go: parameter values never reach the log (they may be password hashes, tokens or API keys), and quoted
literals that code wrote into the text are masked too. Errors are reported by their class only, since a database
error message can quote the offending value.
"""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.metrics import DB_SLOW_QUERIES

log = structlog.get_logger(__name__)

# Long enough to recognise a query in a log line, short enough not to flood it (reports are big JSON documents).
STATEMENT_CHARS = 600
_STARTED = "repolens_statement_started"
_LITERAL = re.compile(r"(?:E|e)?'(?:[^']|'')*'|\$(\w*)\$.*?\$\1\$", re.DOTALL)
_SPACE = re.compile(r"\s+")


def statement_text(statement: str) -> str:
    """One line, literals masked, cut to STATEMENT_CHARS: what a log line may show of a statement."""
    text = _SPACE.sub(" ", _LITERAL.sub("'?'", statement)).strip()
    return text if len(text) <= STATEMENT_CHARS else text[: STATEMENT_CHARS - 1] + "…"


class SlowQueryWatch:
    """Engine events that time each cursor execution (on the async engine's sync core, where they fire)."""

    def __init__(self, *, application: str, threshold_ms: int):
        self.application = application
        self.threshold_s = threshold_ms / 1000
        DB_SLOW_QUERIES.labels(application=application)  # the series exists at 0 before the first slow statement

    def install(self, engine: AsyncEngine) -> None:
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._before)
        sa.event.listen(engine.sync_engine, "after_cursor_execute", self._after)
        sa.event.listen(engine.sync_engine, "handle_error", self._failed)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if context is not None:
            setattr(context, _STARTED, time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        self._check(context, statement, error=None)

    def _failed(self, exception_context: ExceptionContext) -> None:
        # A statement cancelled by statement_timeout is the slowest kind: it must be seen too.
        statement = exception_context.statement
        if statement is not None:
            self._check(exception_context.execution_context, statement, error=exception_context.original_exception)

    def _check(self, context: Any, statement: str, *, error: BaseException | None) -> None:
        started = getattr(context, _STARTED, None) if context is not None else None
        if started is None:
            return
        delattr(context, _STARTED)
        self.timed(statement, time.perf_counter() - started, error=error)

    def timed(self, statement: str, elapsed_s: float, *, error: BaseException | None = None) -> None:
        """Logs and counts one statement that took `elapsed_s`, when that is over the threshold."""
        if elapsed_s < self.threshold_s:
            return
        DB_SLOW_QUERIES.labels(application=self.application).inc()
        fields: dict[str, Any] = {
            "application": self.application,
            "duration_ms": round(elapsed_s * 1000, 1),
            "threshold_ms": round(self.threshold_s * 1000),
            "statement": statement_text(statement),
        }
        if error is not None:
            fields["error"] = type(error).__name__
        log.warning("db.slow_query", **fields)


def watch_slow_queries(engine: AsyncEngine, *, application: str, threshold_ms: int) -> SlowQueryWatch | None:
    """Times every statement of `engine`; None (and no listener at all) when the threshold is 0."""
    if threshold_ms <= 0:
        return None
    watch = SlowQueryWatch(application=application, threshold_ms=threshold_ms)
    watch.install(engine)
    return watch
