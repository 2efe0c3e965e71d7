"""Load `GET /api/v2/auth/me` through the gateway and print req/s, p50 and p99.

    python bench/auth_me.py                       # starts its own PostgreSQL, NATS and stack
    python bench/auth_me.py --url http://127.0.0.1:8000   # against a running `make run`

The load generator speaks HTTP/1.1 keep-alive over raw asyncio streams, one connection per
worker, so that the client costs as little CPU as possible on a machine it shares with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.devstack.servers import EmbeddedNats, EmbeddedPostgres
from libs.devstack.stack import Stack


def _token(base_url: str) -> str:
    name = "bench" + uuid.uuid4().hex[:8]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.post(
            "/api/v2/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": "benchmark-pass"},
        ).raise_for_status()
        response = client.post("/api/v2/auth/login", json={"username": name, "password": "benchmark-pass"})
        response.raise_for_status()
        token: str = response.json()["access_token"]
        client.get("/api/v2/auth/me", headers={"Authorization": f"Bearer {token}"}).raise_for_status()
        return token


async def _worker(
    host: str, port: int, request: bytes, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(int(status_line.split()[1]) if status_line else 0)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def load(base_url: str, token: str, *, seconds: float, connections: int) -> dict[str, float]:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET /api/v2/auth/me HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_worker(host, port, request, until, latencies, errors) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
    }


@contextlib.contextmanager
def _own_stack(log_level: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="repolens-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg", database="repolens", delete_on_stop=True)
        nats = EmbeddedNats(Path(tmp) / "nats")
        postgres.start()
        nats.start()
        try:
            log = Path(tmp) / "stack.log"
            # JSON lines to a file, as in production.
            # The per-user API limit (600/minute) would answer 429 to all but the first requests of one user.
            extra = {"LOG_LEVEL": log_level, "LOG_JSON": "true", "RATE_LIMIT_API": "100000000/minute"}
            with Stack(postgres.url, nats.url, environment="test", extra_env=extra, log_file=log) as stack:
                yield stack.gateway_url
        finally:
            nats.stop()
            postgres.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway; without it the script starts its own stack")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--log-level", default="INFO", help="of the stack this script starts (default INFO)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base_url = args.url or stack.enter_context(_own_stack(args.log_level))
        token = _token(base_url)
        asyncio.run(load(base_url, token, seconds=2, connections=args.connections))  # warm-up
        result = asyncio.run(load(base_url, token, seconds=args.seconds, connections=args.connections))
    print(json.dumps({"path": "GET /api/v2/auth/me", "connections": args.connections, **result}))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
