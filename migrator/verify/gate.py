"""The verification gate shared by `verify` (which records reports) and `cutover` (which checks).

A report is current when it passed and few rows changed since: the change queue keeps every
captured change (processed ones are marked, not deleted), so "changed since" is a count of the
rows of change records the report could not see, against the row count at report time.

"Could not see" is judged by transaction, not by id: ids come from a sequence when the change
is written, so a transaction still open at report time can commit a LOWER id afterwards. Each
record carries its writer's transaction id; the report keeps `pg_current_snapshot()` taken
before the checks; a record counts when that snapshot does not see its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from migrator.db import state
from migrator.errors import PhaseError
from migrator.plan.model import Plan


@dataclass(frozen=True)
class GateStatus:
    report_id: int | None
    passed: bool
    created_at: datetime | None
    changed_since: int
    rows_at_report: int
    stale_fraction: float
    current: bool


@dataclass(frozen=True)
class Watermark:
    """Where a report stands in the change queue: the snapshot, and the highest id it saw
    (for records written before schema 0003, which carry no transaction id)."""

    max_id: int
    snapshot: str


def changes_watermark(conn: psycopg.Connection, migration: str) -> Watermark:
    """Read it before the checks run: every change the snapshot cannot see counts later."""
    row = conn.execute(
        "SELECT coalesce(max(id), 0), pg_current_snapshot()::text FROM migrator.changes "
        "WHERE migration = %s",
        (migration,),
    ).fetchone()
    assert row is not None
    return Watermark(int(row[0]), str(row[1]))


def record_report(
    conn: psycopg.Connection,
    plan: Plan,
    *,
    passed: bool,
    report: dict[str, Any],
    rows: int,
    watermark: Watermark,
) -> int:
    """Store a report; `watermark` must be read before the checks ran (changes after it count)."""
    row = conn.execute(
        "INSERT INTO migrator.reports (migration, passed, report, changes_watermark, "
        "changes_snapshot, rows_at_report) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (plan.name, passed, Jsonb(report), watermark.max_id, watermark.snapshot, rows),
    ).fetchone()
    assert row is not None
    return int(row[0])


def gate_status(conn: psycopg.Connection, plan: Plan) -> GateStatus:
    row = conn.execute(
        "SELECT id, passed, created_at, changes_watermark, rows_at_report, changes_snapshot "
        "FROM migrator.reports WHERE migration = %s ORDER BY id DESC LIMIT 1",
        (plan.name,),
    ).fetchone()
    if row is None:
        return GateStatus(None, False, None, 0, 0, 0.0, False)
    # A record counts when the report's snapshot could not see its transaction (committed
    # after, or still running then); records and reports older than schema 0003: by id.
    changed = conn.execute(
        "SELECT count(DISTINCT pk) FROM migrator.changes WHERE migration = %(m)s AND ("
        " (txid IS NOT NULL AND %(snap)s::text IS NOT NULL"
        "  AND NOT pg_visible_in_snapshot(txid::text::xid8, %(snap)s::text::pg_snapshot))"
        " OR ((txid IS NULL OR %(snap)s::text IS NULL) AND id > %(mark)s))",
        {"m": plan.name, "snap": row[5], "mark": row[3]},
    ).fetchone()
    n_changed = int(changed[0]) if changed else 0
    rows = int(row[4])
    frac = n_changed / rows if rows else (1.0 if n_changed else 0.0)
    current = bool(row[1]) and frac <= plan.verify.max_stale_fraction
    return GateStatus(int(row[0]), bool(row[1]), row[2], n_changed, rows, frac, current)


def require_current_pass(conn: psycopg.Connection, plan: Plan) -> GateStatus:
    """Raise PhaseError unless the latest verification passed and is still current."""
    st = gate_status(conn, plan)
    if st.report_id is None:
        raise PhaseError(
            "no verification report for this migration", hint="run `migrator verify PLAN` first"
        )
    if not st.passed:
        verdict = state.latest_verdict(conn, plan.name)
        raise PhaseError(
            verdict.message
            if verdict
            else f"the latest verification (report {st.report_id}) failed",
            hint=verdict.hint
            if verdict
            else "fix what failed and run `migrator verify PLAN` again",
        )
    if not st.current:
        raise PhaseError(
            f"the latest verification is stale: {st.changed_since} rows changed since report "
            f"{st.report_id} ({st.stale_fraction:.1%} > {plan.verify.max_stale_fraction:.1%})",
            hint="let the backfill catch up, then run `migrator verify PLAN` again",
        )
    return st
