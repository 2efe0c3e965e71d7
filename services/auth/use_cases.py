"""Auth operations: registration, login, token refresh, logout, the caller, users and signing keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.common import access_tokens, errors, metrics
from libs.common.db import FastReads, autocommit
from libs.common.errors import AppError
from libs.common.event_types import SESSION_REVOKED, USER_ACTIVATED, USER_DEACTIVATED, USER_REGISTERED, EventType
from libs.common.events import new_id, propagated, timestamp, unpack
from libs.common.outbox import emit
from libs.common.pagination import Page, decode_cursor, page_limit, page_of
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2
from services.auth import repository as repo
from services.auth import signing
from services.auth.domain import (
    ACCESS_TOKENS_PER_USER_MAX,
    AccessToken,
    Me,
    Membership,
    Session,
    Tokens,
    User,
    validate_access_token_request,
    validate_registration,
)
from services.auth.passwords import Passwords

log = structlog.get_logger(__name__)


@dataclass
class Keyring:
    """The signer in use and the public keys to publish, reloaded from the database."""

    signer: signing.Signer | None = None
    jwks: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Auth:
    """What the use cases need, built once in main."""

    engine: AsyncEngine
    fast_reads: FastReads  # the caller's session, read on every authenticated call
    passwords: Passwords
    master_key: bytes
    issuer: str
    audience: str
    access_ttl_s: int
    refresh_ttl_s: int
    # A spent refresh token used again this soon is a concurrent refresh (two tabs, two CI jobs), not a theft.
    refresh_reuse_grace_s: float = 10.0
    access_token_max_days: int = 366
    keyring: Keyring = field(default_factory=Keyring)
    reads: AsyncEngine = field(init=False)

    def __post_init__(self) -> None:
        self.reads = autocommit(self.engine)


async def _emit(
    conn: AsyncConnection, *, event: EventType, payload: Any, actor_id: str = "", tenant_id: str = ""
) -> None:
    await emit(conn, repo.outbox, event=event, payload=payload, actor_id=actor_id, tenant_id=tenant_id)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def register(*, auth: Auth, username: str, email: str, password: str, full_name: str) -> User:
    """Creates the user, its owner membership of a personal tenant whose id it chooses, and `user.registered`."""
    username, email, full_name = username.strip(), email.strip(), full_name.strip()
    validate_registration(username=username, email=email, password=password, full_name=full_name)
    password_hash = await auth.passwords.hash(password)
    user_id, tenant_id = new_id(), new_id()
    try:
        async with auth.engine.begin() as conn:
            username_taken, email_taken = await repo.username_or_email_taken(conn, username=username, email=email)
            if username_taken:
                raise AppError(errors.USERNAME_TAKEN)
            if email_taken:
                raise AppError(errors.EMAIL_TAKEN)
            user = await repo.add_user(
                conn,
                User(
                    id=user_id,
                    username=username,
                    email=email,
                    full_name=full_name,
                    password_hash=password_hash,
                    is_active=True,
                    personal_tenant_id=tenant_id,
                    last_tenant_id=None,
                    created_at=_now(),
                ),
            )
            # Version 0: the tenants service's own record of this membership (version 1+) supersedes it.
            await repo.upsert_membership(
                conn, Membership(user_id=user_id, tenant_id=tenant_id, role="owner", personal=True, version=0)
            )
            await _emit(
                conn,
                event=USER_REGISTERED,
                actor_id=str(user_id),
                tenant_id=str(tenant_id),
                payload=events_pb2.UserRegistered(
                    user_id=str(user_id),
                    username=username,
                    email=email,
                    full_name=full_name,
                    personal_tenant_id=str(tenant_id),
                ),
            )
    except sa.exc.IntegrityError as exc:
        # Two registrations raced past the check above; the unique index decided.
        if "users_email_ci" in str(exc.orig):
            raise AppError(errors.EMAIL_TAKEN) from None
        raise AppError(errors.USERNAME_TAKEN) from None
    log.info("user.registered", user_id=str(user_id))
    return user


def _sign(auth: Auth, *, user_id: uuid.UUID, membership: Membership, session_id: uuid.UUID) -> str:
    signer = auth.keyring.signer
    if signer is None:
        raise AppError(errors.KEYS_UNAVAILABLE)
    return signer.access_token(
        user_id=user_id, tenant_id=membership.tenant_id, role=membership.role, session_id=session_id, now=_now()
    )


async def _issue_refresh_token(conn: AsyncConnection, *, auth: Auth, session: Session) -> str:
    """A new refresh token of the session; it never outlives the session's family."""
    token, token_hash = signing.new_refresh_token()
    await repo.add_refresh_token(
        conn,
        session_id=session.id,
        token_hash=token_hash,
        expires_at=min(_now() + dt.timedelta(seconds=auth.refresh_ttl_s), session.expires_at),
        token_id=new_id(),
    )
    return token


