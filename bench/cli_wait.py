"""`repolens analyse --wait` on this repository, end to end, as a CI job runs it: the seconds from the CLI's start to
the quality gate printed, and the analysis's own queue-to-end time, for a few rounds.

    .venv/bin/python bench/cli_wait.py [--rounds 3] [--repository PATH]

The stack runs on embedded servers as `make run` runs it (bench/stack_on_embedded.py). The repository is cloned from
its local path (development mode allows it); the first round also fills the worker's engine cache, so later
rounds show what a pipeline re-running on an unchanged tree pays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack_on_embedded import ROOT, embedded_stack


def _setup(url: str, repository: Path) -> str:
    """A user, their repository, and a personal access token to run the CLI with."""
    name = f"bench{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, timeout=30) as http:
        body = {"username": name, "email": f"{name}@example.com", "password": "bench-password-1", "full_name": name}
        http.post("/api/v2/auth/register", json=body).raise_for_status()
        login = http.post("/api/v2/auth/login", json={"username": name, "password": "bench-password-1"})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        deadline = time.monotonic() + 60
        while http.get("/api/v2/repositories", headers=headers).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the tenant never reached the analysis service")
            time.sleep(0.2)
        created = http.post("/api/v2/repositories", json={"name": "self", "url": str(repository)}, headers=headers)
        created.raise_for_status()
        scopes = {"name": "bench", "scopes": ["analysis:read", "analysis:run"], "expires_in_days": 1}
        token = http.post("/api/v2/tokens", json=scopes, headers=headers)
        token.raise_for_status()
        return str(token.json()["token"])


def _files(url: str, token: str, analysis_id: str) -> int:
    """Files the analysis counted: proof that it read the tree, not an empty clone."""
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        report = http.get(f"/api/v2/analyses/{analysis_id}/report")
        report.raise_for_status()
        return int(report.json()["inventory"]["totals"]["files"])


def _round(url: str, token: str, home: Path) -> tuple[float, float, int, int]:
    env = {**os.environ, "REPOLENS_URL": url, "REPOLENS_TOKEN": token, "XDG_CONFIG_HOME": str(home)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "analyse", "--wait", "--json", "--timeout", "900"],
        env=env,
        capture_output=True,
        text=True,
        timeout=960,
        check=False,
        cwd=ROOT,
    )
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the CLI exited {done.returncode}: {done.stderr}")
    analysis = json.loads(done.stdout)["analysis"]
    created = dt.datetime.fromisoformat(analysis["created_at"])
    finished = dt.datetime.fromisoformat(analysis["finished_at"])
    return wall, (finished - created).total_seconds(), done.returncode, _files(url, token, analysis["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repository", type=Path, default=ROOT, help="a git checkout (default: this repository)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="repolens-bench-cli-"))
    env = {"ENGINE_CACHE_DIR": str(root / "engine-cache"), "RATE_LIMIT_API": "100000/minute"}
    with embedded_stack(root, production_like=False, env=env, log=root / "stack.log") as stack:
        token = _setup(stack.gateway_url, args.repository.resolve())
        walls, queued = [], []
        print(f"repolens analyse --wait on {args.repository.resolve()}")
        print(f"{'round':>5} {'CLI start to gate (s)':>22} {'queued to ended (s)':>20} {'exit':>5} {'files':>6}")
        for number in range(1, args.rounds + 1):
            wall, inside, code, files = _round(stack.gateway_url, token, root / "home")
            walls.append(wall)
            queued.append(inside)
            print(f"{number:>5} {wall:>22.2f} {inside:>20.2f} {code:>5} {files:>6}")
        wall_median, queued_median = statistics.median(walls), statistics.median(queued)
        print(f"median: CLI start to gate {wall_median:.2f} s, queued to ended {queued_median:.2f} s")


if __name__ == "__main__":
    main()
