"""README badges: drawn from the newest succeeded analysis, read with the repository's badge token, and the same grey
"unknown" SVG for every refusal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.e2e.analysis_repos import complex_function, git_branch, git_repository
from tests.e2e.people import (
    Organisation,
    Person,
    bearer,
    error_code,
    expect,
    finished,
    organisation,
    ready_for_analysis,
    register,
)

GREEN, RED, GREY = "#4C1", "#E05D44", "#9F9F9F"


CLEAN = {"app.py": "def add(a, b):\n    return a + b\n\n\ndef double(x):\n    return 2 * x\n"}
TANGLED = {"app.py": complex_function("tangled", 19)}  # complexity 20, over the default threshold of 15: the gate fails


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _analysed(person: Person, repository_id: str, ref: str = "main") -> None:
    queued = expect(person.post(f"/api/v2/repositories/{repository_id}/analyses", json={"ref": ref}), 202)
    analysis = finished(person, queued["id"])
    assert analysis["status"] == "succeeded", analysis


@pytest.fixture(scope="module")
def org(client: httpx.Client) -> Organisation:
    members = organisation(client)
    ready_for_analysis(members["owner"])
    return members


@pytest.fixture(scope="module")
def owner(org: Organisation) -> Person:
    return org["owner"]


def _repository(person: Person, root: Path, name: str, files: dict[str, str]) -> str:
    source = git_repository(root / name, files)
    repository = expect(person.post("/api/v2/repositories", json={"name": name, "url": str(source)}), 201)
    return str(repository["id"])


@pytest.fixture(scope="module")
def passing(owner: Person, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A repository whose gate passes on main and fails on the branch `tangled`, and its badge token."""
    root = tmp_path_factory.mktemp("badges")
    repository_id = _repository(owner, root, "passing", CLEAN)
    git_branch(root / "passing", "tangled", TANGLED)
    _analysed(owner, repository_id)
    _analysed(owner, repository_id, "tangled")
    return repository_id, str(expect(owner.post(f"/api/v2/repositories/{repository_id}/badge-token"), 201)["token"])


@pytest.fixture(scope="module")
def failing(owner: Person, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    repository_id = _repository(owner, tmp_path_factory.mktemp("badges"), "failing", TANGLED)
    _analysed(owner, repository_id)
    return repository_id, str(expect(owner.post(f"/api/v2/repositories/{repository_id}/badge-token"), 201)["token"])


def _badge(client: httpx.Client, repository_id: str, metric: str, token: str, **params: Any) -> httpx.Response:
    return client.get(f"/api/v2/badges/{repository_id}/{metric}.svg", params={"token": token, **params})


def _texts(response: httpx.Response) -> list[str]:
    """The words drawn on the badge (each is drawn twice: its shadow, then itself)."""
    assert response.headers["content-type"].startswith("image/svg+xml")
    return list(dict.fromkeys(re.findall(r">([^<>]+)</text>", response.text)))


def _colour(response: httpx.Response) -> str:
    """The fill of the value's half (the label's half is always #555)."""
    fills: list[str] = [fill for fill in re.findall(r'<path fill="(#[0-9A-Fa-f]+)"', response.text) if fill != "#555"]
    assert len(fills) == 1, fills
    return fills[0]


def test_the_gate_badge_is_green_when_it_passes_and_red_when_it_fails(
    client: httpx.Client, passing: tuple[str, str], failing: tuple[str, str]
) -> None:
    passed = _badge(client, *passing[:1], "quality_gate", passing[1])
    assert passed.status_code == 200
    assert _texts(passed) == ["quality gate", "passed"]
    assert _colour(passed) == GREEN
    failed = _badge(client, failing[0], "quality_gate", failing[1])
    assert (failed.status_code, _texts(failed), _colour(failed)) == (200, ["quality gate", "failed"], RED)
    # A branch has its own badge.
    branch = _badge(client, passing[0], "quality_gate", passing[1], branch="tangled")
    assert (_texts(branch), _colour(branch)) == (["quality gate", "failed"], RED)
    unanalysed = _badge(client, passing[0], "quality_gate", passing[1], branch="never-analysed")
    assert (unanalysed.status_code, _texts(unanalysed)) == (200, ["quality gate", "not analysed"])


def test_every_metric_has_its_badge(client: httpx.Client, passing: tuple[str, str]) -> None:
    repository_id, token = passing
    shown = {metric: _texts(_badge(client, repository_id, metric, token)) for metric in ("code_lines", "findings")}
    assert shown == {"code_lines": ["lines of code", "4"], "findings": ["findings", "0"]}
    complexity = _texts(_badge(client, repository_id, "complexity", token))
    assert complexity == ["complexity", "1.0"]  # two functions without a branch
    label, day = _texts(_badge(client, repository_id, "last_analysis", token))
    assert label == "last analysis"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day)


