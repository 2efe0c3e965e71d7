"""gRPC metrics: calls served and made, by method and status code, with latency."""

from __future__ import annotations

import time
from typing import Any

import grpc

from libs.common.metrics import (
    GRPC_CLIENT_DURATION,
    GRPC_CLIENT_HANDLED,
    GRPC_SERVER_DURATION,
    GRPC_SERVER_HANDLED,
)


def _record(counter: Any, histogram: Any, method: str, code: grpc.StatusCode, started: float) -> None:
    histogram.labels(method=method).observe(time.perf_counter() - started)
    counter.labels(method=method, code=code.name).inc()


def record_server_call(method: str, code: grpc.StatusCode, started: float) -> None:
    """One unary call served, by the status the client sees (libs/common/grpc_server.ServerInterceptor)."""
    _record(GRPC_SERVER_HANDLED, GRPC_SERVER_DURATION, method, code, started)


def record_client_call(method: str, code: grpc.StatusCode, started: float) -> None:
    """One outgoing unary call, by the status the server (or the deadline) gave (libs/common/grpc_client.call)."""
    _record(GRPC_CLIENT_HANDLED, GRPC_CLIENT_DURATION, method, code, started)
