# ruff: noqa: S608 - the seeding SQL interpolates row counts and checked schema names, never input
"""Every query the repositories issue is planned on tables big enough that PostgreSQL prefers an index whenever
one fits; a sequential scan of a large table fails the test.

The statements are not written out here: the test calls each repository function (and the outbox relay, its
purge, the backlog probe and the consumer's inbox insert) on a real connection, captures what SQLAlchemy sends to
the driver, and asks PostgreSQL for `EXPLAIN (FORMAT JSON)` of exactly that text with exactly those parameters,
in the same transaction (then rolled back). A new repository function that this file does not call fails too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import nats
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from libs.common import migrations
from libs.common.config import CommonSettings
from libs.common.consumer import EventConsumer
from libs.common.db import FastReads, create_engine
from libs.common.events import ensure_streams, first_id_at, make_envelope
from libs.common.metrics import Sampler
from libs.common.outbox import OutboxRelay
from libs.devstack.servers import EmbeddedNats
from repolens.events.v1 import events_pb2
from services.analysis import repository as analysis_repo
from services.analysis.domain import PullRequest, Repository, tenant_schema
from services.analysis.use_cases import SERVICE_MIGRATIONS, tenant_head, upgrade_tenant_schema
from services.auth import repository as auth_repo
from services.auth.domain import AccessToken, Membership, Session, User
from services.tenants import repository as tenants_repo
from services.tenants.domain import Invitation, Secret, Settings
from tests.conftest import scratch_database
from tests.integration.conftest import migrate

# A table with more rows than this is large: scanning it whole for one request is the failure we look for.
LARGE_ROWS = 5_000
USERS = 12_000
TENANTS = 6_000
REPOSITORIES = 30_000  # a large organisation: the name search must not read them all
ANALYSES = 20_000
EVENTS = 12_000

# Queries that read a whole table on purpose, and why.
WHOLE_TABLE = {
    "tenants.all_data_keys": "`keys rewrap` re-seals every tenant's data key, in one transaction",
    "analysis.revision_counts": "start-up counts every tenant schema by revision, once",
    "analysis.has_memberships": "start-up asks whether the projection holds a row: EXISTS stops at the first",
    "analysis.has_tenant_schemas": "start-up asks whether any tenant schema exists: EXISTS stops at the first",
    "tenants.all_memberships": "another service's projection is filled from every membership, once",
}

Call = Callable[[AsyncConnection], Awaitable[object]]


@dataclass(frozen=True)
class Seeded:
    """Ids of a few seeded rows, for calls that must find something."""

    database_url: str
    user: dict[str, Any]
    session_id: uuid.UUID
    token_hash: bytes
    token_id: uuid.UUID
    tenant_id: uuid.UUID
    member_id: uuid.UUID
    invitation_hash: bytes
    schema: str
    repository_id: uuid.UUID
    repository_name: str
    analysis_id: uuid.UUID


@dataclass
class Plans:
    """Captures what the engine sends and explains it; collects violations and the functions covered."""

    engine: AsyncEngine
    large: set[tuple[str, str]]
    capturing: list[tuple[str, Any]] | None = None
    called: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    explained: int = 0

    def __post_init__(self) -> None:
        sa.event.listen(self.engine.sync_engine, "before_cursor_execute", self._capture)

    def _capture(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if self.capturing is not None:
            self.capturing.append((statement, parameters))

    async def check(self, label: str, call: Call, *, schema: str | None = None) -> None:
        """Runs `call` in a transaction (scoped to `schema` when given), explains its statements, rolls back."""
        self.called.add(label.split("[")[0])
        async with self.engine.connect() as conn:
            await conn.begin()
            if schema is not None:
                await analysis_repo.use_tenant_schema(conn, schema)
            self.capturing = []
            try:
                await call(conn)
            finally:
                statements, self.capturing = self.capturing, None
            await self._explain(conn, label, statements)
            await conn.rollback()

    async def capture_outside(self, label: str, run: Callable[[], Awaitable[object]]) -> None:
        """For code that opens its own transactions (relay, purge, probe): capture, then explain afterwards."""
        self.called.add(label.split("[")[0])
        self.capturing = []
        try:
            await run()
        finally:
            statements, self.capturing = self.capturing, None
        async with self.engine.connect() as conn:
            await conn.begin()
            await self._explain(conn, label, statements)
            await conn.rollback()

    async def check_fast(
        self, label: str, statement: Executable, params: dict[str, Any], *, schema: str | None = None
    ) -> None:
        """A statement of FastReads, as FastReads compiles it (for `schema`), explained with `params`."""
        self.called.add(label.split("[")[0])
        text = FastReads(CommonSettings(), application_name="query-plans").sql(statement, schema=schema)
        async with self.engine.connect() as conn:
            await self._explain(conn, label, [(text, params)])

    async def _explain(self, conn: AsyncConnection, label: str, statements: list[tuple[str, Any]]) -> None:
        for statement, parameters in statements:
            if statement.lstrip().split(None, 1)[0].upper() not in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}:
                continue
            result = await conn.exec_driver_sql("EXPLAIN (VERBOSE, FORMAT JSON) " + statement, parameters)
            plan = result.scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            self.explained += 1
            scans = sorted(set(_seq_scans(plan[0]["Plan"])) & self.large)
            if scans and label not in WHOLE_TABLE:
                names = ", ".join(f"{s}.{t}" for s, t in scans)
                self.violations.append(f"{label}: Seq Scan on {names}\n  {statement}\n  {json.dumps(plan)[:1500]}")


def _seq_scans(node: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if node.get("Node Type") == "Seq Scan":
        yield node.get("Schema", ""), node["Relation Name"]
    for child in node.get("Plans", []):
        yield from _seq_scans(child)


def repository_functions(module: ModuleType, prefix: str) -> set[str]:
    """The module's own public coroutine functions, and its statements for FastReads (upper-case names): every one
    must be checked here."""
    functions = {
        f"{prefix}.{name}"
        for name, function in inspect.getmembers(module, inspect.iscoroutinefunction)
        if function.__module__ == module.__name__ and not name.startswith("_")
    }
    statements = {
        f"{prefix}.{name}"
        for name, value in vars(module).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, sa.Select)
    }
    return functions | statements


# ------------------------------------------------------------------------------------------------ seeding


def _seed_events(conn: psycopg.Connection[Any], schema: str) -> None:
    # A day of relayed events (the retention) plus a few minutes more for the purge to find, and the newest
    # 100 still waiting for the relay; an inbox as long.
    conn.execute(
        f"""
        INSERT INTO {schema}.outbox (id, subject, event_type, envelope, created_at, published_at)
        SELECT gen_random_uuid(), 'repolens.events.{schema}.planned', 'planned', '\\x00'::bytea, t,
               CASE WHEN i > 100 THEN t + interval '1 second' END
        FROM (SELECT i, now() - i * ({86_400 + 600} * interval '1 second' / {EVENTS}) AS t
              FROM generate_series(1, {EVENTS}) AS i) AS s
        """
    )
    conn.execute(
        f"INSERT INTO {schema}.inbox (consumer, event_id) "
        f"SELECT '{schema}', gen_random_uuid() FROM generate_series(1, {EVENTS})"
    )


def _seed_auth(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        f"""
        INSERT INTO auth.users (id, username, email, password_hash, personal_tenant_id, last_tenant_id)
        SELECT gen_random_uuid(), 'user' || i, 'user' || i || '@example.com', 'hash', gen_random_uuid(),
               CASE WHEN i % 2 = 0 THEN gen_random_uuid() END
        FROM generate_series(1, {USERS}) AS i
        """
    )
    conn.execute(
        """
        INSERT INTO auth.sessions (id, user_id, tenant_id, expires_at, revoked_at, family_id)
        SELECT gen_random_uuid(), u.id, u.personal_tenant_id, now() + interval '30 days',
               CASE WHEN n = 1 THEN now() END, gen_random_uuid()
        FROM auth.users AS u, generate_series(1, 2) AS n
        """
    )
    conn.execute("UPDATE auth.sessions SET family_id = id")
    conn.execute(
        """
        INSERT INTO auth.refresh_tokens (id, session_id, token_hash, expires_at)
        SELECT gen_random_uuid(), s.id, sha256(s.id::text::bytea), s.expires_at FROM auth.sessions AS s
        """
    )
    conn.execute(
        """
        INSERT INTO auth.memberships (user_id, tenant_id, role, personal, removed, version)
        SELECT id, personal_tenant_id, 'owner', true, false, 0 FROM auth.users
        """
    )
    _seed_events(conn, "auth")


def _seed_tenants(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        f"""
        INSERT INTO tenants.tenants (id, name, slug, personal, status)
        SELECT gen_random_uuid(), 'Tenant ' || i, 'slug-' || i, i % 4 <> 0,
               CASE WHEN i % 50 = 0 THEN 'deleted' ELSE 'active' END
        FROM generate_series(1, {TENANTS}) AS i
        """
    )
    conn.execute(
        f"""
        INSERT INTO tenants.users (id, username, email)
        SELECT gen_random_uuid(), 'user' || i, 'user' || i || '@example.com' FROM generate_series(1, {USERS}) AS i
        """
    )
    for spread in (1, 7):  # everyone in one tenant, many in a second
        conn.execute(
            f"""
            WITH t AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM tenants.tenants),
                 u AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM tenants.users)
            INSERT INTO tenants.memberships (tenant_id, user_id, role, version)
            SELECT t.id, u.id, CASE WHEN u.n % 3 = 0 THEN 'owner' ELSE 'member' END, 1
            FROM u JOIN t ON t.n = 1 + (u.n * {spread}) % {TENANTS}
            ON CONFLICT DO NOTHING
            """
        )
    conn.execute(
        """
        INSERT INTO tenants.invitations (id, tenant_id, token_hash, invitee, role, invited_by, expires_at)
        SELECT gen_random_uuid(), id, sha256(id::text::bytea), 'someone', 'member', gen_random_uuid(),
               now() + interval '7 days'
        FROM tenants.tenants
        """
    )
    conn.execute(
        "INSERT INTO tenants.data_keys (tenant_id, wrapped_key) SELECT id, '\\x00'::bytea FROM tenants.tenants"
    )
    conn.execute("INSERT INTO tenants.settings (tenant_id) SELECT id FROM tenants.tenants")
    _seed_events(conn, "tenants")


def _seed_analysis(conn: psycopg.Connection[Any], schema: str, tenant_id: uuid.UUID) -> None:
    conn.execute(
        f"""
        INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision)
        SELECT id, 't_' || replace(id::text, '-', ''), %s
        FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, {TENANTS})) AS s
        """,
        [tenant_head()],
    )
    conn.execute(
        "INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision) VALUES (%s, %s, %s)",
        [tenant_id, schema, tenant_head()],
    )
    conn.execute(
        "INSERT INTO analysis.memberships (tenant_id, user_id, role, version) "
        "SELECT tenant_id, gen_random_uuid(), 'member', 1 FROM analysis.tenant_schemas"
    )
    _seed_events(conn, "analysis")
    conn.execute(
        f"""
        INSERT INTO {schema}.repositories (id, name, url, default_branch)
        SELECT gen_random_uuid(), name, 'https://github.com/acme/' || name, 'main'
        FROM (SELECT substr(md5(i::text), 1, 8) || '-' || (ARRAY['api', 'web', 'worker', 'lib', 'docs'])[1 + i % 5]
              FROM generate_series(1, {REPOSITORIES}) AS i) AS s (name)
        """
    )
    conn.execute(
        f"""
        WITH r AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM {schema}.repositories)
        INSERT INTO {schema}.analyses (id, repository_id, ref, status, report)
        SELECT gen_random_uuid(), r.id, 'main',
               CASE WHEN i % 500 = 0 THEN 'queued' WHEN i % 997 = 0 THEN 'running'
                    WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
               CASE WHEN i % 10 <> 0 THEN '{{"findings": []}}'::jsonb END
        FROM generate_series(1, {ANALYSES}) AS i JOIN r ON r.n = 1 + i % {REPOSITORIES}
        """
    )


@pytest.fixture(scope="module")
def seeded(postgres_server_url: str) -> Iterator[Seeded]:
    """A database of its own, every schema migrated, filled to production-like proportions and analysed."""
    with scratch_database(postgres_server_url, "repolens_plans") as url:
        migrate(url)
        sqlalchemy_url = CommonSettings(database_url=url).sqlalchemy_url
        migrations.upgrade(
            migrations.alembic_config(
                script_location=SERVICE_MIGRATIONS, schema="analysis", sqlalchemy_url=sqlalchemy_url
            )
        )
        tenant_id = uuid.uuid4()
        schema = tenant_schema(tenant_id)
        sync = sa.create_engine(sqlalchemy_url, poolclass=sa.pool.NullPool)
        with sync.begin() as conn:
            upgrade_tenant_schema(conn, schema)
        sync.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            # Foreign keys unchecked while seeding (the rows are made consistent): minutes become seconds.
            conn.execute("SET session_replication_role = replica")
            _seed_auth(conn)
            _seed_tenants(conn)
            _seed_analysis(conn, schema, tenant_id)
            conn.execute("SET session_replication_role = DEFAULT")
            conn.execute("ANALYZE")
            user = conn.execute(
                "SELECT id, username, email, personal_tenant_id, last_tenant_id FROM auth.users"
                " WHERE last_tenant_id IS NOT NULL LIMIT 1"
            ).fetchone()
            assert user is not None
            session = conn.execute(
                "SELECT s.id, r.token_hash, r.id FROM auth.sessions s JOIN auth.refresh_tokens r ON r.session_id = s.id"
                " WHERE s.user_id = %s LIMIT 1",
                [user[0]],
            ).fetchone()
            member = conn.execute(
                "SELECT m.tenant_id, m.user_id FROM tenants.memberships m JOIN tenants.tenants t ON t.id = m.tenant_id"
                " WHERE t.status = 'active' LIMIT 1"
            ).fetchone()
            assert session is not None
            assert member is not None
            invitation = conn.execute(
                "SELECT token_hash FROM tenants.invitations WHERE tenant_id = %s", [member[0]]
            ).fetchone()
            analysis = conn.execute(
                f"SELECT a.id, a.repository_id, r.name FROM {schema}.analyses a"
                f" JOIN {schema}.repositories r ON r.id = a.repository_id WHERE a.status = 'succeeded' LIMIT 1"
            ).fetchone()
            assert invitation is not None
            assert analysis is not None
        yield Seeded(
            database_url=url,
            user=dict(zip(("id", "username", "email", "personal_tenant_id", "last_tenant_id"), user, strict=True)),
            session_id=session[0],
            token_hash=bytes(session[1]),
            token_id=session[2],
            tenant_id=member[0],
            member_id=member[1],
            invitation_hash=bytes(invitation[0]),
            schema=schema,
            repository_id=analysis[1],
            repository_name=analysis[2],
            analysis_id=analysis[0],
        )


@pytest.fixture
async def plans(seeded: Seeded) -> AsyncIterator[Plans]:
    engine = create_engine(CommonSettings(database_url=seeded.database_url), application_name="query-plans")
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND c.reltuples > :rows"
            ),
            {"rows": LARGE_ROWS},
        )
        large = {(str(r[0]), str(r[1])) for r in rows}
    assert ("auth", "sessions") in large
    assert (seeded.schema, "analyses") in large
    yield Plans(engine=engine, large=large)
    await engine.dispose()


def assert_clean(plans: Plans, module: ModuleType, prefix: str) -> None:
    missing = repository_functions(module, prefix) - plans.called
    assert not missing, f"repository functions this test does not plan yet: {sorted(missing)}"
    assert plans.explained > 0
    if plans.violations:
        pytest.fail(f"{len(plans.violations)} queries scan a large table:\n" + "\n".join(plans.violations))


# ------------------------------------------------------------------------------------------------ the checks


async def test_auth_queries_use_indexes(plans: Plans, seeded: Seeded, tmp_path: Path) -> None:
    user_id, tenant_id = seeded.user["id"], seeded.user["personal_tenant_id"]
    new_user = User(
        id=uuid.uuid4(),
        username="new-user",
        email="new@example.com",
        full_name="",
        password_hash="hash",
        is_active=True,
        personal_tenant_id=uuid.uuid4(),
        last_tenant_id=None,
        created_at=dt.datetime.now(dt.UTC),
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    session = Session(
        id=uuid.uuid4(), user_id=user_id, tenant_id=tenant_id, expires_at=later, revoked_at=None, family_id=uuid.uuid4()
    )
    membership = Membership(user_id=user_id, tenant_id=tenant_id, role="admin", personal=False, version=5)
    token = AccessToken(
        id=uuid.uuid4(),
        user_id=user_id,
        tenant_id=tenant_id,
        name="ci",
        scopes=("analysis:read",),
        prefix="rlp_abcd",
        created_at=dt.datetime.now(dt.UTC),
        expires_at=later,
        last_used_at=None,
        revoked_at=None,
    )
    r = auth_repo
    checks: dict[str, Call] = {
        "auth.username_or_email_taken": lambda c: r.username_or_email_taken(
            c, username=seeded.user["username"], email=seeded.user["email"]
        ),
        "auth.add_user": lambda c: r.add_user(c, new_user),
        "auth.user_by_username": lambda c: r.user_by_username(c, seeded.user["username"].upper()),
        "auth.user_by_id": lambda c: r.user_by_id(c, user_id),
        "auth.set_password_hash": lambda c: r.set_password_hash(c, user_id=user_id, password_hash="h2"),
        "auth.set_last_tenant": lambda c: r.set_last_tenant(c, user_id=user_id, tenant_id=tenant_id),
        "auth.set_active": lambda c: r.set_active(c, user_id=user_id, active=False, at=later),
        "auth.upsert_membership": lambda c: r.upsert_membership(c, membership),
        "auth.membership": lambda c: r.membership(c, user_id=user_id, tenant_id=tenant_id),
        "auth.add_session": lambda c: r.add_session(c, session),
        "auth.revoke_session": lambda c: r.revoke_session(c, session_id=seeded.session_id, reason="logout"),
        "auth.revoke_user_sessions": lambda c: r.revoke_user_sessions(c, user_id=user_id, reason="deactivated"),
        "auth.revoke_family": lambda c: r.revoke_family(c, family_id=seeded.session_id, reason="logout"),
        "auth.revoke_tenant_sessions": lambda c: r.revoke_tenant_sessions(c, tenant_id=tenant_id, reason="deleted"),
        "auth.revoke_tenant_sessions[one user]": lambda c: r.revoke_tenant_sessions(
            c, tenant_id=tenant_id, user_id=user_id, reason="removed"
        ),
        "auth.forget_tenant": lambda c: r.forget_tenant(c, seeded.user["last_tenant_id"]),
        "auth.session_by_id": lambda c: r.session_by_id(c, seeded.session_id),
        "auth.add_refresh_token": lambda c: r.add_refresh_token(
            c, session_id=seeded.session_id, token_hash=b"new-hash", expires_at=later, token_id=uuid.uuid4()
        ),
        "auth.refresh_token_by_hash": lambda c: r.refresh_token_by_hash(c, seeded.token_hash, for_update=True),
        "auth.spend_refresh_token": lambda c: r.spend_refresh_token(c, seeded.token_id),
        "auth.signing_keys_in_use": lambda c: r.signing_keys_in_use(c, retired_after=later),
        "auth.all_signing_keys": r.all_signing_keys,
        "auth.add_signing_key": lambda c: r.add_signing_key(c, kid="k", public_key=b"p", private_key_encrypted=b"s"),
        "auth.retire_signing_keys": lambda c: r.retire_signing_keys(c, except_kid="k"),
        "auth.set_sealed_private_key": lambda c: r.set_sealed_private_key(c, kid="k", private_key_encrypted=b"s"),
        "auth.lock_keys": r.lock_keys,
        "auth.live_access_token_count": lambda c: r.live_access_token_count(c, user_id=user_id, tenant_id=tenant_id),
        "auth.add_access_token": lambda c: r.add_access_token(c, token, token_hash=b"pat-hash"),
        "auth.live_access_tokens": lambda c: r.live_access_tokens(
            c, user_id=user_id, tenant_id=tenant_id, after=token.id, limit=51
        ),
        "auth.revoke_access_tokens": lambda c: r.revoke_access_tokens(
            c, token_id=token.id, user_id=user_id, tenant_id=tenant_id, reason="revoked"
        ),
        "auth.revoke_access_tokens[user]": lambda c: r.revoke_access_tokens(c, user_id=user_id, reason="deactivated"),
        "auth.revoke_access_tokens[tenant]": lambda c: r.revoke_access_tokens(c, tenant_id=tenant_id, reason="deleted"),
        "auth.touch_access_token": lambda c: r.touch_access_token(c, token.id),
        "auth.access_token_by_hash": lambda c: r.access_token_by_hash(c, b"pat-hash"),
        "auth.lock_user": lambda c: r.lock_user(c, user_id),
    }
    for label, call in checks.items():
        await plans.check(label, call)
    session_ids = {"user_id": user_id, "session_id": seeded.session_id}
    await plans.check_fast("auth.USER_WITH_SESSION", r.USER_WITH_SESSION, session_ids)
    await check_event_tables(plans, auth_repo.outbox, auth_repo.inbox, tmp_path)
    assert_clean(plans, auth_repo, "auth")


async def test_tenants_queries_use_indexes(plans: Plans, seeded: Seeded, tmp_path: Path) -> None:
    tenant_id, member_id = seeded.tenant_id, seeded.member_id
    r = tenants_repo
    invitation = Invitation(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        invitee="someone",
        role="member",
        invited_by=member_id,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=7),
        accepted_at=None,
    )
    settings = Settings(tenant_id=tenant_id, secrets={"github_token": Secret(ciphertext=b"c", masked="ghp_...abcd")})

    async def new_tenant_with_key(c: AsyncConnection) -> None:
        new = uuid.uuid4()
        await r.add_tenant(c, tenant_id=new, name="New", slug="new-with-key", personal=False)
        await r.add_data_key(c, tenant_id=new, wrapped_key=b"k")

    checks: dict[str, Call] = {
        "tenants.tenant_exists": lambda c: r.tenant_exists(c, tenant_id),
        "tenants.slug_taken": lambda c: r.slug_taken(c, "slug-17"),
        "tenants.slug_taken[other than]": lambda c: r.slug_taken(c, "slug-17", other_than=tenant_id),
        "tenants.add_tenant": lambda c: r.add_tenant(c, tenant_id=uuid.uuid4(), name="N", slug="new", personal=False),
        "tenants.rename_tenant": lambda c: r.rename_tenant(c, tenant_id=tenant_id, name="N", slug="renamed"),
        "tenants.mark_deleted": lambda c: r.mark_deleted(c, tenant_id=tenant_id, at=dt.datetime.now(dt.UTC)),
        "tenants.add_membership": lambda c: r.add_membership(
            c, tenant_id=tenant_id, user_id=uuid.uuid4(), role="member", version=2
        ),
        "tenants.memberships_of_user": lambda c: r.memberships_of_user(c, user_id=member_id, after=None, limit=51),
        "tenants.memberships_of_user[after]": lambda c: r.memberships_of_user(
            c, user_id=member_id, after=tenant_id, limit=51
        ),
        "tenants.membership_of_user": lambda c: r.membership_of_user(c, user_id=member_id, tenant_id=tenant_id),
        "tenants.membership_of_user[for update]": lambda c: r.membership_of_user(
            c, user_id=member_id, tenant_id=tenant_id, for_update=True
        ),
        "tenants.members": lambda c: r.members(c, tenant_id=tenant_id, after=None, limit=51),
        "tenants.members[after]": lambda c: r.members(c, tenant_id=tenant_id, after=member_id, limit=51),
        "tenants.member": lambda c: r.member(c, tenant_id=tenant_id, user_id=member_id),
        "tenants.member_ids": lambda c: r.member_ids(c, tenant_id),
        "tenants.all_memberships": lambda c: r.all_memberships(c, after=(tenant_id, member_id), limit=1001),
        "tenants.lock_owned_tenants": lambda c: r.lock_owned_tenants(c, member_id),
        "tenants.owned_organisations": lambda c: r.owned_organisations(c, member_id),
        "tenants.owner_count": lambda c: r.owner_count(c, tenant_id),
        "tenants.set_role": lambda c: r.set_role(c, tenant_id=tenant_id, user_id=member_id, role="admin", version=3),
        "tenants.remove_membership": lambda c: r.remove_membership(c, tenant_id=tenant_id, user_id=member_id),
        "tenants.delete_memberships": lambda c: r.delete_memberships(c, tenant_id),
        "tenants.upsert_user": lambda c: r.upsert_user(
            c, user_id=uuid.uuid4(), username="x", email="x@example.com", full_name=""
        ),
        "tenants.user_by_name_or_email": lambda c: r.user_by_name_or_email(c, "USER17@example.com"),
        "tenants.user_names": lambda c: r.user_names(c, member_id),
        "tenants.add_invitation": lambda c: r.add_invitation(c, invitation, token_hash=b"new"),
        "tenants.invitation_by_hash": lambda c: r.invitation_by_hash(c, seeded.invitation_hash),
        "tenants.mark_accepted": lambda c: r.mark_accepted(c, invitation_id=uuid.uuid4(), user_id=member_id),
        "tenants.lock_active_tenant": lambda c: r.lock_active_tenant(c, tenant_id),
        "tenants.pending_invitations": lambda c: r.pending_invitations(c, tenant_id=tenant_id, after=None, limit=51),
        "tenants.pending_invitations[after]": lambda c: r.pending_invitations(
            c, tenant_id=tenant_id, after=uuid.uuid4(), limit=51
        ),
        "tenants.invitation_of_tenant": lambda c: r.invitation_of_tenant(
            c, tenant_id=tenant_id, invitation_id=uuid.uuid4()
        ),
        "tenants.revoke_invitation": lambda c: r.revoke_invitation(c, invitation_id=uuid.uuid4(), user_id=member_id),
        "tenants.wrapped_data_key": lambda c: r.wrapped_data_key(c, tenant_id),
        "tenants.add_data_key": new_tenant_with_key,
        "tenants.all_data_keys": r.all_data_keys,
        "tenants.set_wrapped_key": lambda c: r.set_wrapped_key(c, tenant_id=tenant_id, wrapped_key=b"k"),
        "tenants.delete_data_key": lambda c: r.delete_data_key(c, tenant_id),
        "tenants.settings_of": lambda c: r.settings_of(c, tenant_id),
        "tenants.save_settings": lambda c: r.save_settings(c, settings),
    }
    for label, call in checks.items():
        await plans.check(label, call)
    await check_event_tables(plans, tenants_repo.outbox, tenants_repo.inbox, tmp_path)
    assert_clean(plans, tenants_repo, "tenants")


async def _base_report(conn: AsyncConnection, analysis_id: uuid.UUID, *, of_a_pull_request: bool) -> object:
    found = await analysis_repo.analysis_by_id(conn, analysis_id)
    assert found is not None
    if of_a_pull_request:
        found = dataclasses.replace(found, ref="feature", pull_request=PullRequest(1, "a" * 40, "b" * 40))
    return await analysis_repo.base_report(conn, found, default_branch="main")


async def test_analysis_queries_use_indexes(plans: Plans, seeded: Seeded, tmp_path: Path) -> None:
    r = analysis_repo
    schema, repository_id, analysis_id = seeded.schema, seeded.repository_id, seeded.analysis_id
    part = seeded.repository_name[2:7].upper()
    other = tenant_schema(uuid.uuid4())
    new_repository = Repository(
        id=uuid.uuid4(),
        name="brand-new",
        url="https://github.com/acme/brand-new",
        default_branch="main",
        created_at=dt.datetime.now(dt.UTC),
        updated_at=dt.datetime.now(dt.UTC),
    )
    service: dict[str, Call] = {
        "analysis.schema_of": lambda c: r.schema_of(c, seeded.tenant_id),
        "analysis.record_tenant_schema": lambda c: r.record_tenant_schema(
            c, tenant_id=uuid.uuid4(), schema=other, revision=tenant_head()
        ),
        "analysis.drop_tenant_schema": lambda c: r.drop_tenant_schema(c, tenant_id=uuid.uuid4(), schema=other),
        "analysis.revision_counts": r.revision_counts,
        "analysis.schema_and_role": lambda c: r.schema_and_role(c, tenant_id=seeded.tenant_id, user_id=uuid.uuid4()),
        "analysis.upsert_membership": lambda c: r.upsert_membership(
            c, tenant_id=seeded.tenant_id, user_id=uuid.uuid4(), role="viewer", removed=False, version=3
        ),
        "analysis.forget_memberships": lambda c: r.forget_memberships(c, seeded.tenant_id),
        "analysis.has_memberships": r.has_memberships,
        "analysis.has_tenant_schemas": r.has_tenant_schemas,
    }
    for label, call in service.items():
        await plans.check(label, call)
    tenant: dict[str, Call] = {
        "analysis.use_tenant_schema": lambda c: r.use_tenant_schema(c, schema),
        "analysis.add_repository": lambda c: r.add_repository(c, new_repository),
        "analysis.name_taken": lambda c: r.name_taken(c, seeded.repository_name.upper()),
        "analysis.name_taken[other than]": lambda c: r.name_taken(c, "taken", other_than=repository_id),
        "analysis.repository_by_id": lambda c: r.repository_by_id(c, repository_id),
        "analysis.list_repositories": lambda c: r.list_repositories(c, name="", after=None, limit=51),
        "analysis.list_repositories[after]": lambda c: r.list_repositories(c, name="", after=repository_id, limit=51),
        # A few letters of one name (the trigram index), and a word in many names (the primary key, in order).
        "analysis.list_repositories[name]": lambda c: r.list_repositories(c, name=part, after=None, limit=51),
        "analysis.list_repositories[name, after]": lambda c: r.list_repositories(
            c, name=part, after=repository_id, limit=51
        ),
        "analysis.list_repositories[common name]": lambda c: r.list_repositories(
            c, name="Worker", after=None, limit=51
        ),
        "analysis.update_repository": lambda c: r.update_repository(c, repository_id, name="renamed"),
        "analysis.delete_repository": lambda c: r.delete_repository(c, repository_id),
        "analysis.add_analysis": lambda c: r.add_analysis(
            c, analysis_id=uuid.uuid4(), repository_id=repository_id, ref="main"
        ),
        "analysis.analysis_by_id": lambda c: r.analysis_by_id(c, analysis_id),
        "analysis.analysis_by_id[for update]": lambda c: r.analysis_by_id(c, analysis_id, for_update=True),
        "analysis.list_analyses": lambda c: r.list_analyses(c, repository_id=None, status="", after=None, limit=51),
        "analysis.list_analyses[repository]": lambda c: r.list_analyses(
            c, repository_id=repository_id, status="", after=None, limit=51
        ),
        "analysis.list_analyses[status]": lambda c: r.list_analyses(
            c, repository_id=None, status="running", after=None, limit=51
        ),
        "analysis.list_analyses[repository, status, after]": lambda c: r.list_analyses(
            c, repository_id=repository_id, status="succeeded", after=analysis_id, limit=51
        ),
        "analysis.list_analyses[status, after]": lambda c: r.list_analyses(
            c, repository_id=None, status="queued", after=analysis_id, limit=51
        ),
        "analysis.start_attempt": lambda c: r.start_attempt(c, analysis_id),
        "analysis.record_progress": lambda c: r.record_progress(
            c, analysis_id, progress=50, step="inventory", timings={"clone": 1.0}
        ),
        "analysis.finish": lambda c: r.finish(c, analysis_id, status="failed", timings={}, error_code="E"),
        "analysis.request_cancel": lambda c: r.request_cancel(c, analysis_id),
        "analysis.report_of": lambda c: r.report_of(c, analysis_id),
        "analysis.base_report[default branch]": lambda c: _base_report(c, analysis_id, of_a_pull_request=False),
        "analysis.base_report[pull request]": lambda c: _base_report(c, analysis_id, of_a_pull_request=True),
        "analysis.branches": lambda c: r.branches(c, repository_id, offset=0, limit=51),
        "analysis.next_generation[hooks]": lambda c: r.next_generation(
            c, r.hook_targets, repository_id=repository_id, tenant_id=seeded.tenant_id
        ),
        "analysis.next_generation[badges]": lambda c: r.next_generation(
            c, r.badge_targets, repository_id=repository_id, tenant_id=seeded.tenant_id
        ),
        "analysis.target[hooks]": lambda c: r.target(c, r.hook_targets, repository_id),
        "analysis.target[badges]": lambda c: r.target(c, r.badge_targets, repository_id),
        "analysis.badge_facts": lambda c: r.badge_facts(c, repository_id, None),
        "analysis.badge_facts[branch]": lambda c: r.badge_facts(c, repository_id, "feature"),
        "analysis.forget_targets": lambda c: r.forget_targets(c, tenant_id=seeded.tenant_id),
        "analysis.forget_targets[repository]": lambda c: r.forget_targets(
            c, tenant_id=seeded.tenant_id, repository_id=repository_id
        ),
        "analysis.first_delivery": lambda c: r.first_delivery(c, delivery_id="d-1", repository_id=repository_id),
        "analysis.purge_hook_deliveries": lambda c: r.purge_hook_deliveries(c, older_than=dt.timedelta(days=7)),
        "analysis.lock_quota": lambda c: r.lock_quota(c, seeded.tenant_id, "repositories"),
        "analysis.repository_count": lambda c: r.repository_count(c, at_most=1000),
        "analysis.analysis_usage": lambda c: r.analysis_usage(
            c, since=first_id_at(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)), recent_at_most=600
        ),
        "analysis.take_lease": lambda c: r.take_lease(c, key=f"repository:{repository_id}", holder="w", lease_s=30),
        "analysis.renew_leases": lambda c: r.renew_leases(c, holder="w", lease_s=30),
        "analysis.release_leases": lambda c: r.release_leases(c, holder="w"),
    }
    for label, call in tenant.items():
        await plans.check(label, call, schema=schema)
    member = {"tenant_id": seeded.tenant_id, "user_id": uuid.uuid4(), "analysis_id": analysis_id}
    await plans.check_fast("analysis.ANALYSIS_AS_MEMBER", r.ANALYSIS_AS_MEMBER, member, schema=schema)
    await check_event_tables(plans, analysis_repo.outbox, analysis_repo.inbox, tmp_path)
    assert_clean(plans, analysis_repo, "analysis")


async def check_event_tables(plans: Plans, outbox: sa.Table, inbox: sa.Table, work: Path) -> None:
    """The outbox relay's claim and mark, its purge, the backlog probe, and a consumer's inbox insert."""
    server = EmbeddedNats(work / "nats")  # a NATS of its own: the seeded events must reach no other test
    server.start()
    try:
        client = await nats.connect(server.url, connect_timeout=5)
        js = client.jetstream(timeout=5)
        await ensure_streams(js)
        relay = OutboxRelay(engine=plans.engine, table=outbox, js=js, batch_size=5)
        await plans.capture_outside(f"{outbox.schema}.outbox relay", relay.relay_once)
        await plans.capture_outside(f"{outbox.schema}.outbox purge", relay.purge_published)
        sampler = Sampler(interval_s=1.0)
        sampler.watch_outbox(plans.engine, outbox)
        await plans.capture_outside(f"{outbox.schema}.outbox backlog", sampler.sample_once)
        consumer = EventConsumer(
            js=js, engine=plans.engine, inbox=inbox, durable=str(inbox.schema), subjects=[], handlers={}
        )
        envelope = make_envelope(event_type="planned", payload=events_pb2.EventEnvelope())

        async def nothing(conn: AsyncConnection, event: events_pb2.EventEnvelope) -> None:
            return None

        await plans.capture_outside(f"{inbox.schema}.inbox insert", lambda: consumer._apply(envelope, nothing))
        await client.close()
    finally:
        server.delete()
