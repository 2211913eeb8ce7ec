"""migrator's own tables, as SQLAlchemy Core metadata (the Alembic migrations build the same).

Pure: table definitions only; no connection is made here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

SCHEMA = "migrator"
metadata = MetaData(schema=SCHEMA)


def _owned_by_migration() -> Column[str]:
    """The `migration` column of a table whose rows go with their migration's row."""
    return Column(
        "migration",
        Text,
        ForeignKey("migrator.migrations.name", ondelete="CASCADE"),
        nullable=False,
    )


def _created_at() -> Column[datetime]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


migrations = Table(
    "migrations",
    metadata,
    Column("name", Text, primary_key=True),
    Column("plan_hash", Text, nullable=False),
    Column("plan", JSONB, nullable=False),
    Column("phase", Text, nullable=False),
    Column("source_fingerprint", Text, nullable=False),
    Column("target_fingerprint", Text, nullable=False),
    Column("view_snapshot", JSONB),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("cutover_at", DateTime(timezone=True)),
    # The change capture's names, stored at registration (0002): never re-derived later.
    Column("trigger_name", Text),
    Column("function_name", Text),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("migration", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("operator", Text, nullable=False),
    Column("command", Text, nullable=False),
    Column("phase_before", Text),
    Column("phase_after", Text),
    Column("result", Text, nullable=False),
    Column("message", Text, nullable=False, server_default=""),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("events_migration_id_idx", "migration", "id"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _owned_by_migration(),
    Column("role", Text, nullable=False, server_default="target"),
    Column("kind", Text, nullable=False),
    Column("key_lo", Text),
    Column("key_hi", Text),
    Column("ids", ARRAY(Text)),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("executions", Integer, nullable=False, server_default="0"),
    Column("rows_total", Integer, nullable=False, server_default="0"),
    Column("rows_written", Integer, nullable=False, server_default="0"),
    Column("rows_skipped", Integer, nullable=False, server_default="0"),
    Column("rows_stale", Integer, nullable=False, server_default="0"),
    Column("rows_dead", Integer, nullable=False, server_default="0"),
    Column("tokens", BigInteger, nullable=False, server_default="0"),
    _created_at(),
    Column("enqueued_at", DateTime(timezone=True)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("claimed_by", Text),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    # 0005: the running batch's lease (renewed by its worker's heartbeat) and failure rounds.
    Column("lease_token", Text),
    Column("lease_until", DateTime(timezone=True)),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("plan_version", Text),
    Index("batches_migration_status_idx", "migration", "status"),
)

# 0005: worker processes seen alive by their heartbeat.
workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# 0006: pacing that protects search (backfill.probe): the baseline, the last probe, the pace.
pacing = Table(
    "pacing",
    metadata,
    Column(
        "migration",
        Text,
        ForeignKey("migrator.migrations.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("baseline_p99_ms", Float),
    Column("baseline_p50_ms", Float),
    Column("baseline_queries", Integer),
    Column("baseline_shape", JSONB),
    Column("baseline_at", DateTime(timezone=True)),
    Column("pace", Float),
    Column("last_p99_ms", Float),
    Column("last_ratio", Float),
    Column("probed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _owned_by_migration(),
    Column("role", Text, nullable=False, server_default="target"),
    Column("pk", Text, nullable=False),
    Column("text_hash", Text),
    Column("reason", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    _created_at(),
    Column("resolved_at", DateTime(timezone=True)),
    Index("dead_letters_key_idx", "migration", "role", "pk", unique=True),
)

changes = Table(
    "changes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("migration", Text, nullable=False),
    Column("pk", Text, nullable=False),
    _created_at(),
    # Kept after processing (marked, not deleted) so verify can measure staleness since a report.
    Column("processed_at", DateTime(timezone=True)),
    # The writing transaction: ids are assigned before commit, so "changed since a report" asks
    # the report's snapshot which transactions it could not see (NULL: records older than 0003).
    Column("txid", BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint")),
    Index("changes_migration_id_idx", "migration", "id"),
    Index("changes_pending_idx", "migration", "id", postgresql_where=text("processed_at IS NULL")),
)

reports = Table(
    "reports",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _owned_by_migration(),
    _created_at(),
    Column("passed", Boolean, nullable=False),
    Column("report", JSONB, nullable=False),
    Column("changes_watermark", BigInteger, nullable=False, server_default="0"),
    Column("changes_snapshot", Text),  # pg_current_snapshot() when the checks began
    Column("rows_at_report", BigInteger, nullable=False, server_default="0"),
    Index("reports_migration_id_idx", "migration", "id"),
)

# Rows whose old (source) vector is of text they no longer have, seen by change capture before
# cutover; `backfill.refresh_source` re-embeds them with the old model (see docs/backfill.md).
stale_sources = Table(
    "stale_sources",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("migration", Text, nullable=False),
    Column("pk", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("batched_at", DateTime(timezone=True)),
    Column("refreshed_at", DateTime(timezone=True)),
    Index("stale_sources_key_idx", "migration", "pk", unique=True),
    Index(
        "stale_sources_open_idx", "migration", "id", postgresql_where=text("refreshed_at IS NULL")
    ),
)

active_models = Table(
    "active_models",
    metadata,
    Column("view_schema", Text, primary_key=True),
    Column("view_name", Text, primary_key=True),
    Column("migration", Text, nullable=False),
    Column("column_name", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("model", JSONB, nullable=False),
    Column("vector_type", Text, nullable=False),
    Column("dimensions", Integer, nullable=False),
    Column("switched_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The bridge the search side applies to new-model queries (0004); NULL: none.
    Column("bridge_id", BigInteger),
)

# Fitted maps from the new model's space into the old one (bridge mode, docs/bridge.md).
bridges = Table(
    "bridges",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _owned_by_migration(),
    _created_at(),
    Column("from_fingerprint", Text, nullable=False),
    Column("to_fingerprint", Text, nullable=False),
    Column("from_model", JSONB, nullable=False),
    Column("method", Text, nullable=False),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("dims_in", Integer, nullable=False),
    Column("dims_out", Integer, nullable=False),
    Column("weights", LargeBinary, nullable=False),  # float32, little-endian, dims_in x dims_out
    Column("bias", LargeBinary, nullable=False),  # float32, dims_out
    Column("train_rows", Integer, nullable=False),
    Column("holdout_rows", Integer, nullable=False),
    Column("retention", Float),
    Column("figures", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The old model is gone: catch-up of the old column and verify's baseline use this bridge.
    Column("replaces_source", Boolean, nullable=False, server_default=text("false")),
    Index("bridges_migration_id_idx", "migration", "id"),
)
