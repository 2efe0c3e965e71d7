"""Backup and restore on a real PostgreSQL with the real pg_dump / pg_restore: every schema, one snapshot, a
manifest; restore into an empty database, refusal to overwrite, replacement that keeps the old copy until the new
one committed, damaged and incomplete backups refused."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from libs.common import migrations
from libs.common.config import CommonSettings
from libs.ops.backup import ASIDE_SUFFIX, MANIFEST, BackupError, Manifest, backup, restore
from services.analysis.domain import tenant_schema
from services.analysis.use_cases import SERVICE_MIGRATIONS, tenant_head, upgrade_tenant_schema


@dataclass(frozen=True)
class Planted:
    database_url: str
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    schema: str
    ciphertext: bytes


def rows(database_url: str, planted: Planted) -> dict[str, object]:
    """What the test planted, read back from every schema."""
    with psycopg.connect(database_url) as conn:
        user = conn.execute(
            "SELECT username, password_hash FROM auth.users WHERE id = %s", [planted.user_id]
        ).fetchone()
        settings = conn.execute(
            "SELECT secrets, llm_provider FROM tenants.settings WHERE tenant_id = %s", [planted.tenant_id]
        ).fetchone()
        key = conn.execute(
            "SELECT wrapped_key FROM tenants.data_keys WHERE tenant_id = %s", [planted.tenant_id]
        ).fetchone()
        registry = conn.execute(
            "SELECT schema_name FROM analysis.tenant_schemas WHERE tenant_id = %s", [planted.tenant_id]
        ).fetchone()
        repositories = conn.execute(f'SELECT name FROM "{planted.schema}".repositories ORDER BY name').fetchall()  # noqa: S608
    return {"user": user, "settings": settings, "key": key, "registry": registry, "repositories": repositories}


@pytest.fixture
def planted(fresh_database: str) -> Planted:
    """Every schema migrated (a tenant schema too) and a row or two in each."""
    url = CommonSettings(database_url=fresh_database).sqlalchemy_url
    migrations.upgrade(
        migrations.alembic_config(script_location=SERVICE_MIGRATIONS, schema="analysis", sqlalchemy_url=url)
    )
    user_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    schema = tenant_schema(tenant_id)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        upgrade_tenant_schema(conn, schema)
    engine.dispose()
    ciphertext = uuid.uuid4().bytes * 3
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth.users (id, username, email, password_hash, personal_tenant_id)"
            " VALUES (%s, 'alice', 'alice@example.com', '$argon2id$planted', %s)",
            [user_id, tenant_id],
        )
        conn.execute(
            "INSERT INTO tenants.tenants (id, name, slug, personal) VALUES (%s, 'Acme', 'acme', false)", [tenant_id]
        )
        conn.execute("INSERT INTO tenants.data_keys (tenant_id, wrapped_key) VALUES (%s, %s)", [tenant_id, ciphertext])
        conn.execute(
            "INSERT INTO tenants.settings (tenant_id, secrets, llm_provider) VALUES (%s, %s, 'anthropic')",
            [tenant_id, json.dumps({"anthropic_api_key": {"ciphertext": "c2VhbGVk", "masked": "sk-ant-...abcd"}})],
        )
        conn.execute(
            "INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision) VALUES (%s, %s, %s)",
            [tenant_id, schema, tenant_head()],
        )
        for name in ("api", "web"):
            conn.execute(
                f'INSERT INTO "{schema}".repositories (id, name, url, default_branch)'  # noqa: S608
                " VALUES (gen_random_uuid(), %s, %s, 'main')",
                [name, f"https://github.com/acme/{name}"],
            )
    return Planted(fresh_database, user_id, tenant_id, schema, ciphertext)


def drop_everything(database_url: str, manifest: Manifest) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for entry in manifest.schemas:
            conn.execute(f'DROP SCHEMA "{entry.name}" CASCADE')
        conn.execute("DROP EXTENSION pg_trgm")
        remaining = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s)",
            [[e.name for e in manifest.schemas]],
        ).fetchone()
    assert remaining == (0,)


def test_backup_drop_restore_brings_every_schema_back(planted: Planted, tmp_path: Path) -> None:
    before = rows(planted.database_url, planted)
    out = tmp_path / "backup"
    manifest = backup(planted.database_url, out)

    names = [e.name for e in manifest.schemas]
    assert names == ["auth", "tenants", "analysis", planted.schema]  # services first, in restore order
    kinds = {e.name: e.kind for e in manifest.schemas}
    assert kinds[planted.schema] == "tenant"
    assert kinds["auth"] == "service"
    revisions = {e.name: e.revision for e in manifest.schemas}
    assert revisions["analysis"] == ScriptDirectory(str(SERVICE_MIGRATIONS)).get_current_head()
    assert revisions[planted.schema] == tenant_head()
    assert [(x.name, x.schema) for x in manifest.extensions] == [("pg_trgm", "extensions")]
    assert manifest.server_major == manifest.pg_dump_major  # a pg_dump of the server's own version was found
    assert Manifest.read(out) == manifest
    assert out.stat().st_mode & 0o777 == 0o700
    for entry in manifest.schemas:
        assert (out / entry.file).stat().st_mode & 0o777 == 0o600
        assert entry.bytes == (out / entry.file).stat().st_size > 0

    drop_everything(planted.database_url, manifest)
    result = restore(planted.database_url, out)

    assert result.restored == names
    assert result.replaced == []
    assert rows(planted.database_url, planted) == before
    with psycopg.connect(planted.database_url) as conn:
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY 1", [planted.schema]
        ).fetchall()
        analysed = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = ANY(%s) AND last_analyze IS NULL", [names]
        ).fetchone()
    assert ("repositories_name_trgm",) in indexes  # the trigram index came back, on the recreated extension
    assert analysed == (0,)  # planner statistics are there from the start


def test_restore_refuses_to_overwrite_unless_asked_and_then_swaps_atomically(planted: Planted, tmp_path: Path) -> None:
    before = rows(planted.database_url, planted)
    out = tmp_path / "backup"
    backup(planted.database_url, out)
    with psycopg.connect(planted.database_url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{planted.schema}".repositories WHERE name = %s', ["web"])  # noqa: S608
        conn.execute("UPDATE auth.users SET password_hash = 'changed' WHERE id = %s", [planted.user_id])
    changed = rows(planted.database_url, planted)
    assert changed != before

    with pytest.raises(BackupError, match="--replace"):
        restore(planted.database_url, out)
    assert rows(planted.database_url, planted) == changed  # refused before touching anything

    result = restore(planted.database_url, out, replace=True)
    assert sorted(result.replaced) == sorted(e.name for e in Manifest.read(out).schemas)
    assert rows(planted.database_url, planted) == before
    with psycopg.connect(planted.database_url) as conn:
        aside = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [f"%{ASIDE_SUFFIX}"]).fetchall()
    assert aside == []


def test_a_failed_replacement_leaves_the_schema_as_it_was(planted: Planted, tmp_path: Path) -> None:
    out = tmp_path / "backup"
    manifest = backup(planted.database_url, out)
    with psycopg.connect(planted.database_url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{planted.schema}".repositories WHERE name = %s', ["api"])  # noqa: S608
    current = rows(planted.database_url, planted)
    # An archive pg_restore cannot read, listed in the manifest as if it were good.
    entry = next(e for e in manifest.schemas if e.name == planted.schema)
    (out / entry.file).write_bytes(b"PGDMP" + b"\x00" * 64)
    data = json.loads((out / MANIFEST).read_text())
    for schema in data["schemas"]:
        if schema["name"] == planted.schema:
            schema["sha256"] = hashlib.sha256((out / entry.file).read_bytes()).hexdigest()
    (out / MANIFEST).write_text(json.dumps(data))

    with pytest.raises(BackupError, match="pg_restore of schema"):
        restore(planted.database_url, out, schemas=[planted.schema], replace=True)
    assert rows(planted.database_url, planted) == current
    with psycopg.connect(planted.database_url) as conn:
        aside = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [f"%{ASIDE_SUFFIX}"]).fetchall()
    assert aside == []


def test_damaged_unknown_and_incomplete_backups_are_refused(planted: Planted, tmp_path: Path) -> None:
    out = tmp_path / "backup"
    manifest = backup(planted.database_url, out)
    with pytest.raises(BackupError, match="not empty"):
        backup(planted.database_url, out)
    with pytest.raises(BackupError, match="not in this backup: t_nope"):
        restore(planted.database_url, out, schemas=["t_nope"], replace=True)

    archive = out / manifest.schemas[0].file
    archive.write_bytes(archive.read_bytes()[:-1] + b"\xff")
    with pytest.raises(BackupError, match="damaged"):
        restore(planted.database_url, out, replace=True)

    (out / MANIFEST).unlink()
    with pytest.raises(BackupError, match="incomplete"):
        restore(planted.database_url, out, replace=True)
