"""Service scope: README badges. `badge_targets` says whose a repository is (a badge URL names only the repository)
and which generation of its derived badge token is in force; rotating the token moves the generation on.

Revision ID: s0006
Revises: s0005
"""

import sqlalchemy as sa
from alembic import op

revision = "s0006"
down_revision = "s0005"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "badge_targets",
        sa.Column("repository_id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index("badge_targets_tenant", "badge_targets", ["tenant_id"], schema=schema)


def downgrade(schema: str) -> None:
    op.drop_table("badge_targets", schema=schema)
