"""Backup and restore of the whole database, one schema at a time.

A backup is a directory: one pg_dump archive (custom format) per service schema and per tenant schema, all taken
from one exported snapshot (so the schemas agree with each other to the transaction), and `manifest.json`, written
last, naming each schema with its alembic revision, size and SHA-256. A directory without a manifest is an
incomplete backup and restore refuses it.

A schema is ours when it has an `alembic_version` table: the service schemas (auth, tenants, analysis) and every
tenant schema (`t_<tenant id>`); nothing here knows the services' code. Extensions are recorded and recreated
before the schemas that use them (pg_trgm, in `extensions`, for the repository name index).

Restore puts each schema back in one transaction. An existing schema is refused unless `replace` is set; then it is
renamed aside, the archive restored, and the old copy dropped only once the new one committed, so a failed restore
leaves the schema as it was. Restore is meant for a stopped stack: services would otherwise write into schemas
that are being swapped.

The archives hold password hashes, refresh-token hashes and the tenants' encrypted secrets: keep them as private
as the database. The master keys are not in them, and the secrets decrypt after a restore only with the same
TENANTS_MASTER_KEY (and the signing keys with the same AUTH_MASTER_KEY).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess  # nosec B404 # pg_dump and pg_restore are run with argument lists, never a shell
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from libs.common.migrations import checked_schema
from libs.ops.pgtools import PgTool, find_tool

log = structlog.get_logger(__name__)

FORMAT = "repolens-backup/1"
MANIFEST = "manifest.json"
TENANT_SCHEMA = re.compile(r"^t_[0-9a-f]{32}$")
# Service schemas are restored first and in this order; unknown ones after them, then the tenant schemas.
SERVICE_ORDER = ("auth", "tenants", "analysis")
ASIDE_SUFFIX = "_before_restore"


class BackupError(RuntimeError):
    """A backup or restore could not be done; nothing was changed unless the message says so."""


@dataclass(frozen=True)
class SchemaEntry:
    name: str
    kind: str  # "service" or "tenant"
    revision: str
    file: str
    bytes: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Extension:
    name: str
    schema: str
    version: str


@dataclass
class Manifest:
    created_at: str
    database: str
    server_version: str
    server_major: int
    pg_dump: str
    pg_dump_major: int
    extensions: list[Extension] = field(default_factory=list)
    schemas: list[SchemaEntry] = field(default_factory=list)
    seconds: float = 0.0
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise BackupError(f"{directory} has no {MANIFEST}: not a backup, or an incomplete one")
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise BackupError(f"{path}: unknown format {data.get('format')!r} (expected {FORMAT})")
        return cls(
            **{
                **data,
                "extensions": [Extension(**e) for e in data.get("extensions", [])],
                "schemas": [SchemaEntry(**s) for s in data.get("schemas", [])],
            }
        )


@dataclass(frozen=True)
class Target:
    """A database for the libpq tools: conninfo without the password, which travels in the environment instead
    (a command line is visible to every user of the machine)."""

    url: str
    conninfo: str
    env: dict[str, str]
    database: str

    @classmethod
    def from_url(cls, database_url: str) -> Target:
        url = re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql://", database_url)
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
        password = params.pop("password", None)
        env = {**os.environ, "PGPASSWORD": password} if password else dict(os.environ)
        return cls(url=url, conninfo=make_conninfo("", **params), env=env, database=params.get("dbname", ""))


def schema_kind(name: str) -> str:
    return "tenant" if TENANT_SCHEMA.fullmatch(name) else "service"


def restore_order(names: Iterable[str]) -> list[str]:
    """Service schemas first (known ones in SERVICE_ORDER), then the tenant schemas: a tenant index may use an
    extension or a type that comes with the service scope."""
    known = {name: index for index, name in enumerate(SERVICE_ORDER)}
    return sorted(names, key=lambda n: (schema_kind(n) == "tenant", known.get(n, len(known)), n))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], target: Target, *, what: str) -> None:
    # umask 077: the archive is readable by its owner only, from the moment it exists.
    result = subprocess.run(  # noqa: S603 # nosec B603 # argv built here from a found tool, no shell
        argv, env=target.env, capture_output=True, text=True, umask=0o077, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BackupError(f"{what} failed (exit {result.returncode}): " + " | ".join(detail))


def _server_major(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')").fetchone()
    assert row is not None
    return str(row[0]), int(row[1]) // 10000


def _our_schemas(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Schema name -> alembic revision, for every schema with an alembic_version table."""
    rows = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = 'alembic_version' AND c.relkind = 'r' ORDER BY 1"
    ).fetchall()
    schemas: dict[str, str] = {}
    for (name,) in rows:
        try:
            checked_schema(name)
        except ValueError:
            log.warning("backup.schema_skipped", schema=name, reason="name outside [a-z0-9_]")
            continue
        query = sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(name))
        versions = [str(r[0]) for r in conn.execute(query).fetchall()]
        schemas[name] = ",".join(versions) or "base"
    return schemas


