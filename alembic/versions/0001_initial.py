"""migrator's schema: migrations, event log, batch ledger, dead letters, change queue,
verification reports and the active-model registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "migrator"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("plan_hash", sa.Text(), nullable=False),
        sa.Column("plan", pg.JSONB(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("source_fingerprint", sa.Text(), nullable=False),
        sa.Column("target_fingerprint", sa.Text(), nullable=False),
        sa.Column("view_snapshot", pg.JSONB()),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("cutover_at", TS),
        schema=S,
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("phase_before", sa.Text()),
        sa.Column("phase_after", sa.Text()),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("details", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=S,
    )
    op.create_index("events_migration_id_idx", "events", ["migration", "id"], schema=S)
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "migration",
            sa.Text(),
            sa.ForeignKey(f"{S}.migrations.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.Text(), nullable=False, server_default="target"),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key_lo", sa.Text()),
        sa.Column("key_hi", sa.Text()),
        sa.Column("ids", pg.ARRAY(sa.Text())),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("executions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rows_total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rows_written", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rows_skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rows_stale", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rows_dead", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("enqueued_at", TS),
        sa.Column("claimed_at", TS),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("finished_at", TS),
        sa.Column("error", sa.Text()),
        schema=S,
    )
    op.create_index("batches_migration_status_idx", "batches", ["migration", "status"], schema=S)
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "migration",
            sa.Text(),
            sa.ForeignKey(f"{S}.migrations.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.Text(), nullable=False, server_default="target"),
        sa.Column("pk", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("resolved_at", TS),
        schema=S,
    )
    op.create_index(
        "dead_letters_key_idx", "dead_letters", ["migration", "role", "pk"], unique=True, schema=S
    )
    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("pk", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("processed_at", TS),
        schema=S,
    )
    op.create_index("changes_migration_id_idx", "changes", ["migration", "id"], schema=S)
    op.create_index(
        "changes_pending_idx",
        "changes",
        ["migration", "id"],
        schema=S,
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "migration",
            sa.Text(),
            sa.ForeignKey(f"{S}.migrations.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("report", pg.JSONB(), nullable=False),
        sa.Column("changes_watermark", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("rows_at_report", sa.BigInteger(), nullable=False, server_default="0"),
        schema=S,
    )
    op.create_index("reports_migration_id_idx", "reports", ["migration", "id"], schema=S)
    op.create_table(
        "active_models",
        sa.Column("view_schema", sa.Text(), primary_key=True),
        sa.Column("view_name", sa.Text(), primary_key=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("column_name", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("model", pg.JSONB(), nullable=False),
        sa.Column("vector_type", sa.Text(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("switched_at", TS, nullable=False, server_default=sa.func.now()),
        schema=S,
    )


def downgrade() -> None:
    for name in (
        "active_models",
        "reports",
        "changes",
        "dead_letters",
        "batches",
        "events",
        "migrations",
    ):
        op.drop_table(name, schema=S)
