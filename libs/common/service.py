"""The life of a gRPC service process: connect, check the schema, serve, relay, consume, drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import metrics, migrations
from libs.common.config import CommonSettings, GrpcServiceSettings
from libs.common.consumer import EventConsumer, Handler
from libs.common.db import FastReads, create_engine, database_is_up, wait_for_database
from libs.common.event_types import EventType
from libs.common.events import EVENTS_STREAM, connect_nats, ensure_streams
from libs.common.grpc_server import GrpcServer
from libs.common.heap import settle_heap
from libs.common.identity import Access, Authenticator, CallerIdentity, ServiceIdentity
from libs.common.outbox import OutboxRelay, wake_relay_on_commit

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What differs between services; everything else in this module is the same for all."""

    name: str
    schema: str
    migrations: Path
    outbox: sa.Table
    inbox: sa.Table
    grpc_service_names: list[str]
    # Which RPCs are public or take a service's credential; every other one takes a user's access token.
    access: Access = field(default_factory=Access)
    # The events the service consumes, each with its handler.
    consumers: Mapping[EventType, Handler] = field(default_factory=dict)


@dataclass
class Runtime:
    """Connections a service's wiring may use."""

    settings: GrpcServiceSettings
    engine: AsyncEngine
    reads: FastReads  # the hot reads' own pool, opened at its first read
    nats: NatsClient
    js: JetStreamContext
    relay: OutboxRelay
    server: GrpcServer
    spec: ServiceSpec

    def authenticate(self, users: CallerIdentity | None) -> None:
        """Checks callers by the spec's access rules: users with `users`, services with INTERNAL_SERVICE_TOKENS."""
        services = ServiceIdentity(self.settings.service_credentials)
        self.server.authenticate_with(Authenticator(access=self.spec.access, users=users, services=services))


Wiring = Callable[[Runtime], Awaitable[None]]


async def serve(
    spec: ServiceSpec, settings: GrpcServiceSettings, wire: Wiring, *, stop: asyncio.Event | None = None
) -> None:
    """Runs until SIGTERM/SIGINT (or `stop`, when embedded), then reports NOT_SERVING and drains."""
    engine = create_engine(settings, application_name=spec.name)
    await wait_for_database(engine, timeout_s=settings.startup_timeout_s)
    await migrations.ensure_schema_current(engine, script_location=spec.migrations, schema=spec.schema)
    nc = await connect_nats(settings, name=spec.name)
    js = nc.jetstream(timeout=settings.nats_request_timeout_s)
    await ensure_streams(js)

    server = GrpcServer(settings, service_names=spec.grpc_service_names)
    relay = OutboxRelay(
        engine=engine,
        table=spec.outbox,
        js=js,
        poll_interval_s=settings.outbox_poll_interval_s,
        publish_timeout_s=settings.nats_request_timeout_s,
    )
    wake_relay_on_commit(engine, relay.notify)
    reads = FastReads(settings, application_name=spec.name)
    runtime = Runtime(
        settings=settings, engine=engine, reads=reads, nats=nc, js=js, relay=relay, server=server, spec=spec
    )
    await wire(runtime)

    async def database_probe() -> bool:
        return await database_is_up(engine)

    async def nats_probe() -> bool:
        return bool(nc.is_connected)

    server.add_probe(database_probe)
    server.add_probe(nats_probe)
    if stop is None:
        server.install_signal_handlers()
    else:
        asyncio.get_running_loop().create_task(_forward(stop, server))
    port = await server.start()

    tasks = [
        asyncio.create_task(relay.run(), name="outbox-relay"),
        asyncio.create_task(server.watch_health(), name="health"),
    ]
    consumer: EventConsumer | None = None
    if spec.consumers:
        consumer = EventConsumer(
            js=js,
            engine=engine,
            inbox=spec.inbox,
            durable=spec.name,
            subjects=[event.subject for event in spec.consumers],
            handlers={event.name: handler for event, handler in spec.consumers.items()},
            max_deliver=settings.consumer_max_deliver,
            ack_wait_s=settings.consumer_ack_wait_s,
        )
        tasks.append(asyncio.create_task(consumer.run(), name="consumer"))
    observed = metrics.ProcessMetrics(settings, process=spec.name)
    observed.sampler.watch_outbox(engine, spec.outbox)
    if consumer is not None:
        observed.sampler.watch_consumer(js, stream=EVENTS_STREAM, durable=spec.name)
    observed.start()
    if stop is None:  # a process of its own, not embedded in another one's
        settle_heap(settings)
    log.info("service.started", port=port)
    await server.wait_for_stop()

    log.info("service.stopping")
    await server.stop()
    relay.stop()
    if consumer is not None:
        consumer.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await observed.stop()
    # close, not drain: the relay and the consumer have stopped, and unacked events are redelivered anyway.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=5)
    await reads.close()
    await engine.dispose()
    log.info("service.stopped")


async def _forward(stop: asyncio.Event, server: GrpcServer) -> None:
    await stop.wait()
    server.request_stop()


def migrate(spec: ServiceSpec, settings: CommonSettings, args: argparse.Namespace) -> None:
    config = migrations.alembic_config(
        script_location=spec.migrations, schema=spec.schema, sqlalchemy_url=settings.sqlalchemy_url
    )
    if args.direction == "down":
        migrations.downgrade(config, "-1")
    else:
        migrations.upgrade(config, "head")
    log.info("migrations.applied", schema=spec.schema, direction=args.direction)


def add_common_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("serve", help="run the gRPC server, the outbox relay and the event consumers")
    migrate_parser = subparsers.add_parser("migrate", help="apply (up) or step back (down) the schema migrations")
    migrate_parser.add_argument("direction", nargs="?", choices=["up", "down"], default="up")


def run_async(main: Awaitable[None]) -> None:
    """uvloop when available: it adds about 15% to a grpc.aio server here."""
    try:
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(main)  # type: ignore[arg-type]
