"""Tenants operations: the personal tenant of a new user, and the caller's tenants."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import errors
from libs.common.db import autocommit
from libs.common.errors import AppError
from libs.common.events import unpack
from libs.common.outbox import emit
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2
from services.tenants import repository as repo
from services.tenants.domain import (
    MEMBERSHIP_CHANGED,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    TENANT_CREATED,
    Page,
    TenantMembership,
    personal_slug,
)

log = structlog.get_logger(__name__)


@dataclass
class Tenants:
    """What the use cases need, built once in main."""

    engine: AsyncEngine
    reads: AsyncEngine = field(init=False)

    def __post_init__(self) -> None:
        self.reads = autocommit(self.engine)


async def _emit(conn: AsyncConnection, *, event_type: str, payload: Any, actor_id: str, tenant_id: str) -> None:
    await emit(
        conn,
        repo.outbox,
        service="tenants",
        event_type=event_type,
        payload=payload,
        actor_id=actor_id,
        tenant_id=tenant_id,
    )


async def create_personal_tenant(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    """Consumer of `user.registered`: the personal tenant (with the id auth chose) and its owner."""
    event = unpack(envelope, events_pb2.UserRegistered)
    tenant_id, user_id = uuid.UUID(event.personal_tenant_id), uuid.UUID(event.user_id)
    if await repo.tenant_exists(conn, tenant_id):
        return
    name = event.full_name or event.username
    slug = personal_slug(event.username)
    await repo.add_tenant(conn, tenant_id=tenant_id, name=name, slug=slug, personal=True)
    await repo.add_membership(conn, tenant_id=tenant_id, user_id=user_id, role="owner", version=1)
    await _emit(
        conn,
        event_type=TENANT_CREATED,
        actor_id=str(user_id),
        tenant_id=str(tenant_id),
        payload=events_pb2.TenantCreated(
            tenant_id=str(tenant_id), name=name, slug=slug, personal=True, owner_user_id=str(user_id)
        ),
    )
    await _emit(
        conn,
        event_type=MEMBERSHIP_CHANGED,
        actor_id=str(user_id),
        tenant_id=str(tenant_id),
        payload=events_pb2.MembershipChanged(
            tenant_id=str(tenant_id), user_id=str(user_id), role="owner", personal=True, version=1
        ),
    )
    log.info("tenant.created", tenant_id=str(tenant_id), personal=True)


def encode_cursor(tenant_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(tenant_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise AppError(errors.VALIDATION, details={"field": "cursor", "reason": "not a cursor from this API"}) from exc


async def list_my_tenants(*, tenants: Tenants, claims: AccessClaims, page_size: int, cursor: str) -> Page:
    """The caller's tenants with their role in each, a page at a time."""
    if page_size < 0 or page_size > PAGE_SIZE_MAX:
        raise AppError(errors.VALIDATION, details={"field": "limit", "reason": f"1-{PAGE_SIZE_MAX}"})
    limit = page_size or PAGE_SIZE_DEFAULT
    after = decode_cursor(cursor) if cursor else None
    async with tenants.reads.connect() as conn:
        rows = await repo.memberships_of_user(conn, user_id=claims.user_id, after=after, limit=limit + 1)
    items = rows[:limit]
    return Page(items=items, next_cursor=items[-1].tenant.id if len(rows) > limit else None)


async def get_tenant(*, tenants: Tenants, claims: AccessClaims, tenant_id: str) -> TenantMembership:
    """A tenant the caller belongs to; any other answers not found, whether it exists or not."""
    try:
        wanted = uuid.UUID(tenant_id)
    except ValueError:
        raise AppError(errors.TENANT_NOT_FOUND) from None
    async with tenants.reads.connect() as conn:
        membership = await repo.membership_of_user(conn, user_id=claims.user_id, tenant_id=wanted)
    if membership is None:
        raise AppError(errors.TENANT_NOT_FOUND)
    return membership
