"""Bridge mode: fitted maps from the new model's space into the old one, and the registry's
pointer to the bridge the search side uses now.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bridges",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "migration",
            sa.Text(),
            sa.ForeignKey("migrator.migrations.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("from_fingerprint", sa.Text(), nullable=False),
        sa.Column("to_fingerprint", sa.Text(), nullable=False),
        sa.Column("from_model", pg.JSONB(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("params", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("dims_in", sa.Integer(), nullable=False),
        sa.Column("dims_out", sa.Integer(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("bias", sa.LargeBinary(), nullable=False),
        sa.Column("train_rows", sa.Integer(), nullable=False),
        sa.Column("holdout_rows", sa.Integer(), nullable=False),
        sa.Column("retention", sa.Float()),
        sa.Column("figures", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("replaces_source", sa.Boolean(), nullable=False, server_default=sa.false()),
        schema=S,
    )
    op.create_index("bridges_migration_id_idx", "bridges", ["migration", "id"], schema=S)
    op.add_column("active_models", sa.Column("bridge_id", sa.BigInteger()), schema=S)


def downgrade() -> None:
    op.drop_column("active_models", "bridge_id", schema=S)
    op.drop_table("bridges", schema=S)