def _extensions(conn: psycopg.Connection[Any]) -> list[Extension]:
    rows = conn.execute(
        "SELECT e.extname, n.nspname, e.extversion FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql' ORDER BY 1"
    ).fetchall()
    return [Extension(name=str(r[0]), schema=str(r[1]), version=str(r[2])) for r in rows]


def backup(
    database_url: str,
    out: Path,
    *,
    jobs: int = 2,
    bin_dir: str | Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Dumps every schema of ours into `out` (a new or empty directory) from one snapshot; returns the manifest."""
    started = time.monotonic()
    target = Target.from_url(database_url)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: a backup goes into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    with psycopg.connect(target.url, autocommit=True) as conn:
        # This session holds the snapshot while the dumps run: no timeout may end it.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert snapshot_row is not None
            snapshot = str(snapshot_row[0])
            server_version, server_major = _server_major(conn)
            schemas = _our_schemas(conn)
            extensions = _extensions(conn)
            if not schemas:
                raise BackupError(f"database {target.database!r} has no schema with migrations: nothing to back up")
            pg_dump = find_tool("pg_dump", server_major=server_major, bin_dir=bin_dir)
            log.info("backup.started", schemas=len(schemas), pg_dump=str(pg_dump.path), snapshot=snapshot)

            def dump(name: str) -> SchemaEntry:
                path = out / f"{name}.dump"
                argv = [
                    str(pg_dump.path),
                    "--format=custom",
                    f'--schema="{name}"',
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot}",
                    f"--file={path}",
                    f"--dbname={target.conninfo}",
                ]
                # An extension living inside a dumped schema travels with it; the others are recreated from the
                # manifest before any schema is restored.
                argv += [f'--extension="{e.name}"' for e in extensions if e.schema == name]
                _run(argv, target, what=f"pg_dump of schema {name}")
                entry = SchemaEntry(
                    name=name,
                    kind=schema_kind(name),
                    revision=schemas[name],
                    file=path.name,
                    bytes=path.stat().st_size,
                    sha256=_sha256(path),
                )
                if on_progress is not None:
                    on_progress(f"dumped {name} ({entry.bytes} bytes)")
                return entry

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                entries = list(pool.map(dump, restore_order(schemas)))
    manifest = Manifest(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        database=target.database,
        server_version=server_version,
        server_major=server_major,
        pg_dump=pg_dump.version,
        pg_dump_major=pg_dump.major,
        extensions=extensions,
        schemas=entries,
        seconds=round(time.monotonic() - started, 2),
    )
    manifest_path = out / MANIFEST
    manifest_path.write_text(manifest.to_json(), encoding="utf-8")
    manifest_path.chmod(0o600)
    log.info(
        "backup.done",
        directory=str(out),
        schemas=len(entries),
        bytes=sum(e.bytes for e in entries),
        seconds=manifest.seconds,
    )
    return manifest


@dataclass
class RestoreResult:
    restored: list[str]
    replaced: list[str]
    not_in_backup: list[str]
    pg_restore: PgTool
    seconds: float


def restore(
    database_url: str,
    source: Path,
    *,
    schemas: Iterable[str] = (),
    replace: bool = False,
    jobs: int = 2,
    bin_dir: str | Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restores the backup in `source` (all its schemas, or `schemas`) into the database at `database_url`."""
    started = time.monotonic()
    target = Target.from_url(database_url)
    manifest = Manifest.read(source)
    entries = {e.name: e for e in manifest.schemas}
    chosen = list(schemas)
    wanted = chosen or list(entries)
    unknown = sorted(set(wanted) - set(entries))
    if unknown:
        raise BackupError(f"not in this backup: {', '.join(unknown)}")
    for name in wanted:
        checked_schema(name)
        path = source / entries[name].file
        if not path.is_file() or _sha256(path) != entries[name].sha256:
            raise BackupError(f"{path} is missing or damaged (its SHA-256 differs from the manifest's)")

    with psycopg.connect(target.url, autocommit=True) as conn:
        _, server_major = _server_major(conn)
        pg_restore = find_tool(
            "pg_restore", server_major=server_major, at_least=manifest.pg_dump_major, bin_dir=bin_dir
        )
        present = {str(r[0]) for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
        existing = [name for name in wanted if name in present]
        if existing and not replace:
            named = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
            raise BackupError(
                f"{len(existing)} schemas exist already ({named}); restore into an empty database,"
                " or pass --replace to swap them for the backup's copies"
            )
        leftovers = [name for name in wanted if name + ASIDE_SUFFIX in present]
        if leftovers:
            raise BackupError(
                f"schemas left by an interrupted restore exist ({', '.join(n + ASIDE_SUFFIX for n in leftovers)});"
                " they may hold the only copy of that data: look, then drop or rename them"
            )
        # A whole-database restore reports our schemas that the backup does not have (tenants created after it).
        ours_before = set() if chosen else set(_our_schemas(conn))
        dumped = set(entries)
        for extension in manifest.extensions:
            if extension.schema in dumped:
                continue  # restored with its schema
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(extension.schema)))
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {} SCHEMA {}").format(
                    sql.Identifier(extension.name), sql.Identifier(extension.schema)
                )
            )
    log.info("restore.started", schemas=len(wanted), pg_restore=str(pg_restore.path), replace=replace)

    def put_back(name: str) -> None:
        _restore_schema(target, pg_restore, source / entries[name].file, name, exists=name in existing)
        if on_progress is not None:
            on_progress(f"restored {name}")

    order = restore_order(wanted)
    for name in [n for n in order if schema_kind(n) == "service"]:
        put_back(name)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(put_back, [n for n in order if schema_kind(n) == "tenant"]))

    with psycopg.connect(target.url, autocommit=True) as conn:
        # pg_restore brings rows, not planner statistics: without them the first queries may scan whole tables.
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s)", [wanted]
        ).fetchall()
        for schema, table in tables:
            conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
    not_in_backup = sorted(ours_before - dumped)
    if not_in_backup:
        log.warning("restore.schemas_not_in_backup", schemas=not_in_backup[:20], count=len(not_in_backup))
    result = RestoreResult(
        restored=order,
        replaced=existing,
        not_in_backup=not_in_backup,
        pg_restore=pg_restore,
        seconds=round(time.monotonic() - started, 2),
    )
    log.info("restore.done", schemas=len(order), replaced=len(existing), seconds=result.seconds)
    return result


def _restore_schema(target: Target, pg_restore: PgTool, archive: Path, name: str, *, exists: bool) -> None:
    """One schema, one transaction; an existing copy is set aside first and dropped only after the commit."""
    aside = checked_schema(name + ASIDE_SUFFIX)
    rename = sql.SQL("ALTER SCHEMA {} RENAME TO {}")
    with psycopg.connect(target.url, autocommit=True) as conn:
        if exists:
            conn.execute(rename.format(sql.Identifier(name), sql.Identifier(aside)))
        argv = [
            str(pg_restore.path),
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            f"--dbname={target.conninfo}",
            str(archive),
        ]
        try:
            _run(argv, target, what=f"pg_restore of schema {name}")
        except BackupError:
            if exists:  # the failed transaction left nothing behind: put the old copy back
                conn.execute(rename.format(sql.Identifier(aside), sql.Identifier(name)))
            raise
        if exists:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(aside)))
