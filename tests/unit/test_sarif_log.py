"""The SARIF export, on reports made by the real engine steps and checked against the official OASIS schema."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.analysis.engine.complexity import complexity
from services.analysis.engine.findings import (
    changes_since,
    complexity_findings,
    secret_findings,
    size_findings,
    sort_findings,
)
from services.analysis.engine.sarif import FINGERPRINT_KEY, SRCROOT, to_sarif
from services.analysis.engine.secrets import scan_secrets
from tests.sarif_oracle import schema, schema_errors

GITHUB_TOKEN = "ghp_" + "Zq8" * 12  # built from pieces, so this file holds no token literal
AWS_KEY_ID = "AKIA" + "Q7RZ2M4XK9PLW3NB"
MAX_COMPLEXITY = 5
MAX_FILE_LINES = 100


def branching(name: str, branches: int) -> str:
    """A Python function whose cyclomatic complexity is `branches` + 1."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(branches))
    return f"def {name}(x):\n{body}    return -1\n"


@dataclass(frozen=True)
class File:
    path: str
    code: int
    comment: int
    blank: int


def report_of(root: Path, files: dict[str, str], *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A report as the worker stores it, from the real complexity, secrets and findings steps on `files`."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    measured = complexity(root, [(name, "Python") for name in files if name.endswith(".py")])
    scanned = scan_secrets(root, list(files))
    found = size_findings(
        [File(name, text.count("\n"), 0, 0) for name, text in files.items()], max_file_lines=MAX_FILE_LINES
    )
    found += complexity_findings(measured.functions, max_complexity=MAX_COMPLEXITY)
    found += secret_findings(scanned.findings)
    findings = [asdict(f) for f in sort_findings(found)]
    return {
        "repository": {"id": "0195f0e2-0000-7000-8000-000000000001", "name": "demo", "url": "https://github.com/o/r"},
        "ref": "main",
        "commit_sha": "a" * 40,
        "complexity": {"top": [f._asdict() for f in measured.functions]},
        "secrets": scanned.to_dict(),
        "findings": findings,
        "quality_gate": {"status": "failed"},
        "changes": changes_since(findings, previous),
    }


def sarif_of(report: dict[str, Any], analysis_id: str = "0195f0e2-0000-7000-8000-0000000000a1") -> dict[str, Any]:
    log = to_sarif(report, analysis_id=analysis_id)
    assert schema_errors(log) == []
    return log


def by_rule(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["ruleId"]: r for r in log["runs"][0]["results"]}


TREE = {
    "app/logic.py": branching("route", 12) + "\n\n" + branching("pick", 6),  # 13: high, 7: medium
    "config/settings.py": f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\nAWS_KEY = "{AWS_KEY_ID}"\n',
    "big.py": "".join(f"V{i} = {i}\n" for i in range(MAX_FILE_LINES + 20)),
}


def test_every_rule_family_becomes_a_valid_log_with_one_result_per_finding(tmp_path: Path) -> None:
    report = report_of(tmp_path, TREE)
    log = sarif_of(report)

    assert log["version"] == "2.1.0"
    assert log["$schema"] == schema()["$id"]
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "RepoLens"
    assert driver["version"]
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [
        "complexity.function",
        "secret.aws-access-key-id",
        "secret.github-token",
        "size.file",
    ]
    assert {r["id"]: r["defaultConfiguration"]["level"] for r in rules} == {
        "complexity.function": "warning",
        "secret.aws-access-key-id": "error",
        "secret.github-token": "error",
        "size.file": "note",
    }
    assert {r["id"] for r in rules if "security-severity" in r["properties"]} == {
        "secret.aws-access-key-id",
        "secret.github-token",
    }
    assert all(r["name"] and r["shortDescription"]["text"] and r["help"]["text"] for r in rules)

    results = run["results"]
    assert len(results) == len(report["findings"]) == 5
    for result, finding in zip(results, report["findings"], strict=True):
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"] == finding["rule_id"]
        assert result["message"]["text"] == finding["message"]
        assert result["partialFingerprints"] == {FINGERPRINT_KEY: finding["fingerprint"]}
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"] == {"uri": finding["path"], "uriBaseId": SRCROOT}
        assert location["region"]["startLine"] == finding["line"]
        assert "baselineState" not in result  # a first analysis has nothing to compare with
    levels = {(r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"]): r["level"] for r in results}
    assert levels == {
        ("secret.github-token", 1): "error",  # critical
        ("secret.aws-access-key-id", 2): "error",  # high
        ("complexity.function", 1): "error",  # route: 13 > twice the limit, high
        ("complexity.function", 29): "warning",  # pick: 7, medium
        ("size.file", 1): "note",  # low
    }

    functions = {(f["path"], f["start_line"]): f["end_line"] for f in report["complexity"]["top"]}
    for result in results:
        region = result["locations"][0]["physicalLocation"]["region"]
        if result["ruleId"] == "complexity.function":
            assert region["endLine"] == functions[("app/logic.py", region["startLine"])] > region["startLine"]
        if result["ruleId"] == "secret.github-token":
            assert region["startColumn"] == len('GITHUB_TOKEN = "') + 1
        if result["ruleId"] == "secret.aws-access-key-id":
            assert region["startColumn"] == len('AWS_KEY = "') + 1

    assert run["invocations"] == [{"executionSuccessful": True}]
    assert run["originalUriBaseIds"][SRCROOT]["description"]["text"]
    assert run["versionControlProvenance"] == [
        {
            "repositoryUri": "https://github.com/o/r",
            "revisionId": "a" * 40,
            "branch": "main",
            "mappedTo": {"uriBaseId": SRCROOT},
        }
    ]
    body = json.dumps(log)
    assert GITHUB_TOKEN not in body
    assert GITHUB_TOKEN[:12] not in body
    assert AWS_KEY_ID not in body
    assert AWS_KEY_ID[:10] not in body


def test_a_finding_that_moves_keeps_its_fingerprint_and_counts_as_unchanged(tmp_path: Path) -> None:
    before = report_of(tmp_path / "before", TREE)
    moved = {
        **TREE,
        "app/logic.py": "import os\n\n\n" + TREE["app/logic.py"],
        "config/settings.py": "# settings\n\n\n" + TREE["config/settings.py"] + 'SLACK = "xoxb-' + "7Hq2" * 6 + '"\n',
    }
    after = report_of(
        tmp_path / "after", moved, previous={**before, "analysis_id": "0195f0e2-0000-7000-8000-0000000000a0"}
    )
    log = sarif_of(after)

    old, new = by_rule(sarif_of(before)), by_rule(log)
    for rule_id in ("secret.github-token", "secret.aws-access-key-id"):
        old_region = old[rule_id]["locations"][0]["physicalLocation"]["region"]
        new_region = new[rule_id]["locations"][0]["physicalLocation"]["region"]
        assert new_region["startLine"] == old_region["startLine"] + 3
        assert new[rule_id]["partialFingerprints"] == old[rule_id]["partialFingerprints"]
    old_functions = {r["partialFingerprints"][FINGERPRINT_KEY]: r for r in sarif_of(before)["runs"][0]["results"]}
    for result in log["runs"][0]["results"]:
        if result["ruleId"] == "complexity.function":
            previous = old_functions[result["partialFingerprints"][FINGERPRINT_KEY]]
            start = result["locations"][0]["physicalLocation"]["region"]["startLine"]
            assert start == previous["locations"][0]["physicalLocation"]["region"]["startLine"] + 3

    states = {r["ruleId"]: r["baselineState"] for r in log["runs"][0]["results"]}
    assert states == {
        "secret.github-token": "unchanged",
        "secret.aws-access-key-id": "unchanged",
        "secret.slack-token": "new",
        "complexity.function": "unchanged",
        "size.file": "unchanged",
    }
    assert log["runs"][0]["properties"]["baseAnalysisId"] == "0195f0e2-0000-7000-8000-0000000000a0"


def test_paths_are_percent_encoded_and_an_empty_report_is_still_a_log(tmp_path: Path) -> None:
    log = sarif_of(report_of(tmp_path, {"my dir/big file.py": TREE["big.py"]}))
    (result,) = log["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "my%20dir/big%20file.py"

    started = dt.datetime(2025, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    report = report_of(tmp_path / "empty", {"ok.py": "x = 1\n"})
    empty = to_sarif(report, analysis_id="a", started_at=started, finished_at=started + dt.timedelta(seconds=3))
    assert schema_errors(empty) == []
    assert empty["runs"][0]["results"] == []
    assert empty["runs"][0]["tool"]["driver"]["rules"] == []
    assert empty["runs"][0]["invocations"] == [
        {
            "executionSuccessful": True,
            "startTimeUtc": "2025-05-01T10:00:00.250Z",
            "endTimeUtc": "2025-05-01T10:00:03.250Z",
        }
    ]


def test_the_schema_oracle_rejects_what_sarif_forbids(tmp_path: Path) -> None:
    """The oracle must be able to fail: a log breaking the standard is reported, field by field."""
    log = to_sarif(report_of(tmp_path, TREE), analysis_id="x")
    log["runs"][0]["results"][0]["level"] = "critical"  # not a SARIF level
    log["runs"][0]["results"][1]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    del log["runs"][0]["tool"]["driver"]["name"]
    errors = schema_errors(log)
    assert any(e.startswith("runs/0/results/0/level:") for e in errors), errors
    assert any(e.startswith("runs/0/results/1/locations/0/physicalLocation/region/startLine:") for e in errors), errors
    assert any(e.startswith("runs/0/tool/driver:") and "'name' is a required property" in e for e in errors), errors