async def _tenant_for_login(conn: AsyncConnection, user: User) -> Membership:
    for tenant_id in (user.last_tenant_id, user.personal_tenant_id):
        if tenant_id is not None:
            membership = await repo.membership(conn, user_id=user.id, tenant_id=tenant_id)
            if membership is not None:
                return membership
    raise AppError(errors.NO_TENANT)


async def login(*, auth: Auth, username: str, password: str) -> Tokens:
    """Tokens for the user's last used tenant (or the personal one) in a new session."""
    if auth.keyring.signer is None:
        raise AppError(errors.KEYS_UNAVAILABLE)
    async with auth.reads.connect() as conn:
        user = await repo.user_by_username(conn, username.strip())
    # The same argon2 work whether or not the user exists: no timing oracle for usernames.
    if not await auth.passwords.verify(user.password_hash if user else None, password) or user is None:
        metrics.LOGINS.labels(result="failure").inc()
        raise AppError(errors.INVALID_CREDENTIALS)
    if not user.is_active:
        metrics.LOGINS.labels(result="failure").inc()
        raise AppError(errors.USER_INACTIVE)
    new_hash = await auth.passwords.hash(password) if auth.passwords.needs_rehash(user.password_hash) else None
    async with auth.engine.begin() as conn:
        membership = await _tenant_for_login(conn, user)
        if new_hash is not None:
            await repo.set_password_hash(conn, user_id=user.id, password_hash=new_hash)
        session_id, refresh_token = await _open_session(conn, auth=auth, user_id=user.id, membership=membership)
    log.info("user.logged_in", user_id=str(user.id), tenant_id=str(membership.tenant_id))
    metrics.LOGINS.labels(result="success").inc()
    return Tokens(
        access_token=_sign(auth, user_id=user.id, membership=membership, session_id=session_id),
        refresh_token=refresh_token,
        expires_in=auth.access_ttl_s,
        tenant_id=membership.tenant_id,
    )


async def _open_session(
    conn: AsyncConnection, *, auth: Auth, user_id: uuid.UUID, membership: Membership, family: Session | None = None
) -> tuple[uuid.UUID, str]:
    """A session in the membership's tenant: a new family (a login), or one more session of `family`'s login,
    ending when it ends."""
    session_id = new_id()
    session = Session(
        id=session_id,
        user_id=user_id,
        tenant_id=membership.tenant_id,
        expires_at=family.expires_at if family else _now() + dt.timedelta(seconds=auth.refresh_ttl_s),
        revoked_at=None,
        family_id=family.family_id if family else session_id,
    )
    await repo.add_session(conn, session)
    refresh_token = await _issue_refresh_token(conn, auth=auth, session=session)
    await repo.set_last_tenant(conn, user_id=user_id, tenant_id=membership.tenant_id)
    return session_id, refresh_token


