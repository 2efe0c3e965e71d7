"""The `repolens` CLI as a CI job runs it: a real process against the stack, with a personal access token, each
documented exit code produced by the situation it stands for."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import client as codes
from libs.devstack.servers import free_port
from libs.devstack.stack import WORKER, Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, expect, ready_for_analysis, register

CLEAN = {"app.py": "def add(a, b):\n    return a + b\n"}
# A high-severity finding (an AWS access key id) fails the default gate (max_high_findings 0, max_secrets 0).
LEAKY = {**CLEAN, "settings.py": 'AWS_KEY = "' + "AK" + "IA" + "Q3J7HJ2K4M9RZT5W" + '"\n'}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def repolens(
    *args: str, url: str, token: str | None, home: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, configured as a CI job configures it: by the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOLENS_", "GITHUB_", "GITLAB", "CI_"))}
    env.update({"REPOLENS_URL": url, "XDG_CONFIG_HOME": str(home), "COLUMNS": "200"})
    if token is not None:
        env["REPOLENS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _token(person: Person, *scopes: str) -> str:
    body = {"name": "cli", "scopes": list(scopes), "expires_in_days": 1}
    return str(expect(person.post("/api/v2/tokens", json=body), 201)["token"])


def _repository(person: Person, root: Path, files: dict[str, str], name: str) -> dict[str, Any]:
    source = git_repository(root / name, files)
    return dict(expect(person.post("/api/v2/repositories", json={"name": name, "url": str(source)}), 201))


def test_a_passing_gate_exits_0_and_writes_sarif(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    _repository(person, tmp_path, CLEAN, "clean")
    token = _token(person, "analysis:read", "analysis:run")
    sarif = tmp_path / "out.sarif"
    done = repolens(
        "analyse", "--wait", "--sarif", str(sarif), "--json", url=stack.gateway_url, token=token, home=tmp_path
    )
    assert done.returncode == codes.EXIT_PASSED, done.stderr
    summary = json.loads(done.stdout)
    assert summary["quality_gate"]["status"] == "passed"
    assert summary["analysis"]["status"] == "succeeded"
    assert summary["exit_code"] == 0
    assert json.loads(sarif.read_text())["version"] == "2.1.0"
    assert "quality gate: passed" in done.stderr
    assert token not in done.stdout + done.stderr


def test_a_failing_gate_exits_1_naming_the_conditions(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    _repository(person, tmp_path, CLEAN, "other")
    _repository(person, tmp_path, LEAKY, "leaky")
    token = _token(person, "analysis:read", "analysis:run")
    done = repolens("analyse", "--repository", "leaky", "--wait", url=stack.gateway_url, token=token, home=tmp_path)
    assert done.returncode == codes.EXIT_GATE_FAILED, done.stderr
    assert "quality gate: failed" in done.stderr
    assert "failed: max_high_findings = 1 (at most 0)" in done.stderr


def test_usage_and_authentication_errors_exit_2(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    _repository(person, tmp_path, CLEAN, "first")
    _repository(person, tmp_path, CLEAN, "second")
    reader = _token(person, "analysis:read")
    runner = _token(person, "analysis:read", "analysis:run")
    url = stack.gateway_url
    cases = {
        "no token": repolens("analyse", url=url, token=None, home=tmp_path),
        "a revoked-looking token": repolens("analyse", url=url, token="rlp_" + "0" * 36, home=tmp_path),
        "no analysis:run": repolens("analyse", "-r", "first", url=url, token=reader, home=tmp_path),
        "two repositories, none named": repolens("analyse", url=url, token=runner, home=tmp_path),
        "an unknown repository": repolens("analyse", "-r", "nope", url=url, token=runner, home=tmp_path),
        "an unknown option": repolens("analyse", "--frobnicate", url=url, token=runner, home=tmp_path),
    }
    for what, done in cases.items():
        assert done.returncode == codes.EXIT_USAGE, (what, done.stderr)
    assert "ERR_AUTH_013" in cases["no analysis:run"].stderr
    # Nothing was queued by any of them.
    assert expect(person.get("/api/v2/analyses"), 200)["items"] == []


def test_timeout_exits_4_and_a_cancelled_analysis_exits_3(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    _repository(person, tmp_path, CLEAN, "waiting")
    token = _token(person, "analysis:read", "analysis:run")
    url = stack.gateway_url
    stack.stop_service(WORKER)  # nothing runs: the analyses stay queued
    try:
        timed_out = repolens("analyse", "--wait", "--timeout", "2", url=url, token=token, home=tmp_path)
        assert timed_out.returncode == codes.EXIT_TIMEOUT, timed_out.stderr
        assert "still queued at the timeout" in timed_out.stderr

        env_args = ("analyse", "--wait", "--json")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "cli", *env_args],
            env={**os.environ, "REPOLENS_URL": url, "REPOLENS_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                queued = expect(person.get("/api/v2/analyses", params={"status": "queued"}), 200)["items"]
                if len(queued) == 2:  # the timed-out one, and the one the CLI waits for
                    break
                assert time.monotonic() < deadline, "the CLI queued nothing"
                time.sleep(0.2)
            expect(person.post(f"/api/v2/analyses/{queued[0]['id']}/cancel"), 202)
            stdout, stderr = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == codes.EXIT_ANALYSIS_FAILED, stderr
        assert json.loads(stdout)["analysis"]["status"] == "cancelled"
    finally:
        stack.start_service(WORKER)


def test_an_unreachable_server_exits_5(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # a gateway that is not running
    done = repolens("analyse", "--wait", url=nobody, token="rlp_" + "0" * 36, home=tmp_path, timeout=60)
    assert done.returncode == codes.EXIT_UNREACHABLE, done.stderr
    assert "cannot reach" in done.stderr


def test_login_keeps_the_token_private_and_commands_use_it(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    repository = _repository(person, tmp_path, CLEAN, "listed")
    token = _token(person, "analysis:read", "repositories:write")
    home = tmp_path / "home"
    logged = repolens("login", "--token", token, url=stack.gateway_url, token=None, home=home)
    assert logged.returncode == 0, logged.stderr
    saved = home / "repolens" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"url": stack.gateway_url, "token": token}

    # No token in the environment now: the saved one is used.
    listed = repolens("repositories", "list", "--json", url=stack.gateway_url, token=None, home=home)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [repository["id"]]
    added = repolens(
        "repositories", "add", "more", "https://github.com/example/more", url=stack.gateway_url, token=None, home=home
    )
    assert added.returncode == 0, added.stderr
    assert expect(person.get(f"/api/v2/repositories/{added.stdout.strip()}"), 200)["name"] == "more"
    refused = repolens("login", "--token", "rlp_" + "1" * 36, url=stack.gateway_url, token=None, home=tmp_path / "h2")
    assert refused.returncode == codes.EXIT_USAGE
    assert not (tmp_path / "h2" / "repolens" / "config.json").exists()


def test_tokens_are_managed_with_a_login(client: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    url = stack.gateway_url
    created = repolens(
        "tokens",
        "create",
        "from-cli",
        "-s",
        "analysis:read",
        "--days",
        "7",
        url=url,
        token=person.access_token,
        home=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    new_token = created.stdout.strip()
    assert new_token.startswith("rlp_")
    listed = repolens("tokens", "list", "--json", url=url, token=person.access_token, home=tmp_path)
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "from-cli"
    assert new_token not in listed.stdout
    # A personal access token cannot manage tokens.
    assert repolens("tokens", "list", url=url, token=new_token, home=tmp_path).returncode == codes.EXIT_USAGE
    revoked = repolens("tokens", "revoke", entry["id"], url=url, token=person.access_token, home=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert (
        json.loads(repolens("tokens", "list", "--json", url=url, token=person.access_token, home=tmp_path).stdout) == []
    )
