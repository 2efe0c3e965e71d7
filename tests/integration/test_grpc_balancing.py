"""Our channels spread calls over every address of a target, and our servers make clients reconnect in time."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from libs.common.config import GrpcServiceSettings
from libs.common.grpc_client import open_channel
from libs.common.grpc_server import server_options

METHOD = "/repolens.test.Echo/Ping"


def _identity(data: bytes) -> bytes:
    return data


async def _server(name: str, seen: Counter[str], peers: list[str], options: list[tuple[str, int]]) -> grpc.aio.Server:
    async def ping(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen[name] += 1
        peers.append(context.peer())
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "repolens.test.Echo",
        {
            "Ping": grpc.unary_unary_rpc_method_handler(
                ping, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler,))
    return server


@pytest.fixture
async def two_servers() -> AsyncIterator[tuple[list[int], Counter[str], list[str]]]:
    seen: Counter[str] = Counter()
    peers: list[str] = []
    servers, ports = [], []
    for name in ("a", "b"):
        server = await _server(name, seen, peers, [])
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    yield ports, seen, peers
    for server in servers:
        await server.stop(None)


async def test_calls_are_spread_over_every_address(two_servers: tuple[list[int], Counter[str], list[str]]) -> None:
    ports, seen, _ = two_servers
    channel = open_channel("ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports))
    ping = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=5)
        deadline = asyncio.get_running_loop().time() + 5
        while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
            await ping(b"", timeout=5)  # until both subchannels are connected
        seen.clear()
        answers = Counter([(await ping(b"", timeout=5)).decode() for _ in range(20)])
    finally:
        await channel.close()
    assert answers == seen
    assert set(answers) == {"a", "b"}
    assert abs(answers["a"] - answers["b"]) <= 2, answers


async def test_servers_close_old_connections_so_clients_resolve_again() -> None:
    settings = GrpcServiceSettings(grpc_max_connection_age_s=1, shutdown_grace_s=0.5)
    options = dict(server_options(settings))
    assert options["grpc.max_connection_age_ms"] == 1000
    assert options["grpc.max_connection_age_grace_ms"] == 500
    seen: Counter[str] = Counter()
    peers: list[str] = []
    server = await _server("a", seen, peers, server_options(settings))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    ping = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
    try:
        await ping(b"", timeout=5)
        await asyncio.sleep(2.5)  # past the age and its grace: the server has sent GOAWAY
        await ping(b"", timeout=5)
    finally:
        await channel.close()
        await server.stop(None)
    # A new connection comes from a new client port.
    assert len(peers) == 2
    assert peers[0] != peers[1], peers
