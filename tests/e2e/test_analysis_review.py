"""The LLM review on a real stack: the tenant sets provider and key through the gateway, the worker's SDKs talk
to a local stand-in of the Anthropic and OpenAI APIs."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.conftest import own_stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, eventually, expect, ready_for_analysis, register
from tests.llm_standin import OVERLOADED, REVIEW_TEXT, SERVER_ERROR, SLOW, Behaviour, LlmStandIn

COMPLEX = "def route(a, b, c):\n" + "".join(
    f"    if a == {i}:\n        return b + {i}\n    elif b == {i}:\n        return c - {i}\n" for i in range(10)
)
LONG = "".join(f"V{i} = {i}\n" for i in range(30))
GATE = {"max_function_complexity": 15, "max_high_findings": 0, "max_secrets": 0, "max_file_lines": 20}


@pytest.fixture(scope="module")
def standin() -> Iterator[LlmStandIn]:
    with LlmStandIn() as api:
        yield api


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm-stack")


@pytest.fixture(scope="module")
def llm_stack(postgres_server_url: str, standin: LlmStandIn, root: Path) -> Iterator[Stack]:
    """A stack of its own (database and NATS too: workers and relays of two stacks must not meet) whose
    worker sends the SDKs to the stand-in; every process logs to `root / "stack.log"`."""
    env = {"ANTHROPIC_BASE_URL": standin.anthropic_url, "OPENAI_BASE_URL": standin.openai_url, "LLM_TIMEOUT_S": "20"}
    with own_stack(postgres_server_url, root, env) as running:
        yield running


@pytest.fixture
def client(llm_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llm_stack.gateway_url, timeout=15) as http:
        yield http


def tenant_with_llm(client: httpx.Client, provider: str, key: str, model: str = "") -> Person:
    person = ready_for_analysis(register(client))
    settings: dict[str, Any] = {f"{provider}_api_key": key, "llm_provider": provider, "quality_gate": GATE}
    if model:
        settings["llm_model"] = model
    shown = expect(person.patch("/api/v2/settings", json=settings), 200)
    assert shown["llm_provider"] == provider
    assert key not in json.dumps(shown)
    return person


def analyse(person: Person, tmp_path: Path, *, wait_for: set[str] | None = None) -> tuple[str, dict[str, Any]]:
    source = git_repository(tmp_path / "project", {"app/route.py": COMPLEX, "app/values.py": LONG})
    repository = expect(person.post("/api/v2/repositories", json={"name": "project", "url": str(source)}), 201)
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    if wait_for is None:
        return started["id"], {}
    deadline = time.monotonic() + 90
    while True:
        analysis: dict[str, Any] = expect(person.get(f"/api/v2/analyses/{started['id']}"), 200)
        if analysis["status"] in wait_for or time.monotonic() > deadline:
            return started["id"], analysis
        time.sleep(0.2)


def new_key(provider: str) -> str:
    return ("sk-ant-api03-" if provider == "anthropic" else "sk-proj-") + uuid.uuid4().hex + uuid.uuid4().hex


def assert_key_kept_secret(key: str, report: dict[str, Any], root: Path) -> None:
    assert key not in json.dumps(report)
    logs = (root / "stack.log").read_text(encoding="utf-8", errors="replace")
    assert "review." in logs  # the worker's review lines are there...
    assert key not in logs  # ...and no process ever wrote the key


@pytest.mark.parametrize(("provider", "model"), [("anthropic", ""), ("openai", "gpt-5.4-mini")])
def test_a_tenant_with_a_key_gets_a_written_review(
    client: httpx.Client, root: Path, standin: LlmStandIn, tmp_path: Path, provider: str, model: str
) -> None:
    key = new_key(provider)
    person = tenant_with_llm(client, provider, key, model)
    analysis_id, done = analyse(person, tmp_path, wait_for={"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    assert "review" in done["timings"]
    report = expect(person.get(f"/api/v2/analyses/{analysis_id}/report"), 200)
    [received] = standin.received(key)  # the tenant's own key reached the provider, once
    assert received.api == provider
    assert "route (app/route.py:1-41): cyclomatic 21" in received.user
    assert "size.file at app/values.py:1" in received.user
    review = report["review"]
    expected_model = model or "claude-sonnet-5-5"
    assert received.body["model"] == expected_model
    assert received.usage is not None
    assert (review["provider"], review["model"], review["state"]) == (provider, expected_model, "written")
    assert review["text"] == REVIEW_TEXT
    assert (review["input_tokens"], review["output_tokens"]) == received.usage
    assert review["prompt_sha256"] == hashlib.sha256(f"{received.system}\n\n{received.user}".encode()).hexdigest()
    assert review["rule_based"]["provider"] == "rules"
    assert "The quality gate failed on: max_function_complexity, max_file_lines." in review["rule_based"]["text"]
    assert_key_kept_secret(key, report, root)


@pytest.mark.parametrize(
    ("provider", "kind", "status"), [("anthropic", OVERLOADED, 529), ("openai", SERVER_ERROR, 500)]
)
def test_a_failing_provider_never_fails_the_analysis(
    client: httpx.Client, root: Path, standin: LlmStandIn, tmp_path: Path, provider: str, kind: str, status: int
) -> None:
    key = new_key(provider)
    standin.behave(key, Behaviour(kind=kind))
    person = tenant_with_llm(client, provider, key)
    analysis_id, done = analyse(person, tmp_path, wait_for={"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    report = expect(person.get(f"/api/v2/analyses/{analysis_id}/report"), 200)
    assert len(standin.received(key)) == 2  # the attempt and its one retry
    review = report["review"]
    assert (review["provider"], review["state"], review["reason"]) == (provider, "unavailable", "provider_error")
    assert review["http_status"] == status
    assert review["rule_based"]["provider"] == "rules"
    assert review["text"] == review["rule_based"]["text"]
    assert "Start with app/route.py:1" in review["text"]
    assert review["prompt_sha256"]
    assert_key_kept_secret(key, report, root)


def test_cancelling_during_the_review_ends_the_analysis_at_once(
    client: httpx.Client, standin: LlmStandIn, tmp_path: Path
) -> None:
    key = new_key("anthropic")
    standin.behave(key, Behaviour(kind=SLOW, delay_s=15))  # inside the worker's 20 s timeout
    person = tenant_with_llm(client, "anthropic", key)
    analysis_id, _ = analyse(person, tmp_path)
    eventually(lambda: bool(standin.received(key)), timeout_s=60, what="the review request")

    def reviewing() -> bool:
        return bool(expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)["step"] == "review")

    eventually(reviewing, what="the review step")
    asked = time.monotonic()
    expect(person.post(f"/api/v2/analyses/{analysis_id}/cancel"), 202)
    deadline = time.monotonic() + 10
    while (analysis := expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200))["status"] == "running":
        assert time.monotonic() < deadline, analysis
        time.sleep(0.1)
    assert analysis["status"] == "cancelled", analysis
    assert time.monotonic() - asked < 5


def test_without_a_provider_the_rule_based_review_stays(
    client: httpx.Client, standin: LlmStandIn, tmp_path: Path
) -> None:
    person = ready_for_analysis(register(client))
    before = len(standin.received())
    analysis_id, done = analyse(person, tmp_path, wait_for={"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    report = expect(person.get(f"/api/v2/analyses/{analysis_id}/report"), 200)
    assert (report["review"]["provider"], report["review"]["state"]) == ("rules", "written")
    assert "review" not in done["timings"]
    assert len(standin.received()) == before
