"""A service serves only on a schema at its head or ahead of it (a newer release migrated), never behind."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from libs.common.config import CommonSettings
from libs.common.db import create_engine
from libs.common.migrations import SchemaBehindError, ensure_schema_current

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "tenants" / "migrations"


async def test_head_and_ahead_are_served_behind_is_refused(fresh_database: str) -> None:
    scripts = ScriptDirectory(str(MIGRATIONS))
    (head,) = scripts.get_heads()
    earlier = scripts.get_revision(head).down_revision
    assert isinstance(earlier, str), "the tenants service has more than one migration"
    engine = create_engine(CommonSettings(database_url=fresh_database), application_name="schema-check-test")

    def stamp(revision: str) -> None:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("UPDATE tenants.alembic_version SET version_num = %s", (revision,))

    try:
        await ensure_schema_current(engine, script_location=MIGRATIONS, schema="tenants")
        stamp(earlier)
        with pytest.raises(SchemaBehindError, match="run migrate"):
            await ensure_schema_current(engine, script_location=MIGRATIONS, schema="tenants")
        stamp("f00dfeed0001")  # a revision of a later release, which this code does not know
        await ensure_schema_current(engine, script_location=MIGRATIONS, schema="tenants")
        stamp(head)
    finally:
        await engine.dispose()
