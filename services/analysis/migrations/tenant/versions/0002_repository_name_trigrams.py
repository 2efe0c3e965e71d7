"""Tenant scope: a trigram index on repository names, for the `?name=` substring filter of the list.

Revision ID: t0002
Revises: t0001
"""

import sqlalchemy as sa
from alembic import op

revision = "t0002"
down_revision = "t0001"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    # The operator class is named with the schema pg_trgm lives in (service migration s0002 installs it), so
    # the index does not depend on the session's search_path.
    extension_schema = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                " WHERE e.extname = 'pg_trgm'"
            )
        )
        .scalar()
    )
    if extension_schema is None:
        raise RuntimeError("pg_trgm is not installed: run the service-scope migrations first (migrate up)")
    op.execute(
        f'CREATE INDEX repositories_name_trgm ON "{schema}".repositories'
        f' USING gin (lower(name) "{extension_schema}".gin_trgm_ops)'
    )


def downgrade(schema: str) -> None:
    op.drop_index("repositories_name_trgm", table_name="repositories", schema=schema)
