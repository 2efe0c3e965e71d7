"""Service scope: the analysis service's projection of the tenants' memberships, so that it authorises by the
current role (kept by `membership.changed`) instead of the role in a token, which lives up to 15 minutes.

Revision ID: s0003
Revises: s0002
"""

import sqlalchemy as sa
from alembic import op

revision = "s0003"
down_revision = "s0002"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "memberships",
        sa.Column("tenant_id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Uuid, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        # A removal is kept (with its version) so that an older event arriving late cannot bring the member back.
        sa.Column("removed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def downgrade(schema: str) -> None:
    op.drop_table("memberships", schema=schema)
