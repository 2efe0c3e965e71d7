"""Scoped migrations of the analysis service: a crash half-way through, then `migrate up` finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from services.analysis.domain import tenant_schema
from services.analysis.use_cases import tenant_head

ROOT = Path(__file__).resolve().parents[2]


def _cli(database_url: str, *args: str, parallelism: int = 4) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MIGRATION_PARALLELISM": str(parallelism),
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.analysis", "migrate", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(database_url: str, *args: str) -> str:
    process = _cli(database_url, *args)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def _at_head(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        query = "SELECT count(*) FROM analysis.tenant_schemas WHERE revision = %s"
        row = conn.execute(query, [tenant_head()]).fetchone()
    return int(row[0]) if row else 0


def test_a_crash_half_way_is_resumed_and_listed(fresh_database: str) -> None:
    _run(fresh_database, "up")  # the service scope; no tenants yet
    tenants = [uuid.uuid4() for _ in range(50)]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for tenant_id in tenants:  # registered, nothing applied yet: as if a new migration had just shipped
            conn.execute(
                "INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision) VALUES (%s, %s, 'base')",
                [tenant_id, tenant_schema(tenant_id)],
            )
    listed = _run(fresh_database, "list")
    assert "0/50" in listed

    crashing = _cli(fresh_database, "up", parallelism=1)
    deadline = time.monotonic() + 60
    while _at_head(fresh_database) < 10:
        assert crashing.poll() is None, crashing.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    crashing.send_signal(signal.SIGKILL)
    crashing.wait(timeout=10)
    half = _at_head(fresh_database)
    assert 10 <= half < 50, half

    out = _run(fresh_database, "up")
    assert "50 of 50 tenant schemas at head" in out
    assert _at_head(fresh_database) == 50
    with psycopg.connect(fresh_database) as conn:
        for tenant_id in tenants:
            schema = tenant_schema(tenant_id)
            versions = conn.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchall()  # noqa: S608
            assert versions == [(tenant_head(),)]
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)",
                [schema, ["repositories", "analyses"]],
            ).fetchone()
            assert tables == (2,)
    assert "50/50" in _run(fresh_database, "list")

    # One step down for one tenant, then up again for that tenant only.
    one = str(tenants[0])
    _run(fresh_database, "down", "--tenant", one)
    assert _at_head(fresh_database) == 49
    _run(fresh_database, "up", "--tenant", one)
    assert _at_head(fresh_database) == 50
