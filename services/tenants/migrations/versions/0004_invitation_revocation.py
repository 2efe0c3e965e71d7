"""Invitations can be revoked, and a tenant's pending ones are listed a page at a time.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.add_column("invitations", sa.Column("revoked_at", sa.DateTime(timezone=True)), schema=schema)
    op.add_column("invitations", sa.Column("revoked_by", sa.Uuid), schema=schema)
    op.create_index(
        "invitations_pending",
        "invitations",
        ["tenant_id", "id"],
        schema=schema,
        postgresql_where=sa.text("accepted_at IS NULL AND revoked_at IS NULL"),
    )


def downgrade(schema: str) -> None:
    op.drop_index("invitations_pending", table_name="invitations", schema=schema)
    op.drop_column("invitations", "revoked_by", schema=schema)
    op.drop_column("invitations", "revoked_at", schema=schema)
