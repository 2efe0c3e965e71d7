"""Churn and hotspots through the gateway: a worker clones a local repository with months of history."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.devstack.stack import Stack
from tests.e2e.people import Person, expect, ready_for_analysis, register

# Complex, and changed in every commit: the hotspot.
HOT = """def route(kind, x):
    if kind == "a" and x > 0:
        return 1
    elif kind == "b" or x < 0:
        return 2
    for i in range(x):
        if i % 2:
            continue
    while x > 10:
        x -= 1
    return 3 if x else 4


def version():
    return {n}
"""
# Changed just as often, but simple.
SIMPLE = "def name():\n    return 'v{n}'\n"
# The most complex file, changed once.
COLD = "def knot(a, b, c, d):\n" + "".join(f"    if a == {i} or b == {i}:\n        return {i}\n" for i in range(8))


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def history(root: Path) -> datetime:
    """Six changes over the last six months to hot.py, simple.py and README.md by two people; cold.py once.

    Returns the date of the last one."""
    root.mkdir(parents=True)

    def git(*args: str, when: datetime | None = None, email: str = "ann@example.com") -> None:
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
        if when is not None:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = when.isoformat()
        identity = ["-c", f"user.name={email}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", *identity, *args], cwd=root, env=env, check=True, capture_output=True, timeout=30)

    git("init", "-q", "-b", "main")
    now = datetime.now(UTC).replace(microsecond=0)
    for n in range(6):
        (root / "hot.py").write_text(HOT.format(n=n))
        (root / "simple.py").write_text(SIMPLE.format(n=n))
        (root / "README.md").write_text(f"# version {n}\n")
        if n == 0:
            (root / "cold.py").write_text(COLD)
        git("add", "-A")
        email = "ann@example.com" if n % 2 else "bob@example.com"
        when = now - timedelta(days=180 - 30 * n)
        git("commit", "-q", "-m", f"version {n}", when=when, email=email)
    return when


def wait_for(person: Person, analysis_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        analysis = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
        if analysis["status"] in {"succeeded", "failed", "cancelled"} or time.monotonic() > deadline:
            return dict(analysis)
        time.sleep(0.2)


def test_hotspots_name_the_file_changed_often_and_complex(client: httpx.Client, tmp_path: Path) -> None:
    person = ready_for_analysis(register(client))
    source = tmp_path / "project"
    last_change = history(source)
    repository = expect(person.post("/api/v2/repositories", json={"name": "hot", "url": str(source)}), 201)
    started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
    done = wait_for(person, started["id"])
    assert done["status"] == "succeeded", done
    assert "churn" in done["timings"]
    report = expect(person.get(f"/api/v2/analyses/{started['id']}/report"), 200)

    churn = report["churn"]
    assert churn["window_days"] == 365
    assert churn["history"] is True
    assert churn["commits"] == 6
    assert churn["files_changed"] == 4
    assert churn["complete"] is True

    hotspots = report["hotspots"]
    assert [h["path"] for h in hotspots] == ["hot.py", "cold.py", "simple.py"]  # README.md has no functions
    hot = hotspots[0]
    assert hot["changes"] == 6
    assert hot["authors"] == 2
    assert hot["complexity"] == 9 + 1  # route and version
    assert hot["score"] == round(1 * 10 / 17, 4)  # cold.py's knot (17) sets the complexity scale
    assert hot["functions"][0] == {"name": "route", "line": 1, "cyclomatic": 9}
    assert hot["last_change"] == last_change.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert hotspots[1]["functions"][0]["name"] == "knot"
    assert "example.com" not in str(report)
