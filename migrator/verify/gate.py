"""The verification gate shared by `verify` (which records reports) and `cutover` (which checks).

A report is current when it passed and few rows changed since: the change queue keeps every
captured change (processed ones are marked, not deleted), so "changed since" is a count of
change records after the report's watermark, against the row count at report time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

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


def changes_watermark(conn: psycopg.Connection, migration: str) -> int:
    row = conn.execute(
        "SELECT coalesce(max(id), 0) FROM migrator.changes WHERE migration = %s", (migration,)
    ).fetchone()
    return int(row[0]) if row else 0


def record_report(
    conn: psycopg.Connection,
    plan: Plan,
    *,
    passed: bool,
    report: dict[str, Any],
    rows: int,
    watermark: int,
) -> int:
    """Store a report; `watermark` must be read before the checks ran (changes after it count)."""
    row = conn.execute(
        "INSERT INTO migrator.reports (migration, passed, report, changes_watermark, rows_at_report)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (plan.name, passed, Jsonb(report), watermark, rows),
    ).fetchone()
    assert row is not None
    return int(row[0])


def gate_status(conn: psycopg.Connection, plan: Plan) -> GateStatus:
    row = conn.execute(
        "SELECT id, passed, created_at, changes_watermark, rows_at_report FROM migrator.reports "
        "WHERE migration = %s ORDER BY id DESC LIMIT 1",
        (plan.name,),
    ).fetchone()
    if row is None:
        return GateStatus(None, False, None, 0, 0, 0.0, False)
    changed = conn.execute(
        "SELECT count(DISTINCT pk) FROM migrator.changes WHERE migration = %s AND id > %s",
        (plan.name, row[3]),
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
        raise PhaseError(
            f"the latest verification (report {st.report_id}) failed",
            hint="fix what failed and run `migrator verify PLAN` again",
        )
    if not st.current:
        raise PhaseError(
            f"the latest verification is stale: {st.changed_since} rows changed since report "
            f"{st.report_id} ({st.stale_fraction:.1%} > {plan.verify.max_stale_fraction:.1%})",
            hint="let the backfill catch up, then run `migrator verify PLAN` again",
        )
    return st
