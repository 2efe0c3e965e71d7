"""The `migrate` command: the service schema, then every tenant schema in parallel worker processes."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from libs.common import migrations
from libs.common.config import MigrationSettings
from libs.common.logging import get_logger
from libs.common.processes import process_pool
from services.analysis.domain import SERVICE_SCHEMA, tenant_schema
from services.analysis.use_cases import SERVICE_MIGRATIONS, TENANT_MIGRATIONS, upgrade_tenant_schema

log = get_logger(__name__)


def _sync_engine(settings: MigrationSettings) -> sa.Engine:
    return sa.create_engine(
        settings.sqlalchemy_url, pool_size=settings.migration_parallelism, max_overflow=0, pool_pre_ping=True
    )


def _migrate_tenant(engine: sa.Engine, tenant_id: uuid.UUID, revision: str) -> None:
    """One tenant schema, one transaction: a crash leaves it either migrated or untouched."""
    schema = tenant_schema(tenant_id)
    with engine.connect() as conn, conn.begin():
        upgrade_tenant_schema(conn, schema, revision)
        current = conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()  # noqa: S608 # nosec B608 # schema name checked against ^t_[0-9a-f]{32}$
        conn.execute(
            sa.text(
                "INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision) VALUES (:t, :s, :r)"
                " ON CONFLICT (tenant_id) DO UPDATE SET revision = :r, migrated_at = now()"
            ),
            {"t": tenant_id, "s": schema, "r": current or "base"},
        )


def _downgrade_tenant(engine: sa.Engine, tenant_id: uuid.UUID) -> None:
    schema = tenant_schema(tenant_id)
    with engine.connect() as conn, conn.begin():
        config = migrations.alembic_config(script_location=TENANT_MIGRATIONS, schema=schema, sqlalchemy_url="")
        config.attributes["connection"] = conn
        command.downgrade(config, "-1")
        current = conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()  # noqa: S608 # nosec B608 # schema name checked against ^t_[0-9a-f]{32}$
        conn.execute(
            sa.text("UPDATE analysis.tenant_schemas SET revision = :r, migrated_at = now() WHERE tenant_id = :t"),
            {"t": tenant_id, "r": current or "base"},
        )


_process_engine: sa.Engine | None = None


def _migrate_chunk(database_url: str, tenant_ids: list[uuid.UUID]) -> list[tuple[str, str]]:
    """Runs in a worker process: alembic keeps its context in module globals, so threads cannot share it."""
    global _process_engine
    if _process_engine is None:
        _process_engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    failed = []
    for tenant_id in tenant_ids:
        try:
            _migrate_tenant(_process_engine, tenant_id, "head")
        except Exception as exc:
            failed.append((str(tenant_id), str(exc).splitlines()[0]))
    return failed


def _migrate_tenants(settings: MigrationSettings, tenant_ids: list[uuid.UUID]) -> int:
    """Every tenant schema to head, `migration_parallelism` processes at a time; each schema is its own
    transaction, so a crash leaves each one migrated or untouched and a rerun finishes the rest."""
    if not tenant_ids:
        return 0
    workers = min(settings.migration_parallelism, len(tenant_ids))
    size = max(1, min(25, len(tenant_ids) // (workers * 4) or 1))
    chunks = [tenant_ids[i : i + size] for i in range(0, len(tenant_ids), size)]
    failures = 0
    with process_pool(workers) as pool:  # they end with this command, even when it is killed
        for failed in pool.map(_migrate_chunk, [settings.sqlalchemy_url] * len(chunks), chunks):
            for tenant_id, error in failed:
                failures += 1
                log.error("migrations.tenant_failed", tenant_id=tenant_id, error=error)
    return failures


def _tenant_ids(engine: sa.Engine, only: str | None) -> list[uuid.UUID]:
    if only:
        return [uuid.UUID(only)]
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text("SELECT tenant_id FROM analysis.tenant_schemas ORDER BY 1"))]


def migrate_command(settings: MigrationSettings, args: argparse.Namespace) -> int:
    service_config = migrations.alembic_config(
        script_location=SERVICE_MIGRATIONS, schema=SERVICE_SCHEMA, sqlalchemy_url=settings.sqlalchemy_url
    )
    engine = _sync_engine(settings)
    try:
        if args.action == "list":
            print(_migration_list(engine))
            return 0
        if args.action == "down":
            if args.scope == "service":
                migrations.downgrade(service_config, "-1")
            else:
                for tenant_id in _tenant_ids(engine, args.tenant):
                    _downgrade_tenant(engine, tenant_id)
            return 0
        migrations.upgrade(service_config, "head")
        tenant_ids = _tenant_ids(engine, args.tenant)
        engine.dispose()  # no pooled connection may cross into the worker processes
        failures = _migrate_tenants(settings, tenant_ids)
        print(f"service schema at head; {len(tenant_ids) - failures} of {len(tenant_ids)} tenant schemas at head")
        return 1 if failures else 0
    finally:
        engine.dispose()


def _migration_list(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT revision, count(*) FROM analysis.tenant_schemas GROUP BY 1")).all()
        counts: dict[str, int] = {str(row[0]): int(row[1]) for row in rows}
        service_at = conn.execute(sa.text("SELECT version_num FROM analysis.alembic_version")).scalar()
    total = sum(counts.values())
    lines = [f"{'scope':8} {'revision':10} {'applied':>10}  description"]
    for script in reversed(list(ScriptDirectory(str(SERVICE_MIGRATIONS)).walk_revisions())):
        applied = (
            "yes"
            if script.revision == service_at or _is_ancestor(SERVICE_MIGRATIONS, script.revision, service_at)
            else "no"
        )
        lines.append(f"{'service':8} {script.revision:10} {applied:>10}  {script.doc}")
    tenant_scripts = list(reversed(list(ScriptDirectory(str(TENANT_MIGRATIONS)).walk_revisions())))
    order = {s.revision: i for i, s in enumerate(tenant_scripts)}
    for index, script in enumerate(tenant_scripts):
        having = sum(count for revision, count in counts.items() if order.get(revision, -1) >= index)
        lines.append(f"{'tenant':8} {script.revision:10} {f'{having}/{total}':>10}  {script.doc}")
    return "\n".join(lines)


def _is_ancestor(location: Path, revision: str, head: str | None) -> bool:
    if head is None:
        return False
    script = ScriptDirectory(str(location))
    return any(s.revision == revision for s in script.iterate_revisions(head, "base"))
