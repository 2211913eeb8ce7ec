"""Stale old vectors: the rows change capture recorded in migrator.stale_sources (before cutover)
because their old vector is of text they no longer have; their refresh batches and counts.

Owns every statement on migrator.stale_sources. Refresh batches are ordinary id batches of the
source role (the unit of work reads and writes them with `stale=True`): this module never
calls the provider or the broker; callers enqueue the ids it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from migrator.backfill import ledger
from migrator.ddl import statements as q
from migrator.plan.model import Plan, Role


def stale_count(conn: psycopg.Connection, name: str) -> int:
    """Rows still holding an old vector of text they no longer have (not refreshed yet)."""
    try:
        row = conn.execute(
            "SELECT count(*) FROM migrator.stale_sources WHERE migration = %s "
            "AND refreshed_at IS NULL",
            (name,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # a read-only caller before schema 0003
        return 0
    return int(row[0]) if row else 0


def stale_reasons(conn: psycopg.Connection, name: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT reason, count(*) FROM migrator.stale_sources WHERE migration = %s "
        "AND refreshed_at IS NULL GROUP BY reason ORDER BY reason",
        (name,),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def batches_from_stale(conn: psycopg.Connection, plan: Plan, *, limit: int = 10_000) -> list[int]:
    """Turn records not batched yet into source-role id batches, in one transaction. A record
    the trigger records again (the text changed again) loses its mark and is batched again."""
    with conn.transaction():
        rows = conn.execute(
            "WITH s AS (SELECT id FROM migrator.stale_sources WHERE migration = %s "
            "AND refreshed_at IS NULL AND batched_at IS NULL ORDER BY id LIMIT %s "
            "FOR UPDATE SKIP LOCKED) UPDATE migrator.stale_sources st SET batched_at = now() "
            "FROM s WHERE st.id = s.id RETURNING st.pk",
            (plan.name, limit),
        ).fetchall()
        return ledger.id_batches(conn, plan, Role.SOURCE, sorted(str(r[0]) for r in rows))


def sweep_stale(conn: psycopg.Connection, plan: Plan) -> list[int]:
    """Batched records still open once no batch is: batch them again (lost or skipped work),
    except dead-lettered rows (reported apart). Run only when no batch is open."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE migrator.stale_sources st SET batched_at = now() WHERE migration = %(m)s "
            "AND refreshed_at IS NULL AND NOT EXISTS (SELECT 1 FROM migrator.dead_letters d "
            "WHERE d.migration = %(m)s AND d.role = 'source' AND d.pk = st.pk "
            "AND d.resolved_at IS NULL) RETURNING st.pk",
            {"m": plan.name},
        ).fetchall()
        return ledger.id_batches(conn, plan, Role.SOURCE, sorted(str(r[0]) for r in rows))


def resolve(
    conn: psycopg.Connection,
    plan: Plan,
    pk_type: str,
    written: Sequence[str],
    others: Sequence[str],
) -> None:
    """In the batch's write transaction: records of rows just written are refreshed. Of the
    `others` (keys of the batch not written), records are closed when nothing is left to
    refresh: the row is gone, or it has neither an old vector nor text. A row whose record
    appeared after the batch read it still exists with its vector, and keeps its record."""
    if written:
        conn.execute(
            "UPDATE migrator.stale_sources SET refreshed_at = now() WHERE migration = %s "
            "AND pk = ANY(%s) AND refreshed_at IS NULL",
            (plan.name, list(written)),
        )
    if others:
        query = sql.SQL(
            "UPDATE migrator.stale_sources AS st SET refreshed_at = now() WHERE migration = "
            "%(m)s AND pk = ANY(%(ids)s) AND refreshed_at IS NULL AND NOT EXISTS (SELECT 1 "
            "FROM {tbl} WHERE t.{pk} = st.pk::{pkt} AND (t.{col} IS NOT NULL OR {text}))"
        ).format(
            tbl=q.vectors_from(plan, plan.source.column, "t"),
            pk=sql.Identifier(plan.table.primary_key),
            pkt=q.pk_type_sql(pk_type),
            col=sql.Identifier(plan.source.column),
            text=q.eligible_predicate(plan, "t"),
        )
        conn.execute(query, {"m": plan.name, "ids": list(others)})


def too_many(stale: int, rows: int, plan: Plan) -> bool:
    """More stale old vectors than the share of rows cutover tolerates changing since verify."""
    return stale > plan.verify.max_stale_fraction * max(rows, 0)
