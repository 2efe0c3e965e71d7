"""All SQL of the auth service; functions take the caller's connection and never commit."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import inbox_table
from libs.common.outbox import outbox_table
from services.auth.domain import AccessToken, Membership, RefreshToken, Session, SigningKey, User

SCHEMA = "auth"
metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("username", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("full_name", sa.Text),
    sa.Column("password_hash", sa.Text),
    sa.Column("is_active", sa.Boolean),
    sa.Column("deactivated_at", sa.DateTime(timezone=True)),
    sa.Column("personal_tenant_id", sa.Uuid),
    sa.Column("last_tenant_id", sa.Uuid),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.Text, primary_key=True),
    sa.Column("public_key", sa.LargeBinary),
    sa.Column("private_key_encrypted", sa.LargeBinary),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid),
    sa.Column("tenant_id", sa.Uuid),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_reason", sa.Text),
    sa.Column("family_id", sa.Uuid),
    schema=SCHEMA,
)
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("session_id", sa.Uuid),
    sa.Column("token_hash", sa.LargeBinary),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("used_at", sa.DateTime(timezone=True)),
    schema=SCHEMA,
)
memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("user_id", sa.Uuid, primary_key=True),
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("role", sa.Text),
    sa.Column("personal", sa.Boolean),
    sa.Column("removed", sa.Boolean),
    sa.Column("version", sa.BigInteger),
    schema=SCHEMA,
)
access_tokens = sa.Table(
    "access_tokens",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid),
    sa.Column("tenant_id", sa.Uuid),
    sa.Column("name", sa.Text),
    sa.Column("scopes", postgresql.ARRAY(sa.Text)),
    sa.Column("prefix", sa.Text),
    sa.Column("token_hash", sa.LargeBinary),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_reason", sa.Text),
    schema=SCHEMA,
)
outbox = outbox_table(metadata, SCHEMA)
inbox = inbox_table(metadata, SCHEMA)

_USER_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.email,
    users.c.full_name,
    users.c.password_hash,
    users.c.is_active,
    users.c.personal_tenant_id,
    users.c.last_tenant_id,
    users.c.created_at,
)


def _user(row: Any) -> User:
    return User(
        id=row.id,
        username=row.username,
        email=row.email,
        full_name=row.full_name,
        password_hash=row.password_hash,
        is_active=row.is_active,
        personal_tenant_id=row.personal_tenant_id,
        last_tenant_id=row.last_tenant_id,
        created_at=row.created_at,
    )


async def username_or_email_taken(conn: AsyncConnection, *, username: str, email: str) -> tuple[bool, bool]:
    row = (
        await conn.execute(
            sa.select(
                sa.exists().where(sa.func.lower(users.c.username) == username.lower()),
                sa.exists().where(sa.func.lower(users.c.email) == email.lower()),
            )
        )
    ).one()
    return bool(row[0]), bool(row[1])


async def add_user(conn: AsyncConnection, user: User) -> User:
    row = (
        await conn.execute(
            users.insert()
            .values(
                id=user.id,
                username=user.username,
                email=user.email,
                full_name=user.full_name,
                password_hash=user.password_hash,
                is_active=True,
                personal_tenant_id=user.personal_tenant_id,
            )
            .returning(*_USER_COLUMNS)
        )
    ).one()
    return _user(row)


async def user_by_username(conn: AsyncConnection, username: str) -> User | None:
    row = (
        await conn.execute(sa.select(*_USER_COLUMNS).where(sa.func.lower(users.c.username) == username.lower()))
    ).first()
    return _user(row) if row else None


async def user_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> User | None:
    row = (await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.id == user_id))).first()
    return _user(row) if row else None


# The hot read of every authenticated call to auth (FastReads): the user, the session and the user's current role
# in its tenant (None once removed from it), in one round trip.
USER_WITH_SESSION = (
    sa.select(
        *_USER_COLUMNS,
        sessions.c.id.label("session_id"),
        sessions.c.tenant_id.label("session_tenant_id"),
        sessions.c.expires_at.label("session_expires_at"),
        sessions.c.revoked_at.label("session_revoked_at"),
        sessions.c.family_id.label("session_family_id"),
        memberships.c.role.label("role"),
    )
    .select_from(
        users.join(sessions, sessions.c.user_id == users.c.id).outerjoin(
            memberships,
            sa.and_(
                memberships.c.user_id == users.c.id,
                memberships.c.tenant_id == sessions.c.tenant_id,
                memberships.c.removed.is_(False),
            ),
        )
    )
    .where(
        users.c.id == sa.bindparam("user_id", type_=sa.Uuid),
        sessions.c.id == sa.bindparam("session_id", type_=sa.Uuid),
    )
)


def user_with_session(row: Any) -> tuple[User, Session, str | None]:
    """A row of USER_WITH_SESSION as the user, the session and the role."""
    session = Session(
        id=row.session_id,
        user_id=row.id,
        tenant_id=row.session_tenant_id,
        expires_at=row.session_expires_at,
        revoked_at=row.session_revoked_at,
        family_id=row.session_family_id,
    )
    return _user(row), session, row.role


async def set_password_hash(conn: AsyncConnection, *, user_id: uuid.UUID, password_hash: str) -> None:
    await conn.execute(
        users.update().where(users.c.id == user_id).values(password_hash=password_hash, updated_at=sa.func.now())
    )


async def set_last_tenant(conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    await conn.execute(users.update().where(users.c.id == user_id).values(last_tenant_id=tenant_id))


async def set_active(conn: AsyncConnection, *, user_id: uuid.UUID, active: bool, at: dt.datetime) -> None:
    await conn.execute(
        users.update()
        .where(users.c.id == user_id)
        .values(is_active=active, deactivated_at=None if active else at, updated_at=at)
    )


# Memberships (projection of the tenants service's data)


async def upsert_membership(conn: AsyncConnection, membership: Membership, *, removed: bool = False) -> None:
    """Keeps the newest version only: events may arrive out of order."""
    statement = insert(memberships).values(
        user_id=membership.user_id,
        tenant_id=membership.tenant_id,
        role=membership.role,
        personal=membership.personal,
        removed=removed,
        version=membership.version,
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[memberships.c.user_id, memberships.c.tenant_id],
            set_={
                "role": statement.excluded.role,
                "removed": statement.excluded.removed,
                "version": statement.excluded.version,
            },
            where=memberships.c.version < statement.excluded.version,
        )
    )


async def membership(conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID) -> Membership | None:
    row = (
        await conn.execute(
            sa.select(memberships).where(
                memberships.c.user_id == user_id,
                memberships.c.tenant_id == tenant_id,
                memberships.c.removed.is_(False),
            )
        )
    ).first()
    if row is None:
        return None
    return Membership(
        user_id=row.user_id, tenant_id=row.tenant_id, role=row.role, personal=row.personal, version=row.version
    )


# Sessions and refresh tokens


def _session(row: Any) -> Session:
    return Session(
        id=row.id,
        user_id=row.user_id,
        tenant_id=row.tenant_id,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        family_id=row.family_id,
    )


async def add_session(conn: AsyncConnection, session: Session) -> None:
    await conn.execute(
        sessions.insert().values(
            id=session.id,
            user_id=session.user_id,
            tenant_id=session.tenant_id,
            expires_at=session.expires_at,
            family_id=session.family_id,
        )
    )


async def _end_live(conn: AsyncConnection, which: sa.ColumnElement[bool], reason: str) -> list[Session]:
    rows = (
        await conn.execute(
            sessions.update()
            .where(which, sessions.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now(), revoked_reason=reason)
            .returning(sessions)
        )
    ).all()
    return [_session(r) for r in rows]


async def revoke_session(conn: AsyncConnection, *, session_id: uuid.UUID, reason: str) -> list[Session]:
    """The session, ended; empty when it already was."""
    return await _end_live(conn, sessions.c.id == session_id, reason)


async def revoke_family(conn: AsyncConnection, *, family_id: uuid.UUID, reason: str) -> list[Session]:
    """Every live session of one login, ended."""
    return await _end_live(conn, sessions.c.family_id == family_id, reason)


async def revoke_user_sessions(conn: AsyncConnection, *, user_id: uuid.UUID, reason: str) -> list[Session]:
    """Every live session of the user, ended."""
    return await _end_live(conn, sessions.c.user_id == user_id, reason)


async def revoke_tenant_sessions(
    conn: AsyncConnection, *, tenant_id: uuid.UUID, reason: str, user_id: uuid.UUID | None = None
) -> None:
    """Sessions in a tenant (of one user, or of everyone) end: a removal or a deletion."""
    query = sessions.update().where(sessions.c.tenant_id == tenant_id, sessions.c.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(sessions.c.user_id == user_id)
    await conn.execute(query.values(revoked_at=sa.func.now(), revoked_reason=reason))


async def forget_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """A deleted tenant: no membership in it counts, and no login goes back to it."""
    await conn.execute(memberships.update().where(memberships.c.tenant_id == tenant_id).values(removed=True))
    await conn.execute(users.update().where(users.c.last_tenant_id == tenant_id).values(last_tenant_id=None))


async def session_by_id(conn: AsyncConnection, session_id: uuid.UUID) -> Session | None:
    row = (await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))).first()
    return _session(row) if row else None


async def add_refresh_token(
    conn: AsyncConnection, *, session_id: uuid.UUID, token_hash: bytes, expires_at: dt.datetime, token_id: uuid.UUID
) -> None:
    await conn.execute(
        refresh_tokens.insert().values(id=token_id, session_id=session_id, token_hash=token_hash, expires_at=expires_at)
    )


async def refresh_token_by_hash(
    conn: AsyncConnection, token_hash: bytes, *, for_update: bool = False
) -> RefreshToken | None:
    """With `for_update`, two refreshes of one token take turns: the second sees when the first spent it."""
    query = sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
    row = (await conn.execute(query.with_for_update() if for_update else query)).first()
    if row is None:
        return None
    return RefreshToken(id=row.id, session_id=row.session_id, expires_at=row.expires_at, used_at=row.used_at)


async def spend_refresh_token(conn: AsyncConnection, token_id: uuid.UUID) -> bool:
    """Marks the token used; False if someone spent it first (a reuse, even when concurrent)."""
    result = await conn.execute(
        refresh_tokens.update()
        .where(refresh_tokens.c.id == token_id, refresh_tokens.c.used_at.is_(None))
        .values(used_at=sa.func.now())
        .returning(refresh_tokens.c.id)
    )
    return result.first() is not None


# Signing keys


def _key(row: Any) -> SigningKey:
    return SigningKey(
        kid=row.kid,
        public_key=row.public_key,
        private_key_encrypted=row.private_key_encrypted,
        created_at=row.created_at,
        retired_at=row.retired_at,
    )


async def signing_keys_in_use(conn: AsyncConnection, *, retired_after: dt.datetime) -> list[SigningKey]:
    """Active keys and keys retired recently enough that their tokens may still be alive; newest first."""
    rows = (
        await conn.execute(
            sa.select(signing_keys)
            .where(sa.or_(signing_keys.c.retired_at.is_(None), signing_keys.c.retired_at > retired_after))
            .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid)
        )
    ).all()
    return [_key(r) for r in rows]


async def all_signing_keys(conn: AsyncConnection) -> list[SigningKey]:
    rows = (await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at))).all()
    return [_key(r) for r in rows]


async def add_signing_key(conn: AsyncConnection, *, kid: str, public_key: bytes, private_key_encrypted: bytes) -> None:
    await conn.execute(
        signing_keys.insert().values(
            kid=kid,
            public_key=public_key,
            private_key_encrypted=private_key_encrypted,
            created_at=sa.func.clock_timestamp(),
        )
    )


async def retire_signing_keys(conn: AsyncConnection, *, except_kid: str) -> None:
    await conn.execute(
        signing_keys.update()
        .where(signing_keys.c.kid != except_kid, signing_keys.c.retired_at.is_(None))
        .values(retired_at=sa.func.now())
    )


async def set_sealed_private_key(conn: AsyncConnection, *, kid: str, private_key_encrypted: bytes) -> None:
    await conn.execute(
        signing_keys.update().where(signing_keys.c.kid == kid).values(private_key_encrypted=private_key_encrypted)
    )


async def lock_keys(conn: AsyncConnection) -> None:
    """Serialises key creation across replicas for this transaction."""
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('auth:signing_keys'))"))


# Personal access tokens


def _access_token(row: Any) -> AccessToken:
    return AccessToken(
        id=row.id,
        user_id=row.user_id,
        tenant_id=row.tenant_id,
        name=row.name,
        scopes=tuple(row.scopes),
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


_ACCESS_TOKEN_COLUMNS = [c for c in access_tokens.c if c.name not in ("token_hash", "revoked_reason")]


async def live_access_token_count(conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID) -> int:
    query = sa.select(sa.func.count()).where(
        access_tokens.c.user_id == user_id, access_tokens.c.tenant_id == tenant_id, access_tokens.c.revoked_at.is_(None)
    )
    return int((await conn.execute(query)).scalar_one())


async def add_access_token(conn: AsyncConnection, token: AccessToken, *, token_hash: bytes) -> AccessToken:
    row = (
        await conn.execute(
            access_tokens.insert()
            .values(
                id=token.id,
                user_id=token.user_id,
                tenant_id=token.tenant_id,
                name=token.name,
                scopes=list(token.scopes),
                prefix=token.prefix,
                token_hash=token_hash,
                created_at=token.created_at,
                expires_at=token.expires_at,
            )
            .returning(*_ACCESS_TOKEN_COLUMNS)
        )
    ).one()
    return _access_token(row)


async def live_access_tokens(
    conn: AsyncConnection, *, user_id: uuid.UUID, tenant_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[AccessToken]:
    """Not revoked (expired ones included, to show why a pipeline stopped), oldest first."""
    query = sa.select(*_ACCESS_TOKEN_COLUMNS).where(
        access_tokens.c.user_id == user_id, access_tokens.c.tenant_id == tenant_id, access_tokens.c.revoked_at.is_(None)
    )
    if after is not None:
        query = query.where(access_tokens.c.id > after)
    rows = (await conn.execute(query.order_by(access_tokens.c.id).limit(limit))).all()
    return [_access_token(r) for r in rows]


async def revoke_access_tokens(
    conn: AsyncConnection,
    *,
    reason: str,
    token_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
) -> list[AccessToken]:
    """Live tokens, by id, user and/or tenant (at least one given), revoked; the ones this ended."""
    given = (
        (access_tokens.c.id, token_id),
        (access_tokens.c.user_id, user_id),
        (access_tokens.c.tenant_id, tenant_id),
    )
    which = [column == value for column, value in given if value is not None]
    if not which:
        raise ValueError("name the tokens to revoke")
    rows = (
        await conn.execute(
            access_tokens.update()
            .where(*which, access_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now(), revoked_reason=reason)
            .returning(*_ACCESS_TOKEN_COLUMNS)
        )
    ).all()
    return [_access_token(r) for r in rows]


async def lock_user(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """Holds the user's row until the transaction ends: one of their token creations at a time."""
    await conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update())


async def access_token_by_hash(conn: AsyncConnection, token_hash: bytes) -> tuple[AccessToken, bool, str | None] | None:
    """The token, whether its user is active, and the user's current role in the token's tenant (None once removed),
    in one round trip: what an exchange (once per gateway process per ACCESS_TOKEN_TTL_S) decides by."""
    query = (
        sa.select(*_ACCESS_TOKEN_COLUMNS, users.c.is_active, memberships.c.role.label("role"))
        .select_from(
            access_tokens.join(users, users.c.id == access_tokens.c.user_id).outerjoin(
                memberships,
                sa.and_(
                    memberships.c.user_id == access_tokens.c.user_id,
                    memberships.c.tenant_id == access_tokens.c.tenant_id,
                    memberships.c.removed.is_(False),
                ),
            )
        )
        .where(access_tokens.c.token_hash == token_hash)
    )
    row = (await conn.execute(query)).first()
    return (_access_token(row), bool(row.is_active), row.role) if row else None


async def touch_access_token(conn: AsyncConnection, token_id: uuid.UUID) -> None:
    await conn.execute(access_tokens.update().where(access_tokens.c.id == token_id).values(last_used_at=sa.func.now()))
