"""Personal access tokens: bound to one user and one tenant, stored only as a SHA-256 of the token.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Uuid, sa.ForeignKey(f"{schema}.users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_reason", sa.Text),
        schema=schema,
    )
    # The listing (a user's live tokens in a tenant, newest first) and the revocations by user or tenant.
    op.create_index(
        "access_tokens_owner_live",
        "access_tokens",
        ["user_id", "tenant_id", "id"],
        schema=schema,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    op.create_index(
        "access_tokens_tenant_live",
        "access_tokens",
        ["tenant_id"],
        schema=schema,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade(schema: str) -> None:
    op.drop_table("access_tokens", schema=schema)
