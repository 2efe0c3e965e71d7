"""An index for the outbox purge, which otherwise reads the whole outbox (tests/integration/test_query_plans.py).

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
    op.create_index(
        "outbox_published",
        "outbox",
        ["published_at"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )


def downgrade(schema: str) -> None:
    op.drop_index("outbox_published", table_name="outbox", schema=schema)
