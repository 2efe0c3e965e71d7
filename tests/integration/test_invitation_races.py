"""Accepting an invitation while its tenant is being deleted, or its inviter demoted, on a real PostgreSQL: the
acceptance waits for the other transaction and then refuses, committing nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.common.config import CommonSettings
from libs.common.errors import AppError
from libs.common.tokens import AccessClaims
from services.tenants import repository as repo
from services.tenants import use_cases
from services.tenants.domain import Invitation
from services.tenants.use_cases import Tenants


@pytest.fixture
async def engine(migrated_database: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(CommonSettings(database_url=migrated_database).sqlalchemy_url)
    yield made
    await made.dispose()


def _claims(user_id: uuid.UUID, tenant_id: uuid.UUID) -> AccessClaims:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return AccessClaims(
        user_id=user_id,
        tenant_id=tenant_id,
        role="member",
        session_id=uuid.uuid4(),
        token_id="t",
        issued_at=now,
        expires_at=now + 900,
    )


async def _organisation_with_invitation(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]:
    """(tenant, owner, invitee, token): an organisation whose owner invited a registered user as member."""
    tenant_id, owner_id, invitee_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    name = "u" + invitee_id.hex[:10]
    token = "inv_" + uuid.uuid4().hex
    async with engine.begin() as conn:
        await repo.add_tenant(conn, tenant_id=tenant_id, name="Org", slug="o" + tenant_id.hex[:20], personal=False)
        await repo.add_membership(conn, tenant_id=tenant_id, user_id=owner_id, role="owner", version=1)
        await repo.upsert_user(conn, user_id=invitee_id, username=name, email=f"{name}@example.com", full_name="")
        invitation = Invitation(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            invitee=name,
            role="member",
            invited_by=owner_id,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
            accepted_at=None,
        )
        await repo.add_invitation(conn, invitation, token_hash=use_cases._hash_token(token))
    return tenant_id, owner_id, invitee_id, token


async def _members(engine: AsyncEngine, tenant_id: uuid.UUID) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(repo.memberships.c.user_id).where(repo.memberships.c.tenant_id == tenant_id)
        )
        return set(rows.scalars())


async def test_an_acceptance_during_the_deletion_of_its_tenant_commits_nothing(engine: AsyncEngine) -> None:
    tenant_id, owner_id, invitee_id, token = await _organisation_with_invitation(engine)
    tenants = Tenants(engine=engine)
    async with engine.connect() as deleting:
        # The deletion's transaction, as delete_current_tenant runs it: the tenant locked, marked, members gone.
        await deleting.begin()
        await repo.membership_of_user(deleting, user_id=owner_id, tenant_id=tenant_id, for_update=True)
        await repo.mark_deleted(deleting, tenant_id=tenant_id, at=dt.datetime.now(dt.UTC))
        await repo.delete_memberships(deleting, tenant_id)
        accepting = asyncio.create_task(
            use_cases.accept_invitation(tenants=tenants, claims=_claims(invitee_id, uuid.uuid4()), token=token)
        )
        await asyncio.sleep(0.5)
        assert not accepting.done(), "the acceptance waits for the deletion"
        await deleting.commit()
    with pytest.raises(AppError) as refused:
        await accepting
    assert refused.value.code == "ERR_TENANT_008"
    assert await _members(engine, tenant_id) == set()


async def test_an_acceptance_while_its_inviter_is_demoted_is_refused(engine: AsyncEngine) -> None:
    tenant_id, owner_id, invitee_id, token = await _organisation_with_invitation(engine)
    tenants = Tenants(engine=engine)
    async with engine.connect() as demoting:
        await demoting.begin()
        await repo.membership_of_user(demoting, user_id=owner_id, tenant_id=tenant_id, for_update=True)
        await repo.set_role(demoting, tenant_id=tenant_id, user_id=owner_id, role="viewer", version=2)
        accepting = asyncio.create_task(
            use_cases.accept_invitation(tenants=tenants, claims=_claims(invitee_id, uuid.uuid4()), token=token)
        )
        await asyncio.sleep(0.5)
        assert not accepting.done()
        await demoting.commit()
    with pytest.raises(AppError) as refused:
        await accepting
    assert refused.value.code == "ERR_TENANT_011"
    assert await _members(engine, tenant_id) == {owner_id}
