"""The ready-made pipelines (deploy/ci): they parse, docs/ci.md shows them as they are, and every `repolens` command
in them is one the CLI accepts; plus what the CLI reads from a CI job's environment."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import _analysis_body, app
from cli.ci_env import CiContext, detect

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = {
    "github": ROOT / "deploy" / "ci" / "github-actions.yml",
    "gitlab": ROOT / "deploy" / "ci" / "gitlab-ci.yml",
}


def _scripts(name: str, pipeline: dict[str, Any]) -> list[str]:
    if name == "github":
        return [step["run"] for job in pipeline["jobs"].values() for step in job["steps"] if "run" in step]
    return [line for job in pipeline.values() if isinstance(job, dict) for line in job.get("script", [])]


def _accepted(argv: list[str]) -> bool:
    """Whether the CLI's own parser takes these arguments: with `--help` at the end nothing runs, but an unknown
    command or option still fails (exit code 2) before the help would be shown."""
    result = CliRunner().invoke(app, [*argv, "--help"])
    return result.exit_code == 0


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_pipeline_parses_and_runs_only_existing_commands(name: str) -> None:
    pipeline = yaml.safe_load(PIPELINES[name].read_text(encoding="utf-8"))
    lines = [line for script in _scripts(name, pipeline) for line in script.splitlines() if line.strip()]
    commands = [shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "X", line)) for line in lines]
    assert {argv[0] for argv in commands} <= {"pip", "repolens"}, commands
    analyses = [argv[1:] for argv in commands if argv[0] == "repolens"]
    assert analyses, "the pipeline runs no repolens command"
    for argv in analyses:
        assert _accepted(argv), argv
        assert argv[0] == "analyse"
        assert "--wait" in argv
        assert argv[argv.index("--sarif") + 1] == "repolens.sarif"


def test_the_parser_refuses_what_the_cli_refuses() -> None:
    assert _accepted(["analyse", "--wait", "--timeout", "5"])
    assert not _accepted(["analyse", "--frobnicate"])
    assert not _accepted(["analyze"])


def test_the_github_workflow_uploads_the_sarif_it_writes() -> None:
    workflow = yaml.safe_load(PIPELINES["github"].read_text(encoding="utf-8"))
    steps = workflow["jobs"]["repolens"]["steps"]
    upload = next(step for step in steps if step.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == "repolens.sarif"
    assert workflow["permissions"]["security-events"] == "write"
    run = next(step for step in steps if "repolens analyse" in step.get("run", ""))
    assert set(run["env"]) == {"REPOLENS_URL", "REPOLENS_TOKEN", "REPOLENS_REPOSITORY"}
    assert "secrets.REPOLENS_TOKEN" in run["env"]["REPOLENS_TOKEN"]


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_docs_show_the_pipeline_as_it_is(name: str) -> None:
    doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    assert PIPELINES[name].read_text(encoding="utf-8").rstrip() in doc


def test_a_github_push(tmp_path: Path) -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main", "GITHUB_SHA": "a" * 40, "GITHUB_REF": "refs/heads/main"}
    assert detect(env) == CiContext("github", ref="main", sha="a" * 40)


def test_a_github_pull_request(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps({"pull_request": {"number": 42, "head": {"sha": "b" * 40}, "base": {"sha": "c" * 40}}}),
        encoding="utf-8",
    )
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_HEAD_REF": "feature/x",
        "GITHUB_BASE_REF": "main",
        "GITHUB_REF": "refs/pull/42/merge",
        "GITHUB_SHA": "d" * 40,  # GitHub's merge commit: not the commit under review
        "GITHUB_EVENT_PATH": str(event),
    }
    expected = CiContext("github", ref="feature/x", sha="b" * 40, base_ref="main", pull_request=42, base_sha="c" * 40)
    assert detect(env) == expected
    # Without the event file, the number still comes from GITHUB_REF.
    del env["GITHUB_EVENT_PATH"]
    assert detect(env) == CiContext("github", ref="feature/x", base_ref="main", pull_request=42)


def test_gitlab_pipelines() -> None:
    push = {"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "main", "CI_COMMIT_SHA": "e" * 40}
    assert detect(push) == CiContext("gitlab", ref="main", sha="e" * 40)
    merge_request = {
        **push,
        "CI_COMMIT_REF_NAME": "feature/y",
        "CI_MERGE_REQUEST_IID": "7",
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/y",
        "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
        "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": "f" * 40,
        "CI_MERGE_REQUEST_DIFF_BASE_SHA": "0" * 40,
    }
    expected = CiContext("gitlab", ref="feature/y", sha="f" * 40, base_ref="main", pull_request=7, base_sha="0" * 40)
    assert detect(merge_request) == expected


def test_outside_ci_nothing_is_guessed() -> None:
    assert detect({"CI": "true", "GITHUB_REF_NAME": "main"}) == CiContext("")


def test_what_the_cli_asks_to_analyse() -> None:
    pull = CiContext("github", ref="feature/x", sha="b" * 40, base_ref="main", pull_request=42, base_sha="c" * 40)
    assert _analysis_body(pull, ref=None, base=None, pr=None) == {
        "ref": "feature/x",
        "base_ref": "main",
        "pull_request": {"number": 42, "head_sha": "b" * 40, "base_sha": "c" * 40},
    }
    assert _analysis_body(CiContext(""), ref="main", base=None, pr=None) == {"ref": "main"}
    assert _analysis_body(CiContext(""), ref=None, base=None, pr=None) == {}
    # Flags win; another pull request's commits are not the environment's.
    assert _analysis_body(pull, ref="other", base="dev", pr=9) == {
        "ref": "other",
        "base_ref": "dev",
        "pull_request": {"number": 9},
    }
