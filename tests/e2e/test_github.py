"""GitHub's push and pull-request webhooks queue analyses, verified by X-Hub-Signature-256 and seen once; when the
analysis ends, the worker posts its commit status to GitHub (a stand-in of its REST API on 127.0.0.1) with the
tenant's GitHub token."""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.conftest import own_stack
from tests.e2e.analysis_repos import git_branch, git_repository, head_of
from tests.e2e.people import Person, error_code, expect, finished, ready_for_analysis, register
from tests.github_standin import GitHubStandIn

GITHUB_TOKEN = "ghp_" + "Zx9" * 12  # the tenant's token, which only the stand-in accepts
FULL_NAME = "acme/widget"


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(token=GITHUB_TOKEN) as standin:
        yield standin


@pytest.fixture(scope="module")
def hooked(postgres_server_url: str, github: GitHubStandIn) -> Iterator[Stack]:
    env = {"GITHUB_API_URL": github.url, "PUBLIC_URL": "http://repolens.test"}
    with own_stack(postgres_server_url, Path(tempfile.mkdtemp(prefix="repolens-github-")), env) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(hooked: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooked.gateway_url, timeout=15) as http:
        yield http


def _signed(secret: str, payload: dict[str, Any]) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    return body, "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    client: httpx.Client, repository_id: str, event: str, body: bytes, signature: str, delivery: str | None = None
) -> httpx.Response:
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }
    return client.post(f"/api/v2/hooks/github/{repository_id}", content=body, headers=headers)


def _pull_request(number: int, head_ref: str, head_sha: str, base_sha: str, action: str = "opened") -> dict[str, Any]:
    repo = {"full_name": FULL_NAME}
    return {
        "action": action,
        "number": number,
        "repository": repo,
        "pull_request": {
            "number": number,
            "head": {"ref": head_ref, "sha": head_sha, "repo": repo},
            "base": {"ref": "main", "sha": base_sha, "repo": repo},
        },
    }


@pytest.fixture(scope="module")
def project(client: httpx.Client) -> tuple[Person, dict[str, Any], str, Path]:
    person = ready_for_analysis(register(client))
    expect(person.patch("/api/v2/settings", json={"github_token": GITHUB_TOKEN}), 200)
    root = git_repository(Path(tempfile.mkdtemp(prefix="repolens-hooked-")) / "widget", {"app.py": "X = 1\n"})
    git_branch(root, "feature", {"more.py": "def f(x):\n    return x\n"})
    repository = expect(person.post("/api/v2/repositories", json={"name": "widget", "url": str(root)}), 201)
    secret = expect(person.post(f"/api/v2/repositories/{repository['id']}/webhook-secret"), 201)
    assert secret["url"] == f"/api/v2/hooks/github/{repository['id']}"
    assert secret["events"] == ["push", "pull_request"]
    return person, repository, secret["secret"], root


def test_a_pull_request_queues_one_analysis_and_gets_its_commit_status(
    client: httpx.Client, project: tuple[Person, dict[str, Any], str, Path], github: GitHubStandIn
) -> None:
    person, repository, secret, root = project
    head, base = head_of(root, "feature"), head_of(root, "main")
    body, signature = _signed(secret, _pull_request(12, "feature", head, base))
    delivery = str(uuid.uuid4())

    first = deliver(client, repository["id"], "pull_request", body, signature, delivery)
    assert first.status_code == 202, first.text
    analysis_id = first.json()["analysis_id"]
    # GitHub delivers again (a timeout on its side, or a replay): nothing more is queued.
    again = deliver(client, repository["id"], "pull_request", body, signature, delivery)
    assert (again.status_code, again.json()["duplicate"], again.json()["queued"]) == (200, True, False)
    listed = expect(person.get("/api/v2/analyses", params={"repository_id": repository["id"]}), 200)["items"]
    assert [a["id"] for a in listed] == [analysis_id]

    done = finished(person, analysis_id)
    assert done["status"] == "succeeded", done
    assert done["ref"] == "feature"
    assert done["base_ref"] == "main"
    assert done["pull_request"] == {"number": 12, "head_sha": head, "base_sha": base}
    deadline = time.monotonic() + 10
    while not github.statuses:
        assert time.monotonic() < deadline, github.refused
        time.sleep(0.1)
    time.sleep(0.5)  # one status, not one per attempt or per step
    [status] = github.statuses
    assert (status.full_name, status.sha, status.authorization) == (FULL_NAME, head, f"Bearer {GITHUB_TOKEN}")
    assert status.body["context"] == "repolens"
    assert status.body["state"] == "success"
    assert status.body["target_url"] == f"http://repolens.test/api/v2/analyses/{analysis_id}"
    assert status.body["description"].startswith("Quality gate passed")
    assert github.refused == []


