"""Transactional outbox: events are rows written with the change, then relayed to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
import weakref
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from libs.common.event_types import EventType
from libs.common.events import make_envelope
from libs.common.logging import error_text
from libs.common.metrics import NATS_PUBLISHED, OUTBOX_RELAY_FAILURES
from repolens.events.v1 import events_pb2

log = structlog.get_logger(__name__)


def outbox_table(metadata: sa.MetaData, schema: str) -> sa.Table:
    """The outbox of one service schema; its migration creates the same columns."""
    return sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema=schema,
    )


# Keys of a connection's info: the transaction wrote outbox rows / committed some that the relay has not heard of.
_WRITTEN, _COMMITTED = "repolens.outbox_written", "repolens.outbox_committed"


_WAKERS: weakref.WeakKeyDictionary[sa.Engine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


def wake_relay_on_commit(engine: AsyncEngine, wake: Callable[[], None]) -> None:
    """Calls `wake` (the relay's notify) once a transaction that recorded events has committed and its connection
    is back in the pool: no use case has to remember it, and the relay never looks before the commit is visible.
    A rolled-back transaction wakes nothing."""
    sync_engine = engine.sync_engine
    if sync_engine in _WAKERS:
        _WAKERS[sync_engine].append(wake)
        return
    wakers = _WAKERS.setdefault(sync_engine, [wake])

    def committed(conn: sa.Connection) -> None:
        if conn.info.pop(_WRITTEN, False):
            conn.info[_COMMITTED] = True

    def rolled_back(conn: sa.Connection) -> None:
        conn.info.pop(_WRITTEN, None)

    def returned(dbapi_connection: object, record: ConnectionPoolEntry) -> None:
        if record.info.pop(_COMMITTED, False):
            for each in wakers:
                each()

    event.listen(sync_engine, "commit", committed)
    event.listen(sync_engine, "rollback", rolled_back)
    event.listen(sync_engine, "checkin", returned)


async def add_event(
    conn: AsyncConnection, table: sa.Table, *, subject: str, envelope: events_pb2.EventEnvelope
) -> None:
    """Records an event in the caller's transaction: it is published only if that commits."""
    conn.info[_WRITTEN] = True
    await conn.execute(
        table.insert().values(
            id=uuid.UUID(envelope.id),
            subject=subject,
            event_type=envelope.type,
            envelope=envelope.SerializeToString(),
        )
    )


async def emit(
    conn: AsyncConnection,
    table: sa.Table,
    *,
    event: EventType,
    payload: Message,
    actor_id: str = "",
    tenant_id: str = "",
) -> None:
    """Wraps a payload in an envelope (with the current request id) and records it in the outbox."""
    request_id = structlog.contextvars.get_contextvars().get("request_id") or ""
    envelope = make_envelope(
        event_type=event.name, payload=payload, actor_id=actor_id, tenant_id=tenant_id, request_id=request_id
    )
    await add_event(conn, table, subject=event.subject, envelope=envelope)


class OutboxRelay:
    """Publishes unsent outbox rows in order, with `Nats-Msg-Id` so JetStream drops duplicates.

    Several relays (replicas) may run: rows are claimed with SKIP LOCKED. A row is marked sent
    only after JetStream acknowledged it; a crash in between re-publishes it, and the stream's
    duplicate window absorbs that.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        table: sa.Table,
        js: JetStreamContext,
        poll_interval_s: float = 0.5,
        publish_timeout_s: float = 5.0,
        batch_size: int = 100,
        retention: dt.timedelta = dt.timedelta(days=1),
    ):
        self._engine = engine
        self._table = table
        self._js = js
        self._poll_interval_s = poll_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._batch_size = batch_size
        self._retention = retention
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()

    def notify(self) -> None:
        """Called after a commit that added events (`wake_relay_on_commit`), so they leave at once instead of at the
        next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    async def relay_once(self) -> int:
        """Publishes one batch; returns how many rows were sent."""
        table = self._table
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(table.c.id, table.c.subject, table.c.envelope)
                    .where(table.c.published_at.is_(None))
                    .order_by(table.c.created_at, table.c.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            sent: list[uuid.UUID] = []
            try:
                for row in rows:
                    await self._js.publish(
                        row.subject,
                        row.envelope,
                        timeout=self._publish_timeout_s,
                        headers={"Nats-Msg-Id": str(row.id)},
                    )
                    sent.append(row.id)
                    NATS_PUBLISHED.labels(subject=row.subject).inc()
            finally:
                # Whatever was acknowledged is marked, even when a later publish failed.
                if sent:
                    await conn.execute(table.update().where(table.c.id.in_(sent)).values(published_at=sa.func.now()))
        return len(sent)

    async def purge_published(self) -> None:
        cutoff = dt.datetime.now(dt.UTC) - self._retention
        async with self._engine.begin() as conn:
            await conn.execute(
                self._table.delete().where(self._table.c.published_at.is_not(None), self._table.c.published_at < cutoff)
            )

    async def run(self) -> None:
        """Relays until stopped; failures back off and retry, rows stay until published."""
        backoff = self._poll_interval_s
        cycles = 0
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                count = await self.relay_once()
                backoff = self._poll_interval_s
                cycles += 1
                if cycles % 1000 == 0:
                    await self.purge_published()
                if count >= self._batch_size:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox.relay_failed", error=error_text(exc))
                OUTBOX_RELAY_FAILURES.labels(outbox=str(self._table.schema)).inc()
                backoff = min(backoff * 2, 5.0)
                await asyncio.sleep(backoff)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
