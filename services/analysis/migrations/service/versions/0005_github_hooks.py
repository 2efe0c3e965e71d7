"""Service scope: GitHub webhooks. `hook_targets` says whose a repository is (a hook names only the repository) and
which generation of its derived secret is in force; `hook_deliveries` keeps each delivery's id, so that a delivery
GitHub sends again queues nothing.

Revision ID: s0005
Revises: s0004
"""

import sqlalchemy as sa
from alembic import op

revision = "s0005"
down_revision = "s0004"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "hook_targets",
        sa.Column("repository_id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index("hook_targets_tenant", "hook_targets", ["tenant_id"], schema=schema)
    op.create_table(
        "hook_deliveries",
        sa.Column("delivery_id", sa.Text, primary_key=True),
        sa.Column("repository_id", sa.Uuid, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index("hook_deliveries_received", "hook_deliveries", ["received_at"], schema=schema)


def downgrade(schema: str) -> None:
    op.drop_table("hook_deliveries", schema=schema)
    op.drop_table("hook_targets", schema=schema)
