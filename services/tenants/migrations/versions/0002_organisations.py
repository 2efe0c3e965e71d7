"""Users directory, invitations, per-tenant data keys and settings.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    now = sa.func.now()
    # Who the users are, from user.registered: invitations name users by username or email.
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("full_name", sa.Text, nullable=False, server_default=""),
        schema=schema,
    )
    op.create_index("users_username_ci", "users", [sa.text("lower(username)")], unique=True, schema=schema)
    op.create_index("users_email_ci", "users", [sa.text("lower(email)")], unique=True, schema=schema)
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, sa.ForeignKey(f"{schema}.tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("invitee", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("invited_by", sa.Uuid, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_by", sa.Uuid),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member', 'viewer')", name="invitations_role"),
        schema=schema,
    )
    op.create_index("invitations_tenant", "invitations", ["tenant_id"], schema=schema)
    op.create_table(
        "data_keys",
        sa.Column("tenant_id", sa.Uuid, sa.ForeignKey(f"{schema}.tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_table(
        "settings",
        sa.Column("tenant_id", sa.Uuid, sa.ForeignKey(f"{schema}.tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("secrets", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("llm_provider", sa.Text, nullable=False, server_default="none"),
        sa.Column("llm_model", sa.Text, nullable=False, server_default=""),
        sa.Column("quality_gate", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("allowed_hosts", postgresql.ARRAY(sa.Text), nullable=False, server_default="{github.com}"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )
    op.add_column("tenants", sa.Column("deleted_at", sa.DateTime(timezone=True)), schema=schema)


def downgrade(schema: str) -> None:
    op.drop_column("tenants", "deleted_at", schema=schema)
    for table in ("settings", "data_keys", "invitations", "users"):
        op.drop_table(table, schema=schema)
