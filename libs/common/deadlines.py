"""Deadline propagation: a service calling another passes on what is left of its own caller's deadline.

The server interceptor records when the incoming RPC's deadline falls; an outgoing call made while serving
it asks `outgoing_timeout(cap)` for its timeout. Without this, a downstream call could outlive the caller
that is waiting for it: the gateway gives up after its deadline while the chain below keeps working.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import grpc

# Monotonic time at which the RPC being served expires; None outside an RPC or when the caller set no deadline.
_incoming_deadline: ContextVar[float | None] = ContextVar("incoming_deadline", default=None)


def bind_incoming(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Remember the deadline of the RPC served in this task (each grpc.aio RPC runs in its own task)."""
    remaining = context.time_remaining()
    _incoming_deadline.set(None if remaining is None else time.monotonic() + remaining)


def outgoing_timeout(cap_s: float) -> float:
    """The timeout of a call made now: the caller's remaining time, never more than `cap_s`, never negative.

    Zero makes the call fail at once with DEADLINE_EXCEEDED, which is right: the caller has given up.
    """
    deadline = _incoming_deadline.get()
    if deadline is None:
        return cap_s
    return max(0.0, min(cap_s, deadline - time.monotonic()))
