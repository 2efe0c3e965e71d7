"""Tenants operations: organisations, members, invitations, settings, deletion, and the personal tenant."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import secrets as random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import errors
from libs.common.db import autocommit
from libs.common.errors import AppError
from libs.common.event_types import MEMBERSHIP_CHANGED, SETTINGS_CHANGED, TENANT_CREATED, TENANT_DELETED, EventType
from libs.common.events import new_id, propagated, timestamp, unpack
from libs.common.outbox import emit
from libs.common.pagination import Page, decode_cursor, page_limit, page_of
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2
from services.tenants import repository as repo
from services.tenants import secrets
from services.tenants.domain import (
    INVITATION_TTL,
    LLM_PROVIDERS,
    SECRET_FIELDS,
    Invitation,
    Member,
    QualityGate,
    Secret,
    Settings,
    TenantMembership,
    can_grant,
    ensure,
    ensure_can_change,
    ensure_can_grant,
    invalid,
    mask,
    personal_slug,
    validate_hosts,
    validate_name,
    validate_quality_gate,
    validate_role,
    validate_secret,
    validate_slug,
)

log = structlog.get_logger(__name__)

INVITATION_TOKEN_PREFIX = "inv_"  # noqa: S105 # nosec B105 # a prefix, not a secret
SETTINGS_FIELDS = (*SECRET_FIELDS, "llm_provider", "llm_model", "quality_gate", "allowed_hosts")


@dataclass
class Tenants:
    """What the use cases need, built once in main."""

    engine: AsyncEngine
    master_key: bytes = b""
    invitation_ttl: dt.timedelta = INVITATION_TTL
    max_owned_tenants: int = 20  # organisations a user may own at once (USER_MAX_TENANTS)
    reads: AsyncEngine = field(init=False)

    def __post_init__(self) -> None:
        self.reads = autocommit(self.engine)


def _version() -> int:
    """Membership versions are microsecond clocks: they keep growing across removal and re-invitation."""
    return time.time_ns() // 1000


async def _emit(conn: AsyncConnection, *, event: EventType, payload: Any, actor_id: str, tenant_id: str) -> None:
    await emit(conn, repo.outbox, event=event, payload=payload, actor_id=actor_id, tenant_id=tenant_id)


async def _membership_changed(
    conn: AsyncConnection,
    *,
    actor: uuid.UUID,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    role: str,
    version: int,
    personal: bool = False,
    removed: bool = False,
) -> None:
    await _emit(
        conn,
        event=MEMBERSHIP_CHANGED,
        actor_id=str(actor),
        tenant_id=str(tenant_id),
        payload=events_pb2.MembershipChanged(
            tenant_id=str(tenant_id),
            user_id=str(user_id),
            role="" if removed else role,
            removed=removed,
            personal=personal,
            version=version,
            changed_at=timestamp(dt.datetime.now(dt.UTC)),
        ),
    )


async def _acting(conn: AsyncConnection, claims: AccessClaims, *, for_update: bool = False) -> TenantMembership:
    """The caller's membership of the token's tenant, from the database: roles are enforced here, not trusted.

    A personal tenant is created from user.registered, so for a moment after registering its
    token can name a tenant this service has not created yet: that case (and only that: a
    deleted or foreign tenant has a row) waits briefly instead of answering not found.
    """

    async def probe() -> TenantMembership | bool | None:
        membership = await repo.membership_of_user(
            conn, user_id=claims.user_id, tenant_id=claims.tenant_id, for_update=for_update
        )
        if membership is not None:
            return membership
        return False if await repo.tenant_exists(conn, claims.tenant_id) else None

    found = await propagated(probe)
    if not isinstance(found, TenantMembership):
        raise AppError(errors.TENANT_NOT_FOUND)
    return found


# Personal tenants (consumer of user.registered)


async def create_personal_tenant(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    """The personal tenant (with the id auth chose), its owner, and the user in the directory."""
    event = unpack(envelope, events_pb2.UserRegistered)
    tenant_id, user_id = uuid.UUID(event.personal_tenant_id), uuid.UUID(event.user_id)
    await repo.upsert_user(conn, user_id=user_id, username=event.username, email=event.email, full_name=event.full_name)
    if await repo.tenant_exists(conn, tenant_id):
        return
    name = event.full_name or event.username
    slug = personal_slug(event.username)
    version = _version()
    await repo.add_tenant(conn, tenant_id=tenant_id, name=name, slug=slug, personal=True)
    await repo.add_membership(conn, tenant_id=tenant_id, user_id=user_id, role="owner", version=version)
    await _emit(
        conn,
        event=TENANT_CREATED,
        actor_id=str(user_id),
        tenant_id=str(tenant_id),
        payload=events_pb2.TenantCreated(
            tenant_id=str(tenant_id), name=name, slug=slug, personal=True, owner_user_id=str(user_id)
        ),
    )
    await _membership_changed(
        conn, actor=user_id, tenant_id=tenant_id, user_id=user_id, role="owner", version=version, personal=True
    )
    log.info("tenant.created", tenant_id=str(tenant_id), personal=True)


# Tenants


async def list_my_tenants(
    *, tenants: Tenants, claims: AccessClaims, page_size: int, cursor: str
) -> Page[TenantMembership]:
    """The caller's tenants with their role in each, a page at a time."""
    limit = page_limit(page_size)
    async with tenants.reads.connect() as conn:
        rows = await repo.memberships_of_user(
            conn, user_id=claims.user_id, after=decode_cursor(cursor), limit=limit + 1
        )
    return page_of(rows, limit, lambda m: m.tenant.id)


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


