"""The read path against its baseline: `GET /api/v2/auth/me` and `GET /api/v2/analyses/{id}` through the stack, and
through one FastAPI app doing the same reads (bench/read_baseline.py), in alternating rounds of one run.

    python bench/read_path.py                     # make run's defaults
    python bench/read_path.py --production-like   # JSON logs, Redis for the limits, sampling as shipped
    python bench/read_path.py --rounds 3 --seconds 10 --connections 64

Prints, per target and route, the medians over the rounds of req/s, p50 and p99 (from wrk, `apt-get install wrk`),
the errors, the CPU microseconds per request of each process (from /proc, children included), and the stack's
ratio to the baseline. A benchmark prints; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stack_on_embedded import UNLIMITED, embedded_stack, git_checkout  # noqa: E402
from libs.devstack.procfs import cpu_seconds  # noqa: E402
from libs.devstack.servers import LOCALHOST, free_port  # noqa: E402
from libs.devstack.supervisor import Supervisor  # noqa: E402

ROUTES = ("me", "analysis")


@dataclass
class Target:
    name: str
    url: str
    pids: dict[str, int]  # process name -> pid (its children count with it)


@dataclass
class Round:
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: dict[str, float] = field(default_factory=dict)  # per request, by process


def _wrk(url: str, token: str, *, seconds: float, connections: int) -> tuple[float, float, float, int, int]:
    """req/s, p50 ms, p99 ms, errors, requests."""
    finished = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = finished.stdout

    def latency(quantile: str) -> float:
        match = re.search(rf"^\s+{quantile}%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.MULTILINE)
        assert match, out
        return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad[1]) if bad else 0) + (sum(int(g) for g in socket.groups()) if socket else 0)
    if errors:  # which kind: answers that were not 2xx, or connections that failed or timed out (wrk waits 2 s)
        print(f"  {url}: {bad[0] if bad else 'no non-2xx'}; {socket[0] if socket else 'no socket errors'}")
    return rate, latency("50"), latency("99"), errors, requests


def _measure(target: Target, path: str, token: str, *, seconds: float, connections: int) -> Round:
    before = {name: cpu_seconds(pid) for name, pid in target.pids.items()}
    rate, p50, p99, errors, requests = _wrk(target.url + path, token, seconds=seconds, connections=connections)
    after = {name: cpu_seconds(pid) for name, pid in target.pids.items()}
    cpu = {name: round((after[name] - before[name]) * 1e6 / max(requests, 1), 1) for name in target.pids}
    return Round(rate, p50, p99, errors, cpu)


def _user(base_url: str, checkout: Path) -> tuple[str, str]:
    """A user's access token and the id of its succeeded analysis of a small repository."""
    name = "bench" + uuid.uuid4().hex[:8]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        body = {"username": name, "email": f"{name}@example.com", "password": "benchmark-pass"}
        client.post("/api/v2/auth/register", json=body).raise_for_status()
        token = client.post("/api/v2/auth/login", json={"username": name, "password": "benchmark-pass"}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 30
        while client.get("/api/v2/repositories", headers=headers).status_code != 200:  # the schema comes by event
            assert time.monotonic() < deadline
            time.sleep(0.2)
        repository = client.post("/api/v2/repositories", json={"name": "bench", "url": str(checkout)}, headers=headers)
        repository.raise_for_status()
        started = client.post(f"/api/v2/repositories/{repository.json()['id']}/analyses", json={}, headers=headers)
        analysis_id = started.json()["id"]
        while client.get(f"/api/v2/analyses/{analysis_id}", headers=headers).json()["status"] != "succeeded":
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        return token, analysis_id


@contextlib.contextmanager
def _baseline(database_url: str, jwks: list[dict[str, str]], log: Path) -> Iterator[Target]:
    port = free_port()
    env = {**os.environ, "BASELINE_DATABASE_URL": database_url, "BASELINE_JWKS": json.dumps(jwks)}
    supervisor = Supervisor(log_file=log)
    argv = [
        *(sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "read_baseline:app"),
        *("--host", LOCALHOST, "--port", str(port), "--workers", "2", "--loop", "uvloop", "--http", "httptools"),
        "--no-access-log",
    ]
    supervisor.start("baseline", argv, env=env)
    url = f"http://{LOCALHOST}:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/api/v2/auth/me", timeout=2).status_code == 401:
                break
        assert time.monotonic() < deadline, supervisor.tail("baseline")
        time.sleep(0.2)
    try:
        pid = supervisor.pid("baseline")
        assert pid is not None
        yield Target("baseline", url, {"baseline (2 workers)": pid})
    finally:
        supervisor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--production-like", action="store_true", help="JSON logs, Redis limits, shipped sampling")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="repolens-read-path-") as tmp, contextlib.ExitStack() as running:
        root = Path(tmp)
        env = {"RATE_LIMIT_API": UNLIMITED}  # one user loads the API: the per-user limit would refuse it
        stack = running.enter_context(
            embedded_stack(root, production_like=args.production_like, env=env, log=root / "stack.log")
        )
        token, analysis_id = _user(stack.gateway_url, git_checkout(root))
        jwks = httpx.get(stack.gateway_url + "/.well-known/jwks.json", timeout=10).json()["keys"]
        baseline = running.enter_context(_baseline(stack.database_url, jwks, root / "baseline.log"))
        names = ("gateway", "auth", "tenants", "analysis")
        pids = {name: pid for name in names if (pid := stack.supervisor.pid(name)) is not None}
        targets = [Target("stack", stack.gateway_url, pids), baseline]
        paths = {"me": "/api/v2/auth/me", "analysis": f"/api/v2/analyses/{analysis_id}"}
        for target in targets:  # warm-up
            for path in paths.values():
                _wrk(target.url + path, token, seconds=2, connections=args.connections)
        results: dict[tuple[str, str], list[Round]] = {}
        for _ in range(args.rounds):
            for route, path in paths.items():
                for target in targets:
                    measured = _measure(target, path, token, seconds=args.seconds, connections=args.connections)
                    results.setdefault((target.name, route), []).append(measured)
    mode = "production-like" if args.production_like else "make run defaults"
    print(f"\n{mode}: {args.rounds} rounds of {args.seconds:.0f} s, {args.connections} connections, medians\n")
    print(f"{'route':<10} {'target':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  CPU us/request")
    for route in ROUTES:
        for name in ("stack", "baseline"):
            rounds = results[(name, route)]
            cpu = {process: statistics.median(r.cpu_us[process] for r in rounds) for process in rounds[0].cpu_us}
            rate = statistics.median(r.req_per_s for r in rounds)
            p50, p99 = statistics.median(r.p50_ms for r in rounds), statistics.median(r.p99_ms for r in rounds)
            processes = ", ".join(f"{process} {value:.0f}" for process, value in cpu.items())
            print(
                f"{route:<10} {name:<9} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f} {sum(r.errors for r in rounds):>7}  "
                f"{processes} (total {sum(cpu.values()):.0f})"
            )
        stack_rate = statistics.median(r.req_per_s for r in results[("stack", route)])
        base_rate = statistics.median(r.req_per_s for r in results[("baseline", route)])
        print(f"{route:<10} ratio     {stack_rate / base_rate:>8.2f}x the baseline's req/s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
