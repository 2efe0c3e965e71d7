"""The LLM review through the real anthropic and openai SDKs, against a local stand-in of both APIs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from services.analysis.engine.llm_review import ReviewSettings, build_prompt, llm_review
from services.analysis.engine.review import rule_based_review
from tests.llm_standin import (
    BAD_KEY,
    OVERLOADED,
    RATE_LIMITED,
    REVIEW_TEXT,
    SERVER_ERROR,
    SLOW,
    Behaviour,
    LlmStandIn,
)

PROVIDERS = ("anthropic", "openai")


@pytest.fixture(scope="module")
def api() -> Iterator[LlmStandIn]:
    with LlmStandIn() as standin:
        yield standin


def settings_for(api: LlmStandIn, **overrides: Any) -> ReviewSettings:
    values: dict[str, Any] = {
        "anthropic_base_url": api.anthropic_url,
        "openai_base_url": api.openai_url,
        "timeout_s": 5.0,
        "deadline_s": 20.0,
        "max_output_tokens": 700,
        **overrides,
    }
    return ReviewSettings(**values)


def new_key(provider: str) -> str:
    return ("sk-ant-api03-" if provider == "anthropic" else "sk-proj-") + uuid.uuid4().hex + uuid.uuid4().hex


def sections(key: str = "") -> dict[str, Any]:
    """Report sections as the pipeline leaves them, rule-based review included; `key` planted in a finding
    (a repository that contains the tenant's own key, which the secrets step would have redacted anyway)."""
    built: dict[str, Any] = {
        "inventory": {"totals": {"files": 2, "code": 1300}, "languages": {"Python": {"code": 1300}}},
        "quality_gate": {"status": "failed", "failed": ["max_file_lines"]},
        "findings": [
            {"rule_id": "size.file", "severity": "medium", "path": "big.py", "line": 1, "message": "1250 lines"},
            {"rule_id": "secret.x", "severity": "high", "path": "conf.py", "line": 3, "message": f"token {key}"},
        ],
        "complexity": {
            "functions": 1,
            "top": [
                {
                    "name": "dispatch",
                    "path": "big.py",
                    "start_line": 10,
                    "end_line": 80,
                    "cyclomatic": 22,
                    "length": 71,
                    "parameters": 3,
                    "max_nesting": 4,
                }
            ],
        },
    }
    built["review"] = rule_based_review(built)
    return built


def assert_key_nowhere(
    key: str, record: dict[str, Any], logs: Sequence[MutableMapping[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    assert key not in json.dumps(record)
    assert key not in json.dumps(logs, default=str)
    assert "POST" in caplog.text  # the SDKs' own logging, at DEBUG, was captured...
    assert key not in caplog.text  # ...and never shows the key


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_written_review_records_text_model_tokens_and_prompt_hash(
    api: LlmStandIn, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_key(provider)
    given = sections(key)
    with capture_logs() as logs:
        record = await llm_review(given, provider=provider, api_key=key, model="", settings=settings_for(api))
    [received] = api.received(key)
    assert received.api == provider
    assert received.key == key  # the tenant's key, as the SDK sends it
    defaults = ReviewSettings()
    assert received.body["model"] == defaults.default_model(provider)
    limit = "max_tokens" if provider == "anthropic" else "max_completion_tokens"
    assert received.body[limit] == 700
    assert "dispatch (big.py:10-80): cyclomatic 22" in received.user
    assert "[medium] size.file at big.py:1: 1250 lines" in received.user
    assert "token [redacted]" in received.user
    assert received.usage is not None
    assert record == {
        "provider": provider,
        "model": defaults.default_model(provider),
        "state": "written",
        "reason": None,
        "http_status": None,
        "text": REVIEW_TEXT,
        "prompt_sha256": hashlib.sha256(f"{received.system}\n\n{received.user}".encode()).hexdigest(),
        "input_tokens": received.usage[0],
        "output_tokens": received.usage[1],
        "rule_based": given["review"],
    }
    assert [e["event"] for e in logs] == ["review.written"]
    assert_key_nowhere(key, record, logs, caplog)
    # The same analysis gives the same prompt, whatever the provider or model.
    again = await llm_review(given, provider=provider, api_key=key, model="m-2", settings=settings_for(api))
    assert again["prompt_sha256"] == record["prompt_sha256"]
    assert again["model"] == "m-2"
    assert api.received(key)[-1].body["model"] == "m-2"
    hashed = build_prompt(given, max_input_tokens=ReviewSettings().max_input_tokens, redact=[key]).sha256
    assert record["prompt_sha256"] == hashed


@pytest.mark.parametrize(
    ("provider", "kind", "reason", "status", "requests"),
    [
        ("anthropic", SERVER_ERROR, "provider_error", 500, 2),
        ("anthropic", OVERLOADED, "provider_error", 529, 2),
        ("anthropic", RATE_LIMITED, "rate_limited", 429, 2),
        ("anthropic", BAD_KEY, "auth", 401, 1),
        ("openai", SERVER_ERROR, "provider_error", 500, 2),
        ("openai", OVERLOADED, "provider_error", 503, 2),
        ("openai", RATE_LIMITED, "rate_limited", 429, 2),
        ("openai", BAD_KEY, "auth", 401, 1),
    ],
)
async def test_a_failing_provider_leaves_the_rule_based_review(
    api: LlmStandIn,
    provider: str,
    kind: str,
    reason: str,
    status: int,
    requests: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_key(provider)
    api.behave(key, Behaviour(kind=kind, retry_after="1"))
    given = sections(key)
    with capture_logs() as logs:
        record = await llm_review(given, provider=provider, api_key=key, model="", settings=settings_for(api))
    assert record["state"] == "unavailable"
    assert (record["reason"], record["http_status"]) == (reason, status)
    assert record["text"] == given["review"]["text"]
    assert record["rule_based"] == given["review"]
    assert (record["input_tokens"], record["output_tokens"]) == (None, None)
    assert record["prompt_sha256"] is not None  # the prompt was sent
    # One retry (max_retries=1) for what may pass on a second try; an auth failure is not retried.
    assert len(api.received(key)) == requests
    assert [(e["event"], e["reason"]) for e in logs] == [("review.unavailable", reason)]
    assert_key_nowhere(key, record, logs, caplog)  # the stand-in quotes the key in its error messages


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_provider_slower_than_the_timeout_is_abandoned(
    api: LlmStandIn, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_key(provider)
    api.behave(key, Behaviour(kind=SLOW, delay_s=30))
    started = time.monotonic()
    with capture_logs() as logs:
        record = await llm_review(
            sections(), provider=provider, api_key=key, model="", settings=settings_for(api, timeout_s=0.4)
        )
    elapsed = time.monotonic() - started
    assert (record["state"], record["reason"]) == ("unavailable", "timeout")
    assert len(api.received(key)) == 2  # the first attempt and its one retry, each cut at 0.4 s
    assert elapsed < 15, elapsed  # waiting for either answer would take 30 s: the slack is for a loaded machine
    assert_key_nowhere(key, record, logs, caplog)


async def test_a_long_retry_after_is_cut_by_the_review_deadline(api: LlmStandIn) -> None:
    """Anthropic's SDK waits as long as `retry-after` says; the deadline bounds the whole review."""
    key = new_key("anthropic")
    api.behave(key, Behaviour(kind=RATE_LIMITED, retry_after="3600"))
    started = time.monotonic()
    record = await llm_review(
        sections(), provider="anthropic", api_key=key, model="", settings=settings_for(api, deadline_s=1.5)
    )
    assert time.monotonic() - started < 5
    assert (record["state"], record["reason"]) == ("unavailable", "timeout")
    assert len(api.received(key)) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_without_a_key_nothing_is_sent(api: LlmStandIn, provider: str) -> None:
    before = len(api.received())
    given = sections()
    record = await llm_review(given, provider=provider, api_key="", model="", settings=settings_for(api))
    assert (record["state"], record["reason"], record["prompt_sha256"]) == ("unavailable", "no_key", None)
    assert record["text"] == given["review"]["text"]
    assert len(api.received()) == before


async def test_an_unreachable_provider(api: LlmStandIn) -> None:
    with LlmStandIn() as gone:
        port = gone.port
    # nothing listens there any more
    settings = ReviewSettings(openai_base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2, max_retries=0)
    record = await llm_review(sections(), provider="openai", api_key=new_key("openai"), model="", settings=settings)
    assert (record["state"], record["reason"]) == ("unavailable", "unreachable")


async def test_an_empty_answer_is_not_a_review(api: LlmStandIn) -> None:
    key = new_key("anthropic")
    api.behave(key, Behaviour(text="  "))
    record = await llm_review(sections(), provider="anthropic", api_key=key, model="", settings=settings_for(api))
    assert (record["state"], record["reason"]) == ("unavailable", "empty_response")
