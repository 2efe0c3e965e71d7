"""gRPC metrics: server and client interceptors counting calls by method and status code, with latency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


class ServerMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary RPC by its outcome as the client sees it.

    It goes first in the server's interceptor list, so it wraps the error-mapping interceptor and reads the status
    that one set (`abort_with_status`), not the Python exception behind it.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behaviour: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                reply = await behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return reply
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away or its deadline passed
                raise
            finally:
                _record(GRPC_SERVER_HANDLED, GRPC_SERVER_DURATION, method, code, started)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Times each outgoing unary call to its end and counts it by the status the server (or the deadline) gave."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        raw = client_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        code = grpc.StatusCode.CANCELLED
        try:
            # Waits for the end of the call without raising; the caller still gets the reply or the error from `call`.
            code = await call.code()
        finally:
            _record(GRPC_CLIENT_HANDLED, GRPC_CLIENT_DURATION, method, code, started)
        return call
