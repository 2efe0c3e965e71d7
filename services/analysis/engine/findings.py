"""Findings from the engine's measurements, and the quality gate that judges them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine.review import rule_based_review

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

# Every finding's severity, worst first: the one list of them (secrets rules take theirs from it).
SEVERITIES = ("critical", "high", "medium", "low")


class FunctionLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def start_line(self) -> int: ...
    @property
    def cyclomatic(self) -> int: ...


class FileLike(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def comment(self) -> int: ...
    @property
    def blank(self) -> int: ...


class SecretLike(Protocol):
    @property
    def rule_id(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def redacted(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing worth a person's attention. The fingerprint ignores line numbers, so a finding that
    only moved is the same finding in the next analysis."""

    rule_id: str
    severity: str
    path: str
    line: int
    message: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Condition:
    metric: str
    threshold: int
    actual: int

    @property
    def passed(self) -> bool:
        return self.actual <= self.threshold


@dataclass(frozen=True, slots=True)
class GateVerdict:
    status: str
    conditions: tuple[Condition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "conditions": [{**asdict(c), "passed": c.passed} for c in self.conditions],
            "failed": [c.metric for c in self.conditions if not c.passed],
        }


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def complexity_findings(functions: Iterable[FunctionLike], *, max_complexity: int) -> list[Finding]:
    """A function above the tenant's threshold; twice the threshold is high severity."""
    found = []
    for function in functions:
        if function.cyclomatic <= max_complexity:
            continue
        severity = "high" if function.cyclomatic > 2 * max_complexity else "medium"
        found.append(
            Finding(
                rule_id="complexity.function",
                severity=severity,
                path=function.path,
                line=function.start_line,
                message=f"{function.name} has cyclomatic complexity {function.cyclomatic} (limit {max_complexity})",
                fingerprint=_fingerprint("complexity.function", function.path, function.name),
            )
        )
    return found


def size_findings(files: Iterable[FileLike], *, max_file_lines: int) -> list[Finding]:
    found = []
    for file in files:
        lines = file.code + file.comment + file.blank
        if lines > max_file_lines:
            found.append(
                Finding(
                    rule_id="size.file",
                    severity="low",
                    path=file.path,
                    line=1,
                    message=f"{lines} lines (limit {max_file_lines})",
                    fingerprint=_fingerprint("size.file", file.path),
                )
            )
    return found


def secret_findings(secrets: Iterable[SecretLike]) -> list[Finding]:
    """Secrets keep the scanner's own fingerprint; the message shows the redacted form only."""
    return [
        Finding(
            rule_id=f"secret.{secret.rule_id}",
            severity=secret.severity,
            path=secret.path,
            line=secret.line,
            message=f"possible secret ({secret.rule_id}): {secret.redacted}",
            fingerprint=secret.fingerprint,
        )
        for secret in secrets
    ]


def quality_gate(
    findings: Sequence[Finding],
    *,
    max_function_complexity_found: int,
    max_file_lines_found: int,
    gate: tenants_pb2.QualityGate,
) -> GateVerdict:
    """`passed` only when every condition holds; the verdict names the ones that failed."""
    conditions = (
        Condition("max_function_complexity", gate.max_function_complexity, max_function_complexity_found),
        Condition(
            "max_high_findings", gate.max_high_findings, sum(f.severity in ("critical", "high") for f in findings)
        ),
        Condition("max_secrets", gate.max_secrets, sum(f.rule_id.startswith("secret.") for f in findings)),
        Condition("max_file_lines", gate.max_file_lines, max_file_lines_found),
    )
    return GateVerdict("passed" if all(c.passed for c in conditions) else "failed", conditions)


