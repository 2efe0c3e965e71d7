"""What a GitHub delivery asks for, its signature, the derived secrets, and the commit status of an analysis."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from services.analysis import github
from services.analysis.domain import PullRequest

KEY = b"k" * 32
TENANT, REPOSITORY = uuid.uuid4(), uuid.uuid4()
HEAD, BASE = "a" * 40, "b" * 40


def test_secrets_are_derived_per_repository_and_generation() -> None:
    first = github.webhook_secret(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=1)
    assert first.startswith("whsec_")
    assert first == github.webhook_secret(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=1)
    others = {
        github.webhook_secret(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=2),
        github.webhook_secret(KEY, tenant_id=TENANT, repository_id=uuid.uuid4(), generation=1),
        github.webhook_secret(KEY, tenant_id=uuid.uuid4(), repository_id=REPOSITORY, generation=1),
        github.webhook_secret(b"o" * 32, tenant_id=TENANT, repository_id=REPOSITORY, generation=1),
    }
    assert first not in others
    assert len(others) == 4


def test_the_signature_is_the_hmac_of_the_raw_body() -> None:
    body = b'{"zen": "Design for failure."}'
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert github.signature_matches("s3cret", body, signature)
    assert not github.signature_matches("s3cret", body + b" ", signature)
    assert not github.signature_matches("other", body, signature)
    assert not github.signature_matches("s3cret", body, signature.replace("sha256=", "sha1="))
    assert not github.signature_matches("s3cret", body, "")


def _pull(action: str = "opened", *, fork: bool = False) -> bytes:
    head_repo = {"full_name": "someone/widget" if fork else "acme/widget"}
    return json.dumps(
        {
            "action": action,
            "number": 5,
            "repository": {"full_name": "acme/widget"},
            "pull_request": {
                "number": 5,
                "head": {"ref": "feature", "sha": HEAD, "repo": head_repo},
                "base": {"ref": "main", "sha": BASE, "repo": {"full_name": "acme/widget"}},
            },
        }
    ).encode()


def test_a_pull_request_opened_or_updated_asks_for_its_head() -> None:
    for action in ("opened", "synchronize", "reopened"):
        assert github.requested("pull_request", _pull(action)) == github.Requested(
            ref="feature",
            full_name="acme/widget",
            sha=HEAD,
            base_ref="main",
            pull_request=PullRequest(5, HEAD, BASE),
        )
    # From a fork, the branch is not in this repository: GitHub's own ref of the pull request's head is.
    forked = github.requested("pull_request", _pull(fork=True))
    assert isinstance(forked, github.Requested)
    assert forked.ref == "refs/pull/5/head"


def test_a_push_to_a_branch_asks_for_it() -> None:
    body = json.dumps({"ref": "refs/heads/release/2", "after": HEAD, "repository": {"full_name": "acme/w"}}).encode()
    assert github.requested("push", body) == github.Requested(ref="release/2", full_name="acme/w", sha=HEAD)


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("ping", b'{"zen": "x"}'),
        ("push", json.dumps({"ref": "refs/tags/v1", "after": HEAD}).encode()),
        ("push", json.dumps({"ref": "refs/heads/gone", "after": "0" * 40, "deleted": True}).encode()),
        ("pull_request", _pull("closed")),
        ("pull_request", b'{"action": "opened", "pull_request": "nope"}'),
        ("issues", b"{}"),
        ("push", b"not json"),
        ("push", b"[1, 2]"),
    ],
)
def test_anything_else_is_ignored(event: str, body: bytes) -> None:
    assert isinstance(github.requested(event, body), github.Ignored)


def test_the_status_of_an_ended_analysis() -> None:
    passed = {"quality_gate": {"status": "passed", "failed": []}, "changes": {"new": [{"x": 1}]}}
    assert github.status_of("succeeded", passed) == ("success", "Quality gate passed · 1 new finding")
    failed = {"quality_gate": {"status": "failed", "failed": ["max_new_secrets"]}, "changes": {"new": []}}
    assert github.status_of("succeeded", failed) == ("failure", "Quality gate failed: max_new_secrets · 0 new findings")
    assert github.status_of("failed", None) == ("error", "Analysis failed")
    assert github.status_of("cancelled", None) == ("error", "Analysis cancelled")
    many = {"quality_gate": {"status": "failed", "failed": ["condition"] * 40}, "changes": {"new": []}}
    state, description = github.status_of("succeeded", many)
    assert state == "failure"
    assert len(description) == 140