async def switch_tenant(*, auth: Auth, claims: AccessClaims, tenant_id: str) -> Tokens:
    """Tokens for another tenant of the caller, in a new session of the caller's login: it ends no later than the
    login's, and with it (logout, reuse, deactivation), so an access token cannot become a session of its own.

    Memberships reach auth by event, so one accepted a moment ago may not be here yet: wait a
    little for it before answering not found.
    """
    if auth.keyring.signer is None:
        raise AppError(errors.KEYS_UNAVAILABLE)
    try:
        wanted = uuid.UUID(tenant_id)
    except ValueError:
        raise AppError(errors.TENANT_NOT_FOUND) from None
    _, current, _ = await _live_session(auth=auth, claims=claims)
    if wanted == claims.tenant_id:
        raise AppError(errors.ALREADY_IN_TENANT)

    async def probe() -> Membership | None:
        async with auth.reads.connect() as conn:
            return await repo.membership(conn, user_id=claims.user_id, tenant_id=wanted)

    membership = await propagated(probe)
    if membership is None:
        raise AppError(errors.TENANT_NOT_FOUND)
    async with auth.engine.begin() as conn:
        session_id, refresh_token = await _open_session(
            conn, auth=auth, user_id=claims.user_id, membership=membership, family=current
        )
    log.info("user.switched_tenant", tenant_id=str(wanted))
    return Tokens(
        access_token=_sign(auth, user_id=claims.user_id, membership=membership, session_id=session_id),
        refresh_token=refresh_token,
        expires_in=auth.access_ttl_s,
        tenant_id=membership.tenant_id,
    )


async def _revoked(conn: AsyncConnection, sessions: Sequence[Session | AccessToken]) -> int:
    """Tells every verifier that these sessions (just ended) are over; their access tokens stop within a second. A
    personal access token is one too: its exchanged access tokens carry its id as their session."""
    for session in sessions:
        await _emit(
            conn,
            event=SESSION_REVOKED,
            actor_id=str(session.user_id),
            tenant_id=str(session.tenant_id),
            payload=events_pb2.SessionRevoked(
                session_id=str(session.id), user_id=str(session.user_id), expires_at=timestamp(session.expires_at)
            ),
        )
    return len(sessions)


async def refresh(*, auth: Auth, refresh_token: str) -> Tokens:
    """Spends the refresh token for a new pair. A spent one used again within `refresh_reuse_grace_s` is a
    concurrent refresh and gets a pair of the same session; later, it is a stolen copy and ends the login."""
    if auth.keyring.signer is None:
        raise AppError(errors.KEYS_UNAVAILABLE)
    failure: AppError | None = None
    async with auth.engine.begin() as conn:
        # Locked: of two refreshes of one token, the second waits and sees the first one's spend.
        token = await repo.refresh_token_by_hash(conn, signing.hash_refresh_token(refresh_token), for_update=True)
        session = await repo.session_by_id(conn, token.session_id) if token else None
        if token is None or session is None:
            raise AppError(errors.INVALID_REFRESH_TOKEN)
        if session.revoked_at is not None:
            raise AppError(errors.SESSION_REVOKED)
        if token.expires_at <= _now() or session.expires_at <= _now():
            raise AppError(errors.INVALID_REFRESH_TOKEN)
        membership = await repo.membership(conn, user_id=session.user_id, tenant_id=session.tenant_id)
        concurrent = token.used_at is not None and _now() - token.used_at <= dt.timedelta(
            seconds=auth.refresh_reuse_grace_s
        )
        if token.used_at is not None and not concurrent:
            # Reuse: someone holds a copy of a spent token. End the whole login, keep that committed.
            await _revoked(conn, await repo.revoke_family(conn, family_id=session.family_id, reason="refresh_reused"))
            log.warning("session.refresh_token_reused", session_id=str(session.id))
            failure = AppError(errors.SESSION_REVOKED)
        elif membership is None:
            # Removed from this tenant: this session ends; the login's sessions in other tenants go on.
            await _revoked(conn, await repo.revoke_session(conn, session_id=session.id, reason="membership_removed"))
            failure = AppError(errors.SESSION_REVOKED)
        else:
            if token.used_at is None:
                await repo.spend_refresh_token(conn, token.id)
            else:
                log.info("session.concurrent_refresh", session_id=str(session.id))
            new_refresh_token = await _issue_refresh_token(conn, auth=auth, session=session)
    if failure is not None or membership is None:
        raise failure or AppError(errors.SESSION_REVOKED)
    return Tokens(
        access_token=_sign(auth, user_id=session.user_id, membership=membership, session_id=session.id),
        refresh_token=new_refresh_token,
        expires_in=auth.access_ttl_s,
        tenant_id=membership.tenant_id,
    )


