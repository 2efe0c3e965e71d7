"""structlog set-up: JSON lines in production, readable console lines in development.

Our own log calls are rendered by structlog and written straight to stderr, one write per line; only the
standard library's records (libraries' own logging) go through `logging`, rendered by the same processors. The
detour through `logging` for every line of ours cost more than the line itself (a third of a request's logging
CPU in bench/read_path.py's profiles).
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import structlog

from libs.common import error_reporting, tracing
from libs.common.config import CommonSettings


def configure_logging(settings: CommonSettings, *, service: str) -> None:
    """structlog's loggers and the standard library's records through one renderer, with context variables."""

    def add_service(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("service", service)
        return event

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        tracing.add_trace_ids,
        # Before format_exc_info below turns the exception into text.
        error_reporting.report_errors,
    ]
    renderer: structlog.types.Processor
    if settings.json_logs:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        # Tracebacks without the frames' local variables: they hold passwords, tokens and keys.
        formatter = (
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if importlib.util.find_spec("rich") is not None
            else structlog.dev.plain_traceback
        )
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=formatter)

    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter stays at warning unless asked for.
    for noisy in ("uvicorn.access", "nats", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def error_text(exc: BaseException) -> str:
    """A short, single-line account of an exception for a log field (gRPC errors as code and details)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{getattr(code(), 'name', code())}: {details()}"
    return str(exc) or type(exc).__name__
