"""GitHub: the push and pull-request webhooks that queue analyses, and the commit status an analysis ends with.

A repository's webhook secret is never stored. It is derived from WEBHOOK_KEY, the tenant, the repository and a
generation that rotating the secret increases. Only the generation is in the database, so a copy of the database
signs nothing, and a rotated secret stops verifying at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from libs.common.logging import error_text
from services.analysis.domain import PullRequest

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 # nosec B105 # a prefix, not a secret
STATUS_CONTEXT = "repolens"
# Pull-request actions after which the code under review is new.
_PULL_REQUEST_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
_ZERO_SHA = "0" * 40
_DESCRIPTION_MAX = 140  # GitHub refuses longer descriptions


def webhook_secret(key: bytes, *, tenant_id: uuid.UUID, repository_id: uuid.UUID, generation: int) -> str:
    digest = hmac.new(key, f"{tenant_id}:{repository_id}:{generation}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signature_matches(secret: str, body: bytes, signature: str) -> bool:
    """`X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw body under the secret; constant time."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


@dataclass(frozen=True)
class Requested:
    """The analysis a delivery asks for."""

    ref: str
    full_name: str  # owner/name on GitHub, where the commit status goes
    sha: str  # the commit under test, whose status it is
    base_ref: str | None = None
    pull_request: PullRequest | None = None


@dataclass(frozen=True)
class Ignored:
    reason: str


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def requested(event: str, body: bytes) -> Requested | Ignored:
    """What a verified delivery asks for: a push to a branch, or a pull request opened or updated; anything else is
    acknowledged and ignored."""
    try:
        payload = _object(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return Ignored("not JSON")
    full_name = _text(_object(payload.get("repository")).get("full_name"))
    if event == "ping":
        return Ignored("ping")
    if event == "push":
        ref, after = _text(payload.get("ref")), _text(payload.get("after"))
        if payload.get("deleted") is True or after in ("", _ZERO_SHA):
            return Ignored("branch deleted")
        if not ref.startswith("refs/heads/"):
            return Ignored("not a branch")
        return Requested(ref=ref.removeprefix("refs/heads/"), full_name=full_name, sha=after)
    if event == "pull_request":
        if payload.get("action") not in _PULL_REQUEST_ACTIONS:
            return Ignored(f"pull request {_text(payload.get('action')) or 'event'}")
        pull = _object(payload.get("pull_request"))
        head, base = _object(pull.get("head")), _object(pull.get("base"))
        number = pull.get("number") if isinstance(pull.get("number"), int) else payload.get("number")
        if not isinstance(number, int) or not _text(head.get("sha")) or not _text(head.get("ref")):
            return Ignored("not a pull request")
        same_repository = _text(_object(head.get("repo")).get("full_name")) in ("", full_name)
        # A fork's branch is not in this repository: GitHub keeps the head of every pull request here too.
        ref = _text(head["ref"]) if same_repository else f"refs/pull/{number}/head"
        return Requested(
            ref=ref,
            full_name=full_name,
            sha=_text(head["sha"]),
            base_ref=_text(base.get("ref")) or None,
            pull_request=PullRequest(number, _text(head["sha"]), _text(base.get("sha"))),
        )
    return Ignored(f"event {event or 'unnamed'}")


def status_of(status: str, report: Mapping[str, Any] | None) -> tuple[str, str]:
    """GitHub's `state` and a one-line description for an analysis that ended."""
    if status != "succeeded" or report is None:
        return "error", f"Analysis {status}"
    gate = _object(report.get("quality_gate"))
    new = len(_object(report.get("changes")).get("new") or [])
    passed = gate.get("status") == "passed"
    failed = ", ".join(str(name) for name in gate.get("failed") or [])
    verdict = "Quality gate passed" if passed else f"Quality gate failed: {failed}"
    description = f"{verdict} · {new} new finding{'s' if new != 1 else ''}"
    if len(description) > _DESCRIPTION_MAX:
        description = description[: _DESCRIPTION_MAX - 1] + "…"
    return ("success" if passed else "failure"), description


@dataclass
class CommitStatuses:
    """Posts commit statuses with the tenant's GitHub token (POST /repos/{owner}/{repo}/statuses/{sha})."""

    api_url: str
    timeout_s: float
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)

    async def post(
        self, *, token: str, full_name: str, sha: str, state: str, description: str, target_url: str
    ) -> bool:
        """True when GitHub took it. Failures are logged, never raised: a status is a courtesy, not the result."""
        if not token or "/" not in full_name or not sha:
            log.info("github.status_skipped", reason="no token" if not token else "no repository or commit")
            return False
        body = {"state": state, "description": description, "target_url": target_url, "context": STATUS_CONTEXT}
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "repolens",
        }
        try:
            async with httpx.AsyncClient(
                base_url=self.api_url.rstrip("/"), timeout=self.timeout_s, transport=self.transport
            ) as client:
                response = await client.post(f"/repos/{full_name}/statuses/{sha}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("github.status_failed", full_name=full_name, error=error_text(exc))
            return False
        if response.status_code >= 300:
            log.warning("github.status_refused", full_name=full_name, status=response.status_code)
            return False
        log.info("github.status_posted", full_name=full_name, state=state)
        return True
