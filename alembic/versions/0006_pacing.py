"""Pacing that protects search: per migration, the baseline search p99 measured before the
backfill's first batch (a restarted coordinator reuses it), the last probe and the pace every
worker reads before each batch (docs/backfill.md "Pacing").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pacing",
        sa.Column(
            "migration",
            sa.Text(),
            sa.ForeignKey(f"{S}.migrations.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("baseline_p99_ms", sa.Float()),
        sa.Column("baseline_p50_ms", sa.Float()),
        sa.Column("baseline_queries", sa.Integer()),
        # What the baseline was measured on (served column, fingerprint, k, search settings).
        sa.Column("baseline_shape", pg.JSONB()),
        sa.Column("baseline_at", TS),
        # NULL: not pacing (workers run at the full rate); 0: paused; else a share of it.
        sa.Column("pace", sa.Float()),
        sa.Column("last_p99_ms", sa.Float()),
        sa.Column("last_ratio", sa.Float()),
        sa.Column("probed_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("pacing", schema=S)
