"""Tenant scope: what an analysis compares against. `base_ref` is the branch a branch or pull request is judged
against (null: the default branch), `pull_request` its number and head and base commits, `trigger` what queued it
when not a user (a GitHub webhook: the repository and commit its status goes to); the index finds a branch's
newest analyses (the base of a comparison, the branch list).

Revision ID: t0003
Revises: t0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "t0003"
down_revision = "t0002"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.add_column("analyses", sa.Column("base_ref", sa.Text, nullable=True), schema=schema)
    op.add_column("analyses", sa.Column("pull_request", postgresql.JSONB, nullable=True), schema=schema)
    op.add_column("analyses", sa.Column("trigger", postgresql.JSONB, nullable=True), schema=schema)
    op.create_index("analyses_repository_ref", "analyses", ["repository_id", "ref", "id"], schema=schema)


def downgrade(schema: str) -> None:
    op.drop_index("analyses_repository_ref", table_name="analyses", schema=schema)
    op.drop_column("analyses", "trigger", schema=schema)
    op.drop_column("analyses", "pull_request", schema=schema)
    op.drop_column("analyses", "base_ref", schema=schema)
