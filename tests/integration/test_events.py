"""Outbox relay and idempotent consumer against real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from libs.common.config import CommonSettings
from libs.common.consumer import EventConsumer, inbox_table
from libs.common.events import DEAD_LETTER_STREAM, EVENTS_STREAM, ensure_streams, make_envelope, unpack
from libs.common.outbox import OutboxRelay, add_event, outbox_table, wake_relay_on_commit
from libs.devstack.servers import EmbeddedNats
from repolens.events.v1 import events_pb2
from tests.integration.conftest import eventually


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc: NatsClient = await nats.connect(nats_url, connect_timeout=5)
    context = nc.jetstream(timeout=5)
    await ensure_streams(context)
    yield context
    await nc.close()


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]]:
    """A throw-away schema with an outbox, an inbox and a table the handler writes to."""
    schema = "s_" + uuid.uuid4().hex[:12]
    metadata = sa.MetaData()
    outbox = outbox_table(metadata, schema)
    inbox = inbox_table(metadata, schema)
    effects = sa.Table("effects", metadata, sa.Column("event_id", sa.Text), schema=schema)
    engine = create_async_engine(CommonSettings(database_url=database_url).sqlalchemy_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(metadata.create_all)
    yield engine, outbox, inbox, effects
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


def _event(marker: str) -> events_pb2.EventEnvelope:
    return make_envelope(event_type="test.happened", payload=events_pb2.UserActivated(user_id=marker))


async def _count_in_stream(js: JetStreamContext, subject: str) -> int:
    info = await js.stream_info(EVENTS_STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def test_relay_publishes_once_even_when_rows_are_sent_twice(
    js: JetStreamContext, scratch: tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]
) -> None:
    engine, outbox, _, _ = scratch
    subject = f"repolens.events.test.{uuid.uuid4().hex}"
    async with engine.begin() as conn:
        for index in range(3):
            await add_event(conn, outbox, subject=subject, envelope=_event(str(index)))
    relay = OutboxRelay(engine=engine, table=outbox, js=js)
    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 0
    # A crash between publish and marking: the rows go out again, JetStream drops them by Nats-Msg-Id.
    async with engine.begin() as conn:
        await conn.execute(outbox.update().values(published_at=None))
    assert await relay.relay_once() == 3
    assert await _count_in_stream(js, subject) == 3


async def test_rolled_back_change_publishes_nothing(
    js: JetStreamContext, scratch: tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]
) -> None:
    engine, outbox, _, _ = scratch
    subject = f"repolens.events.test.{uuid.uuid4().hex}"

    async def failing_change() -> None:
        async with engine.begin() as conn:
            await add_event(conn, outbox, subject=subject, envelope=_event("x"))
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert await OutboxRelay(engine=engine, table=outbox, js=js).relay_once() == 0


async def test_the_relay_is_woken_once_a_transaction_with_events_has_committed(
    js: JetStreamContext, scratch: tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]
) -> None:
    engine, outbox, _, effects = scratch
    subject = f"repolens.events.test.{uuid.uuid4().hex}"
    wakes: list[int] = []
    wake_relay_on_commit(engine, lambda: wakes.append(len(wakes)))
    async with engine.begin() as conn:
        await conn.execute(effects.insert().values(event_id="no event"))
    assert wakes == [], "a transaction without events wakes nothing"

    async def failing_change() -> None:
        async with engine.begin() as conn:
            await add_event(conn, outbox, subject=subject, envelope=_event("rolled back"))
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert wakes == [], "nor does a rolled-back one"
    async with engine.begin() as conn:
        await add_event(conn, outbox, subject=subject, envelope=_event("committed"))
        assert wakes == [], "not before the commit"
    assert wakes == [0]
    # A relay whose poll is far away publishes at once when woken.
    relay = OutboxRelay(engine=engine, table=outbox, js=js, poll_interval_s=60)
    wake_relay_on_commit(engine, relay.notify)
    running = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _has(js, subject, 1), timeout_s=5, what="the first event")
        async with engine.begin() as conn:
            await add_event(conn, outbox, subject=subject, envelope=_event("second"))
        await eventually(lambda: _has(js, subject, 2), timeout_s=2, what="the second event, well before the poll")
    finally:
        relay.stop()
        await running


async def _has(js: JetStreamContext, subject: str, count: int) -> bool:
    return await _count_in_stream(js, subject) == count


async def test_relay_keeps_rows_while_nats_is_unreachable(
    own_nats: EmbeddedNats, scratch: tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]
) -> None:
    engine, outbox, _, _ = scratch
    nc = await nats.connect(own_nats.url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    context = nc.jetstream(timeout=1)
    await context.add_stream(StreamConfig(name="TESTOUT", subjects=["repolens.events.out.>"]))
    async with engine.begin() as conn:
        await add_event(conn, outbox, subject="repolens.events.out.one", envelope=_event("1"))
    own_nats.stop()
    relay = OutboxRelay(engine=engine, table=outbox, js=context, publish_timeout_s=0.5)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises while the server is away
        await relay.relay_once()
    async with engine.connect() as conn:
        unsent = (await conn.execute(sa.select(sa.func.count()).where(outbox.c.published_at.is_(None)))).scalar()
    assert unsent == 1
    own_nats.start()

    async def sent() -> bool:
        try:
            return await relay.relay_once() == 1
        except Exception:
            return False

    await eventually(sent, what="the relay to publish after NATS came back")
    await nc.close()


async def test_consumer_applies_each_event_once_and_dead_letters_poison(
    js: JetStreamContext, scratch: tuple[AsyncEngine, sa.Table, sa.Table, sa.Table]
) -> None:
    engine, _, inbox, effects = scratch
    tag = uuid.uuid4().hex
    subject = f"repolens.events.test.{tag}"

    async def handler(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
        marker = unpack(envelope, events_pb2.UserActivated).user_id
        await conn.execute(effects.insert().values(event_id=envelope.id))
        if marker == "poison":
            raise ValueError("cannot apply this one")

    consumer = EventConsumer(
        js=js,
        engine=engine,
        inbox=inbox,
        durable=f"test_{tag}",
        subjects=[subject],
        handlers={"test.happened": handler},
        max_deliver=2,
        ack_wait_s=5,
        fetch_timeout_s=0.2,
    )
    good, poison = _event("good"), _event("poison")
    for envelope in (good, good, poison):  # the first one twice, under different message ids
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": uuid.uuid4().hex})
    dead = await js.pull_subscribe(f"repolens.deadletter.test_{tag}", durable=f"dlq_{tag}", stream=DEAD_LETTER_STREAM)
    running = asyncio.create_task(consumer.run())
    try:
        messages = await dead.fetch(1, timeout=20)
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=10)
    assert events_pb2.EventEnvelope.FromString(messages[0].data).id == poison.id
    assert messages[0].headers is not None
    assert messages[0].headers["Repolens-Error"] == "cannot apply this one"
    async with engine.connect() as conn:
        applied = (await conn.execute(sa.select(effects.c.event_id))).scalars().all()
        recorded = (await conn.execute(sa.select(inbox.c.event_id))).scalars().all()
    assert applied == [good.id]  # once, and the poison's writes rolled back with it
    assert [str(r) for r in recorded] == [good.id]
