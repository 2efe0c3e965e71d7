"""The error registry and the document generated from it."""

import re
from pathlib import Path

from libs.common import errors

ROOT = Path(__file__).resolve().parents[2]


def test_codes_follow_the_pattern_and_statuses_are_errors() -> None:
    for code, spec in errors.REGISTRY.items():
        assert re.fullmatch(r"ERR_[A-Z]+_\d{3}", code), code
        assert 400 <= spec.http_status < 600, code
        assert spec.message


def test_api_errors_document_is_current() -> None:
    committed = (ROOT / "API_ERRORS.md").read_text(encoding="utf-8")
    assert committed == errors.render_markdown(), "API_ERRORS.md is stale: run `make errors-doc`"


def test_unknown_code_maps_to_internal_error() -> None:
    assert errors.lookup("ERR_NOPE_999") is errors.INTERNAL


def test_app_error_keeps_code_message_and_details() -> None:
    error = errors.AppError(errors.VALIDATION, details={"field": "username"})
    assert error.code == "ERR_VALIDATION_001"
    assert error.message == "Request validation failed"
    assert error.details == {"field": "username"}


def test_error_text_is_short_for_grpc_errors_and_plain_exceptions() -> None:
    import grpc

    from libs.common.logging import error_text

    class FakeRpcError(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    assert error_text(FakeRpcError()) == "UNAVAILABLE: connection refused"
    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(ValueError("bad")) == "bad"