def test_an_unchanged_badge_answers_304_to_its_etag(client: httpx.Client, passing: tuple[str, str]) -> None:
    first = _badge(client, passing[0], "quality_gate", passing[1])
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    again = client.get(
        f"/api/v2/badges/{passing[0]}/quality_gate.svg", params={"token": passing[1]}, headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = _badge(client, passing[0], "findings", passing[1])
    assert other.headers["etag"] != etag  # another badge, another tag


def test_every_refusal_is_the_same_grey_badge(
    client: httpx.Client, owner: Person, passing: tuple[str, str], failing: tuple[str, str]
) -> None:
    repository_id, token = passing
    refusals = {
        "wrong token": _badge(client, repository_id, "quality_gate", token[:-2] + "xx"),
        "no token": client.get(f"/api/v2/badges/{repository_id}/quality_gate.svg"),
        "another repository's token": _badge(client, repository_id, "quality_gate", failing[1]),
        "unknown repository": _badge(client, "8d3c7a59-0f34-4bd8-9bd7-1c6b2b3f0a11", "quality_gate", token),
        "not an id": _badge(client, "not-an-id", "quality_gate", token),
        "a branch RepoLens refuses": _badge(client, repository_id, "quality_gate", token, branch="a..b"),
    }
    bodies = set()
    for why, response in refusals.items():
        assert response.status_code == 404, why
        assert _texts(response) == ["quality gate", "unknown"], why
        assert _colour(response) == GREY, why
        bodies.add(response.content)
    assert len(bodies) == 1  # byte for byte the same: nothing tells an existing repository from another
    assert _texts(_badge(client, repository_id, "duplication", token)) == ["repolens", "unknown"]  # not measured


def test_another_tenants_repository_answers_the_grey_badge(
    client: httpx.Client, passing: tuple[str, str], tmp_path: Path
) -> None:
    stranger = ready_for_analysis(register(client))
    theirs = _repository(stranger, tmp_path, "theirs", CLEAN)
    their_token = expect(stranger.post(f"/api/v2/repositories/{theirs}/badge-token"), 201)["token"]
    response = _badge(client, passing[0], "quality_gate", their_token)
    assert (response.status_code, _texts(response)) == (404, ["quality gate", "unknown"])
    # Nor can the stranger issue a token for our repository.
    assert error_code(stranger.post(f"/api/v2/repositories/{passing[0]}/badge-token")) == "ERR_REPO_001"


def test_a_badge_token_reads_nothing_else(client: httpx.Client, passing: tuple[str, str]) -> None:
    repository_id, token = passing
    for path in ("/api/v2/repositories", f"/api/v2/repositories/{repository_id}", "/api/v2/auth/me"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401, path
        assert error_code(response).startswith("ERR_AUTH_"), path


def test_rotating_the_token_ends_the_old_one(
    client: httpx.Client, owner: Person, tmp_path: Path, passing: tuple[str, str]
) -> None:
    repository_id = _repository(owner, tmp_path, "rotated", CLEAN)
    old = expect(owner.post(f"/api/v2/repositories/{repository_id}/badge-token"), 201)
    assert old["token"].startswith("rlb_")
    assert old["badges"]["quality_gate"] == f"/api/v2/badges/{repository_id}/quality_gate.svg?token={old['token']}"
    new = expect(owner.post(f"/api/v2/repositories/{repository_id}/badge-token"), 201)["token"]
    assert new != old["token"]
    assert _badge(client, repository_id, "quality_gate", old["token"]).status_code == 404
    assert _texts(_badge(client, repository_id, "quality_gate", new)) == ["quality gate", "not analysed"]
    expect(owner.delete(f"/api/v2/repositories/{repository_id}"), 204)
    assert _badge(client, repository_id, "quality_gate", new).status_code == 404  # a deleted repository's badge


def test_only_owners_and_admins_issue_badge_tokens(org: Organisation, tmp_path: Path) -> None:
    repository_id = _repository(org["owner"], tmp_path, "issued", CLEAN)
    for role in ("member", "viewer"):
        assert error_code(org[role].post(f"/api/v2/repositories/{repository_id}/badge-token")) == "ERR_TENANT_002"
    token = expect(org["admin"].post(f"/api/v2/repositories/{repository_id}/badge-token"), 201)["token"]
    assert token.startswith("rlb_")
