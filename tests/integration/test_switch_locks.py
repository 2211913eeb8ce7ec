"""The switch against other sessions: a long transaction on the view, and concurrent operators."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from migrator import switch
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.errors import ConcurrentRunError, LockTimeoutError, PhaseError
from migrator.search.client import SearchClient
from tests.lock_probe import lock_waits
from tests.switch_helpers import migrated_state, plan_file, switch_plan, view_catalog

pytestmark = pytest.mark.integration


def _phase(url: str, name: str) -> str:
    with contextlib.closing(connect(url)) as conn:
        m = state.get_migration(conn, name)
    assert m is not None
    return m.phase.value


def _wait_for_lock_waiter(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'migrator:%' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the cutover never waited for the lock")


def test_long_transaction_delays_the_switch_not_the_searches(
    settings: Settings,
    database_url: str,
) -> None:
    plan = switch_plan()  # cutover: lock_timeout 200 ms, 50 attempts
    migrated_state(settings, plan, 1500)
    blocker = psycopg.connect(database_url)  # a report query left open in a transaction
    blocker.execute("SELECT count(*) FROM documents_search")
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["result"] = switch.cutover(settings, plan)
        except Exception as exc:
            outcome["result"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    _wait_for_lock_waiter(database_url)

    # A second operator at the same moment: refused by the operator lock, nothing changed.
    with pytest.raises(ConcurrentRunError):
        switch.cutover(settings, plan)

    # Searches keep flowing: a new query waits at most one lock_timeout behind the switch
    # (measured by PostgreSQL: a client stopwatch would time embedding and scheduling too).
    searches = 0
    with (
        lock_waits(database_url) as waits,
        SearchClient(database_url, view="documents_search") as client,
    ):
        end = time.monotonic() + 1.5
        while time.monotonic() < end or searches < 5:
            res = client.search("Return the number of bytes written", 5)
            searches += 1
            assert res.hits and not res.mixed
            assert res.fingerprint == plan.source.model.fingerprint()
    lock_s = plan.cutover.lock_timeout_ms / 1000
    assert waits.samples > 0 and waits.max_seconds < lock_s + 0.3, vars(waits)
    assert _phase(database_url, plan.name) == "verified"  # still waiting, nothing applied

    blocker.rollback()
    thread.join(timeout=15)
    res = outcome["result"]
    assert isinstance(res, switch.SwitchResult), res
    assert res.attempts > 1 and res.hold_ms > 0
    assert _phase(database_url, plan.name) == "cut_over"
    with pytest.raises(PhaseError, match="the migration is cut_over"):
        switch.cutover(settings, plan)  # the loser, later: sees the new phase and refuses

    # Attempts run out: a clean LockTimeoutError and nothing applied.
    short = switch_plan(cutover__attempts=3, cutover__lock_timeout_ms=100)
    blocker.execute("SELECT count(*) FROM documents_search")
    view0 = view_catalog(database_url, plan)
    with pytest.raises(LockTimeoutError):
        switch.rollback(settings, short)
    assert view_catalog(database_url, plan) == view0
    assert _phase(database_url, plan.name) == "cut_over"
    blocker.rollback()
    blocker.close()
    assert switch.rollback(settings, short).attempts == 1
    with contextlib.closing(connect(database_url)) as conn:
        evs = state.events(conn, plan.name, 50)
    # The switch events only (the `short` plan's new cutover settings add a "tuning updated"
    # event of the same command before them).
    rollbacks = [
        (e["result"], e["message"])
        for e in evs
        if e["command"] == "rollback" and not e["message"].startswith("tuning updated")
    ]
    assert rollbacks[0][0] == "error" and "could not lock" in rollbacks[0][1]
    assert rollbacks[-1][0] == "ok"
    cut_ok = [e for e in evs if e["command"] == "cutover" and e["result"] == "ok"]
    assert cut_ok[0]["details"]["attempts"] == res.attempts


def test_two_cutover_processes_at_once_exactly_one_acts(
    settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> None:
    plan = switch_plan()
    migrated_state(settings, plan, 1000)
    path = plan_file(plan, tmp_path)
    cmd = [sys.executable, "-m", "migrator", "cutover", "--database-url", database_url, path]
    if not (Path(__file__).resolve().parents[2] / "migrator" / "__main__.py").exists():
        cmd = [str(Path(sys.executable).with_name("migrator")), *cmd[3:]]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] in (7, 8), outs  # 7: already cut over, 8: lock held
    assert _phase(database_url, plan.name) == "cut_over"
    with contextlib.closing(connect(database_url)) as conn:
        oks = [
            e
            for e in state.events(conn, plan.name, 50)
            if e["command"] == "cutover" and e["result"] == "ok"
        ]
    assert len(oks) == 1
