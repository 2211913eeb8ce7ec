"""Finalize stopped part-way (Ctrl-C, a lock held by a long pg_dump) leaves a state the state
machine knows: `finalizing`, change capture still running, rollback refused, and a rerun of
finalize completes it. Before, the trigger was dropped first in a transaction of its own: the
phase stayed cut_over, rollback was allowed, and text changes no longer queued anything.
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest

from migrator import api, switch
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.db.executor import Executor
from migrator.ddl.statements import Statement
from migrator.errors import LockTimeoutError, PhaseError
from migrator.plan.model import Plan
from tests.catalog_helpers import capture_objects
from tests.switch_helpers import migrated_state, source_index, switch_plan

pytestmark = pytest.mark.integration


def _phase(url: str, plan: Plan) -> str:
    with contextlib.closing(connect(url)) as conn:
        m = state.get_migration(conn, plan.name)
    assert m is not None
    return m.phase.value


def _queued_after_edit(url: str, pk: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET body = body || ' (edited)' WHERE id = %s", (pk,))
        row = conn.execute(
            "SELECT count(*) FROM migrator.changes WHERE pk = %s", (str(pk),)
        ).fetchone()
    return int(row[0]) if row else 0


def _assert_known_partial_state(settings: Settings, url: str, plan: Plan) -> None:
    assert _phase(url, plan) == "finalizing"
    assert capture_objects(url)["triggers"] == [plan.trigger_name]
    assert _queued_after_edit(url, 5) == 1  # change capture still runs
    with pytest.raises(PhaseError, match="cannot rollback: the migration is finalizing") as err:
        switch.rollback(settings, plan)
    assert "finalize has started" in err.value.one_line()
    assert "finalize PLAN --yes" in api.status(settings, plan)["next"]


def _assert_finalized(url: str, plan: Plan) -> None:
    assert _phase(url, plan) == "finalized"
    assert capture_objects(url) == {"triggers": [], "functions": []}
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (source_index(plan),)).fetchone() == (None,)
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'documents'::regclass "
                "AND attnum > 0 AND NOT attisdropped"
            ).fetchall()
        }
    assert plan.source.column not in cols and plan.target.column in cols


def test_ctrl_c_while_dropping_the_old_index_leaves_finalizing_and_a_rerun_completes(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = switch_plan()
    migrated_state(settings, plan, 600)
    switch.cutover(settings, plan)
    real = Executor._execute

    def interrupt_on_index_drop(self: Executor, st: Statement) -> None:
        if st.purpose.startswith(f"drop {source_index(plan)}"):
            raise KeyboardInterrupt  # the operator pressed Ctrl-C while it waited
        real(self, st)

    monkeypatch.setattr(Executor, "_execute", interrupt_on_index_drop)
    with pytest.raises(KeyboardInterrupt):
        switch.finalize(settings, plan, yes=True, force=True)
    monkeypatch.undo()
    _assert_known_partial_state(settings, database_url, plan)
    with pytest.raises(PhaseError, match="irreversible"):
        switch.finalize(settings, plan, yes=False)  # a rerun still needs the confirmation
    switch.finalize(settings, plan, yes=True)  # the window was checked by the first run
    _assert_finalized(database_url, plan)


def test_a_lock_timeout_on_the_old_index_says_what_was_applied_and_a_rerun_resumes(
    settings: Settings, database_url: str
) -> None:
    plan = switch_plan(ddl__lock_timeout_ms=100, ddl__attempts=2)
    migrated_state(settings, plan, 600)
    switch.cutover(settings, plan)
    # A long reader (pg_dump, a report) holds ACCESS SHARE: DROP INDEX CONCURRENTLY waits
    # for it and gives up after its attempts.
    blocker = psycopg.connect(database_url)
    blocker.execute("SELECT count(*) FROM documents")
    try:
        with pytest.raises(LockTimeoutError) as err:
            switch.finalize(settings, plan, yes=True, force=True)
        hint = err.value.hint or ""
        assert "all-or-nothing" not in hint
        assert "finalizing" in hint and "rerun" in hint.lower(), hint
    finally:
        blocker.close()
    _assert_known_partial_state(settings, database_url, plan)
    switch.finalize(settings, plan, yes=True)
    _assert_finalized(database_url, plan)
