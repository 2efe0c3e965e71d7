"""Tenant scope: repositories and analyses (one copy in every tenant schema).

Revision ID: t0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "t0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    now = sa.func.now()
    op.create_table(
        "repositories",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("default_branch", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )
    op.create_index("repositories_name_ci", "repositories", [sa.text("lower(name)")], unique=True, schema=schema)
    op.create_table(
        "analyses",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "repository_id", sa.Uuid, sa.ForeignKey(f"{schema}.repositories.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("step", sa.Text, nullable=False, server_default=""),
        sa.Column("timings", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error_code", sa.Text, nullable=False, server_default=""),
        sa.Column("error_message", sa.Text, nullable=False, server_default=""),
        sa.Column("commit_sha", sa.Text, nullable=False, server_default=""),
        sa.Column("report", postgresql.JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="analyses_status"
        ),
        schema=schema,
    )
    op.create_index("analyses_repository", "analyses", ["repository_id", "id"], schema=schema)
    op.create_index("analyses_status", "analyses", ["status", "id"], schema=schema)


def downgrade(schema: str) -> None:
    op.drop_table("analyses", schema=schema)
    op.drop_table("repositories", schema=schema)