async def create_tenant(*, tenants: Tenants, claims: AccessClaims, name: str, slug: str) -> TenantMembership:
    """A new organisation, within the organisations the caller may own; the caller is its owner."""
    name, slug = validate_name(name), validate_slug(slug)
    tenant_id, version = new_id(), _version()
    async with tenants.engine.begin() as conn:
        if await repo.slug_taken(conn, slug):
            raise AppError(errors.SLUG_TAKEN)
        await repo.lock_owned_tenants(conn, claims.user_id)  # held until the new owner membership commits
        limit = tenants.max_owned_tenants
        if await repo.owned_organisations(conn, claims.user_id) >= limit:
            raise AppError(
                errors.TENANT_QUOTA,
                message=f"Organisation limit reached: a user may own {limit} organisations",
                details={"limit": str(limit)},
            )
        await repo.add_tenant(conn, tenant_id=tenant_id, name=name, slug=slug, personal=False)
        await repo.add_membership(conn, tenant_id=tenant_id, user_id=claims.user_id, role="owner", version=version)
        await _emit(
            conn,
            event=TENANT_CREATED,
            actor_id=str(claims.user_id),
            tenant_id=str(tenant_id),
            payload=events_pb2.TenantCreated(
                tenant_id=str(tenant_id), name=name, slug=slug, personal=False, owner_user_id=str(claims.user_id)
            ),
        )
        await _membership_changed(
            conn, actor=claims.user_id, tenant_id=tenant_id, user_id=claims.user_id, role="owner", version=version
        )
        membership = await _acting(conn, dataclasses.replace(claims, tenant_id=tenant_id))
    log.info("tenant.created", tenant_id=str(tenant_id), personal=False)
    return membership


async def update_current_tenant(*, tenants: Tenants, claims: AccessClaims, name: str, slug: str) -> TenantMembership:
    """Renames the token's tenant (owners and admins); a personal tenant keeps its slug."""
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        ensure(acting.role, "tenant.rename")
        tenant = acting.tenant
        new_name = validate_name(name) if name else tenant.name
        new_slug = validate_slug(slug) if slug and slug != tenant.slug else tenant.slug
        if new_slug != tenant.slug:
            if tenant.personal:
                raise AppError(errors.PERSONAL_TENANT)
            if await repo.slug_taken(conn, new_slug, other_than=tenant.id):
                raise AppError(errors.SLUG_TAKEN)
        await repo.rename_tenant(conn, tenant_id=tenant.id, name=new_name, slug=new_slug)
        return await _acting(conn, claims)


