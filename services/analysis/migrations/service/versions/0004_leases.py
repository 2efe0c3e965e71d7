"""Service scope: leases, the workers' locks on a repository and on a tenant's share of the workers.

A lease names its holder and ends by itself: the holder renews it while it runs, and a holder that dies (or loses
the database) stops renewing, so the lease lapses within `JOB_ACK_WAIT_S`. Unlike a session advisory lock it
cannot stay held by a pooled connection, does not need a connection held for the whole analysis, and works
through a transaction-pooling proxy.

Revision ID: s0004
Revises: s0003
"""

import sqlalchemy as sa
from alembic import op

revision = "s0004"
down_revision = "s0003"
branch_labels = None
depends_on = None


def upgrade(schema: str) -> None:
    op.create_table(
        "leases",
        # "repository:<id>" or "tenant:<id>:<place>"
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index("leases_holder", "leases", ["holder"], schema=schema)


def downgrade(schema: str) -> None:
    op.drop_table("leases", schema=schema)