async def logout(*, auth: Auth, refresh_token: str) -> None:
    """Ends the login of the refresh token (every tenant's session of it); its access tokens stop working once
    verifiers hear of it."""
    async with auth.engine.begin() as conn:
        token = await repo.refresh_token_by_hash(conn, signing.hash_refresh_token(refresh_token))
        session = await repo.session_by_id(conn, token.session_id) if token else None
        if session is None:
            raise AppError(errors.INVALID_REFRESH_TOKEN)
        await _revoked(conn, await repo.revoke_family(conn, family_id=session.family_id, reason="logout"))


async def logout_all(*, auth: Auth, claims: AccessClaims) -> int:
    """Ends every session of the caller, on every device: for a user who suspects a leak."""
    user, _, _ = await _live_session(auth=auth, claims=claims)
    async with auth.engine.begin() as conn:
        ended = await _revoked(conn, await repo.revoke_user_sessions(conn, user_id=user.id, reason="logout_all"))
    log.info("user.logged_out_everywhere", sessions=ended)
    return ended


async def _live_session(*, auth: Auth, claims: AccessClaims) -> tuple[User, Session, str]:
    """The caller, the session of their token and their current role in its tenant, checked against the database:
    a revoked or expired session, an inactive user or a removed member gets nothing."""
    row = await auth.fast_reads.one(
        repo.USER_WITH_SESSION, {"user_id": claims.user_id, "session_id": claims.session_id}
    )
    if row is None:
        raise AppError(errors.INVALID_TOKEN)
    user, session, role = repo.user_with_session(row)
    if session.revoked_at is not None or session.expires_at <= _now() or not user.is_active or role is None:
        raise AppError(errors.SESSION_REVOKED)
    return user, session, role


async def me(*, auth: Auth, claims: AccessClaims) -> Me:
    """The caller, checked against the database, with their current role (not the token's)."""
    user, session, role = await _live_session(auth=auth, claims=claims)
    return Me(user=user, tenant_id=session.tenant_id, role=role, session_id=session.id)


async def set_user_active(*, auth: Auth, username: str, active: bool) -> User:
    """Deactivation revokes every session and tells the verifiers; activation lets the user log in again."""
    now = _now()
    async with auth.engine.begin() as conn:
        user = await repo.user_by_username(conn, username)
        if user is None:
            raise AppError(errors.USER_NOT_FOUND)
        await repo.set_active(conn, user_id=user.id, active=active, at=now)
        if active:
            await _emit(conn, event=USER_ACTIVATED, payload=events_pb2.UserActivated(user_id=str(user.id)))
        else:
            await repo.revoke_user_sessions(conn, user_id=user.id, reason="user_deactivated")
            await repo.revoke_access_tokens(conn, user_id=user.id, reason="user_deactivated")
            await _emit(
                conn,
                event=USER_DEACTIVATED,
                payload=events_pb2.UserDeactivated(user_id=str(user.id), deactivated_at=timestamp(now)),
            )
    log.info("user.activated" if active else "user.deactivated", user_id=str(user.id))
    return user


# Personal access tokens


