"""The SARIF 2.1.0 export: the stored report of one succeeded analysis as a SARIF log for code-scanning tools.

Decisions:

* Built from the stored report alone, never from the source tree (the checkout is deleted after the run), so the
  log always agrees with `/report` and `/findings`: one result per finding, in the report's order, all of them.
* Paths are relative to the `SRCROOT` uriBaseId. `originalUriBaseIds.SRCROOT` describes that root without a `uri`
  (SARIF allows an absent `uri` when the location is not known, and ours was a temporary directory), and
  `versionControlProvenance` maps the repository root at the analysed commit to it.
* `partialFingerprints["repolens/v1"]` is our fingerprint, which does not depend on the line: a finding that only
  moved keeps it, so consumers (GitHub code scanning and others) follow it instead of closing and reopening it.
* `baselineState` (`new` / `unchanged`) only when the analysis had a previous one to compare with
  (`changes.base_analysis_id` in the report); the first analysis of a repository has no baseline to speak of.
* Rules: one descriptor per rule that has results, sorted by id, with the rule's default level; each result also
  carries its own level, because a rule's findings can differ (complexity far above the limit, secrets in tests).
* No secret value can reach the log: only a finding's rule, severity, path, line, message and fingerprint (plus a
  secret's column and a function's last line) are copied, and the messages of secret findings already hold the
  redacted form only. Nothing else of the report (review text, snippets, settings) is put in.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from services.analysis.engine.secrets import RULES as SECRET_RULES

SARIF_VERSION = "2.1.0"
SCHEMA_URI = "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/master/Schemata/sarif-schema-2.1.0.json"
TOOL_NAME = "RepoLens"
INFORMATION_URI = "https://github.com/repolens/repolens"
SRCROOT = "SRCROOT"
FINGERPRINT_KEY = "repolens/v1"

# Our four severities onto SARIF's levels; `security-severity` is the 0-10 score GitHub uses to rank security alerts.
LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "2.5"}

_SECRET_LABELS = {
    "aws-access-key-id": "AWS access key ID",
    "aws-secret-access-key": "AWS secret access key",
    "github-token": "GitHub token",
    "repolens-pat": "RepoLens personal access token",
    "gitlab-token": "GitLab personal access token",
    "slack-token": "Slack token",
    "slack-webhook": "Slack webhook URL",
    "stripe-live-key": "Stripe live key",
    "google-api-key": "Google API key",
    "private-key": "private key",
    "jwt": "JSON Web Token",
    "generic-secret": "hard-coded password or secret",
}
_SECRET_SEVERITIES = {rule.id: rule.severity for rule in SECRET_RULES}


@dataclass(frozen=True, slots=True)
class RuleText:
    """What a SARIF viewer shows about a rule; `severity` is the one its findings get by default."""

    name: str
    short: str
    full: str
    help: str
    severity: str
    tags: tuple[str, ...]


def _pascal(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace(".", "-").replace("_", "-").split("-"))


def rule_text(rule_id: str) -> RuleText:
    """The description of one of our rule ids; an id this module does not know still gets a usable one."""
    if rule_id == "complexity.function":
        return RuleText(
            name="ComplexFunction",
            short="Function above the cyclomatic complexity limit",
            full=(
                "The function's cyclomatic complexity is above the tenant's quality-gate limit "
                "(max_function_complexity). More than twice the limit is reported as high severity."
            ),
            help="Split the function into smaller ones or simplify its branching; complex code hides defects.",
            severity="medium",
            tags=("maintainability", "complexity"),
        )
    if rule_id == "size.file":
        return RuleText(
            name="LargeFile",
            short="File above the line limit",
            full="The file has more lines (code, comments and blank lines) than the tenant's max_file_lines limit.",
            help="Split the file by responsibility; large files are hard to review and to change safely.",
            severity="low",
            tags=("maintainability", "size"),
        )
    if rule_id.startswith("secret."):
        scanner_id = rule_id.removeprefix("secret.")
        label = _SECRET_LABELS.get(scanner_id, scanner_id)
        return RuleText(
            name="Secret" + _pascal(scanner_id),
            short=f"Possible {label} committed to the repository",
            full=(
                f"A value matching the secret scanner's {scanner_id} rule. The value itself is never stored or "
                "shown: the message carries a redacted form only. Matches in test code are reported one level lower."
            ),
            help=(
                "Revoke or rotate the credential, remove it from the repository and its history, and load it "
                "from the environment or a secret manager instead."
            ),
            severity=_SECRET_SEVERITIES.get(scanner_id, "high"),
            tags=("security", "secret"),
        )
    return RuleText(
        name=_pascal(rule_id),
        short=f"RepoLens rule {rule_id}",
        full=f"A finding of the RepoLens rule {rule_id}.",
        help="See the finding's message.",
        severity="medium",
        tags=(),
    )


@functools.cache
def tool_version() -> str:
    try:
        return importlib.metadata.version("repolens")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _level(severity: str) -> str:
    return LEVELS.get(severity, "warning")


def _rule(rule_id: str) -> dict[str, Any]:
    text = rule_text(rule_id)
    properties: dict[str, Any] = {"tags": list(text.tags), "severity": text.severity}
    if "security" in text.tags:
        properties["security-severity"] = SECURITY_SEVERITY.get(text.severity, "5.5")
    return {
        "id": rule_id,
        "name": text.name,
        "shortDescription": {"text": text.short},
        "fullDescription": {"text": text.full},
        "help": {"text": text.help},
        "defaultConfiguration": {"level": _level(text.severity)},
        "properties": properties,
    }


def _utc(value: dt.datetime) -> str:
    """SARIF wants UTC with a `Z` (§3.9)."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _repository_uri(url: str) -> str:
    """Local repositories are stored as `file://` + a path that is not percent-encoded; a URI needs it encoded."""
    if url.startswith("file://"):
        return "file://" + quote(url.removeprefix("file://"))
    return url


