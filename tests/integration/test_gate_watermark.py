"""The "changed since the report" count of the cutover gate, with real concurrent transactions.

Change ids come from a sequence, assigned when the change is written, not when its transaction
commits: a change with a lower id can commit after the report. It must still count.
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest

from migrator import api
from migrator.config import Settings
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.verify import gate
from tests.backfill_helpers import make_documents, unique_plan

pytestmark = pytest.mark.integration


def test_a_change_with_a_lower_id_committed_after_the_report_counts(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, 100)
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    api.adopt(settings, plan)
    with contextlib.closing(connect(database_url)) as conn:
        Executor(conn).run(steps.expand(plan, api.live_facts(conn, plan)).forward, LockPolicy())
        slow = psycopg.connect(database_url)  # a transaction still open when the report is made
        try:
            slow.execute("UPDATE documents SET body = 'slow writer' WHERE id = 1")
            conn.execute("UPDATE documents SET body = 'quick writer' WHERE id = 2")
            ids = conn.execute(
                "SELECT id FROM migrator.changes WHERE migration = %s ORDER BY id", (plan.name,)
            ).fetchall()
            assert len(ids) == 1  # the slow writer's change (the lower id) is not visible yet
            mark = gate.changes_watermark(conn, plan.name)
            gate.record_report(conn, plan, passed=True, report={}, rows=100, watermark=mark)
            before = gate.gate_status(conn, plan)
            slow.commit()
        finally:
            slow.close()
        after = gate.gate_status(conn, plan)
        rows = conn.execute(
            "SELECT pk FROM migrator.changes WHERE migration = %s ORDER BY id", (plan.name,)
        ).fetchall()
    assert [r[0] for r in rows] == ["1", "2"]  # the slow writer's change has the lower id
    assert before.changed_since == 0
    assert after.changed_since == 1  # committed after the report: it counts
    conn2 = connect(database_url)
    try:
        conn2.execute("UPDATE documents SET body = 'later' WHERE id = 3")
        assert gate.gate_status(conn2, plan).changed_since == 2
    finally:
        conn2.close()
