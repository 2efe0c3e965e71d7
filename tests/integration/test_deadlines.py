"""Deadline propagation through real grpc.aio servers with our interceptor: a service calling another passes on
the remaining time of its own caller's deadline, capped by its configured deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from libs.common.deadlines import outgoing_timeout
from libs.common.grpc_server import ServerInterceptor

CAP_S = 5.0
# gRPC rounds deadlines on the wire: the receiver may see a few milliseconds more than was sent.
SLACK_S = 0.05
METHOD = "/test.Deadlines/Call"

Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


async def _anyone(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """These test services take any caller (ours deny by default)."""


async def _serve(handler: Handler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[ServerInterceptor(_anyone)])
    generic = grpc.method_handlers_generic_handler(
        "test.Deadlines", {"Call": grpc.unary_unary_rpc_method_handler(handler)}
    )
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A service whose handler calls a downstream one, which answers with the time it was given."""

    async def downstream_call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return repr(context.time_remaining()).encode()

    downstream, downstream_target = await _serve(downstream_call)
    channel = grpc.aio.insecure_channel(downstream_target)
    call_downstream: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)

    async def upstream_call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if request == b"slow":
            await asyncio.sleep(0.3)  # spend part of the caller's deadline first
        reply: bytes = await call_downstream(b"", timeout=outgoing_timeout(CAP_S))
        return reply

    server, target = await _serve(upstream_call)
    try:
        yield target
    finally:
        await server.stop(0)
        await channel.close()
        await downstream.stop(0)


async def _call(target: str, deadline_s: float | None, request: bytes = b"") -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        reply = await call(request, timeout=deadline_s)
    return float(reply.decode())


async def test_a_short_incoming_deadline_shortens_the_downstream_call(upstream: str) -> None:
    given = await _call(upstream, deadline_s=1.0)
    assert 0 < given <= 1.0 + SLACK_S


async def test_a_long_incoming_deadline_is_capped_by_the_configured_one(upstream: str) -> None:
    given = await _call(upstream, deadline_s=60.0)
    assert CAP_S - 1.0 < given <= CAP_S + SLACK_S


async def test_without_an_incoming_deadline_the_configured_one_applies(upstream: str) -> None:
    given = await _call(upstream, deadline_s=None)
    assert CAP_S - 1.0 < given <= CAP_S + SLACK_S


async def test_time_spent_before_the_call_is_not_given_again(upstream: str) -> None:
    given = await _call(upstream, deadline_s=1.0, request=b"slow")
    assert 0 < given <= 0.7 + SLACK_S


def test_outside_an_rpc_the_configured_deadline_applies() -> None:
    assert outgoing_timeout(3.0) == 3.0
