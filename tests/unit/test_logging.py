"""What our log lines may never hold."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from libs.common.config import CommonSettings
from libs.common.logging import configure_logging

SECRET = "drowssap-2retnuh"


def _fail(password: str) -> None:
    token = password.upper()
    raise RuntimeError("failed " + str(len(token)))


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging sets the process's logging; the tests after this one get theirs back."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {name: logging.getLogger(name).level for name in ("uvicorn.access", "nats", "alembic", "sqlalchemy")}
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, each in quieted.items():
            logging.getLogger(name).setLevel(each)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("json_logs", [False, True])
def test_a_traceback_never_shows_local_variables(json_logs: bool, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(CommonSettings(log_json=json_logs), service="test")
    try:
        _fail("".join(reversed(SECRET)))  # the value is never in this file's lines, which a traceback shows
    except RuntimeError:
        structlog.get_logger("test").exception("rpc.crashed")
    written = capsys.readouterr().err
    assert "rpc.crashed" in written
    assert "RuntimeError" in written  # the traceback is there
    assert "hunter2-password" not in written
    assert "HUNTER2-PASSWORD" not in written
