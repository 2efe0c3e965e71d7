"""The SARIF export through the gateway, with a real worker analysing real (local) git repositories.

Another tenant's 404 on this route comes from the isolation registry (tests/e2e/isolation.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, error_code, expect, ready_for_analysis, register
from tests.sarif_oracle import schema_errors

GATE = {"max_function_complexity": 5, "max_high_findings": 0, "max_secrets": 0, "max_file_lines": 1000}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def branching(name: str, branches: int) -> str:
    """A Python function whose cyclomatic complexity is `branches` + 1."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(branches))
    return f"def {name}(x):\n{body}    return -1\n"


def analysed(person: Person, repository_id: str, ref: str = "") -> dict[str, Any]:
    started = expect(
        person.post(f"/api/v2/repositories/{repository_id}/analyses", json={"ref": ref} if ref else {}), 202
    )
    deadline = time.monotonic() + 60
    while True:
        analysis: dict[str, Any] = expect(person.get(f"/api/v2/analyses/{started['id']}"), 200)
        if analysis["status"] in {"succeeded", "failed", "cancelled"} or time.monotonic() > deadline:
            return analysis
        time.sleep(0.2)


def every_finding(person: Person, analysis_id: str) -> list[dict[str, Any]]:
    """All of `/findings`, page by page (small pages, so the SARIF is compared with more than the first one)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = expect(person.get(f"/api/v2/analyses/{analysis_id}/findings", params=params), 200)
        found += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def sarif(person: Person, analysis_id: str) -> tuple[httpx.Response, dict[str, Any]]:
    response = person.get(f"/api/v2/analyses/{analysis_id}/sarif")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/sarif+json")
    assert response.headers["content-disposition"] == f'attachment; filename="repolens-{analysis_id}.sarif"'
    log: dict[str, Any] = response.json()
    assert schema_errors(log) == []
    return response, log


def located(result: dict[str, Any]) -> tuple[str, str, int, str]:
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uriBaseId"] == "SRCROOT"
    return (
        result["ruleId"],
        location["artifactLocation"]["uri"],
        location["region"]["startLine"],
        result["partialFingerprints"]["repolens/v1"],
    )


def commit_all(source: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "next"], cwd=source, check=True
    )


def test_sarif_export_matches_the_findings_and_holds_no_secret(
    client: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    person = ready_for_analysis(register(client))
    expect(person.patch("/api/v2/settings", json={"quality_gate": GATE}), 200)
    token = "ghp_" + "Zq8" * 12  # built from pieces, so this file holds no token literal
    source = git_repository(
        tmp_path / "planted",
        {
            "app/logic.py": branching("route", 12) + "\n\n" + branching("pick", 6),
            "config/settings.py": f'GITHUB_TOKEN = "{token}"\n',
            "README.md": "# planted\n",
        },
    )
    repository = expect(person.post("/api/v2/repositories", json={"name": "planted", "url": str(source)}), 201)
    first = analysed(person, repository["id"])
    assert first["status"] == "succeeded", first

    response, log = sarif(person, first["id"])
    assert token not in response.text
    assert token[:12] not in response.text
    run = log["runs"][0]
    results = run["results"]
    findings = every_finding(person, first["id"])
    assert len(findings) == 3  # route, pick, the token: more than one page of /findings
    assert [located(r) for r in results] == [(f["rule_id"], f["path"], f["line"], f["fingerprint"]) for f in findings]
    assert {r["ruleId"]: r["level"] for r in results if r["ruleId"].startswith("secret.")} == {
        "secret.github-token": "error"
    }
    assert sorted(r["level"] for r in results if r["ruleId"] == "complexity.function") == ["error", "warning"]
    assert [rule["id"] for rule in run["tool"]["driver"]["rules"]] == ["complexity.function", "secret.github-token"]
    assert all("baselineState" not in r for r in results)
    (provenance,) = run["versionControlProvenance"]
    assert provenance["repositoryUri"] == repository["url"]
    assert (provenance["revisionId"], provenance["branch"]) == (first["commit_sha"], "main")
    assert run["invocations"][0]["executionSuccessful"] is True
    assert run["properties"]["analysisId"] == first["id"]

    # The token moves down two lines and a complex function appears: the first is unchanged, the second new.
    (source / "config/settings.py").write_text(f'# settings\n\nGITHUB_TOKEN = "{token}"\n', encoding="utf-8")
    (source / "app/extra.py").write_text(branching("extra", 8), encoding="utf-8")
    commit_all(source)
    second = analysed(person, repository["id"])
    assert second["status"] == "succeeded", second
    response, log = sarif(person, second["id"])
    assert token not in response.text
    assert token[:12] not in response.text
    results = log["runs"][0]["results"]
    assert [located(r) for r in results] == [
        (f["rule_id"], f["path"], f["line"], f["fingerprint"]) for f in every_finding(person, second["id"])
    ]
    by_state = sorted((r["baselineState"], located(r)[1]) for r in results)
    assert by_state == [
        ("new", "app/extra.py"),
        ("unchanged", "app/logic.py"),
        ("unchanged", "app/logic.py"),
        ("unchanged", "config/settings.py"),
    ]
    secret = next(r for r in results if r["ruleId"] == "secret.github-token")
    before = next(r for r in run["results"] if r["ruleId"] == "secret.github-token")
    assert (secret["baselineState"], located(secret)[2], located(before)[2]) == ("unchanged", 3, 1)
    assert secret["partialFingerprints"] == before["partialFingerprints"]
    assert log["runs"][0]["properties"]["baseAnalysisId"] == first["id"]


def test_sarif_of_an_unknown_or_unfinished_analysis_is_refused(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    for unknown in (str(uuid.uuid4()), "not-an-id"):
        response = person.get(f"/api/v2/analyses/{unknown}/sarif")
        assert response.status_code == 404, response.text
        assert error_code(response) == "ERR_ANALYSIS_001"

    source = git_repository(tmp_path / "noref", {"a.py": "x = 1\n"})
    repository = expect(person.post("/api/v2/repositories", json={"name": "noref", "url": str(source)}), 201)
    failed = analysed(person, repository["id"], ref="nope")
    assert failed["status"] == "failed", failed
    response = person.get(f"/api/v2/analyses/{failed['id']}/sarif")
    assert response.status_code == 409, response.text
    assert error_code(response) == "ERR_ANALYSIS_003"

    anonymous = client.get(f"/api/v2/analyses/{failed['id']}/sarif")
    assert anonymous.status_code == 401, anonymous.text
