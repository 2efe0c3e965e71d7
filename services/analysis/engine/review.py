"""The written review of an analysis: without an LLM provider, a summary composed from the findings."""

from __future__ import annotations

from collections import Counter
from typing import Any


def rule_based_review(sections: dict[str, Any]) -> dict[str, Any]:
    """A short, factual summary: size and languages, the gate's verdict, what needs attention first."""
    inventory = sections.get("inventory", {})
    totals = inventory.get("totals", {})
    languages = list(inventory.get("languages", {}).items())
    findings: list[dict[str, Any]] = sections.get("findings", [])
    gate = sections.get("quality_gate", {})
    lines = []
    if languages:
        top = ", ".join(f"{name} ({stats['code']:,} lines)" for name, stats in languages[:3])
        lines.append(f"{totals.get('code', 0):,} lines of code in {totals.get('files', 0):,} files; mostly {top}.")
    else:
        lines.append("No source files were recognised.")
    if gate:
        if gate.get("status") == "passed":
            lines.append("The quality gate passed.")
        else:
            lines.append("The quality gate failed on: " + ", ".join(gate.get("failed", [])) + ".")
    if findings:
        by_severity = Counter(f["severity"] for f in findings)
        counts = ", ".join(f"{by_severity[s]} {s}" for s in ("critical", "high", "medium", "low") if by_severity[s])
        lines.append(f"{len(findings)} findings ({counts}).")
        first = findings[0]
        lines.append(f"Start with {first['path']}:{first['line']}: {first['message']}.")
    else:
        lines.append("No findings.")
    return {"provider": "rules", "state": "written", "text": " ".join(lines)}
