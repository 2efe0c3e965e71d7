"""Branch and pull-request analysis: a branch is compared with its base, its new code is what the base does not
have, and the gate on new code decides for it while the overall verdict is reported beside it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.e2e.analysis_repos import complex_function, git_branch, git_repository, head_of
from tests.e2e.people import Person, error_code, expect, finished, ready_for_analysis, register

# The default branch already has a complex function (complexity 18, over the default 15): its overall gate fails.
MAIN = {"app.py": complex_function("legacy", 17) + "\n\ndef add(a, b):\n    return a + b\n"}
# The branch adds exactly one complex function and one secret (an AWS access key id: high severity).
FEATURE = {
    "feature.py": complex_function("tangled", 19),
    "config.py": 'AWS_KEY = "' + "AK" + "IA" + "Q3J7HJ2K4M9RZT5W" + '"\n',
}
CLEAN = {"helpers.py": "def double(x):\n    return 2 * x\n"}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _finished(person: Person, analysis_id: str) -> dict[str, Any]:
    analysis = finished(person, analysis_id)
    assert analysis["status"] == "succeeded", analysis
    return analysis


def _analyse(person: Person, repository_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    queued = expect(person.post(f"/api/v2/repositories/{repository_id}/analyses", json=body), 202)
    analysis = _finished(person, queued["id"])
    return analysis, dict(expect(person.get(f"/api/v2/analyses/{queued['id']}/report"), 200))


@pytest.fixture(scope="module")
def project(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[Person, str, Path]:
    person = ready_for_analysis(register(client))
    root = git_repository(tmp_path_factory.mktemp("branches") / "project", MAIN)
    git_branch(root, "feature", FEATURE)
    git_branch(root, "tidy", CLEAN)
    repository = expect(person.post("/api/v2/repositories", json={"name": "branchy", "url": str(root)}), 201)
    _analyse(person, repository["id"], {})  # the default branch, the base of everything below
    return person, repository["id"], root


def test_the_default_branch_is_judged_overall(project: tuple[Person, str, Path]) -> None:
    person, repository_id, root = project
    analysis, report = _analyse(person, repository_id, {"ref": "main"})
    assert analysis["base_ref"] is None
    assert analysis["pull_request"] is None
    gate = report["quality_gate"]
    assert gate["decided_by"] == "overall"
    assert gate["status"] == "failed"
    assert gate["failed"] == ["max_function_complexity"]
    # Compared with the previous analysis of main: nothing new, so new code passes (reported, not deciding).
    assert report["changes"]["compared_with"] == "previous"
    assert report["changes"]["new"] == []
    assert gate["new_code"]["status"] == "passed"
    assert report["commit_sha"] == head_of(root)


def test_a_branch_reports_exactly_what_it_adds_and_fails_on_new_code(project: tuple[Person, str, Path]) -> None:
    person, repository_id, root = project
    analysis, report = _analyse(person, repository_id, {"ref": "feature"})
    changes = report["changes"]
    assert changes["compared_with"] == "base"
    assert changes["base_ref"] == "main"
    assert changes["base_commit_sha"] == head_of(root, "main")
    assert sorted((f["rule_id"], f["path"]) for f in changes["new"]) == [
        ("complexity.function", "feature.py"),
        ("secret.aws-access-key-id", "config.py"),
    ]
    assert changes["fixed"] == []
    gate = report["quality_gate"]
    assert gate["decided_by"] == "new_code"
    assert gate["status"] == "failed"
    assert gate["failed"] == ["max_new_high_findings", "max_new_complex_functions", "max_new_secrets"]
    actual = {c["metric"]: c["actual"] for c in gate["new_code"]["conditions"]}
    assert actual == {"max_new_high_findings": 1, "max_new_complex_functions": 1, "max_new_secrets": 1}
    # The overall conditions, reported apart: the branch carries main's complex function too.
    assert gate["overall"]["status"] == "failed"
    assert gate["overall"]["failed"] == ["max_function_complexity", "max_high_findings", "max_secrets"]
    # The findings list marks what is new.
    new = expect(person.get(f"/api/v2/analyses/{analysis['id']}/findings", params={"new": "true"}), 200)
    assert len(new["items"]) == 2


def test_a_clean_branch_passes_on_new_code_while_overall_fails(project: tuple[Person, str, Path]) -> None:
    person, repository_id, _ = project
    _, report = _analyse(person, repository_id, {"ref": "tidy", "base_ref": "main"})
    gate = report["quality_gate"]
    assert (gate["decided_by"], gate["status"], gate["failed"]) == ("new_code", "passed", [])
    assert gate["overall"]["status"] == "failed"


def test_a_pull_request_compares_with_its_base_commit(project: tuple[Person, str, Path]) -> None:
    person, repository_id, root = project
    head = head_of(root, "feature")
    body = {"ref": "feature", "pull_request": {"number": 7, "head_sha": head, "base_sha": head_of(root, "main")}}
    analysis, report = _analyse(person, repository_id, body)
    assert analysis["pull_request"] == {"number": 7, "head_sha": head, "base_sha": head_of(root, "main")}
    assert report["changes"]["compared_with"] == "base_commit"
    assert len(report["changes"]["new"]) == 2
    assert report["quality_gate"]["status"] == "failed"


def test_the_tenant_chooses_what_decides_for_branches(project: tuple[Person, str, Path]) -> None:
    person, repository_id, _ = project
    settings = expect(person.get("/api/v2/settings"), 200)
    gate = {**settings["quality_gate"], "branch_gate": "overall"}
    expect(person.patch("/api/v2/settings", json={"quality_gate": gate}), 200)
    time.sleep(1.0)  # `settings.changed` reaches the workers within a second (their cache forgets the tenant)
    try:
        _, report = _analyse(person, repository_id, {"ref": "tidy"})
        assert report["quality_gate"]["decided_by"] == "overall"
        assert report["quality_gate"]["status"] == "failed"
        assert report["quality_gate"]["new_code"]["status"] == "passed"
    finally:
        expect(person.patch("/api/v2/settings", json={"quality_gate": None}), 200)
    assert expect(person.get("/api/v2/settings"), 200)["quality_gate"]["branch_gate"] == "new_code"


def test_branches_are_listed_with_their_latest_gate(project: tuple[Person, str, Path]) -> None:
    person, repository_id, _ = project
    listed = expect(person.get(f"/api/v2/repositories/{repository_id}/branches"), 200)
    refs = [b["ref"] for b in listed["items"]]
    assert refs == sorted(refs)
    assert {"main", "feature", "tidy"} <= set(refs)
    by_ref = {b["ref"]: b for b in listed["items"]}
    assert by_ref["main"]["quality_gate"]["decided_by"] == "overall"
    assert by_ref["feature"]["quality_gate"]["status"] == "failed"
    assert by_ref["feature"]["latest_analysis"]["pull_request"] is None  # the pull request is not a branch's
    first = expect(person.get(f"/api/v2/repositories/{repository_id}/branches", params={"limit": 1}), 200)
    assert [b["ref"] for b in first["items"]] == refs[:1]
    rest = expect(
        person.get(f"/api/v2/repositories/{repository_id}/branches", params={"cursor": first["next_cursor"]}), 200
    )
    assert [b["ref"] for b in rest["items"]] == refs[1:]


@pytest.mark.parametrize(
    "body",
    [
        {"ref": "feature", "pull_request": {"number": 0}},
        {"ref": "feature", "pull_request": {"number": 1, "head_sha": "not-a-sha"}},
        {"ref": "feature", "base_ref": "bad..ref"},
        {"ref": "feature", "pull_request": {"number": 1, "extra": True}},
    ],
)
def test_bad_branch_requests_are_refused(project: tuple[Person, str, Path], body: dict[str, Any]) -> None:
    person, repository_id, _ = project
    before = len(expect(person.get("/api/v2/analyses", params={"repository_id": repository_id}), 200)["items"])
    response = person.post(f"/api/v2/repositories/{repository_id}/analyses", json=body)
    assert response.status_code == 422, response.text
    assert error_code(response) in {"ERR_VALIDATION_001", "ERR_REPO_004"}
    after = len(expect(person.get("/api/v2/analyses", params={"repository_id": repository_id}), 200)["items"])
    assert after == before