async def delete_current_tenant(*, tenants: Tenants, claims: AccessClaims) -> uuid.UUID:
    """Owner only. Marks it deleted, drops its members and its data key, and publishes tenant.deleted."""
    now = dt.datetime.now(dt.UTC)
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        ensure(acting.role, "tenant.delete")
        if acting.tenant.personal:
            raise AppError(errors.PERSONAL_TENANT)
        member_ids = await repo.member_ids(conn, acting.tenant.id)
        await repo.mark_deleted(conn, tenant_id=acting.tenant.id, at=now)
        await repo.delete_memberships(conn, acting.tenant.id)
        await repo.delete_data_key(conn, acting.tenant.id)
        await _emit(
            conn,
            event=TENANT_DELETED,
            actor_id=str(claims.user_id),
            tenant_id=str(acting.tenant.id),
            payload=events_pb2.TenantDeleted(
                tenant_id=str(acting.tenant.id),
                deleted_at=timestamp(now),
                member_user_ids=[str(m) for m in member_ids],
            ),
        )
    log.info("tenant.deleted", tenant_id=str(acting.tenant.id))
    return acting.tenant.id


# Members


async def list_members(*, tenants: Tenants, claims: AccessClaims, page_size: int, cursor: str) -> Page[Member]:
    limit = page_limit(page_size)
    async with tenants.reads.connect() as conn:
        await _acting(conn, claims)
        rows = await repo.members(conn, tenant_id=claims.tenant_id, after=decode_cursor(cursor), limit=limit + 1)
    return page_of(rows, limit, lambda m: m.user_id)


def _user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise AppError(errors.MEMBER_NOT_FOUND) from None


async def update_member(*, tenants: Tenants, claims: AccessClaims, user_id: str, role: str) -> Member:
    """Changes a role; in force on the member's next token."""
    validate_role(role)
    target_id = _user_id(user_id)
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        target = await repo.member(conn, tenant_id=acting.tenant.id, user_id=target_id)
        if target is None:
            raise AppError(errors.MEMBER_NOT_FOUND)
        ensure_can_change(acting.role, target.role, action="members.change_role")
        ensure_can_grant(acting.role, role)
        if acting.tenant.personal and role != "owner":
            raise AppError(errors.PERSONAL_TENANT)
        if target.role == "owner" and role != "owner" and await repo.owner_count(conn, acting.tenant.id) <= 1:
            raise AppError(errors.LAST_OWNER)
        version = _version()
        await repo.set_role(conn, tenant_id=acting.tenant.id, user_id=target_id, role=role, version=version)
        await _membership_changed(
            conn, actor=claims.user_id, tenant_id=acting.tenant.id, user_id=target_id, role=role, version=version
        )
        changed = await repo.member(conn, tenant_id=acting.tenant.id, user_id=target_id)
    assert changed is not None
    return changed


async def remove_member(*, tenants: Tenants, claims: AccessClaims, user_id: str) -> None:
    """Removes a member (or lets a member leave); their tokens for this tenant stop working."""
    target_id = _user_id(user_id)
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        target = await repo.member(conn, tenant_id=acting.tenant.id, user_id=target_id)
        if target is None:
            raise AppError(errors.MEMBER_NOT_FOUND)
        ensure_can_change(
            acting.role, target.role, action="members.remove", actor_is_target=target_id == claims.user_id
        )
        if target.role == "owner" and await repo.owner_count(conn, acting.tenant.id) <= 1:
            raise AppError(errors.LAST_OWNER)
        await repo.remove_membership(conn, tenant_id=acting.tenant.id, user_id=target_id)
        await _membership_changed(
            conn,
            actor=claims.user_id,
            tenant_id=acting.tenant.id,
            user_id=target_id,
            role=target.role,
            version=_version(),
            removed=True,
        )
    log.info("member.removed", member=str(target_id))


