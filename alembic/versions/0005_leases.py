"""Leases on running batches (a worker renews its lease while it runs the batch, so a batch
whose worker died is re-enqueued within seconds), failure rounds of failed batches (the
catch-up retries them after a cool-down and dead-letters their rows after N rounds), and the
plan version (tuning included) each batch was last claimed with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # All nullable or with a constant default: instant on PostgreSQL 11+, no table rewrite.
    op.add_column("batches", sa.Column("lease_token", sa.Text()), schema=S)
    op.add_column("batches", sa.Column("lease_until", TS), schema=S)
    # The stored plan's version (tuning included) the claiming worker ran the batch with.
    op.add_column("batches", sa.Column("plan_version", sa.Text()), schema=S)
    op.add_column(
        "batches",
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        schema=S,
    )

    # Worker processes seen alive (their heartbeat): a retry held by a worker no longer seen
    # is sent again.
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("seen_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("workers", schema=S)
    op.drop_column("batches", "failures", schema=S)
    op.drop_column("batches", "plan_version", schema=S)
    op.drop_column("batches", "lease_until", schema=S)
    op.drop_column("batches", "lease_token", schema=S)
