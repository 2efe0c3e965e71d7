"""Metrics that need a real PostgreSQL or NATS to move: pool waiters, outbox backlog, consumer lag, redeliveries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import metrics
from libs.common.config import CommonSettings
from libs.common.consumer import EventConsumer, inbox_table
from libs.common.db import create_engine
from libs.common.events import DEAD_LETTER_STREAM, ensure_streams, make_envelope
from libs.common.outbox import OutboxRelay, add_event, outbox_table
from libs.devstack.servers import free_port
from repolens.events.v1 import events_pb2
from tests.integration.conftest import eventually


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc: NatsClient = await nats.connect(nats_url, connect_timeout=5)
    context = nc.jetstream(timeout=5)
    await ensure_streams(context)
    yield context
    await nc.close()


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[tuple[AsyncEngine, sa.Table, sa.Table]]:
    """A throw-away schema with an outbox and an inbox, and an engine made the way every process makes it."""
    name = "m_" + uuid.uuid4().hex[:12]
    table_meta = sa.MetaData()
    outbox, inbox = outbox_table(table_meta, name), inbox_table(table_meta, name)
    engine = create_engine(CommonSettings(database_url=database_url), application_name=name)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        await conn.run_sync(table_meta.create_all)
    yield engine, outbox, inbox
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    await engine.dispose()


async def test_pool_gauges_count_connections_in_use_and_callers_waiting(database_url: str) -> None:
    pool = "metrics-pool-" + uuid.uuid4().hex[:8]
    settings = CommonSettings(database_url=database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=10)
    engine = create_engine(settings, application_name=pool)
    try:
        assert sample("repolens_db_pool_limit", pool=pool) == 1
        async with engine.connect() as held:
            await held.execute(sa.text("SELECT 1"))
            assert sample("repolens_db_pool_in_use", pool=pool) == 1

            async def second() -> int:
                async with engine.connect() as conn:
                    return int((await conn.execute(sa.text("SELECT 2"))).scalar_one())

            waiter = asyncio.create_task(second())

            async def waiting() -> bool:
                return sample("repolens_db_pool_waiting", pool=pool) == 1

            await eventually(waiting, what="the second caller to wait for the only connection")
        assert await asyncio.wait_for(waiter, timeout=10) == 2
        assert sample("repolens_db_pool_waiting", pool=pool) == 0
        assert sample("repolens_db_pool_in_use", pool=pool) == 0
        assert sample("repolens_db_pool_idle", pool=pool) == 1
    finally:
        await engine.dispose()


async def test_sampler_reads_outbox_backlog_and_age(schema: tuple[AsyncEngine, sa.Table, sa.Table]) -> None:
    engine, outbox, _ = schema
    name = str(outbox.schema)
    sampler = metrics.Sampler(interval_s=1)
    sampler.watch_outbox(engine, outbox)
    await sampler.sample_once()
    assert sample("repolens_outbox_backlog", outbox=name) == 0
    assert sample("repolens_outbox_oldest_age_seconds", outbox=name) == 0
    async with engine.begin() as conn:
        for _ in range(2):
            envelope = make_envelope(event_type="test.happened", payload=events_pb2.UserActivated(user_id="u"))
            await add_event(conn, outbox, subject="repolens.events.test.metrics", envelope=envelope)
        await conn.execute(outbox.update().values(created_at=sa.func.now() - sa.text("interval '90 seconds'")))
    await sampler.sample_once()
    assert sample("repolens_outbox_backlog", outbox=name) == 2
    assert 90 <= sample("repolens_outbox_oldest_age_seconds", outbox=name) < 120
    async with engine.begin() as conn:
        await conn.execute(outbox.update().values(published_at=sa.func.now()))
    await sampler.sample_once()
    assert sample("repolens_outbox_backlog", outbox=name) == 0
    assert sample("repolens_outbox_oldest_age_seconds", outbox=name) == 0


async def test_sampler_reads_consumer_lag_and_a_missing_consumer_counts_as_a_failure(js: JetStreamContext) -> None:
    tag = uuid.uuid4().hex[:12]
    stream, subject, durable = f"METRICS_{tag}", f"metrics.{tag}", f"lagging_{tag}"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    try:
        sampler = metrics.Sampler(interval_s=1)
        sampler.watch_consumer(js, stream=stream, durable=durable, queue_depth=metrics.ANALYSIS_QUEUE_DEPTH)
        failures = sample("repolens_metrics_sample_failures_total", probe="consumer")
        await sampler.sample_once()  # the consumer does not exist yet
        assert sample("repolens_metrics_sample_failures_total", probe="consumer") == failures + 1

        await js.add_consumer(stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT))
        for index in range(3):
            await js.publish(subject, str(index).encode())
        await sampler.sample_once()
        assert sample("repolens_nats_consumer_pending", consumer=durable) == 3
        assert sample("repolens_nats_consumer_ack_pending", consumer=durable) == 0
        assert sample("repolens_analysis_queue_depth") == 3

        subscription = await js.pull_subscribe_bind(durable=durable, stream=stream)
        taken = await subscription.fetch(1, timeout=5)
        assert len(taken) == 1
        await sampler.sample_once()
        assert sample("repolens_nats_consumer_pending", consumer=durable) == 2
        assert sample("repolens_nats_consumer_ack_pending", consumer=durable) == 1
    finally:
        await js.delete_stream(stream)


async def test_relay_and_consumer_count_published_acked_retried_redelivered_and_dead_lettered(
    js: JetStreamContext, schema: tuple[AsyncEngine, sa.Table, sa.Table]
) -> None:
    engine, outbox, inbox = schema
    tag = uuid.uuid4().hex[:12]
    subject, durable = f"repolens.events.test.{tag}", f"metrics_{tag}"
    applied: list[str] = []

    async def handler(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
        if envelope.actor_id == "poison":
            raise ValueError("cannot apply this one")
        applied.append(envelope.id)

    async with engine.begin() as conn:
        for actor in ("good", "poison"):
            envelope = make_envelope(
                event_type="test.happened", payload=events_pb2.UserActivated(user_id="u"), actor_id=actor
            )
            await add_event(conn, outbox, subject=subject, envelope=envelope)
    relay = OutboxRelay(engine=engine, table=outbox, js=js)
    assert await relay.relay_once() == 2
    assert sample("repolens_nats_published_total", subject=subject) == 2

    consumer = EventConsumer(
        js=js,
        engine=engine,
        inbox=inbox,
        durable=durable,
        subjects=[subject],
        handlers={"test.happened": handler},
        max_deliver=2,
        ack_wait_s=5,
        fetch_timeout_s=0.2,
    )
    assert sample("repolens_nats_dead_lettered_total", consumer=durable) == 0  # present before the first event
    dead = await js.pull_subscribe(f"repolens.deadletter.{durable}", durable=f"dlq_{tag}", stream=DEAD_LETTER_STREAM)
    running = asyncio.create_task(consumer.run())
    try:
        await dead.fetch(1, timeout=20)
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=10)
    assert len(applied) == 1
    assert sample("repolens_nats_consumed_total", consumer=durable, result="acked") == 1
    assert sample("repolens_nats_consumed_total", consumer=durable, result="retried") == 1
    assert sample("repolens_nats_consumed_total", consumer=durable, result="dead_lettered") == 1
    assert sample("repolens_nats_redelivered_total", consumer=durable) == 1  # the poison's second delivery
    assert sample("repolens_nats_dead_lettered_total", consumer=durable) == 1


async def test_exporter_serves_its_own_port_and_is_off_at_zero() -> None:
    assert metrics.start_exporter(CommonSettings(metrics_port=0), process="test") is None
    port = free_port()
    exporter = metrics.start_exporter(CommonSettings(metrics_port=port), process="test")
    assert exporter is not None
    try:
        assert exporter.port == port
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert "repolens_logins_total" in response.text
        assert 'repolens_analyses_total{state="queued"}' in response.text
    finally:
        exporter.close()


async def test_a_taken_metrics_port_costs_the_metrics_not_the_process() -> None:
    port = free_port()
    first = metrics.start_exporter(CommonSettings(metrics_port=port), process="first")
    assert first is not None
    try:
        assert metrics.start_exporter(CommonSettings(metrics_port=port), process="second") is None
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    finally:
        first.close()