def test_a_wrong_signature_is_refused_and_queues_nothing(
    client: httpx.Client, project: tuple[Person, dict[str, Any], str, Path]
) -> None:
    person, repository, secret, root = project
    before = len(expect(person.get("/api/v2/analyses"), 200)["items"])
    body, _ = _signed(secret, _pull_request(13, "feature", head_of(root, "feature"), head_of(root, "main")))
    _, other = _signed("whsec_not-the-secret", json.loads(body))
    for signature in (other, "sha256=" + "0" * 64, "", "sha1=abc"):
        refused = deliver(client, repository["id"], "pull_request", body, signature)
        assert (refused.status_code, error_code(refused)) in {(401, "ERR_HOOK_001"), (422, "ERR_VALIDATION_001")}
    # A body changed after signing is not the signed one.
    tampered = body.replace(b'"number": 13', b'"number": 14')
    assert (
        deliver(client, repository["id"], "pull_request", tampered, _signed(secret, json.loads(body))[1]).status_code
        == 401
    )
    # An unknown repository answers exactly as a bad signature does.
    unknown = deliver(client, str(uuid.uuid4()), "pull_request", body, _signed(secret, json.loads(body))[1])
    assert (unknown.status_code, error_code(unknown)) == (401, "ERR_HOOK_001")
    assert len(expect(person.get("/api/v2/analyses"), 200)["items"]) == before


def test_a_push_queues_the_branch_and_other_events_are_ignored(
    client: httpx.Client, project: tuple[Person, dict[str, Any], str, Path]
) -> None:
    person, repository, secret, root = project
    repo = {"full_name": FULL_NAME}
    push = {"ref": "refs/heads/main", "after": head_of(root, "main"), "repository": repo, "deleted": False}
    queued = deliver(client, repository["id"], "push", *_signed(secret, push))
    assert queued.status_code == 202, queued.text
    assert finished(person, queued.json()["analysis_id"])["ref"] == "main"
    ignored = {
        "ping": {"zen": "Keep it logically awesome.", "repository": repo},
        "push": {"ref": "refs/tags/v1", "after": head_of(root, "main"), "repository": repo},
        "pull_request": _pull_request(15, "feature", head_of(root, "feature"), head_of(root, "main"), "closed"),
        "issues": {"action": "opened", "repository": repo},
    }
    for event, payload in ignored.items():
        answer = deliver(client, repository["id"], event, *_signed(secret, payload))
        assert answer.status_code == 200, (event, answer.text)
        assert answer.json()["queued"] is False
        assert answer.json()["ignored"]


def test_a_new_secret_retires_the_old_one(
    client: httpx.Client, project: tuple[Person, dict[str, Any], str, Path]
) -> None:
    person, repository, old, root = project
    new = expect(person.post(f"/api/v2/repositories/{repository['id']}/webhook-secret"), 201)["secret"]
    assert new != old
    push = {"ref": "refs/heads/feature", "after": head_of(root, "feature"), "repository": {"full_name": FULL_NAME}}
    assert deliver(client, repository["id"], "push", *_signed(old, push)).status_code == 401
    accepted = deliver(client, repository["id"], "push", *_signed(new, push))
    assert accepted.status_code == 202, accepted.text
    finished(person, accepted.json()["analysis_id"])


def test_another_tenant_cannot_take_a_repositorys_secret(
    client: httpx.Client, project: tuple[Person, dict[str, Any], str, Path]
) -> None:
    _, repository, _, _ = project
    stranger = ready_for_analysis(register(client))
    refused = stranger.post(f"/api/v2/repositories/{repository['id']}/webhook-secret")
    assert (refused.status_code, error_code(refused)) == (404, "ERR_REPO_001")
