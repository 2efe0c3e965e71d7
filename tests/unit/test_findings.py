"""Findings and the quality gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine.findings import (
    Finding,
    changes_since,
    complexity_findings,
    quality_gate,
    secret_findings,
    size_findings,
    sort_findings,
)

GATE = tenants_pb2.QualityGate(max_function_complexity=15, max_high_findings=0, max_secrets=0, max_file_lines=1000)


@dataclass(frozen=True)
class Function:
    name: str
    path: str
    start_line: int
    cyclomatic: int


@dataclass(frozen=True)
class File:
    path: str
    code: int
    comment: int
    blank: int


@dataclass(frozen=True)
class Secret:
    rule_id: str
    severity: str
    path: str
    line: int
    redacted: str
    fingerprint: str


def test_complex_functions_become_findings_with_line_independent_fingerprints() -> None:
    found = complexity_findings(
        [Function("ok", "a.py", 1, 15), Function("busy", "a.py", 10, 16), Function("awful", "b.py", 3, 31)],
        max_complexity=15,
    )
    assert [(f.message.split()[0], f.severity) for f in found] == [("busy", "medium"), ("awful", "high")]
    moved = complexity_findings([Function("busy", "a.py", 99, 20)], max_complexity=15)
    assert moved[0].fingerprint == found[0].fingerprint


def test_oversized_files_and_secrets() -> None:
    assert [
        f.path for f in size_findings([File("big.py", 900, 50, 51), File("s.py", 10, 0, 0)], max_file_lines=1000)
    ] == ["big.py"]
    secret = secret_findings([Secret("github-pat", "critical", "c.py", 4, "ghp_…(40)", "f" * 64)])
    assert secret[0].rule_id == "secret.github-pat"
    assert secret[0].fingerprint == "f" * 64
    assert "ghp_…(40)" in secret[0].message


def test_quality_gate_names_the_failed_conditions() -> None:
    clean = quality_gate([], max_function_complexity_found=10, max_file_lines_found=200, gate=GATE)
    assert clean.status == "passed"
    high = Finding("complexity.function", "high", "a.py", 1, "m", "x")
    leaked = Finding("secret.aws", "critical", "b.py", 2, "m", "y")
    verdict = quality_gate([high, leaked], max_function_complexity_found=40, max_file_lines_found=200, gate=GATE)
    assert verdict.status == "failed"
    assert verdict.to_dict()["failed"] == ["max_function_complexity", "max_high_findings", "max_secrets"]


def test_new_and_fixed_by_fingerprint() -> None:
    now: list[dict[str, Any]] = [{"fingerprint": "kept", "line": 9}, {"fingerprint": "added"}]
    before = {"analysis_id": "a1", "findings": [{"fingerprint": "kept", "line": 1}, {"fingerprint": "gone"}]}
    assert changes_since(now, before) == {
        "base_analysis_id": "a1",
        "new": [{"fingerprint": "added"}],
        "fixed": [{"fingerprint": "gone"}],
    }
    assert changes_since(now, None) == {"base_analysis_id": None, "new": [], "fixed": []}


def test_findings_sort_by_severity_then_place() -> None:
    low = Finding("r", "low", "a", 1, "m", "1")
    critical = Finding("r", "critical", "z", 9, "m", "2")
    assert sort_findings([low, critical]) == [critical, low]
