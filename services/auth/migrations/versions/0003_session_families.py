"""Session families: every session opened from one login (switch-tenant included) shares its family and its
absolute expiry, and ends with it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.add_column("sessions", sa.Column("family_id", sa.Uuid, nullable=True), schema=schema)
    # A session opened before families existed is a family of its own.
    sessions = sa.table("sessions", sa.column("id", sa.Uuid), sa.column("family_id", sa.Uuid), schema=schema)
    op.execute(sessions.update().where(sessions.c.family_id.is_(None)).values(family_id=sessions.c.id))
    op.alter_column("sessions", "family_id", nullable=False, schema=schema)
    # Ending a family (logout, reuse) and all of a user's sessions (logout-all) find the live ones only.
    op.create_index(
        "sessions_family_live",
        "sessions",
        ["family_id"],
        schema=schema,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade(schema: str) -> None:
    op.drop_index("sessions_family_live", table_name="sessions", schema=schema)
    op.drop_column("sessions", "family_id", schema=schema)
