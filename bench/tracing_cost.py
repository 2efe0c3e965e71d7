"""What tracing costs: `GET /api/v2/auth/me` throughput with tracing off, propagating only, and exporting.

    python bench/tracing_cost.py                   # 3 rounds of 10 s per mode, 64 connections
    python bench/tracing_cost.py --rounds 5 --seconds 15

One stack per mode, all running at once (each with its own database and NATS), loaded in turn, round after round,
so that a neighbour's load on a shared machine falls on every mode alike; the summary is the median per mode. The
exporting stacks send their spans to a stand-in OTLP collector running in a process of its own, as a collector
would. The load generator is bench/auth_me.py's.

Besides req/s, each run reports the CPU time the gateway and auth processes spent per request (from /proc): on a
machine shared with other work, throughput swings with the neighbours, while CPU per request is the cost itself
(on a dedicated machine, saturated throughput is its inverse).

Modes: `off` (OTEL_SDK_DISABLED), `propagate` (no endpoint: trace context and trace ids in logs only),
`export` (OTLP/HTTP at the default sampling ratio) and `export-all` (every trace recorded, for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.auth_me import _token, load
from libs.common.config import CommonSettings
from libs.devstack.servers import EmbeddedNats, EmbeddedPostgres, create_database, free_port
from libs.devstack.stack import Stack

# The processes a `GET /auth/me` runs through: their CPU time is the request's cost.
REQUEST_PATH = ("gateway", "auth")
# JSON lines at INFO, as in production; one user's requests must not meet the per-user rate limit.
COMMON_ENV = {"LOG_LEVEL": "INFO", "LOG_JSON": "true", "RATE_LIMIT_API": "100000000/minute"}


def modes(collector: str) -> dict[str, dict[str, str]]:
    return {
        "off": {"OTEL_SDK_DISABLED": "true"},
        "propagate": {},
        "export": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
        "export-all": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    }


def cpu_seconds(stack: Stack) -> float:
    """User plus system CPU time of the request path's processes so far (Linux /proc)."""
    total = 0
    for name in REQUEST_PATH:
        pid = stack.supervisor.pid(name)
        assert pid is not None, f"{name} is not running"
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    default_ratio = CommonSettings.model_fields["otel_traces_sampler_arg"].default
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="repolens-bench-tracing-") as tmp, contextlib.ExitStack() as running:
        postgres = EmbeddedPostgres(Path(tmp) / "pg", database="repolens", delete_on_stop=True)
        postgres.start()
        running.callback(postgres.stop)
        port = free_port()
        collector = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_standin", "--port", str(port)],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        received: list[str] = []

        def stop_collector() -> None:
            """After the stacks (callbacks run last-in first-out), so the spans they flush on exit are counted."""
            collector.terminate()
            received.append((collector.communicate(timeout=10)[0] or "").strip())

        running.callback(stop_collector)  # also when a stack fails to start
        stacks: dict[str, Stack] = {}
        for name, env in modes(f"http://127.0.0.1:{port}").items():
            nats = EmbeddedNats(Path(tmp) / f"nats-{name}")
            nats.start()
            running.callback(nats.delete)
            database_url = create_database(postgres.server_url(), f"bench_{name.replace('-', '_')}")
            stack = Stack(
                database_url,
                nats.url,
                environment="test",
                extra_env={**COMMON_ENV, **env},
                log_file=Path(tmp) / f"{name}.log",
            )
            running.enter_context(stack)
            stacks[name] = stack
        tokens = {name: _token(stack.gateway_url) for name, stack in stacks.items()}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
        order = list(stacks)
        for round_number in range(args.rounds):
            # Rotate who goes first: the first of a round meets whatever the machine did just before.
            for name in order[round_number % len(order) :] + order[: round_number % len(order)]:
                url = stacks[name].gateway_url
                asyncio.run(load(url, tokens[name], seconds=2, connections=args.connections))  # warm-up
                cpu_before = cpu_seconds(stacks[name])
                result = asyncio.run(load(url, tokens[name], seconds=args.seconds, connections=args.connections))
                cpu = cpu_seconds(stacks[name]) - cpu_before
                result["cpu_us_per_req"] = round(cpu / max(result["requests"], 1) * 1e6, 1)
                results[name].append(result)
                print(json.dumps({"round": round_number + 1, "mode": name, **result}), flush=True)
        running.close()  # stops the stacks (their exporters flush what they hold), then the collector

    def median(runs: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    baseline, baseline_cpu = median(results["off"], "req_per_s"), median(results["off"], "cpu_us_per_req")
    summary = {
        name: {
            "req_per_s": median(runs, "req_per_s"),
            "req_per_s_vs_off": round(median(runs, "req_per_s") / baseline - 1, 3),
            "cpu_us_per_req": median(runs, "cpu_us_per_req"),
            "cpu_vs_off": round(median(runs, "cpu_us_per_req") / baseline_cpu - 1, 3),
            "p99_ms": median(runs, "p99_ms"),
            "errors": sum(int(r["errors"]) for r in runs),
        }
        for name, runs in results.items()
    }
    print(
        json.dumps(
            {
                "path": "GET /api/v2/auth/me",
                "connections": args.connections,
                "default_sampling_ratio": default_ratio,
                "collector": received[0] if received else "",
                "summary": summary,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
    )
    return 0 if all(s["errors"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
