"""All SQL of the tenants service; functions take the caller's connection and never commit."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import inbox_table
from libs.common.outbox import outbox_table
from services.tenants.domain import Tenant, TenantMembership

SCHEMA = "tenants"
metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("slug", sa.Text),
    sa.Column("personal", sa.Boolean),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, primary_key=True),
    sa.Column("role", sa.Text),
    sa.Column("version", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
outbox = outbox_table(metadata, SCHEMA)
inbox = inbox_table(metadata, SCHEMA)


def _membership(row: Any) -> TenantMembership:
    return TenantMembership(
        tenant=Tenant(id=row.id, name=row.name, slug=row.slug, personal=row.personal, created_at=row.created_at),
        role=row.role,
    )


_MEMBERSHIP_SELECT = sa.select(
    tenants.c.id, tenants.c.name, tenants.c.slug, tenants.c.personal, tenants.c.created_at, memberships.c.role
).join(memberships, memberships.c.tenant_id == tenants.c.id)


async def tenant_exists(conn: AsyncConnection, tenant_id: uuid.UUID) -> bool:
    return (await conn.execute(sa.select(sa.exists().where(tenants.c.id == tenant_id)))).scalar_one()


async def add_tenant(conn: AsyncConnection, *, tenant_id: uuid.UUID, name: str, slug: str, personal: bool) -> None:
    await conn.execute(tenants.insert().values(id=tenant_id, name=name, slug=slug, personal=personal))


async def add_membership(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, version: int
) -> None:
    await conn.execute(memberships.insert().values(tenant_id=tenant_id, user_id=user_id, role=role, version=version))


async def memberships_of_user(
    conn: AsyncConnection, *, user_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[TenantMembership]:
    """Active tenants of the user in id order (ids are time-ordered), from after `after`."""
    query = _MEMBERSHIP_SELECT.where(memberships.c.user_id == user_id, tenants.c.status == "active")
    if after is not None:
        query = query.where(tenants.c.id > after)
    rows = (await conn.execute(query.order_by(tenants.c.id).limit(limit))).all()
    return [_membership(r) for r in rows]


async def membership_of_user(
    conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID
) -> TenantMembership | None:
    query = _MEMBERSHIP_SELECT.where(
        memberships.c.user_id == user_id, tenants.c.id == tenant_id, tenants.c.status == "active"
    )
    row = (await conn.execute(query)).first()
    return _membership(row) if row else None
