"""Tenants, memberships, outbox and inbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from libs.common.migrations import create_event_tables, drop_event_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    now = sa.func.now()
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("slug", sa.Text, nullable=False, unique=True),
        sa.Column("personal", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )
    op.create_table(
        "memberships",
        sa.Column("tenant_id", sa.Uuid, sa.ForeignKey(f"{schema}.tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Uuid, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member', 'viewer')", name="memberships_role"),
        schema=schema,
    )
    op.create_index("memberships_user", "memberships", ["user_id", "tenant_id"], schema=schema)
    create_event_tables(schema)


def downgrade(schema: str) -> None:
    drop_event_tables(schema)
    op.drop_table("memberships", schema=schema)
    op.drop_table("tenants", schema=schema)
