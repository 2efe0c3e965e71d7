"""Indexes for the writes that find rows by tenant, and for the outbox purge.

Found by tests/integration/test_query_plans.py: ending a tenant's sessions, forgetting a deleted tenant and
purging relayed events each read a whole table without them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    # Only live sessions are ever ended; revoked ones stay out of the index.
    op.create_index(
        "sessions_tenant_live",
        "sessions",
        ["tenant_id", "user_id"],
        schema=schema,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    # The primary key leads with user_id; a deleted tenant's memberships are found by tenant.
    op.create_index("memberships_tenant", "memberships", ["tenant_id"], schema=schema)
    op.create_index(
        "users_last_tenant",
        "users",
        ["last_tenant_id"],
        schema=schema,
        postgresql_where=sa.text("last_tenant_id IS NOT NULL"),
    )
    op.create_index(
        "outbox_published",
        "outbox",
        ["published_at"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )


def downgrade(schema: str) -> None:
    for index, table in (
        ("outbox_published", "outbox"),
        ("users_last_tenant", "users"),
        ("memberships_tenant", "memberships"),
        ("sessions_tenant_live", "sessions"),
    ):
        op.drop_index(index, table_name=table, schema=schema)
