"""`python -m services.analysis serve | worker | migrate list | migrate up [--tenant ID] | migrate down [--scope S]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import Callable

import grpc
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import access_tokens, metrics, migrations
from libs.common.config import AnalysisSettings, AnalysisWorkerSettings, MigrationSettings
from libs.common.db import FastReads, create_engine, wait_for_database
from libs.common.error_reporting import configure_error_reporting
from libs.common.event_types import SETTINGS_CHANGED
from libs.common.events import EVENTS_STREAM, connect_nats, ensure_streams
from libs.common.grpc_client import open_channel
from libs.common.identity import Access, follow_users, rpc_name
from libs.common.logging import configure_logging, error_text, get_logger
from libs.common.outbox import OutboxRelay, wake_relay_on_commit
from libs.common.revocation import RevocationFeed
from libs.common.service import Runtime, ServiceSpec, run_async, serve
from libs.common.tracing import configure_tracing
from repolens.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from repolens.events.v1 import events_pb2
from services.analysis import consumers, repository, tenant_migrations, use_cases
from services.analysis.domain import JOBS_STREAM, SERVICE_SCHEMA
from services.analysis.jobs import ensure_jobs_stream
from services.analysis.servicer import AnalysisServicer
from services.analysis.tenant_config import TenantConfigClient, all_memberships
from services.analysis.use_cases import (
    SERVICE_MIGRATIONS,
    Analyses,
    tenant_head,
)

log = get_logger(__name__)

_ANALYSIS = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"]
# What a personal access token needs for each RPC; the creator's current role is checked as for any caller.
_READS = (
    "ListRepositories",
    "GetRepository",
    "ListAnalyses",
    "GetAnalysis",
    "GetReport",
    "ListFindings",
    "ListBranches",
)
_SCOPES = {
    **dict.fromkeys((*_READS, "DiffAnalyses", "GetSarif"), access_tokens.ANALYSIS_READ),
    **dict.fromkeys(
        ("CreateRepository", "UpdateRepository", "DeleteRepository", "CreateWebhookSecret", "CreateBadgeToken"),
        access_tokens.REPOSITORIES_WRITE,
    ),
    **dict.fromkeys(("StartAnalysis", "CancelAnalysis"), access_tokens.ANALYSIS_RUN),
}


def _spec(forget: Callable[[str], None] | None = None) -> ServiceSpec:
    return ServiceSpec(
        name="analysis",
        schema=SERVICE_SCHEMA,
        migrations=SERVICE_MIGRATIONS,
        outbox=repository.outbox,
        inbox=repository.inbox,
        grpc_service_names=[_ANALYSIS.full_name],
        access=Access(
            # GitHub's webhooks and badge requests reach the service through the gateway alone (no user token).
            services={rpc_name(_ANALYSIS, name): frozenset({"gateway"}) for name in ("ReceiveGithubEvent", "GetBadge")},
            scopes={rpc_name(_ANALYSIS, name): scope for name, scope in _SCOPES.items()},
        ),
        consumers=consumers.handlers(forget or (lambda _: None)),
    )


async def _tenants_behind(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        counts = await repository.revision_counts(conn)
    head = tenant_head()
    return sum(count for revision, count in counts.items() if revision != head)


def _analyses(
    settings: AnalysisSettings, runtime_engine: AsyncEngine, config: TenantConfigClient, reads: FastReads | None = None
) -> Analyses:
    return Analyses(
        engine=runtime_engine,
        tenant_config=config,
        reads=reads,
        deployment_hosts=tuple(settings.repository_hosts),
        allow_local=settings.allow_local_repositories,
        max_repositories=settings.tenant_max_repositories,
        max_queued_analyses=settings.tenant_max_queued_analyses,
        max_analyses_per_hour=settings.tenant_max_analyses_per_hour,
        webhook_key=settings.webhook_key_bytes,
    )


async def _fill_projection(settings: AnalysisSettings, analyses: Analyses, tenants: grpc.aio.Channel) -> None:
    """Roles come from the membership projection: a deployment upgraded from before it has none yet. Until the
    tenants service answers, tries again every few seconds (the gRPC server serves meanwhile)."""
    while True:
        try:
            pages = all_memberships(
                tenants, service_token=settings.service_token.get_secret_value(), deadline_s=settings.grpc_deadline_s
            )
            await use_cases.fill_membership_projection(analyses=analyses, pages=pages)
            return
        except Exception as exc:
            log.warning("memberships.projection_fill_failed", error=error_text(exc))
            await asyncio.sleep(2.0)


HOOK_PURGE_INTERVAL_S = 3600.0


async def _purge_hook_deliveries(analyses: Analyses) -> None:
    """Once an hour, the webhook deliveries old enough never to come again are forgotten."""
    while True:
        try:
            purged = await use_cases.purge_hook_deliveries(analyses=analyses)
            if purged:
                log.info("hook_deliveries.purged", rows=purged)
        except Exception as exc:  # the database away: the next round tries again
            log.warning("hook_deliveries.purge_failed", error=error_text(exc))
        await asyncio.sleep(HOOK_PURGE_INTERVAL_S)


async def serve_analysis(settings: AnalysisSettings, stop: asyncio.Event | None = None) -> None:
    auth_channel = open_channel(settings.auth_grpc_target)
    tenants_channel = open_channel(settings.tenants_grpc_target)
    config = TenantConfigClient(
        tenants_channel, service_token=settings.service_token.get_secret_value(), deadline_s=settings.grpc_deadline_s
    )
    feed: RevocationFeed | None = None
    tasks: list[asyncio.Task[None]] = []

    def forget(tenant_id: str) -> None:
        with contextlib.suppress(ValueError):
            config.forget(uuid.UUID(tenant_id))

    async def wire(runtime: Runtime) -> None:
        nonlocal feed
        behind = await _tenants_behind(runtime.engine)
        if behind:
            raise migrations.SchemaBehindError(f"{behind} tenant schemas are behind; run migrate up")
        await ensure_jobs_stream(runtime.js)
        users, feed = await follow_users(settings, js=runtime.js, auth_channel=auth_channel)
        runtime.authenticate(users)  # users' tokens; ReceiveGithubEvent the gateway's credential (_spec)
        analyses = _analyses(settings, runtime.engine, config, runtime.reads)
        tasks.append(asyncio.create_task(_fill_projection(settings, analyses, tenants_channel)))
        tasks.append(asyncio.create_task(_purge_hook_deliveries(analyses)))
        servicer = AnalysisServicer(analyses=analyses)
        analysis_pb2_grpc.add_AnalysisServiceServicer_to_server(servicer, runtime.server.server)

    try:
        await serve(_spec(forget), settings, wire, stop=stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if feed is not None:
            await feed.stop()
        await auth_channel.close()
        await tenants_channel.close()


async def run_worker(settings: AnalysisSettings, stop: asyncio.Event | None = None) -> None:
    """A worker process: no gRPC server, just jobs. SIGTERM stops taking jobs and lets running ones end."""
    from services.analysis.engine.context import EngineSettings  # the engine is imported by workers only
    from services.analysis.github import CommitStatuses
    from services.analysis.worker import DURABLE, Worker

    stop = stop or asyncio.Event()
    if stop is not None and not stop.is_set():
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError, ValueError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
    engine = create_engine(settings, application_name="analysis-worker")
    tenants_channel = open_channel(settings.tenants_grpc_target)
    await wait_for_database(engine, timeout_s=settings.startup_timeout_s)
    await migrations.ensure_schema_current(engine, script_location=SERVICE_MIGRATIONS, schema=SERVICE_SCHEMA)
    nc = await connect_nats(settings, name="analysis-worker")
    js = nc.jetstream(timeout=settings.nats_request_timeout_s)
    await ensure_streams(js)
    relay = OutboxRelay(engine=engine, table=repository.outbox, js=js, poll_interval_s=settings.outbox_poll_interval_s)
    config = TenantConfigClient(
        tenants_channel,
        service_token=settings.service_token.get_secret_value(),
        deadline_s=settings.grpc_deadline_s,
        ttl_s=5.0,
    )
    analyses = _analyses(settings, engine, config)
    wake_relay_on_commit(engine, relay.notify)

    async def forget_settings(message: Msg) -> None:
        try:
            config.forget(uuid.UUID(events_pb2.EventEnvelope.FromString(message.data).tenant_id))
        except Exception as exc:
            log.warning("settings_feed.bad_event", error=error_text(exc))

    # A tenant's new settings (its quality gate...) apply to the next analysis, not after the cache's 5 s.
    settings_feed = await js.subscribe(
        SETTINGS_CHANGED.subject,
        stream=EVENTS_STREAM,
        cb=forget_settings,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    worker = Worker(
        analyses=analyses,
        js=js,
        engine=EngineSettings.from_settings(settings),
        concurrency=settings.worker_concurrency,
        max_attempts=settings.max_attempts,
        ack_wait_s=settings.job_ack_wait_s,
        engine_processes=settings.engine_processes,
        tenant_max_running=settings.tenant_max_running_analyses,
        job_max_deliveries=settings.job_max_deliveries,
        statuses=CommitStatuses(api_url=settings.github_api_url, timeout_s=settings.github_timeout_s),
        public_url=settings.public_url,
    )
    relaying = asyncio.create_task(relay.run())
    # The worker serves no API: its probes ask the metrics port whether its loop runs and it is taking jobs.
    health = metrics.Health(stale_s=settings.health_stale_s, ready=lambda: worker.started and nc.is_connected)
    observed = metrics.ProcessMetrics(settings, process="analysis-worker", health=health)
    observed.sampler.watch_outbox(engine, repository.outbox)
    observed.sampler.watch_consumer(js, stream=JOBS_STREAM, durable=DURABLE, queue_depth=metrics.ANALYSIS_QUEUE_DEPTH)
    observed.start()
    try:
        await worker.run(stop)
    finally:
        with contextlib.suppress(Exception):
            await settings_feed.unsubscribe()
        await observed.stop()
        relay.stop()
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=5)
        await tenants_channel.close()
        await engine.dispose()
        log.info("worker.stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.analysis", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("serve", help="the gRPC API, the outbox relay and the tenant-schema consumer")
    subparsers.add_parser("worker", help="run analyses from the JOBS stream")
    migrate = subparsers.add_parser("migrate", help="scoped migrations: the service schema and every tenant schema")
    migrate.add_argument("action", choices=["list", "up", "down"])
    migrate.add_argument("--tenant", help="only this tenant's schema (up: provisions it if missing)")
    migrate.add_argument("--scope", choices=["tenant", "service"], default="tenant", help="down: which scope")
    args = parser.parse_args(argv)
    # `migrate` reads only the database settings: the migration Job holds none of the service's keys.
    settings: MigrationSettings = (
        MigrationSettings()
        if args.command == "migrate"
        else AnalysisWorkerSettings()
        if args.command == "worker"
        else AnalysisSettings()
    )
    service = "analysis-worker" if args.command == "worker" else "analysis"
    configure_logging(settings, service=service)
    configure_tracing(settings, service=service)
    configure_error_reporting(settings, service=service)
    if args.command == "migrate":
        return tenant_migrations.migrate_command(settings, args)
    assert isinstance(settings, AnalysisSettings)
    if args.command == "serve":
        run_async(serve_analysis(settings))
        return 0
    run_async(run_worker(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
