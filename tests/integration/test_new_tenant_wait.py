"""The first calls for a tenant created a moment ago wait for its schema (it comes by event) without holding a
pooled connection meanwhile: many at once on a small pool all get through once the schema is there."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import migrations
from libs.common.config import CommonSettings
from libs.common.db import create_engine
from services.analysis import repository as repo
from services.analysis import use_cases
from services.analysis.domain import SERVICE_SCHEMA
from services.analysis.use_cases import SERVICE_MIGRATIONS


@pytest.fixture
async def small_pool(database_url: str) -> AsyncIterator[AsyncEngine]:
    settings = CommonSettings(database_url=database_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout_s=1.0)
    config = migrations.alembic_config(
        script_location=SERVICE_MIGRATIONS, schema=SERVICE_SCHEMA, sqlalchemy_url=settings.sqlalchemy_url
    )
    await asyncio.to_thread(migrations.upgrade, config)
    engine = create_engine(settings, application_name="new-tenant-wait")
    yield engine
    await engine.dispose()


async def test_many_first_calls_of_a_new_tenant_share_a_small_pool(small_pool: AsyncEngine) -> None:
    tenant = uuid.uuid4()

    async def first_call() -> int:
        async with use_cases.tenant_transaction(small_pool, tenant) as conn:
            return await repo.repository_count(conn, at_most=10)

    calls = [asyncio.create_task(first_call()) for _ in range(20)]
    await asyncio.sleep(2.0)  # longer than the pool's timeout: a call waiting in a transaction would starve others
    async with small_pool.begin() as conn:
        await use_cases.provision_schema(conn, tenant)
    assert await asyncio.gather(*calls) == [0] * 20


async def test_provisioning_tenants_leaves_the_statement_cache_to_the_requests(small_pool: AsyncEngine) -> None:
    cache = small_pool.sync_engine._compiled_cache
    assert cache is not None
    before = len(cache)
    for _ in range(3):
        async with small_pool.begin() as conn:
            await use_cases.provision_schema(conn, uuid.uuid4())
    # The record of each schema is one statement for all tenants; the migrations' own, one per tenant, are not kept.
    assert len(cache) - before <= 2
