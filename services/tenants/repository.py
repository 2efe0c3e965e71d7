"""All SQL of the tenants service; functions take the caller's connection and never commit."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import inbox_table
from libs.common.outbox import outbox_table
from services.tenants.domain import Invitation, Member, QualityGate, Secret, Settings, Tenant, TenantMembership

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
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
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
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("username", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("full_name", sa.Text),
    schema=SCHEMA,
)
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tenant_id", sa.Uuid),
    sa.Column("token_hash", sa.LargeBinary),
    sa.Column("invitee", sa.Text),
    sa.Column("role", sa.Text),
    sa.Column("invited_by", sa.Uuid),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("accepted_at", sa.DateTime(timezone=True)),
    sa.Column("accepted_by", sa.Uuid),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_by", sa.Uuid),
    schema=SCHEMA,
)
data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("wrapped_key", sa.LargeBinary),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("rewrapped_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
settings = sa.Table(
    "settings",
    metadata,
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("secrets", postgresql.JSONB),
    sa.Column("llm_provider", sa.Text),
    sa.Column("llm_model", sa.Text),
    sa.Column("quality_gate", postgresql.JSONB),
    sa.Column("allowed_hosts", postgresql.ARRAY(sa.Text)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
outbox = outbox_table(metadata, SCHEMA)
inbox = inbox_table(metadata, SCHEMA)

ACTIVE = "active"
DELETED = "deleted"


def _tenant(row: Any) -> Tenant:
    return Tenant(id=row.id, name=row.name, slug=row.slug, personal=row.personal, created_at=row.created_at)


def _membership(row: Any) -> TenantMembership:
    return TenantMembership(tenant=_tenant(row), role=row.role)


_MEMBERSHIP_SELECT = sa.select(
    tenants.c.id, tenants.c.name, tenants.c.slug, tenants.c.personal, tenants.c.created_at, memberships.c.role
).join(memberships, memberships.c.tenant_id == tenants.c.id)


# Tenants


async def tenant_exists(conn: AsyncConnection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant was ever created (deleted ones included)."""
    return bool((await conn.execute(sa.select(sa.exists().where(tenants.c.id == tenant_id)))).scalar_one())


async def lock_active_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant is active, holding it so until the transaction ends: a deletion (which locks the row for
    update) waits for this transaction, or this one for the deletion, and then sees it deleted."""
    query = (
        sa.select(tenants.c.id).where(tenants.c.id == tenant_id, tenants.c.status == ACTIVE).with_for_update(read=True)
    )
    return (await conn.execute(query)).first() is not None


async def slug_taken(conn: AsyncConnection, slug: str, *, other_than: uuid.UUID | None = None) -> bool:
    query = sa.exists().where(tenants.c.slug == slug)
    if other_than is not None:
        query = query.where(tenants.c.id != other_than)
    return bool((await conn.execute(sa.select(query))).scalar_one())


async def add_tenant(conn: AsyncConnection, *, tenant_id: uuid.UUID, name: str, slug: str, personal: bool) -> None:
    await conn.execute(tenants.insert().values(id=tenant_id, name=name, slug=slug, personal=personal))


async def rename_tenant(conn: AsyncConnection, *, tenant_id: uuid.UUID, name: str, slug: str) -> None:
    await conn.execute(
        tenants.update().where(tenants.c.id == tenant_id).values(name=name, slug=slug, updated_at=sa.func.now())
    )


async def mark_deleted(conn: AsyncConnection, *, tenant_id: uuid.UUID, at: dt.datetime) -> None:
    """The slug is freed (suffixed) so that a new organisation can take it."""
    await conn.execute(
        tenants.update()
        .where(tenants.c.id == tenant_id)
        .values(status=DELETED, deleted_at=at, updated_at=at, slug=tenants.c.slug + "~deleted~" + str(tenant_id))
    )


# Memberships


async def add_membership(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, version: int
) -> None:
    await conn.execute(memberships.insert().values(tenant_id=tenant_id, user_id=user_id, role=role, version=version))


async def memberships_of_user(
    conn: AsyncConnection, *, user_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[TenantMembership]:
    """Active tenants of the user in id order (ids are time-ordered), from after `after`."""
    query = _MEMBERSHIP_SELECT.where(memberships.c.user_id == user_id, tenants.c.status == ACTIVE)
    if after is not None:
        query = query.where(tenants.c.id > after)
    rows = (await conn.execute(query.order_by(tenants.c.id).limit(limit))).all()
    return [_membership(r) for r in rows]


async def membership_of_user(
    conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID, for_update: bool = False
) -> TenantMembership | None:
    query = _MEMBERSHIP_SELECT.where(
        memberships.c.user_id == user_id, tenants.c.id == tenant_id, tenants.c.status == ACTIVE
    )
    if for_update:
        # Serialises changes to one tenant's memberships (the last-owner rule needs it).
        query = query.with_for_update(of=tenants)
    row = (await conn.execute(query)).first()
    return _membership(row) if row else None


_MEMBER_SELECT = sa.select(
    memberships.c.user_id,
    sa.func.coalesce(users.c.username, "").label("username"),
    sa.func.coalesce(users.c.email, "").label("email"),
    sa.func.coalesce(users.c.full_name, "").label("full_name"),
    memberships.c.role,
    memberships.c.created_at,
    memberships.c.version,
).outerjoin(users, users.c.id == memberships.c.user_id)


def _member(row: Any) -> Member:
    return Member(
        user_id=row.user_id,
        username=row.username,
        email=row.email,
        full_name=row.full_name,
        role=row.role,
        joined_at=row.created_at,
        version=row.version,
    )


async def members(conn: AsyncConnection, *, tenant_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> list[Member]:
    query = _MEMBER_SELECT.where(memberships.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(memberships.c.user_id > after)
    rows = (await conn.execute(query.order_by(memberships.c.user_id).limit(limit))).all()
    return [_member(r) for r in rows]


async def member(conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Member | None:
    query = _MEMBER_SELECT.where(memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
    row = (await conn.execute(query)).first()
    return _member(row) if row else None


async def all_memberships(
    conn: AsyncConnection, *, after: tuple[uuid.UUID, uuid.UUID] | None, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, str, int]]:
    """(tenant, user, role, version) of every active tenant's members, in key order from after `after`."""
    query = (
        sa.select(memberships.c.tenant_id, memberships.c.user_id, memberships.c.role, memberships.c.version)
        .join(tenants, tenants.c.id == memberships.c.tenant_id)
        .where(tenants.c.status == ACTIVE)
    )
    if after is not None:
        query = query.where(sa.tuple_(memberships.c.tenant_id, memberships.c.user_id) > sa.tuple_(*after))
    rows = (await conn.execute(query.order_by(memberships.c.tenant_id, memberships.c.user_id).limit(limit))).all()
    return [(r.tenant_id, r.user_id, r.role, r.version) for r in rows]