# Invitations


def _hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_invitation(
    *, tenants: Tenants, claims: AccessClaims, invitee: str, role: str
) -> tuple[Invitation, str]:
    """An invitation for a username or email, with a single-use token (returned once, stored hashed)."""
    validate_role(role)
    invitee = invitee.strip().lower()
    if not 3 <= len(invitee) <= 254:
        raise invalid("invitee", "a username or an email address")
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims)
        ensure_can_grant(acting.role, role)
        if acting.tenant.personal:
            raise AppError(errors.PERSONAL_TENANT)
        known = await repo.user_by_name_or_email(conn, invitee)
        if known is not None and await repo.member(conn, tenant_id=acting.tenant.id, user_id=known[0]):
            raise AppError(errors.ALREADY_MEMBER)
        token = INVITATION_TOKEN_PREFIX + random.token_urlsafe(32)
        invitation = Invitation(
            id=new_id(),
            tenant_id=acting.tenant.id,
            invitee=invitee,
            role=role,
            invited_by=claims.user_id,
            expires_at=dt.datetime.now(dt.UTC) + tenants.invitation_ttl,
            accepted_at=None,
            created_at=dt.datetime.now(dt.UTC),
        )
        await repo.add_invitation(conn, invitation, token_hash=_hash_token(token))
    log.info("invitation.created", invitation_id=str(invitation.id), role=role)
    return invitation, token


async def _caller_names(tenants: Tenants, user_id: uuid.UUID) -> tuple[str, str] | None:
    """The caller's username and email. A user who registered a moment ago may not be in the
    directory yet (it is fed by user.registered), so wait a little before giving up."""

    async def probe() -> tuple[str, str] | None:
        async with tenants.reads.connect() as conn:
            return await repo.user_names(conn, user_id)

    return await propagated(probe)


async def accept_invitation(*, tenants: Tenants, claims: AccessClaims, token: str) -> TenantMembership:
    """Joins the invitation's tenant, if it is addressed to the caller and still stands: pending, unexpired, its
    tenant active and its inviter still a member who may grant its role. All of it is checked in the
    transaction that adds the member, with the tenant's row held, so no membership is ever committed to a
    tenant being deleted, or on the word of an inviter who has just lost the right to give it."""
    names = await _caller_names(tenants, claims.user_id)
    async with tenants.engine.begin() as conn:
        invitation = await repo.invitation_by_hash(conn, _hash_token(token))
        # Someone else's invitation looks exactly like an unknown one.
        if invitation is None or names is None or invitation.invitee not in names:
            raise AppError(errors.INVITATION_NOT_FOUND)
        if invitation.accepted_at is not None:
            raise AppError(errors.INVITATION_USED)
        if invitation.revoked_at is not None:
            raise AppError(errors.INVITATION_WITHDRAWN)
        if invitation.expires_at <= dt.datetime.now(dt.UTC):
            raise AppError(errors.INVITATION_EXPIRED)
        if not await repo.lock_active_tenant(conn, invitation.tenant_id):
            raise AppError(errors.INVITATION_NOT_FOUND)  # deleted, or being deleted
        inviter = await repo.member(conn, tenant_id=invitation.tenant_id, user_id=invitation.invited_by)
        if inviter is None or not can_grant(inviter.role, invitation.role):
            raise AppError(errors.INVITATION_WITHDRAWN)
        if await repo.member(conn, tenant_id=invitation.tenant_id, user_id=claims.user_id):
            raise AppError(errors.ALREADY_MEMBER)
        version = _version()
        await repo.add_membership(
            conn, tenant_id=invitation.tenant_id, user_id=claims.user_id, role=invitation.role, version=version
        )
        await repo.mark_accepted(conn, invitation_id=invitation.id, user_id=claims.user_id)
        await _membership_changed(
            conn,
            actor=claims.user_id,
            tenant_id=invitation.tenant_id,
            user_id=claims.user_id,
            role=invitation.role,
            version=version,
        )
        membership = await repo.membership_of_user(conn, user_id=claims.user_id, tenant_id=invitation.tenant_id)
        assert membership is not None  # the tenant is held active and the row was just added
    log.info("invitation.accepted", invitation_id=str(invitation.id))
    return membership


