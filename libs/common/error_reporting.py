"""Unexpected errors to Sentry when `SENTRY_DSN` is set, with secrets and personal data scrubbed; off otherwise.

What is reported: every log event at level error or above (`log.exception("rpc.crashed")`, `http.crashed`,
`worker.job_crashed`, `consumer.dead_lettered`, ...) and uncaught exceptions. The log is where the code already
says "this is unexpected", so one structlog processor covers every process without a hook per entry point, and a
handled `AppError` (a 404, a validation error) never becomes an event.

What is sent: the exception's type, scrubbed message and stack (code locations and source lines, never local
variables), the event name and a short allow-list of log fields (ids of the request, trace, tenant, analysis;
never a user id, username or email). Sentry's web and database integrations stay off: they would read request
bodies, headers and SQL parameters, and would wrap every request. Every string is scrubbed before it leaves: the
values of this process's own secrets, token shapes (bearer, JWT, `rt_`, `inv_`, `sk-`, GitHub), URL credentials,
emails, password hashes, long opaque strings, SQL parameters and PostgreSQL `DETAIL` lines (they quote row values).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic import SecretStr

from libs.common import tracing
from libs.common.config import CommonSettings

FILTERED = "[Filtered]"

# Log fields that may go with an event: identifiers of things, not of people, and what the code was doing.
_SAFE_FIELDS = (
    "service",
    "request_id",
    "rpc",
    "method",
    "path",
    "status",
    "code",
    "tenant_id",
    "analysis_id",
    "event_id",
    "event_type",
    "durable",
    "subject",
    "attempt",
    "error",
)
_REPORTED_LEVELS = frozenset({"error", "critical", "exception", "fatal"})
# Keys whose values are secret whatever they look like.
_SECRET_KEY = re.compile(
    r"(?i)(passw|secret|token|api[_-]?key|authorization|cookie|credential|private[_-]?key|master[_-]?key|dsn|signature)"
)
# Code locations and the event's own identifiers: left as they are (a long path or a commit is not a secret).
_KEPT_KEYS = frozenset(
    {"abs_path", "filename", "module", "function", "package", "lineno", "colno", "in_app", "type"}
    | {"event_id", "trace_id", "span_id", "release", "timestamp", "platform", "level"}
)
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # SQLAlchemy appends the bound parameters (row values) to the message; PostgreSQL's DETAIL quotes them too.
    (re.compile(r"\[parameters: [^\n]*"), f"[parameters: {FILTERED}]"),
    (re.compile(r"DETAIL: [^\n]*"), f"DETAIL: {FILTERED}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+(:[^/\s@]*)?@"), rf"\1{FILTERED}@"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {FILTERED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), FILTERED),  # JWT
    (re.compile(r"\b(rt|inv)_[A-Za-z0-9_-]{16,}"), FILTERED),  # our refresh and invitation tokens
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), FILTERED),  # Anthropic, OpenAI
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), FILTERED),
    (re.compile(r"\$argon2[a-z]*\$[^\s'\"]+"), FILTERED),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"[A-Za-z0-9+/_=-]{40,}"), FILTERED),  # keys, hashes, tokens of unknown shape
]


class Scrubber:
    """Removes secrets and personal data from a Sentry event (or breadcrumb), everywhere in it."""

    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so that a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, FILTERED)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any, key: str = "") -> Any:
        if key in _KEPT_KEYS:
            return value
        if key and _SECRET_KEY.search(key):
            return FILTERED if value not in (None, "", [], {}) else value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def event(self, event: dict[str, Any], _hint: Any = None) -> dict[str, Any]:
        scrubbed: dict[str, Any] = self.value(event)
        return scrubbed


def known_secrets(settings: CommonSettings) -> list[str]:
    """This process's own secret values: master keys, service tokens, credentials inside URLs, the DSN's key."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        values = value.values() if isinstance(value, Mapping) else [value]
        found += [v.get_secret_value() for v in values if isinstance(v, SecretStr)]
        if isinstance(value, str) and "://" in value:
            for url in value.split(","):
                parts = urlsplit(url.strip())
                found += [part for part in (parts.username, parts.password) if part]
    return found


_enabled = False


def configure_error_reporting(settings: CommonSettings, *, service: str) -> bool:
    """Starts the Sentry client when a DSN is set; returns whether it did."""
    global _enabled
    if not settings.sentry_dsn:
        return False
    # Imported here: without a DSN the SDK is never loaded.
    import sentry_sdk
    from sentry_sdk.integrations.atexit import AtexitIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration

    scrubber = Scrubber(known_secrets(settings))
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment.value,
        # Uncaught exceptions, one event per exception, and a flush at exit; nothing that patches libraries.
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[ExcepthookIntegration(), DedupeIntegration(), AtexitIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrubber.event,  # type: ignore[arg-type]
        before_breadcrumb=scrubber.event,
        # Tracing is OpenTelemetry's job: no Sentry transactions, no sentry-trace headers on outgoing requests.
        traces_sample_rate=None,
        trace_propagation_targets=[],
        auto_session_tracking=False,
        send_client_reports=False,
    )
    sentry_sdk.set_tag("service", service)
    _enabled = True
    return True


def _exception(exc_info: object) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    return None


def report_errors(_: object, method_name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """structlog processor: an error-level event becomes a Sentry event (its exception, when it has one)."""
    if not _enabled or method_name not in _REPORTED_LEVELS:
        return event
    error = _exception(event.get("exc_info"))
    if error is None and event.get("_from_structlog") is False:
        return event  # a library's error line without an exception: its own business, often noise
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        name = str(event.get("event", ""))
        scope.set_tag("event", name[:200])
        scope.set_context("log", {key: str(event[key]) for key in _SAFE_FIELDS if event.get(key) is not None})
        ids = tracing.current_ids()
        if ids is not None:
            # The same trace id as the spans and the log lines of the request.
            scope.set_tag("trace_id", ids[0])
            scope.set_context("trace", {"trace_id": ids[0], "span_id": ids[1], "type": "trace"})
        if error is not None:
            sentry_sdk.capture_exception(error)
        else:
            sentry_sdk.capture_message(name, level="fatal" if method_name in ("critical", "fatal") else "error")
    return event
