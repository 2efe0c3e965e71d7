"""Service scope: outbox, inbox and the registry of tenant schemas.

Revision ID: s0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from libs.common.migrations import create_event_tables, drop_event_tables

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "tenant_schemas",
        sa.Column("tenant_id", sa.Uuid, primary_key=True),
        sa.Column("schema_name", sa.Text, nullable=False, unique=True),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("migrated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    create_event_tables(schema)


def downgrade(schema: str) -> None:
    drop_event_tables(schema)
    op.drop_table("tenant_schemas", schema=schema)
