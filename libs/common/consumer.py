"""Idempotent event consumers: durable pull consumer, inbox row committed with the effect, ack after commit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping

import nats.errors
import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import metrics, tracing
from libs.common.events import DEAD_LETTER_SUBJECT_PREFIX, EVENTS_STREAM
from libs.common.logging import error_text
from repolens.events.v1 import events_pb2

log = structlog.get_logger(__name__)

Handler = Callable[[AsyncConnection, events_pb2.EventEnvelope], Awaitable[None]]


def inbox_table(metadata: sa.MetaData, schema: str) -> sa.Table:
    """Event ids a consumer has applied; its migration creates the same columns."""
    return sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


class EventConsumer:
    """Applies each event once: the inbox row and the handler's writes commit together, then the ack.

    A handler that fails is retried by redelivery (with a growing delay); after `max_deliver`
    attempts the message goes to `repolens.deadletter.<durable>` and is acknowledged.
    Events of types without a handler are acknowledged and skipped.
    """

    def __init__(
        self,
        *,
        js: JetStreamContext,
        engine: AsyncEngine,
        inbox: sa.Table,
        durable: str,
        subjects: list[str],
        handlers: Mapping[str, Handler],
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        batch_size: int = 32,
        fetch_timeout_s: float = 1.0,
    ):
        self._js = js
        self._engine = engine
        self._inbox = inbox
        self._durable = durable
        self._subjects = subjects
        self._handlers = dict(handlers)
        self._max_deliver = max_deliver
        self._ack_wait_s = ack_wait_s
        self._batch_size = batch_size
        self._fetch_timeout_s = fetch_timeout_s
        self._stopped = asyncio.Event()
        metrics.consumer_registered(durable)

    def stop(self) -> None:
        self._stopped.set()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        await self._js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(
                durable_name=self._durable,
                filter_subjects=self._subjects,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait_s,
                max_deliver=self._max_deliver,
            ),
        )
        return await self._js.pull_subscribe_bind(durable=self._durable, stream=EVENTS_STREAM)

    async def run(self) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        while not self._stopped.is_set():
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                messages = await subscription.fetch(self._batch_size, timeout=self._fetch_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS away or the consumer gone: back off, subscribe again.
                log.warning("consumer.fetch_failed", durable=self._durable, error=error_text(exc))
                subscription = None
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                try:
                    await self.handle(message)
                except Exception as exc:  # could not even settle it: JetStream redelivers after ack_wait
                    log.warning("consumer.settle_failed", durable=self._durable, error=error_text(exc))

    async def handle(self, message: Msg) -> None:
        """Applies one message and settles it (ack, nak with delay, or dead-letter)."""
        metrics.delivery_received(self._durable, message)
        traced = tracing.NOT_CONSUMING
        try:
            envelope = events_pb2.EventEnvelope.FromString(message.data)
            traced = tracing.consume(envelope, consumer=self._durable)  # the trace of the request behind it
            handler = self._handlers.get(envelope.type)
            if handler is not None:
                await self._apply(envelope, handler)
            await message.ack()
            metrics.delivery_settled(self._durable, "acked")
        except Exception as exc:
            traced.failed(exc)
            attempts = message.metadata.num_delivered or 1
            structlog.get_logger(__name__).warning(
                "consumer.handler_failed",
                durable=self._durable,
                subject=message.subject,
                attempt=attempts,
                error=error_text(exc),
            )
            if attempts >= self._max_deliver:
                await self._dead_letter(message, exc)
                metrics.delivery_settled(self._durable, "dead_lettered")
            else:
                await message.nak(delay=min(0.5 * 2**attempts, 30.0))
                metrics.delivery_settled(self._durable, "retried")
        finally:
            traced.end()

    async def _apply(self, envelope: events_pb2.EventEnvelope, handler: Handler) -> None:
        structlog.contextvars.bind_contextvars(event_id=envelope.id, request_id=envelope.request_id or None)
        try:
            async with self._engine.begin() as conn:
                inserted = await conn.execute(
                    insert(self._inbox)
                    .values(consumer=self._durable, event_id=uuid.UUID(envelope.id))
                    .on_conflict_do_nothing()
                    .returning(self._inbox.c.event_id)
                )
                if inserted.first() is None:
                    log.info("consumer.duplicate_skipped", event_type=envelope.type)
                    return
                await handler(conn, envelope)
            log.info("consumer.applied", event_type=envelope.type)
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "request_id")

    async def _dead_letter(self, message: Msg, exc: Exception) -> None:
        headers = dict(message.headers or {})
        headers["Repolens-Error"] = (str(exc) or type(exc).__name__)[:500]
        headers["Repolens-Original-Subject"] = message.subject
        await self._js.publish(f"{DEAD_LETTER_SUBJECT_PREFIX}.{self._durable}", message.data, headers=headers)
        await message.ack()
        log.error("consumer.dead_lettered", durable=self._durable, subject=message.subject)
