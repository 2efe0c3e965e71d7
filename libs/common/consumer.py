"""Idempotent event consumers: durable pull consumer, inbox row committed with the effect, ack after commit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

import nats.errors
import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import metrics, tracing
from libs.common.db import database_unavailable
from libs.common.events import DEAD_LETTER_SUBJECT_PREFIX, EVENTS_STREAM
from libs.common.logging import error_text
from repolens.events.v1 import events_pb2

log = structlog.get_logger(__name__)

Handler = Callable[[AsyncConnection, events_pb2.EventEnvelope], Awaitable[None]]

# While the database is unavailable, a message is tried again after this long at most (0.5 s, 1 s, 2 s... up to it).
DATABASE_RETRY_MAX_S = 5.0


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

    The database being unavailable (PostgreSQL restarting, every connection busy) is no fault of the message: the
    consumer keeps it, and the rest of its batch, in progress (no redelivery, no delivery counted) and tries it again
    until the database answers, so an outage of any length dead-letters nothing.
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
            for index, message in enumerate(messages):
                try:
                    await self.handle(message, held=messages[index + 1 :])
                except _Stopping:  # left unsettled: redelivered after ack_wait, to this process or another
                    break
                except Exception as exc:  # could not even settle it: JetStream redelivers after ack_wait
                    log.warning("consumer.settle_failed", durable=self._durable, error=error_text(exc))

    async def handle(self, message: Msg, *, held: Sequence[Msg] = ()) -> None:
        """Applies one message and settles it (ack, nak with delay, or dead-letter); `held` are the messages fetched
        with it that wait for their turn (kept in progress meanwhile when the database is unavailable)."""
        metrics.delivery_received(self._durable, message)
        traced = tracing.NOT_CONSUMING
        try:
            envelope = events_pb2.EventEnvelope.FromString(message.data)
            traced = tracing.consume(envelope, consumer=self._durable)  # the trace of the request behind it
            handler = self._handlers.get(envelope.type)
            if handler is not None:
                await self._apply_when_database_answers(envelope, handler, [message, *held])
            await message.ack()
            metrics.delivery_settled(self._durable, "acked")
        except _Stopping:
            raise
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
            else:
                await message.nak(delay=min(0.5 * 2**attempts, 30.0))
                metrics.delivery_settled(self._durable, "retried")
        finally:
            traced.end()

    async def _apply_when_database_answers(
        self, envelope: events_pb2.EventEnvelope, handler: Handler, held: Sequence[Msg]
    ) -> None:
        """`_apply`, tried again for as long as the database is unavailable, the held messages kept in progress."""
        delay = min(0.5, self._ack_wait_s / 3)
        while True:
            try:
                await self._apply(envelope, handler)
                return
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("consumer.database_unavailable", durable=self._durable, error=error_text(exc))
            for each in held:  # resets their ack_wait, without counting a delivery
                with contextlib.suppress(Exception):
                    await each.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=delay)
            if self._stopped.is_set():
                raise _Stopping
            # The held messages hear from us again well within their ack_wait.
            delay = min(delay * 2, DATABASE_RETRY_MAX_S, self._ack_wait_s / 3)

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
        await dead_letter(self._js, message, consumer=self._durable, reason=str(exc) or type(exc).__name__)


class _Stopping(Exception):  # noqa: N818 - not an error: the consumer stops while the database is away
    """Raised out of a message whose database never answered before `stop()`: it stays unsettled."""


async def dead_letter(js: JetStreamContext, message: Msg, *, consumer: str, reason: str) -> None:
    """Moves a message nobody can process to `repolens.deadletter.<consumer>` (kept 30 days, with the reason and the
    original subject in its headers), then acknowledges it: it never comes back to block the others."""
    headers = dict(message.headers or {})
    headers["Repolens-Error"] = reason[:500]
    headers["Repolens-Original-Subject"] = message.subject
    await js.publish(f"{DEAD_LETTER_SUBJECT_PREFIX}.{consumer}", message.data, headers=headers)
    await message.ack()
    metrics.delivery_settled(consumer, "dead_lettered")
    log.error("consumer.dead_lettered", durable=consumer, subject=message.subject, reason=reason[:200])