async def create_access_token(
    *, auth: Auth, claims: AccessClaims, name: str, scopes: list[str], expires_in_days: int
) -> tuple[AccessToken, str]:
    """A token of the caller's in the caller's tenant, and the token itself (returned this once)."""
    name = name.strip()
    validate_access_token_request(
        name=name, scopes=scopes, expires_in_days=expires_in_days, max_days=auth.access_token_max_days
    )
    user, session, _ = await _live_session(auth=auth, claims=claims)
    token = access_tokens.new_token()
    now = _now()
    async with auth.engine.begin() as conn:
        # One at a time per user: the count below cannot be raced past.
        await repo.lock_user(conn, user.id)
        if (
            await repo.live_access_token_count(conn, user_id=user.id, tenant_id=session.tenant_id)
            >= ACCESS_TOKENS_PER_USER_MAX
        ):
            raise AppError(errors.TOO_MANY_ACCESS_TOKENS)
        created = await repo.add_access_token(
            conn,
            AccessToken(
                id=new_id(),
                user_id=user.id,
                tenant_id=session.tenant_id,
                name=name,
                scopes=tuple(sorted(scopes)),
                prefix=token[: access_tokens.SHOWN],
                created_at=now,
                expires_at=now + dt.timedelta(days=expires_in_days),
                last_used_at=None,
                revoked_at=None,
            ),
            token_hash=access_tokens.token_hash(token),
        )
    log.info("access_token.created", access_token_id=str(created.id), scopes=list(created.scopes))
    return created, token


async def list_access_tokens(*, auth: Auth, claims: AccessClaims, page_size: int, cursor: str) -> Page[AccessToken]:
    limit = page_limit(page_size)
    user, session, _ = await _live_session(auth=auth, claims=claims)
    async with auth.reads.connect() as conn:
        rows = await repo.live_access_tokens(
            conn, user_id=user.id, tenant_id=session.tenant_id, after=decode_cursor(cursor), limit=limit + 1
        )
    return page_of(rows, limit, lambda t: t.id)


async def revoke_access_token(*, auth: Auth, claims: AccessClaims, access_token_id: str) -> None:
    """Revokes one of the caller's tokens in the caller's tenant; anyone else's id is not found."""
    try:
        token_id = uuid.UUID(access_token_id)
    except ValueError:
        raise AppError(errors.ACCESS_TOKEN_NOT_FOUND) from None
    user, session, _ = await _live_session(auth=auth, claims=claims)
    async with auth.engine.begin() as conn:
        ended = await repo.revoke_access_tokens(
            conn, token_id=token_id, user_id=user.id, tenant_id=session.tenant_id, reason="revoked"
        )
        if not ended:
            raise AppError(errors.ACCESS_TOKEN_NOT_FOUND)
        await _revoked(conn, ended)
    log.info("access_token.revoked", access_token_id=str(token_id))


async def exchange_access_token(*, auth: Auth, token: str) -> tuple[str, int]:
    """A short-lived access token for a live personal access token: signed with the creator's current role, the
    token's scopes and its id as the session, never valid past the token's expiry. Anything else is the same
    invalid-token error, whatever was wrong: the answer tells a guesser nothing."""
    if not access_tokens.looks_like_token(token):
        raise AppError(errors.INVALID_TOKEN)
    async with auth.reads.connect() as conn:
        looked_up = await repo.access_token_by_hash(conn, access_tokens.token_hash(token))
    if looked_up is None:
        raise AppError(errors.INVALID_TOKEN)
    found, user_active, role = looked_up
    now = _now()
    if found.revoked_at is not None or found.expires_at <= now or not user_active or role is None:
        raise AppError(errors.INVALID_TOKEN)
    signer = auth.keyring.signer
    if signer is None:
        raise AppError(errors.KEYS_UNAVAILABLE)
    access_token = signer.access_token(
        user_id=found.user_id,
        tenant_id=found.tenant_id,
        role=role,
        session_id=found.id,
        now=now,
        scopes=found.scopes,
        not_after=found.expires_at,
    )
    async with auth.engine.begin() as conn:
        await repo.touch_access_token(conn, found.id)
    expires_in = min(auth.access_ttl_s, int((found.expires_at - now).total_seconds()))
    return access_token, max(expires_in, 0)


