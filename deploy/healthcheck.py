"""Container health probe: the standard gRPC health protocol for a service, an HTTP GET for the gateway.

    python deploy/healthcheck.py grpc 127.0.0.1:50051 [--service NAME]   # exit 0 only when SERVING
    python deploy/healthcheck.py http http://127.0.0.1:8000/health/ready  # exit 0 only on 200

Used by docker-compose.yml (Kubernetes probes the same endpoints natively). It reads no settings and opens no
database or NATS connection: it asks the running process, which knows its own health.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def grpc_serving(target: str, *, service: str, timeout_s: float) -> bool:
    """True when the server at `target` answers SERVING for `service` ("" is the whole server)."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str, *, timeout_s: float) -> bool:
    """True when a GET of `url` answers 200."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("only http:// and https:// URLs are probed")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 # nosec B310 # scheme checked above
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = kinds.add_parser("grpc", help="gRPC health protocol (grpc.health.v1.Health/Check)")
    grpc_parser.add_argument("target", help="host:port of the service")
    grpc_parser.add_argument("--service", default="", help="service name to ask about (default: the server)")
    http_parser = kinds.add_parser("http", help="HTTP GET that must answer 200")
    http_parser.add_argument("url")
    for sub in (grpc_parser, http_parser):
        sub.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        healthy = grpc_serving(args.target, service=args.service, timeout_s=args.timeout)
    else:
        healthy = http_ok(args.url, timeout_s=args.timeout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