async def list_invitations(*, tenants: Tenants, claims: AccessClaims, page_size: int, cursor: str) -> Page[Invitation]:
    """The token's tenant's invitations that are neither accepted nor revoked (owners and admins)."""
    limit = page_limit(page_size)
    async with tenants.reads.connect() as conn:
        acting = await _acting(conn, claims)
        ensure(acting.role, "invitations.read")
        rows = await repo.pending_invitations(
            conn, tenant_id=acting.tenant.id, after=decode_cursor(cursor), limit=limit + 1
        )
    return page_of(rows, limit, lambda i: i.id)


async def revoke_invitation(*, tenants: Tenants, claims: AccessClaims, invitation_id: str) -> None:
    """Withdraws a pending invitation: its token no longer joins anyone (owners and admins; an owner's invitation
    only by an owner)."""
    try:
        wanted = uuid.UUID(invitation_id)
    except ValueError:
        raise AppError(errors.INVITATION_NOT_FOUND) from None
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        ensure(acting.role, "invitations.revoke")
        invitation = await repo.invitation_of_tenant(conn, tenant_id=acting.tenant.id, invitation_id=wanted)
        if invitation is None or invitation.revoked_at is not None:
            raise AppError(errors.INVITATION_NOT_FOUND)
        if invitation.accepted_at is not None:
            raise AppError(errors.INVITATION_USED)
        ensure_can_grant(acting.role, invitation.role)
        await repo.revoke_invitation(conn, invitation_id=invitation.id, user_id=claims.user_id)
    log.info("invitation.revoked", invitation_id=str(invitation.id))


# Settings


async def get_settings(*, tenants: Tenants, claims: AccessClaims) -> Settings:
    """Any member may read them; secrets only ever leave as their masked form."""
    async with tenants.reads.connect() as conn:
        await _acting(conn, claims)
        return await repo.settings_of(conn, claims.tenant_id)


async def _data_key(conn: AsyncConnection, *, tenants: Tenants, tenant_id: uuid.UUID, create: bool) -> bytes | None:
    wrapped = await repo.wrapped_data_key(conn, tenant_id)
    if wrapped is not None:
        return await asyncio.to_thread(secrets.unwrap, wrapped, tenants.master_key, tenant_id)
    if not create:
        return None
    data_key, wrapped = secrets.new_data_key(tenants.master_key, tenant_id)
    await repo.add_data_key(conn, tenant_id=tenant_id, wrapped_key=wrapped)
    return data_key