# Membership projection


async def apply_tenant_deleted(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    """Consumer of `tenant.deleted`: its sessions end and nobody signs in to it again."""
    event = unpack(envelope, events_pb2.TenantDeleted)
    tenant_id = uuid.UUID(event.tenant_id)
    await repo.revoke_tenant_sessions(conn, tenant_id=tenant_id, reason="tenant_deleted")
    await repo.revoke_access_tokens(conn, tenant_id=tenant_id, reason="tenant_deleted")
    await repo.forget_tenant(conn, tenant_id)


async def apply_membership_changed(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
    """Consumer of `membership.changed`: keeps the roles auth puts into tokens; a removal ends the sessions."""
    event = unpack(envelope, events_pb2.MembershipChanged)
    if event.removed:
        await repo.revoke_tenant_sessions(
            conn, tenant_id=uuid.UUID(event.tenant_id), user_id=uuid.UUID(event.user_id), reason="membership_removed"
        )
        await repo.revoke_access_tokens(
            conn, tenant_id=uuid.UUID(event.tenant_id), user_id=uuid.UUID(event.user_id), reason="membership_removed"
        )
    await repo.upsert_membership(
        conn,
        Membership(
            user_id=uuid.UUID(event.user_id),
            tenant_id=uuid.UUID(event.tenant_id),
            role=event.role or "viewer",
            personal=event.personal,
            version=event.version,
        ),
        removed=event.removed,
    )


# Signing keys


async def load_keys(*, auth: Auth, create_if_missing: bool = True) -> None:
    """Loads the signer and the published key set; the first process to start creates the first key."""
    horizon = _now() - dt.timedelta(seconds=auth.access_ttl_s + 60)
    async with auth.engine.begin() as conn:
        keys = await repo.signing_keys_in_use(conn, retired_after=horizon)
        if not any(k.retired_at is None for k in keys) and create_if_missing:
            await repo.lock_keys(conn)
            keys = await repo.signing_keys_in_use(conn, retired_after=horizon)
            if not any(k.retired_at is None for k in keys):
                await _add_key(conn, auth=auth)
                keys = await repo.signing_keys_in_use(conn, retired_after=horizon)
    active = [k for k in keys if k.retired_at is None]
    if not active:
        return
    current = active[0]
    private_key = await asyncio.to_thread(signing.open_private_key, current, auth.master_key)
    auth.keyring.signer = signing.Signer(
        kid=current.kid,
        private_key=private_key,
        issuer=auth.issuer,
        audience=auth.audience,
        ttl_s=auth.access_ttl_s,
    )
    auth.keyring.jwks = [signing.public_jwk(k) for k in keys]


async def _add_key(conn: AsyncConnection, *, auth: Auth) -> str:
    kid, public_key, sealed = signing.new_key_material(auth.master_key)
    await repo.add_signing_key(conn, kid=kid, public_key=public_key, private_key_encrypted=sealed)
    log.info("signing_key.created", kid=kid)
    return kid


async def rotate_keys(*, auth: Auth) -> str:
    """A new signing key; older keys are retired but keep verifying until their tokens have expired."""
    async with auth.engine.begin() as conn:
        await repo.lock_keys(conn)
        kid = await _add_key(conn, auth=auth)
        await repo.retire_signing_keys(conn, except_kid=kid)
    return kid


async def reseal_keys(*, auth: Auth, old_master_key: bytes) -> int:
    """Encrypts every private key again under the current master key (after a master-key change)."""
    async with auth.engine.begin() as conn:
        await repo.lock_keys(conn)
        keys = await repo.all_signing_keys(conn)
        for key in keys:
            sealed = signing.reseal(key, old_master_key=old_master_key, new_master_key=auth.master_key)
            await repo.set_sealed_private_key(conn, kid=key.kid, private_key_encrypted=sealed)
    return len(keys)
