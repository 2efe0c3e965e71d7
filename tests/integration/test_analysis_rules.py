"""Analysis use cases on a real database: local paths refused in production mode, tenant schemas scoped."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.common.config import CommonSettings
from libs.common.errors import AppError
from libs.common.tokens import AccessClaims
from services.analysis import repository as repo
from services.analysis import use_cases
from services.analysis.domain import TenantConfig
from services.analysis.use_cases import Analyses
from tests.e2e.analysis_repos import git_repository


async def _config(tenant_id: uuid.UUID) -> TenantConfig:
    return TenantConfig(allowed_hosts=("github.com",))


async def _member(engine: AsyncEngine, tenant_id: uuid.UUID, role: str = "owner") -> AccessClaims:
    """A user with `role` in the tenant, as the membership projection knows it, and the claims of their token.

    The token says "owner" whatever the role: the service authorises by the projection, never by the claim."""
    user_id = uuid.uuid4()
    async with engine.begin() as conn:
        await repo.upsert_membership(conn, tenant_id=tenant_id, user_id=user_id, role=role, removed=False, version=1)
    return AccessClaims(
        user_id=user_id,
        tenant_id=tenant_id,
        role="owner",
        session_id=uuid.uuid4(),
        token_id="t",
        issued_at=0,
        expires_at=2**40,
    )


async def test_local_paths_and_roles_and_schema_scoping(fresh_database: str, tmp_path: Path) -> None:
    from tests.integration.test_analysis_migrations import _run

    _run(fresh_database, "up")
    engine = create_async_engine(CommonSettings(database_url=fresh_database).sqlalchemy_url)
    try:
        alice, bob = uuid.uuid4(), uuid.uuid4()
        async with engine.begin() as conn:
            for tenant in (alice, bob):
                await use_cases.provision_schema(conn, tenant)
        source = git_repository(tmp_path / "local", {"a.py": "x = 1\n"})
        alice_owner, alice_viewer, bob_owner = (
            await _member(engine, alice),
            await _member(engine, alice, "viewer"),
            await _member(engine, bob),
        )
        production = Analyses(engine=engine, tenant_config=_config, allow_local=False)
        development = dataclasses.replace(production, allow_local=True)
        for url in (str(source), f"file://{source}"):
            with pytest.raises(AppError) as caught:
                await use_cases.create_repository(
                    analyses=production, claims=alice_owner, name="local", url=url, default_branch="main"
                )
            assert caught.value.code == "ERR_REPO_003"
            assert caught.value.details["reason"] == "local_not_allowed"
        with pytest.raises(AppError) as refused:
            await use_cases.create_repository(
                analyses=development, claims=alice_viewer, name="x", url=str(source), default_branch="main"
            )
        assert refused.value.code == "ERR_TENANT_002"
        created = await use_cases.create_repository(
            analyses=development, claims=alice_owner, name="local", url=str(source), default_branch="main"
        )
        # The same name is free in another tenant's schema, and alice's repository is invisible there.
        await use_cases.create_repository(
            analyses=development, claims=bob_owner, name="local", url=str(source), default_branch="main"
        )
        with pytest.raises(AppError) as hidden:
            await use_cases.get_repository(analyses=development, claims=bob_owner, repository_id=str(created.id))
        assert hidden.value.code == "ERR_REPO_001"
        async with engine.connect() as conn:
            rows = (
                await conn.execute(sa.text(f'SELECT count(*) FROM "t_{alice.hex}".repositories'))  # noqa: S608
            ).scalar_one()
        assert rows == 1
    finally:
        await engine.dispose()