async def update_settings(
    *, tenants: Tenants, claims: AccessClaims, fields: list[str], values: dict[str, Any]
) -> Settings:
    """Applies the named fields only; secrets are encrypted before they reach the database."""
    unknown = set(fields) - set(SETTINGS_FIELDS)
    if unknown or not fields:
        raise invalid("fields", f"one or more of {', '.join(SETTINGS_FIELDS)}")
    async with tenants.engine.begin() as conn:
        acting = await _acting(conn, claims, for_update=True)
        ensure(acting.role, "settings.write")
        tenant_id = acting.tenant.id
        current = await repo.settings_of(conn, tenant_id)
        stored = dict(current.secrets)
        changes: dict[str, Any] = {}
        for name in fields:
            value = values.get(name)
            if name in SECRET_FIELDS:
                secret = validate_secret(name, str(value or ""))
                if not secret:
                    stored.pop(name, None)
                    continue
                data_key = await _data_key(conn, tenants=tenants, tenant_id=tenant_id, create=True)
                assert data_key is not None
                sealed = secrets.encrypt(data_key, tenant_id=tenant_id, field=name, value=secret)
                stored[name] = Secret(ciphertext=sealed, masked=mask(secret))
            elif name == "llm_provider":
                if value not in LLM_PROVIDERS:
                    raise invalid("llm_provider", "none, anthropic or openai")
                changes[name] = value
            elif name == "llm_model":
                model = str(value or "").strip()
                if len(model) > 100:
                    raise invalid("llm_model", "at most 100 characters")
                changes[name] = model
            elif name == "quality_gate":
                changes[name] = validate_quality_gate(value if isinstance(value, QualityGate) else QualityGate())
            elif name == "allowed_hosts":
                changes[name] = validate_hosts(list(value or []))
        updated = dataclasses.replace(current, secrets=stored, **changes)
        updated_at = await repo.save_settings(conn, updated)
        await _emit(
            conn,
            event=SETTINGS_CHANGED,
            actor_id=str(claims.user_id),
            tenant_id=str(tenant_id),
            payload=events_pb2.SettingsChanged(tenant_id=str(tenant_id), fields=sorted(set(fields))),
        )
    log.info("settings.changed", fields=sorted(set(fields)))
    return dataclasses.replace(updated, updated_at=updated_at)


async def tenant_secrets(*, tenants: Tenants, tenant_id: str) -> tuple[dict[str, str], Settings]:
    """Decrypted secrets for the analysis service (the caller's service identity is checked before this)."""
    try:
        wanted = uuid.UUID(tenant_id)
    except ValueError:
        raise AppError(errors.TENANT_NOT_FOUND) from None
    async with tenants.reads.connect() as conn:

        async def exists() -> bool | None:  # a tenant created a moment ago: see _acting
            return await repo.tenant_exists(conn, wanted) or None

        if not await propagated(exists):
            raise AppError(errors.TENANT_NOT_FOUND)
        current = await repo.settings_of(conn, wanted)
        data_key = await _data_key(conn, tenants=tenants, tenant_id=wanted, create=False)
    clear = {
        name: secrets.decrypt(data_key, tenant_id=wanted, field=name, sealed=secret.ciphertext)
        for name, secret in current.secrets.items()
        if data_key is not None
    }
    return clear, current


async def all_memberships(
    *, tenants: Tenants, page_size: int, cursor: str
) -> tuple[list[tuple[uuid.UUID, uuid.UUID, str, int]], str]:
    """A page of every membership with its version (for another service's projection); the cursor is the last
    (tenant, user) key."""
    limit = page_size or 500
    if not 1 <= limit <= 1000:
        raise invalid("page_size", "1-1000")
    after: tuple[uuid.UUID, uuid.UUID] | None = None
    if cursor:
        try:
            tenant, user = cursor.split("/")
            after = (uuid.UUID(tenant), uuid.UUID(user))
        except ValueError:
            raise invalid("page_token", "not a token from this RPC") from None
    async with tenants.reads.connect() as conn:
        rows = await repo.all_memberships(conn, after=after, limit=limit + 1)
    page = rows[:limit]
    return page, f"{page[-1][0]}/{page[-1][1]}" if len(rows) > limit else ""


async def rewrap_data_keys(*, tenants: Tenants, old_master_key: bytes) -> int:
    """Wraps every tenant's data key again under the current master key (master-key rotation)."""
    async with tenants.engine.begin() as conn:
        keys = await repo.all_data_keys(conn)
        for tenant_id, wrapped in keys:
            rewrapped = secrets.rewrap(
                wrapped, old_master_key=old_master_key, new_master_key=tenants.master_key, tenant_id=tenant_id
            )
            await repo.set_wrapped_key(conn, tenant_id=tenant_id, wrapped_key=rewrapped)
    return len(keys)
