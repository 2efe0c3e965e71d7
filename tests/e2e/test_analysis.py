"""Repositories and analyses through the gateway, with a real worker cloning real (local) git repositories."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.sql
import pytest

from libs.devstack.stack import Stack
from services.analysis.domain import tenant_schema
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, error_code, expect, found, ready_for_analysis, register

PYTHON = '''"""A module docstring: two comment lines
in cloc's eyes."""

import os  # a trailing comment keeps the line code


def answer():
    # a comment line
    return 42

'''  # code 3, comment 3, blank 4 (the last empty line included)
JAVASCRIPT = """// header comment
/* block
   comment */
const url = "http://example.com"; // not a comment opener inside the string

function f() {
  return url;
}
"""  # code 4, comment 3, blank 1
GO = """package main

// main does nothing
func main() {
}
"""  # code 3, comment 1, blank 1


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def wait_for(person: Person, analysis_id: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        analysis = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
        if analysis["status"] in statuses or time.monotonic() > deadline:
            return dict(analysis)
        time.sleep(0.2)


def test_analyse_a_local_repository_end_to_end(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    source = git_repository(
        tmp_path / "project", {"app/main.py": PYTHON, "web/app.js": JAVASCRIPT, "cmd/main.go": GO, "README.md": "# T\n"}
    )
    repository = expect(
        person.post("/api/v2/repositories", json={"name": "project", "url": str(source), "default_branch": "main"}),
        201,
    )
    assert repository["url"].startswith("file://")
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    assert started["status"] == "queued"
    assert started["ref"] == "main"
    done = wait_for(person, started["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100
    assert done["attempts"] == 1
    assert set(done["timings"]) >= {"fetch", "scan"}
    assert len(done["commit_sha"]) == 40
    report = expect(person.get(f"/api/v2/analyses/{started['id']}/report"), 200)
    languages = report["inventory"]["languages"]
    assert {k: languages["Python"][k] for k in ("code", "comment", "blank")} == {"code": 3, "comment": 3, "blank": 4}
    assert {k: languages["JavaScript"][k] for k in ("code", "comment", "blank")} == {
        "code": 4,
        "comment": 3,
        "blank": 1,
    }
    assert {k: languages["Go"][k] for k in ("code", "comment", "blank")} == {"code": 3, "comment": 1, "blank": 1}
    assert report["complexity"]["functions"] == 3  # answer, f, main
    assert {f["name"] for f in report["complexity"]["top"]} == {"answer", "f", "main"}
    assert report["quality_gate"]["status"] == "passed"
    listed = expect(person.get("/api/v2/analyses", params={"repository_id": repository["id"]}), 200)
    assert [a["id"] for a in listed["items"]] == [started["id"]]
    assert expect(person.get("/api/v2/analyses", params={"status": "failed"}), 200)["items"] == []

    # Analysed again, unchanged: the worker's engine cache gives every parsed file, and the report is the same.
    again = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    assert wait_for(person, again["id"], {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    second = expect(person.get(f"/api/v2/analyses/{again['id']}/report"), 200)
    assert second["complexity"]["files_parsed"] == 3
    assert second["complexity"]["files_reused"] == 3
    for section in ("inventory", "secrets", "dependencies", "hotspots", "findings"):
        assert second[section] == report[section], section
    # The same verdict; only the second has a previous analysis to tell new code by (and none is new).
    assert {k: v for k, v in second["quality_gate"].items() if k != "new_code"} == {
        k: v for k, v in report["quality_gate"].items() if k != "new_code"
    }
    assert report["quality_gate"]["new_code"] is None
    assert second["quality_gate"]["new_code"]["status"] == "passed"
    assert {k: v for k, v in second["complexity"].items() if k != "files_reused"} == {
        k: v for k, v in report["complexity"].items() if k != "files_reused"
    }


# Report fields that are fractions by nature (timings are seconds); every other number is a count, a line, a size or a
# version, and must come back an integer (a Struct across gRPC once turned them all into doubles).
FRACTIONS = {"score", "average"}


def _floats(value: Any, path: str = "") -> list[str]:
    """Paths of the float values in a JSON document, outside `timings` (seconds, by name)."""
    if isinstance(value, float):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() if key != "timings" for p in _floats(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _floats(item, f"{path}[{i}]")]
    return []


def test_the_report_keeps_integers_integers(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    files = {
        "app/main.py": PYTHON,
        "web/app.js": JAVASCRIPT,
        "cmd/main.go": GO,
        "requirements.txt": "requests==2.32.3\nflask>=3\n",
        "package.json": '{"name": "w", "version": "1.0.0", "dependencies": {"left-pad": "^1.3.0"}}',
        "config.py": 'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n',
    }
    source = git_repository(tmp_path / "project", files)
    repository = expect(person.post("/api/v2/repositories", json={"name": "ints", "url": str(source)}), 201)
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    assert wait_for(person, started["id"], {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    response = person.get(f"/api/v2/analyses/{started['id']}/report")
    report = response.json()
    assert report["inventory"]["totals"]["code"] > 0
    assert report["complexity"]["functions"] == 3
    floats = _floats(report)
    wrong = [path for path in floats if path.rsplit(".", 1)[-1].split("[")[0] not in FRACTIONS]
    assert not wrong, f"integers that came back as floats: {wrong}"
    assert '"code":3' in response.text.replace(" ", "")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://github.com/django/django", "scheme"),
        ("https://evil.example.com/owner/repo", "host_not_allowed"),
        ("https://github.com.evil.com/owner/repo", "host_not_allowed"),
        ("https://user:secret@github.com/owner/repo", "credentials"),
        ("ext::sh%20-c%20touch%20/tmp/pwned", "transport"),
        ("ext::sh -c touch% /tmp/pwned", None),
        ("git@github.com:owner/repo.git", None),
        ("ssh://github.com/owner/repo", "scheme"),
        ("--upload-pack=touch /tmp/pwned", None),
        ("relative/path", None),
    ],
)
def test_bad_urls_are_refused_before_any_clone(client: httpx.Client, url: str, reason: str | None) -> None:
    person = ready_for_analysis(register(client))
    response = person.post("/api/v2/repositories", json={"name": "r", "url": url})
    assert response.status_code == 422, response.text
    assert error_code(response) == "ERR_REPO_003"
    if reason:
        assert response.json()["error"]["details"] == {"field": "url", "reason": reason}
    assert "secret" not in response.text


def test_bad_refs_are_refused(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    source = git_repository(tmp_path / "refs", {"a.py": "x = 1\n"})
    repository = expect(person.post("/api/v2/repositories", json={"name": "refs", "url": str(source)}), 201)
    for ref in ("-q", "--upload-pack=x", "a..b", "x y"):
        response = person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={"ref": ref})
        assert response.status_code == 422, ref
        assert error_code(response) == "ERR_REPO_004"


def test_unknown_ref_fails_with_a_clear_error(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    source = git_repository(tmp_path / "noref", {"a.py": "x = 1\n"})
    repository = expect(person.post("/api/v2/repositories", json={"name": "noref", "url": str(source)}), 201)
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={"ref": "nope"}), 202)
    done = wait_for(person, started["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "ERR_FETCH_003"
    assert error_code(person.get(f"/api/v2/analyses/{started['id']}/report")) == "ERR_ANALYSIS_003"


def test_repository_crud_and_viewers_read_only(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    source = git_repository(tmp_path / "crud", {"a.py": "x = 1\n"})
    created = expect(person.post("/api/v2/repositories", json={"name": "Alpha", "url": str(source)}), 201)
    assert error_code(person.post("/api/v2/repositories", json={"name": "alpha", "url": str(source)})) == "ERR_REPO_002"
    expect(person.post("/api/v2/repositories", json={"name": "beta", "url": str(source)}), 201)
    filtered = expect(person.get("/api/v2/repositories", params={"name": "ALP"}), 200)
    assert [r["name"] for r in filtered["items"]] == ["Alpha"]
    page = expect(person.get("/api/v2/repositories", params={"limit": 1}), 200)
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    renamed = expect(person.patch(f"/api/v2/repositories/{created['id']}", json={"default_branch": "dev"}), 200)
    assert (renamed["name"], renamed["default_branch"]) == ("Alpha", "dev")
    expect(person.delete(f"/api/v2/repositories/{created['id']}"), 204)
    assert error_code(person.get(f"/api/v2/repositories/{created['id']}")) == "ERR_REPO_001"


def test_deleting_a_tenant_drops_its_schema(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    owner = register(client)
    tenant_id = found(owner)
    ready_for_analysis(owner)
    source = git_repository(tmp_path / "gone", {"a.py": "x = 1\n"})
    expect(owner.post("/api/v2/repositories", json={"name": "gone", "url": str(source)}), 201)
    schema = tenant_schema(uuid.UUID(tenant_id))

    def schema_exists() -> bool:
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", [schema])
            return bool(row.fetchone() == (1,))

    assert schema_exists()
    expect(owner.delete("/api/v2/tenants/current"), 202)
    deadline = time.monotonic() + 10
    while schema_exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not schema_exists()


def test_findings_quality_gate_and_changes_since_the_previous_analysis(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    gate = {"max_function_complexity": 15, "max_high_findings": 0, "max_secrets": 0, "max_file_lines": 5}
    expect(person.patch("/api/v2/settings", json={"quality_gate": gate}), 200)
    long_file = "".join(f"V{i} = {i}\n" for i in range(10))
    source = git_repository(tmp_path / "diff", {"a.py": long_file, "ok.py": "x = 1\n"})
    repository = expect(person.post("/api/v2/repositories", json={"name": "diff", "url": str(source)}), 201)

    def analysed() -> dict[str, Any]:
        started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
        assert wait_for(person, started["id"], {"succeeded", "failed"})["status"] == "succeeded"
        return {"id": started["id"], **expect(person.get(f"/api/v2/analyses/{started['id']}/report"), 200)}

    first = analysed()
    assert [(f["rule_id"], f["path"]) for f in first["findings"]] == [("size.file", "a.py")]
    assert first["quality_gate"]["status"] == "failed"
    assert first["quality_gate"]["failed"] == ["max_file_lines"]
    assert first["changes"] == {
        "base_analysis_id": None,
        "new": [],
        "fixed": [],
        "compared_with": None,
        "base_ref": None,
        "base_commit_sha": None,
    }
    assert first["review"]["provider"] == "rules"
    assert "The quality gate failed on: max_file_lines." in first["review"]["text"]

    (source / "a.py").write_text("V = 1\n", encoding="utf-8")  # fixes one finding
    (source / "b.py").write_text(long_file, encoding="utf-8")  # adds another
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "x"], cwd=source, check=True
    )
    subprocess.run(["git", "add", "b.py"], cwd=source, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "y"], cwd=source, check=True
    )
    second = analysed()
    assert [f["path"] for f in second["changes"]["new"]] == ["b.py"]
    assert [f["path"] for f in second["changes"]["fixed"]] == ["a.py"]
    assert second["changes"]["base_analysis_id"] == first["id"]
    assert second["changes"]["compared_with"] == "previous"
    new_only = expect(person.get(f"/api/v2/analyses/{second['id']}/findings", params={"new": "true"}), 200)
    assert [(f["path"], f["new"]) for f in new_only["items"]] == [("b.py", True)]
    by_rule = expect(person.get(f"/api/v2/analyses/{second['id']}/findings", params={"rule": "size.file"}), 200)
    assert len(by_rule["items"]) == 1
    assert (
        expect(person.get(f"/api/v2/analyses/{second['id']}/findings", params={"severity": "high"}), 200)["items"] == []
    )
    diff = expect(person.get(f"/api/v2/analyses/{second['id']}/diff", params={"base": first["id"]}), 200)
    assert ([f["path"] for f in diff["new"]], [f["path"] for f in diff["fixed"]], diff["unchanged"]) == (
        ["b.py"],
        ["a.py"],
        0,
    )


def test_secrets_are_reported_redacted_and_dependencies_listed(
    client: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    person = ready_for_analysis(register(client))
    token = "ghp_" + "Zq8" * 12  # built from pieces, so this file holds no token literal
    source = git_repository(
        tmp_path / "leaky",
        {
            "config/.env": f"GITHUB_TOKEN={token}\n",
            "requirements.txt": "django==5.2.8\nrequests>=2.31\n",
            "app.py": "import django\n",
        },
    )
    repository = expect(person.post("/api/v2/repositories", json={"name": "leaky", "url": str(source)}), 201)
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    assert wait_for(person, started["id"], {"succeeded", "failed"})["status"] == "succeeded"
    response = person.get(f"/api/v2/analyses/{started['id']}/report")
    report = expect(response, 200)
    assert [(f["rule_id"], f["path"]) for f in report["secrets"]["findings"]] == [("github-token", "config/.env")]
    assert token not in response.text
    assert token[:12] not in response.text
    assert "secret.github-token" in {f["rule_id"] for f in report["findings"]}
    assert "max_secrets" in report["quality_gate"]["failed"]
    declared = {(d["name"], d["constraint"]) for d in report["dependencies"]["dependencies"]}
    assert declared == {("django", "==5.2.8"), ("requests", ">=2.31")}
    assert "pkg:pypi/django@5.2.8" in {c["purl"] for c in report["sbom"]["components"]}
    findings = expect(
        person.get(f"/api/v2/analyses/{started['id']}/findings", params={"rule": "secret.github-token"}), 200
    )
    assert token not in str(findings)
    time.sleep(0.5)
    assert all(token not in stack.logs(name) for name in ("analysis", "worker", "gateway"))
    assert _tables_holding(stack.database_url, token[4:20]) == []
    assert _tables_holding(stack.database_url, "secret.github-token"), "the search itself must find stored text"


def _tables_holding(database_url: str, text: str) -> list[str]:
    """Every table, in every schema of the database, with a row whose text form contains `text`."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        holding = []
        for schema, table in tables:
            query = psycopg.sql.SQL("SELECT 1 FROM {}.{} AS t WHERE strpos(t::text, %s) > 0 LIMIT 1").format(
                psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table)
            )
            if conn.execute(query, (text,)).fetchone():
                holding.append(f"{schema}.{table}")
        return holding