def _region(
    finding: Mapping[str, Any],
    *,
    end_lines: Mapping[tuple[str, int], int],
    columns: Mapping[tuple[str, int, str], int],
) -> dict[str, Any]:
    start = max(int(finding["line"]), 1)
    region: dict[str, Any] = {"startLine": start}
    column = columns.get((finding["path"], start, finding["fingerprint"]))
    if column:
        region["startColumn"] = column
    if finding["rule_id"] == "complexity.function":
        end = end_lines.get((finding["path"], start))
        if end is not None and end >= start:
            region["endLine"] = end
    return region


def to_sarif(
    report: Mapping[str, Any],
    *,
    analysis_id: str,
    started_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The SARIF log (a JSON-ready dict with one run) of a succeeded analysis's report and all its findings."""
    findings: list[Mapping[str, Any]] = list(report.get("findings", []))
    rule_ids = sorted({f["rule_id"] for f in findings})
    rule_index = {rule_id: index for index, rule_id in enumerate(rule_ids)}

    # The report keeps a function's last line only for its top functions, a secret's column in its secrets section.
    end_lines = {
        (f["path"], int(f["start_line"])): int(f["end_line"])
        for f in report.get("complexity", {}).get("top", [])
        if "end_line" in f
    }
    columns = {
        (s["path"], int(s["line"]), s["fingerprint"]): int(s["column"])
        for s in report.get("secrets", {}).get("findings", [])
        if "column" in s
    }
    changes = report.get("changes") or {}
    base_analysis_id = changes.get("base_analysis_id")
    new = {f["fingerprint"] for f in changes.get("new", [])}

    results = []
    for finding in findings:
        result: dict[str, Any] = {
            "ruleId": finding["rule_id"],
            "ruleIndex": rule_index[finding["rule_id"]],
            "level": _level(finding["severity"]),
            "message": {"text": finding["message"]},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": quote(finding["path"]), "uriBaseId": SRCROOT},
                        "region": _region(finding, end_lines=end_lines, columns=columns),
                    }
                }
            ],
            "partialFingerprints": {FINGERPRINT_KEY: finding["fingerprint"]},
            "properties": {"severity": finding["severity"]},
        }
        if base_analysis_id:
            result["baselineState"] = "new" if finding["fingerprint"] in new else "unchanged"
        results.append(result)

    invocation: dict[str, Any] = {"executionSuccessful": True}
    if started_at is not None:
        invocation["startTimeUtc"] = _utc(started_at)
    if finished_at is not None:
        invocation["endTimeUtc"] = _utc(finished_at)

    version = tool_version()
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "version": version,
                "semanticVersion": version,
                "informationUri": INFORMATION_URI,
                "rules": [_rule(rule_id) for rule_id in rule_ids],
            }
        },
        "invocations": [invocation],
        "originalUriBaseIds": {
            SRCROOT: {"description": {"text": "The root of the repository at the analysed commit."}}
        },
        "columnKind": "unicodeCodePoints",
        "results": results,
        "properties": {"analysisId": analysis_id},
    }
    repository = report.get("repository") or {}
    if repository.get("url"):
        provenance: dict[str, Any] = {"repositoryUri": _repository_uri(repository["url"])}
        if report.get("commit_sha"):
            provenance["revisionId"] = report["commit_sha"]
        if report.get("ref"):
            provenance["branch"] = report["ref"]
        provenance["mappedTo"] = {"uriBaseId": SRCROOT}
        run["versionControlProvenance"] = [provenance]
    if repository.get("id"):
        # GitHub code scanning groups runs by the part of this id before its last '/': one group per repository.
        run["automationDetails"] = {"id": f"repolens/{repository['id']}/{analysis_id}"}
    if base_analysis_id:
        run["properties"]["baseAnalysisId"] = base_analysis_id
    gate = report.get("quality_gate") or {}
    if gate.get("status"):
        run["properties"]["qualityGate"] = gate["status"]
    return {"$schema": SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
