"""What a CI job's standard environment says about the code under test: GitHub Actions and GitLab CI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CiContext:
    provider: str  # "github", "gitlab" or "" outside CI
    ref: str | None = None  # the branch under test (a pull request's head branch)
    sha: str | None = None  # the commit under test (a pull request's head)
    base_ref: str | None = None  # a pull request's target branch
    pull_request: int | None = None
    base_sha: str | None = None


def _mapping(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _github_event(env: Mapping[str, str]) -> dict[str, object]:
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return _mapping(event)


def _github(env: Mapping[str, str]) -> CiContext:
    head_ref = env.get("GITHUB_HEAD_REF")
    if not head_ref:  # a push (or anything but a pull request): the pushed branch and commit
        return CiContext("github", ref=env.get("GITHUB_REF_NAME") or None, sha=env.get("GITHUB_SHA") or None)
    # A pull request: GITHUB_SHA is GitHub's merge commit; the head and base commits are in the event.
    pull = _mapping(_github_event(env).get("pull_request"))
    head, base = _mapping(pull.get("head")), _mapping(pull.get("base"))
    number = pull.get("number")
    if not isinstance(number, int):
        parts = env.get("GITHUB_REF", "").split("/")  # refs/pull/<number>/merge
        number = int(parts[2]) if len(parts) == 4 and parts[1] == "pull" and parts[2].isdigit() else None
    return CiContext(
        "github",
        ref=head_ref,
        sha=_text(head.get("sha")),
        base_ref=env.get("GITHUB_BASE_REF") or None,
        pull_request=number,
        base_sha=_text(base.get("sha")),
    )


def _gitlab(env: Mapping[str, str]) -> CiContext:
    iid = env.get("CI_MERGE_REQUEST_IID", "")
    if not iid.isdigit():
        return CiContext("gitlab", ref=env.get("CI_COMMIT_REF_NAME") or None, sha=env.get("CI_COMMIT_SHA") or None)
    return CiContext(
        "gitlab",
        ref=env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or env.get("CI_COMMIT_REF_NAME") or None,
        sha=env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA") or env.get("CI_COMMIT_SHA") or None,
        base_ref=env.get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME") or None,
        pull_request=int(iid),
        base_sha=env.get("CI_MERGE_REQUEST_DIFF_BASE_SHA") or None,
    )


def detect(env: Mapping[str, str]) -> CiContext:
    if env.get("GITHUB_ACTIONS") == "true":
        return _github(env)
    if env.get("GITLAB_CI") == "true":
        return _gitlab(env)
    return CiContext("")
