"""Service scope: an index for the outbox purge, and pg_trgm for the tenants' repository name search.

The tenant-scope migration t0002 builds a trigram index on each tenant's repository names: `?name=` is a
substring filter (`lower(name) LIKE '%...%'`), which no B-tree can serve. The extension goes into a schema of
its own, `extensions`, not into a service schema: a database-wide object must survive a service schema being
dropped or replaced by a restore (libs/ops recreates it from the backup's manifest first), and PostgreSQL 15
and later let only the database owner create objects in `public`. When the database already has pg_trgm in
another schema, that one is used.

Revision ID: s0002
Revises: s0001
"""

import sqlalchemy as sa
from alembic import op

revision = "s0002"
down_revision = "s0001"
branch_labels = None
depends_on = None

EXTENSIONS_SCHEMA = "extensions"


def upgrade(schema: str) -> None:
    op.create_index(
        "outbox_published",
        "outbox",
        ["published_at"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )
    installed = op.get_bind().execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).scalar()
    if installed is None:
        op.execute(f'CREATE SCHEMA IF NOT EXISTS "{EXTENSIONS_SCHEMA}"')
        op.execute(f'CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA "{EXTENSIONS_SCHEMA}"')


def downgrade(schema: str) -> None:
    # pg_trgm stays: tenant schemas may still index with it, and it may have been there before us.
    op.drop_index("outbox_published", table_name="outbox", schema=schema)