async def member_ids(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    query = sa.select(memberships.c.user_id).where(memberships.c.tenant_id == tenant_id)
    return list((await conn.execute(query)).scalars().all())


async def lock_owned_tenants(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """Serialises one user's count-then-create of organisations until the transaction ends, rollback included, so
    two concurrent creations cannot both take the last place."""
    await conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('tenants:owned'), hashtext(:user))"), {"user": str(user_id)}
    )


async def owned_organisations(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    """Active organisations the user is an owner of; the personal tenant is not one."""
    query = (
        sa.select(sa.func.count())
        .select_from(memberships.join(tenants, tenants.c.id == memberships.c.tenant_id))
        .where(
            memberships.c.user_id == user_id,
            memberships.c.role == "owner",
            tenants.c.status == ACTIVE,
            tenants.c.personal.is_(False),
        )
    )
    return int((await conn.execute(query)).scalar_one())


async def owner_count(conn: AsyncConnection, tenant_id: uuid.UUID) -> int:
    query = sa.select(sa.func.count()).where(memberships.c.tenant_id == tenant_id, memberships.c.role == "owner")
    return int((await conn.execute(query)).scalar_one())


async def set_role(conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, version: int) -> None:
    await conn.execute(
        memberships.update()
        .where(memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
        .values(role=role, version=version, updated_at=sa.func.now())
    )


async def remove_membership(conn: AsyncConnection, *, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        memberships.delete().where(memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
    )


async def delete_memberships(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    await conn.execute(memberships.delete().where(memberships.c.tenant_id == tenant_id))


# Users directory (projection of auth's users)


async def upsert_user(conn: AsyncConnection, *, user_id: uuid.UUID, username: str, email: str, full_name: str) -> None:
    statement = insert(users).values(id=user_id, username=username, email=email, full_name=full_name)
    await conn.execute(statement.on_conflict_do_nothing(index_elements=[users.c.id]))


async def user_by_name_or_email(conn: AsyncConnection, invitee: str) -> tuple[uuid.UUID, str, str] | None:
    wanted = invitee.lower()
    query = sa.select(users.c.id, users.c.username, users.c.email).where(
        sa.or_(sa.func.lower(users.c.username) == wanted, sa.func.lower(users.c.email) == wanted)
    )
    row = (await conn.execute(query)).first()
    return (row.id, row.username, row.email) if row else None


async def user_names(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[str, str] | None:
    """(username, email) of a user, lowercased."""
    row = (await conn.execute(sa.select(users.c.username, users.c.email).where(users.c.id == user_id))).first()
    return (row.username.lower(), row.email.lower()) if row else None


# Invitations


def _invitation(row: Any) -> Invitation:
    return Invitation(
        id=row.id,
        tenant_id=row.tenant_id,
        invitee=row.invitee,
        role=row.role,
        invited_by=row.invited_by,
        expires_at=row.expires_at,
        accepted_at=row.accepted_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


async def add_invitation(conn: AsyncConnection, invitation: Invitation, *, token_hash: bytes) -> None:
    await conn.execute(
        invitations.insert().values(
            id=invitation.id,
            tenant_id=invitation.tenant_id,
            token_hash=token_hash,
            invitee=invitation.invitee,
            role=invitation.role,
            invited_by=invitation.invited_by,
            expires_at=invitation.expires_at,
        )
    )


async def invitation_by_hash(conn: AsyncConnection, token_hash: bytes) -> Invitation | None:
    query = sa.select(invitations).where(invitations.c.token_hash == token_hash).with_for_update()
    row = (await conn.execute(query)).first()
    return _invitation(row) if row else None


async def pending_invitations(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[Invitation]:
    """Neither accepted nor revoked (expired ones included: they show why someone could not join), oldest first."""
    query = sa.select(invitations).where(
        invitations.c.tenant_id == tenant_id, invitations.c.accepted_at.is_(None), invitations.c.revoked_at.is_(None)
    )
    if after is not None:
        query = query.where(invitations.c.id > after)
    rows = (await conn.execute(query.order_by(invitations.c.id).limit(limit))).all()
    return [_invitation(r) for r in rows]


async def invitation_of_tenant(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, invitation_id: uuid.UUID
) -> Invitation | None:
    query = (
        sa.select(invitations)
        .where(invitations.c.id == invitation_id, invitations.c.tenant_id == tenant_id)
        .with_for_update()
    )
    row = (await conn.execute(query)).first()
    return _invitation(row) if row else None


async def revoke_invitation(conn: AsyncConnection, *, invitation_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        invitations.update()
        .where(invitations.c.id == invitation_id)
        .values(revoked_at=sa.func.now(), revoked_by=user_id)
    )


async def mark_accepted(conn: AsyncConnection, *, invitation_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        invitations.update()
        .where(invitations.c.id == invitation_id)
        .values(accepted_at=sa.func.now(), accepted_by=user_id)
    )


# Data keys and settings


async def wrapped_data_key(conn: AsyncConnection, tenant_id: uuid.UUID) -> bytes | None:
    query = sa.select(data_keys.c.wrapped_key).where(data_keys.c.tenant_id == tenant_id)
    value = (await conn.execute(query)).scalar_one_or_none()
    return bytes(value) if value is not None else None


async def add_data_key(conn: AsyncConnection, *, tenant_id: uuid.UUID, wrapped_key: bytes) -> None:
    await conn.execute(data_keys.insert().values(tenant_id=tenant_id, wrapped_key=wrapped_key))


async def all_data_keys(conn: AsyncConnection) -> list[tuple[uuid.UUID, bytes]]:
    rows = (await conn.execute(sa.select(data_keys.c.tenant_id, data_keys.c.wrapped_key).with_for_update())).all()
    return [(r.tenant_id, bytes(r.wrapped_key)) for r in rows]


async def set_wrapped_key(conn: AsyncConnection, *, tenant_id: uuid.UUID, wrapped_key: bytes) -> None:
    await conn.execute(
        data_keys.update()
        .where(data_keys.c.tenant_id == tenant_id)
        .values(wrapped_key=wrapped_key, rewrapped_at=sa.func.now())
    )


async def delete_data_key(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Crypto-shredding: without its data key, a deleted tenant's secrets are unreadable everywhere."""
    await conn.execute(data_keys.delete().where(data_keys.c.tenant_id == tenant_id))
    await conn.execute(settings.delete().where(settings.c.tenant_id == tenant_id))


def _secrets_to_json(secrets: dict[str, Secret]) -> dict[str, dict[str, str]]:
    return {
        name: {"ciphertext": base64.b64encode(s.ciphertext).decode(), "masked": s.masked} for name, s in secrets.items()
    }


async def settings_of(conn: AsyncConnection, tenant_id: uuid.UUID) -> Settings:
    row = (await conn.execute(sa.select(settings).where(settings.c.tenant_id == tenant_id))).first()
    if row is None:
        return Settings(tenant_id=tenant_id)
    return Settings(
        tenant_id=tenant_id,
        secrets={
            name: Secret(ciphertext=base64.b64decode(value["ciphertext"]), masked=value["masked"])
            for name, value in row.secrets.items()
        },
        llm_provider=row.llm_provider,
        llm_model=row.llm_model,
        quality_gate=QualityGate(**row.quality_gate),
        allowed_hosts=tuple(row.allowed_hosts),
        updated_at=row.updated_at,
    )


async def save_settings(conn: AsyncConnection, value: Settings) -> dt.datetime:
    gate = value.quality_gate
    values = {
        "secrets": _secrets_to_json(value.secrets),
        "llm_provider": value.llm_provider,
        "llm_model": value.llm_model,
        "quality_gate": dataclasses.asdict(gate),
        "allowed_hosts": list(value.allowed_hosts),
        "updated_at": sa.func.now(),
    }
    statement = insert(settings).values(tenant_id=value.tenant_id, **values)
    result = await conn.execute(
        statement.on_conflict_do_update(index_elements=[settings.c.tenant_id], set_=values).returning(
            settings.c.updated_at
        )
    )
    return result.scalar_one()  # type: ignore[no-any-return]
