"""Change records carry the transaction that wrote them and reports the snapshot they were
taken in (a correct "changed since the report"); stale old vectors found by change capture.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"
TS = sa.DateTime(timezone=True)
TXID = "(pg_current_xact_id()::text)::bigint"


def upgrade() -> None:
    # Nullable, default set afterwards: existing records keep NULL (compared by id) instead
    # of all getting this upgrade's transaction id.
    op.add_column("changes", sa.Column("txid", sa.BigInteger()), schema=S)
    op.alter_column("changes", "txid", server_default=sa.text(TXID), schema=S)
    op.add_column("reports", sa.Column("changes_snapshot", sa.Text()), schema=S)
    op.create_table(
        "stale_sources",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("pk", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detected_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("batched_at", TS),
        sa.Column("refreshed_at", TS),
        schema=S,
    )
    op.create_index(
        "stale_sources_key_idx", "stale_sources", ["migration", "pk"], unique=True, schema=S
    )
    op.create_index(
        "stale_sources_open_idx",
        "stale_sources",
        ["migration", "id"],
        schema=S,
        postgresql_where=sa.text("refreshed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("stale_sources", schema=S)
    op.drop_column("reports", "changes_snapshot", schema=S)
    op.drop_column("changes", "txid", schema=S)
