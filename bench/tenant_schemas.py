"""Provision and migrate N tenant schemas with `python -m services.analysis migrate up`, and print the times.

    python bench/tenant_schemas.py                 # 1,000 schemas in an embedded PostgreSQL
    python bench/tenant_schemas.py --tenants 200 --database-url postgresql://postgres@127.0.0.1/postgres

Phases: (1) `migrate up` with N tenants registered and nothing applied (provisioning every schema);
(2) `migrate down` one step on every schema; (3) `migrate up` again (migrating existing schemas).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.devstack.servers import EmbeddedPostgres, create_database, database_url_for, drop_database
from services.analysis.domain import tenant_schema
from services.analysis.use_cases import tenant_head

ROOT = Path(__file__).resolve().parents[1]


def _migrate(database_url: str, *args: str, parallelism: int) -> float:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MIGRATION_PARALLELISM": str(parallelism),
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "services.analysis", "migrate", *args], cwd=ROOT, env=env, check=True, timeout=1800
    )
    return round(time.perf_counter() - started, 2)


def run(server_url: str, tenants: int, parallelism: int) -> dict[str, object]:
    name = "bench_" + uuid.uuid4().hex[:8]
    database_url = create_database(server_url, name)
    try:
        _migrate(database_url, "up", parallelism=parallelism)
        with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cursor:
            ids = [uuid.uuid4() for _ in range(tenants)]
            cursor.executemany(
                "INSERT INTO analysis.tenant_schemas (tenant_id, schema_name, revision) VALUES (%s, %s, 'base')",
                [(t, tenant_schema(t)) for t in ids],
            )
        provision = _migrate(database_url, "up", parallelism=parallelism)
        down = _migrate(database_url, "down", parallelism=parallelism)
        up_again = _migrate(database_url, "up", parallelism=parallelism)
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM analysis.tenant_schemas WHERE revision = %s", [tenant_head()]
            ).fetchone()
        return {
            "tenants": tenants,
            "parallelism": parallelism,
            "provision_s": provision,
            "down_one_step_s": down,
            "migrate_existing_s": up_again,
            "at_head": row[0] if row else 0,
        }
    finally:
        drop_database(server_url, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--database-url", help="a PostgreSQL server URL; without it an embedded server is started")
    args = parser.parse_args()
    if args.database_url:
        result = run(args.database_url, args.tenants, args.parallelism)
    else:
        with tempfile.TemporaryDirectory(prefix="repolens-bench-") as tmp:
            postgres = EmbeddedPostgres(Path(tmp) / "pg", database="postgres", delete_on_stop=True)
            postgres.start()
            try:
                result = run(database_url_for(postgres.url, "postgres"), args.tenants, args.parallelism)
            finally:
                postgres.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