def changes_since(current: Sequence[dict[str, Any]], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Findings (as stored in reports) that appeared and disappeared since a previous report, by fingerprint."""
    if previous is None:
        return {"base_analysis_id": None, "new": [], "fixed": []}
    before = {f["fingerprint"]: f for f in previous.get("findings", [])}
    now = {f["fingerprint"]: f for f in current}
    return {
        "base_analysis_id": previous.get("analysis_id"),
        "new": [now[k] for k in sorted(now.keys() - before.keys())],
        "fixed": [before[k] for k in sorted(before.keys() - now.keys())],
    }


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order.get(f.severity, len(order)), f.path, f.line, f.rule_id))


def step(ctx: Context) -> None:
    """Findings from the scan (complex functions, large files, secrets), the quality gate's verdict on them, and the
    rule-based review (the one an LLM review, when there is one, falls back to)."""
    scanned = ctx.scanned
    assert scanned is not None, "findings come after the scan"
    gate = ctx.gate
    functions = scanned.measured.functions
    secrets = sorted(scanned.secrets, key=lambda f: (f.path, f.line, f.column, f.rule_id))
    found: list[Finding] = size_findings(scanned.counted, max_file_lines=gate.max_file_lines)
    found += complexity_findings(functions, max_complexity=gate.max_function_complexity)
    found += secret_findings(secrets)
    largest = max((f.code + f.comment + f.blank for f in scanned.counted), default=0)
    worst = max((f.cyclomatic for f in functions), default=0)
    verdict = quality_gate(found, max_function_complexity_found=worst, max_file_lines_found=largest, gate=gate)
    ctx.sections["findings"] = [asdict(f) for f in sort_findings(found)]
    ctx.sections["quality_gate"] = verdict.to_dict()
    ctx.sections["review"] = rule_based_review(ctx.sections)


# Conditions on new code: the findings of a branch or pull request that its base analysis does not have.
NEW_CODE_CONDITIONS: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
    ("max_new_high_findings", lambda f: f["severity"] in ("critical", "high")),
    ("max_new_complex_functions", lambda f: f["rule_id"] == "complexity.function"),
    ("max_new_secrets", lambda f: str(f["rule_id"]).startswith("secret.")),
)


def new_code_gate(new: Sequence[dict[str, Any]], gate: tenants_pb2.QualityGate) -> GateVerdict:
    conditions = tuple(
        Condition(metric, getattr(gate, metric), sum(1 for f in new if counts(f)))
        for metric, counts in NEW_CODE_CONDITIONS
    )
    return GateVerdict("passed" if all(c.passed for c in conditions) else "failed", conditions)


def judged(
    overall: dict[str, Any], new_code: GateVerdict | None, *, branch_gate: str, on_new_code: bool
) -> dict[str, Any]:
    """The report's `quality_gate`: `status`, `conditions` and `failed` of what decides, and both verdicts apart.

    The default branch is judged overall. A branch or pull request is judged as the tenant's `branch_gate` says
    (new code by default), and overall when it has no base to tell new code by (no succeeded analysis of its base)."""
    new = new_code.to_dict() if new_code is not None else None
    decided_by = (branch_gate or "new_code") if on_new_code and new is not None else "overall"
    if decided_by == "new_code" and new is not None:
        deciding = new
    elif decided_by == "both" and new is not None:
        conditions = overall["conditions"] + new["conditions"]
        failed = overall["failed"] + new["failed"]
        deciding = {"status": "failed" if failed else "passed", "conditions": conditions, "failed": failed}
    else:
        deciding = {key: overall[key] for key in ("status", "conditions", "failed")}
    return {**deciding, "decided_by": decided_by, "overall": overall, "new_code": new}


async def changes_step(ctx: Context) -> None:
    """What is new and what was fixed since the analysis this one is compared with (the default branch's analysis
    before it, or a branch's or pull request's base), by fingerprint; then the gate's verdict on new code and which
    verdict decides."""
    previous = await ctx.job.previous_report() if ctx.job.previous_report is not None else None
    changes = changes_since(ctx.sections.get("findings", []), previous)
    changes["compared_with"] = previous.get("compared_with", "previous") if previous is not None else None
    changes["base_ref"] = previous.get("ref") if previous is not None else None
    changes["base_commit_sha"] = previous.get("commit_sha") if previous is not None else None
    ctx.sections["changes"] = changes
    overall = ctx.sections.get("quality_gate")
    if overall is not None:
        new_code = new_code_gate(changes["new"], ctx.gate) if previous is not None else None
        ctx.sections["quality_gate"] = judged(
            {key: overall[key] for key in ("status", "conditions", "failed")},
            new_code,
            branch_gate=ctx.gate.branch_gate,
            on_new_code=ctx.job.judged_on_new_code,
        )
