"""Our gRPC server denies by default: an RPC nobody authenticated is refused, streams included; probes are not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.common.config import GrpcServiceSettings
from libs.common.grpc_client import error_from_rpc
from libs.common.grpc_server import GrpcServer
from libs.common.identity import Access, Authenticator, ServiceIdentity, calling_service

Context = grpc.aio.ServicerContext[Any, Any]


async def _unary(request: bytes, context: Context) -> bytes:
    return b"unary:" + calling_service().encode()


async def _stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
    yield b"streamed"


@pytest.fixture
async def server() -> AsyncIterator[tuple[GrpcServer, str]]:
    running = GrpcServer(GrpcServiceSettings(grpc_port=0), service_names=["test.Probe"])
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    running.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))
    port = await running.start()
    try:
        yield running, f"127.0.0.1:{port}"
    finally:
        await running.server.stop(0)


async def _codes(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        unary: Any = channel.unary_unary("/test.Probe/Unary")
        stream: Any = channel.unary_stream("/test.Probe/Stream")
        try:
            found["Unary"] = await unary(b"", metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            found["Unary"] = error_from_rpc(exc).code
        try:
            found["Stream"] = [m async for m in stream(b"", metadata=metadata, timeout=5)]
        except grpc.aio.AioRpcError as exc:
            found["Stream"] = error_from_rpc(exc).code
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        found["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    return found


async def test_everything_but_the_probes_is_refused_until_callers_can_be_checked(
    server: tuple[GrpcServer, str],
) -> None:
    _, target = server
    assert await _codes(target) == {"Unary": "ERR_AUTH_002", "Stream": "ERR_AUTH_002", "health": "NOT_SERVING"}


async def test_an_rpc_listed_for_a_service_takes_its_credential_only(server: tuple[GrpcServer, str]) -> None:
    running, target = server
    access = Access(services={"/test.Probe/Unary": frozenset({"gateway"})})
    services = ServiceIdentity({"gateway": "g" * 40, "analysis": "a" * 40})
    running.authenticate_with(Authenticator(access=access, services=services))
    assert (await _codes(target, (("x-service-token", "g" * 40),)))["Unary"] == b"unary:gateway"
    assert (await _codes(target, (("x-service-token", "a" * 40),)))["Unary"] == "ERR_SERVICE_001"
    assert (await _codes(target))["Unary"] == "ERR_SERVICE_001"
    # Not listed: it takes a user's token, and this server verifies none.
    assert (await _codes(target, (("x-service-token", "g" * 40),)))["Stream"] == "ERR_AUTH_002"
