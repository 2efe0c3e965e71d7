"""Alembic migrations per service schema: apply, step back, and refuse to serve a stale schema."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
import structlog
from alembic import command, context, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class SchemaBehindError(RuntimeError):
    """The service's schema is older than its code: run `migrate` first."""


def checked_schema(name: str) -> str:
    """Schema names reach SQL as identifiers, so they must match a strict pattern first."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise ValueError(f"invalid schema name {name!r}")
    return name


def alembic_config(*, script_location: Path, schema: str, sqlalchemy_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    config.attributes["schema"] = checked_schema(schema)
    return config


def upgrade(config: Config, revision: str = "head") -> None:
    command.upgrade(config, revision)


def downgrade(config: Config, revision: str = "-1") -> None:
    command.downgrade(config, revision)


def run_env() -> None:
    """The body of every `env.py`: one schema, in one transaction, under that schema's advisory lock.

    With `config.attributes["connection"]` set, it runs on that (sync) connection inside the
    caller's transaction: a tenant schema is then provisioned atomically with the event that
    asked for it. Otherwise it opens its own connection and commits.
    """
    config = context.config
    schema = checked_schema(config.attributes["schema"])
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection, schema)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
    with engine.connect() as own, own.begin():
        _migrate(own, schema)
    engine.dispose()


def _migrate(connection: sa.Connection, schema: str) -> None:
    # Concurrent migrators (replicas starting, a CLI beside a consumer) wait for each other.
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"migrate:{schema}"})
    connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(connection=connection, version_table_schema=schema, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations(schema=schema)


async def ensure_schema_current(engine: AsyncEngine, *, script_location: Path, schema: str) -> None:
    """Raises SchemaBehindError unless the schema is at the code's head revision, or ahead of it.

    Ahead means at revisions this code does not know: a newer release has migrated, and this one is still
    running or was rolled back to. Migrations stay backward compatible for one release (docs/DEPLOYMENT.md),
    so this code can serve; a revision it knows other than its head means the schema is behind, and it
    cannot.
    """
    scripts = ScriptDirectory(str(script_location))
    heads = set(scripts.get_heads())
    known = {revision.revision for revision in scripts.walk_revisions()}
    table = f'"{checked_schema(schema)}".alembic_version'
    try:
        async with engine.connect() as conn:
            query = sa.text(f"SELECT version_num FROM {table}")  # noqa: S608 # nosec B608 # a checked identifier
            rows = (await conn.execute(query)).scalars().all()
    except sa.exc.ProgrammingError as exc:
        raise SchemaBehindError(f"schema {schema} has no migrations applied; run migrate") from exc
    if set(rows) == heads:
        return
    if rows and not known.intersection(rows):
        log.warning("schema.ahead", schema=schema, revisions=sorted(rows), code_heads=sorted(heads))
        return
    raise SchemaBehindError(f"schema {schema} is at {sorted(rows)}, code expects {sorted(heads)}; run migrate")


def create_event_tables(schema: str) -> None:
    """Outbox and inbox of a service schema, matching `outbox_table` and `inbox_table`.

    Called from a service's first migration: never change it, add a migration instead.
    """
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_index(
        "outbox_unpublished",
        "outbox",
        ["created_at", "id"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def drop_event_tables(schema: str) -> None:
    op.drop_table("inbox", schema=schema)
    op.drop_table("outbox", schema=schema)
