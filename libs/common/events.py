"""Events on NATS JetStream: envelopes, subjects, streams and the connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import structlog
import uuid6
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.common import tracing
from libs.common.config import CommonSettings
from repolens.events.v1 import events_pb2

M = TypeVar("M", bound=Message)
T = TypeVar("T")

EVENTS_STREAM = "EVENTS"
EVENTS_SUBJECT_PREFIX = "repolens.events"
DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_SUBJECT_PREFIX = "repolens.deadletter"

log = structlog.get_logger(__name__)


# How long a request waits for a record that an event creates (a personal tenant, its schema, a
# membership) before answering not found. Events usually arrive within tens of milliseconds; the
# wait covers a loaded machine and stays below the gateway's default 5 s gRPC deadline.
PROPAGATION_WAIT_S = 4.0


async def propagated(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = PROPAGATION_WAIT_S, interval_s: float = 0.05
) -> T | None:
    """What `probe` returns once it is not None, or None when `timeout_s` passes first.

    For reads of data another service creates from an event: it is there on every later call,
    so the first call of a new user or tenant must not fail only because it came too early.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await probe()
        if found is not None or loop.time() >= deadline:
            return found
        await asyncio.sleep(interval_s)


def new_event_id() -> str:
    """UUIDv7: time-ordered ids keep the outbox and the inbox index-friendly."""
    return str(uuid6.uuid7())


def new_id() -> uuid.UUID:
    return uuid.UUID(str(uuid6.uuid7()))


def id_time(value: uuid.UUID) -> dt.datetime:
    """When `new_id()` made this id: a UUIDv7 starts with 48 bits of Unix milliseconds."""
    return dt.datetime.fromtimestamp((value.int >> 80) / 1000, dt.UTC)


def first_id_at(moment: dt.datetime) -> uuid.UUID:
    """The smallest id `new_id()` makes at `moment`: every id made since is at least this one."""
    return uuid.UUID(int=int(moment.timestamp() * 1000) << 80)


def subject_for(service: str, event_type: str) -> str:
    return f"{EVENTS_SUBJECT_PREFIX}.{service}.{event_type}"


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def make_envelope(
    *,
    event_type: str,
    payload: Message,
    tenant_id: str = "",
    actor_id: str = "",
    request_id: str = "",
    occurred_at: dt.datetime | None = None,
) -> events_pb2.EventEnvelope:
    envelope = events_pb2.EventEnvelope(
        id=new_event_id(),
        type=event_type,
        occurred_at=timestamp(occurred_at or dt.datetime.now(dt.UTC)),
        tenant_id=tenant_id,
        actor_id=actor_id,
        request_id=request_id,
    )
    envelope.payload.Pack(payload)
    tracing.stamp(envelope)  # the trace of the request that caused it, for every consumer
    return envelope


def unpack(envelope: events_pb2.EventEnvelope, message_type: type[M]) -> M:
    payload = message_type()
    if not envelope.payload.Unpack(payload):
        raise ValueError(f"event {envelope.id} of type {envelope.type} does not carry {message_type.__name__}")
    return payload


async def connect_nats(
    settings: CommonSettings,
    *,
    name: str,
    on_state: Callable[[str], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connects with backoff until `startup_timeout_s`, then reconnects forever on its own."""

    async def disconnected() -> None:
        log.warning("nats.disconnected")
        if on_state:
            await on_state("disconnected")

    async def reconnected() -> None:
        log.info("nats.reconnected")
        if on_state:
            await on_state("reconnected")

    async def error(exc: Exception) -> None:
        log.debug("nats.error", error=str(exc))

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((OSError, nats.errors.NoServersError, TimeoutError)),
        wait=wait_exponential(multiplier=0.2, max=3),
        stop=stop_after_delay(settings.startup_timeout_s),
        reraise=True,
        before_sleep=lambda state: log.warning("nats.unavailable", attempt=state.attempt_number),
    ):
        with attempt:
            return await nats.connect(
                servers=[url.strip() for url in settings.nats_url.split(",")],
                name=name,
                connect_timeout=settings.nats_connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
    raise AssertionError("unreachable")


async def ensure_streams(js: JetStreamContext) -> None:
    """Creates (or updates) the streams every service relies on; safe to run from every process."""
    for config in (
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            storage=StorageType.FILE,
            duplicate_window=120.0,
            max_age=7 * 86400.0,
        ),
        StreamConfig(
            name=DEAD_LETTER_STREAM,
            subjects=[f"{DEAD_LETTER_SUBJECT_PREFIX}.>"],
            storage=StorageType.FILE,
            max_age=30 * 86400.0,
        ),
    ):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
