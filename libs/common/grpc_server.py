"""gRPC server bootstrap: interceptors, health, reflection and graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from libs.common import deadlines, errors, tracing
from libs.common.config import GrpcServiceSettings
from libs.common.errors import AppError
from libs.common.grpc_metrics import record_server_call
from libs.common.logging import error_text

REQUEST_ID_KEY = "x-request-id"
ERROR_DOMAIN = "repolens"
# The standard services every server carries: probes and tooling call them without any credential.
ALWAYS_PUBLIC = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

# Settles who calls (raising the error that refuses the call); the service's Authenticator (libs/common/identity).
Authenticate = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[None]]

log = structlog.get_logger(__name__)


def error_status(error: AppError) -> grpc.Status:
    """The gRPC status carrying the error code as `google.rpc.ErrorInfo`."""
    info = error_details_pb2.ErrorInfo(reason=error.code, domain=ERROR_DOMAIN, metadata=error.details)
    status = status_pb2.Status(code=error.spec.grpc_status.value[0], message=error.message)
    status.details.add().Pack(info)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _refuse_nul(message: Any, path: str = "") -> None:
    """No text of any request may hold NUL: PostgreSQL refuses it in text, and a caller behind the gateway (whose
    schema refuses it too) must get a clear error for it, not an internal one."""
    if not isinstance(message, Message):
        return
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        values = value if field.is_repeated else [value]
        for item in values:
            if isinstance(item, str) and "\x00" in item:
                raise AppError(errors.VALIDATION, details={"field": name, "reason": "contains a NUL character"})
            if isinstance(item, Message):
                _refuse_nul(item, f"{name}.")


async def _deny(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    raise AppError(errors.INVALID_TOKEN)


def _refused(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A streaming RPC of ours that the interceptor cannot authenticate per message: refused whole."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort_with_status(error_status(AppError(errors.INVALID_TOKEN)))

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(request, context)
        yield  # pragma: no cover - abort raises

    kinds = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kinds)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **kinds)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kinds)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """The one interceptor of our servers, one wrapper per call: binds request metadata into the log context,
    authenticates the caller (denying by default), maps typed errors to rich gRPC statuses, and counts and times
    every call by the status the client sees (`repolens_grpc_server_*`; health and reflection are not counted).

    A call that succeeds is logged at debug level (the gateway's access log and the metrics have it already), one
    slower than `slow_s` as a warning; a refused or failed call always is."""

    def __init__(self, authenticate: Authenticate = _deny, *, slow_s: float = 1.0) -> None:
        self.authenticate = authenticate
        self.slow_s = slow_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in ALWAYS_PUBLIC:
            return handler
        if handler.unary_unary is None:
            return _refused(handler)
        behaviour: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=metadata_value(context, REQUEST_ID_KEY), rpc=method)
            deadlines.bind_incoming(context)
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                await self.authenticate(method, context)
                _refuse_nul(request)
                reply = await behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
                if elapsed_ms >= self.slow_s * 1000:
                    log.warning("rpc.slow", elapsed_ms=elapsed_ms)
                else:
                    log.debug("rpc.completed", elapsed_ms=elapsed_ms)
                return reply
            except AppError as exc:
                code = exc.spec.grpc_status
                log.info("rpc.failed", code=exc.code, elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
                await context.abort_with_status(error_status(exc))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away or its deadline passed
                raise
            except Exception as exc:
                if _database_unavailable(exc):
                    # No bug of ours, and the caller may retry (503 and Retry-After at the gateway). One line without
                    # a traceback: during an outage every call ends here.
                    code, spec = grpc.StatusCode.UNAVAILABLE, errors.DATABASE_UNAVAILABLE
                    log.warning("rpc.database_unavailable", error=error_text(exc))
                else:
                    code, spec = grpc.StatusCode.INTERNAL, errors.INTERNAL
                    log.exception("rpc.crashed")
                await context.abort_with_status(error_status(AppError(spec)))
            finally:
                record_server_call(method, code, started)
                structlog.contextvars.clear_contextvars()

        return grpc.unary_unary_rpc_method_handler(
            tracing.traced_rpc(method, unary),  # outermost: the logs above carry the trace id
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _database_unavailable(exc: BaseException) -> bool:
    # Imported here: the gateway imports this module (for REQUEST_ID_KEY) and has no database driver to load.
    from libs.common.db import database_unavailable

    return database_unavailable(exc)


HealthProbe = Callable[[], Awaitable[bool]]


def server_options(settings: GrpcServiceSettings) -> list[tuple[str, int]]:
    """Channel options of our servers. Connections are closed after `grpc_max_connection_age_s` (in-flight calls
    get `shutdown_grace_s` more), so that clients spread over pods resolve their targets again."""
    age_ms = int(settings.grpc_max_connection_age_s * 1000)
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_s * 1000)),
    ]


class GrpcServer:
    """A grpc.aio server with the standard health and reflection services.

    Health is real: `SERVING` only while every probe passes, re-checked every `interval` seconds.
    """

    def __init__(self, settings: GrpcServiceSettings, *, service_names: Iterable[str]):
        self._settings = settings
        self._service_names = [*service_names]
        self._interceptor = ServerInterceptor(slow_s=settings.grpc_slow_call_ms / 1000)
        self.server = grpc.aio.server(
            interceptors=[self._interceptor],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            options=server_options(settings),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self._probes: list[HealthProbe] = []
        self._stopping = asyncio.Event()

    def authenticate_with(self, authenticate: Authenticate) -> None:
        """How callers are checked; until this is called, every RPC but health and reflection is refused."""
        self._interceptor.authenticate = authenticate

    def add_probe(self, probe: HealthProbe) -> None:
        self._probes.append(probe)

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(f"{self._settings.grpc_host}:{self._settings.grpc_port}")
        await self.server.start()
        await self._set_health(False)
        return self.port

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def _check(self) -> bool:
        for probe in self._probes:
            try:
                if not await asyncio.wait_for(probe(), timeout=2.0):
                    return False
            except Exception:
                return False
        return True

    async def watch_health(self, interval: float = 1.0) -> None:
        """Keeps the health status in step with the probes until the server stops."""
        serving: bool | None = None
        while not self._stopping.is_set():
            now = await self._check()
            if now != serving:
                serving = now
                await self._set_health(now)
                log.info("health.changed", serving=now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

    async def wait_for_stop(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Reports NOT_SERVING, then lets in-flight calls finish within the grace period."""
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._settings.shutdown_grace_s)
