"""Integration fixtures: migrated databases and the auth and tenants services running in-process on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import migrations
from libs.common.config import DEVELOPMENT_GATEWAY_TOKEN, AuthSettings, CommonSettings, TenantsSettings
from libs.common.db import create_engine
from libs.common.identity import SERVICE_TOKEN_KEY
from libs.devstack.servers import free_port
from services.analysis.domain import SERVICE_SCHEMA, TenantConfig
from services.analysis.use_cases import SERVICE_MIGRATIONS, Analyses
from services.auth.__main__ import serve_auth
from services.tenants.__main__ import serve_tenants
from tests.conftest import scratch_database

ROOT = Path(__file__).resolve().parents[2]


def migrate(database_url: str) -> None:
    url = CommonSettings(database_url=database_url).sqlalchemy_url
    for service, schema in (("auth", "auth"), ("tenants", "tenants")):
        config = migrations.alembic_config(
            script_location=ROOT / "services" / service / "migrations", schema=schema, sqlalchemy_url=url
        )
        migrations.upgrade(config)


@pytest.fixture
def fresh_database(postgres_server_url: str) -> Iterator[str]:
    """A migrated database of its own, for tests whose services must not share an outbox with others."""
    with scratch_database(postgres_server_url, "repolens_it") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def migrated_database(database_url: str) -> str:
    migrate(database_url)
    return database_url


class _GatewayCredential(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the gateway's credential to every call, as the gateway does for register, login, refresh, logout."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        metadata = [*(client_call_details.metadata or ()), (SERVICE_TOKEN_KEY, DEVELOPMENT_GATEWAY_TOKEN)]
        return await continuation(client_call_details._replace(metadata=metadata), request)


def gateway_channel(target: str) -> grpc.aio.Channel:
    """A channel that calls like the gateway: with its service credential (the development default)."""
    return grpc.aio.insecure_channel(target, interceptors=[_GatewayCredential()])


async def wait_serving(target: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{target} never reported SERVING")
            await asyncio.sleep(0.1)


@dataclass
class Services:
    """auth and tenants, served in this process (so they count for coverage) on free ports."""

    auth_target: str
    tenants_target: str
    auth_settings: AuthSettings
    stops: list[asyncio.Event]
    tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout=30)


async def start_services(database_url: str, nats_url: str, **overrides: Any) -> Services:
    auth_port, tenants_port = free_port(), free_port()
    common: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "nats_url": nats_url,
        "grpc_host": "127.0.0.1",
        "auth_grpc_target": f"127.0.0.1:{auth_port}",
        "outbox_poll_interval_s": 0.2,
        "consumer_max_deliver": 3,
        "refresh_reuse_grace_s": 0.5,
        "startup_timeout_s": 20,
        **overrides,
    }
    auth_settings = AuthSettings(grpc_port=auth_port, key_reload_interval_s=0.5, **common)
    tenants_settings = TenantsSettings(grpc_port=tenants_port, **common)
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [
        asyncio.create_task(serve_auth(auth_settings, stops[0])),
        asyncio.create_task(serve_tenants(tenants_settings, stops[1])),
    ]
    services = Services(f"127.0.0.1:{auth_port}", f"127.0.0.1:{tenants_port}", auth_settings, stops, tasks)
    try:
        await wait_serving(services.auth_target)
        await wait_serving(services.tenants_target)
    except BaseException:
        await services.close()
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception() from None  # type: ignore[misc]
        raise
    return services


@pytest.fixture(scope="session")
async def services(migrated_database: str, nats_url: str) -> AsyncIterator[Services]:
    running = await start_services(migrated_database, nats_url)
    yield running
    await running.close()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Polls until `check` holds: events cross processes asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def analyses(database_url: str) -> AsyncIterator[Analyses]:
    """The analysis use cases on the service scope alone (leases, webhook deliveries): no tenant, no settings."""
    settings = CommonSettings(database_url=database_url)
    config = migrations.alembic_config(
        script_location=SERVICE_MIGRATIONS, schema=SERVICE_SCHEMA, sqlalchemy_url=settings.sqlalchemy_url
    )
    await asyncio.to_thread(migrations.upgrade, config)
    engine: AsyncEngine = create_engine(settings, application_name="service-scope")
    yield Analyses(engine=engine, tenant_config=_no_config)
    await engine.dispose()


async def _no_config(tenant_id: uuid.UUID) -> TenantConfig:
    raise AssertionError("the service scope needs no tenant's settings")
