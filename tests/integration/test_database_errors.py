"""Database errors say what happened: a statement timeout is not a lost connection, a deadlock
is retried like a lock timeout, a cancelled statement says so. Real PostgreSQL, real locks."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psycopg
import pytest
from psycopg import sql

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl.statements import Statement
from migrator.errors import DatabaseError
from tests.backfill_helpers import make_documents, unique_plan

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _stmt(query: str, purpose: str) -> Statement:
    return Statement(sql.SQL(query), purpose, ddl=False)  # type: ignore[arg-type]


def test_a_statement_timeout_is_named_as_such(database_url: str) -> None:
    with contextlib.closing(connect(database_url)) as conn, pytest.raises(DatabaseError) as err:
        Executor(conn).run(
            (_stmt("SELECT pg_sleep(60)", "a slow step"),),
            LockPolicy(statement_timeout_ms=200, attempts=3),
        )
    msg = err.value.one_line()
    assert "statement_timeout" in msg and "a slow step" in msg, msg
    assert "lost" not in msg, msg


def test_a_cancelled_statement_is_named_as_such(database_url: str) -> None:
    with contextlib.closing(connect(database_url)) as conn:
        pid = conn.info.backend_pid

        def cancel() -> None:
            with psycopg.connect(database_url, autocommit=True) as admin:
                for _ in range(600):
                    row = admin.execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s "
                        "AND query LIKE 'SELECT pg_sleep%%'",
                        (pid,),
                    ).fetchone()
                    if row and row[0]:
                        return
                    time.sleep(0.05)

        t = threading.Thread(target=cancel)
        t.start()
        with pytest.raises(DatabaseError) as err:
            Executor(conn).run((_stmt("SELECT pg_sleep(60)", "a long step"),), LockPolicy())
        t.join(30)
    msg = err.value.one_line()
    assert "cancelled" in msg and "a long step" in msg and "lost" not in msg, msg


def test_a_deadlock_is_retried_like_a_lock_timeout(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE pair (id int PRIMARY KEY, x int)")
        setup.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    conn = connect(database_url)
    other = psycopg.connect(database_url)  # a transaction of another client
    try:
        # The executor's session runs the deadlock check (5 s after it starts waiting); the
        # other client waits for hours, so the executor is always the one PostgreSQL aborts.
        conn.execute("SET deadlock_timeout = '5s'")
        other.execute("SET deadlock_timeout = '1h'")
        other.execute("UPDATE pair SET x = 2 WHERE id = 2")  # holds row 2
        pid = conn.info.backend_pid
        result: list[object] = []

        def step() -> None:
            try:
                result.append(
                    Executor(conn).run(
                        (
                            _stmt("UPDATE pair SET x = 1 WHERE id = 1", "first row"),
                            _stmt("UPDATE pair SET x = 1 WHERE id = 2", "second row"),
                        ),
                        LockPolicy(attempts=5),
                    )
                )
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=step)
        t.start()
        with psycopg.connect(database_url, autocommit=True) as watch:
            for _ in range(1200):  # the executor holds row 1 and waits for row 2
                row = watch.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                if row and row[0] == "Lock":
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the executor never waited for row 2")
        # Closes the cycle: waits for the executor's row 1 until PostgreSQL aborts the executor.
        other.execute("UPDATE pair SET x = 2 WHERE id = 1")
        other.commit()
        t.join(60)
    finally:
        other.close()
    assert len(result) == 1 and not isinstance(result[0], BaseException), result
    assert result[0].attempts == 2  # type: ignore[attr-defined]
    with psycopg.connect(database_url) as check:
        assert check.execute("SELECT x FROM pair ORDER BY id").fetchall() == [(1,), (1,)]
    conn.close()


def test_backfill_reports_a_statement_timeout_not_a_lost_database(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, 50)
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    api.adopt(settings, plan)
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    # Every statement of the backfill's own session may run 2 s at most.
    sep = "&" if "?" in database_url else "?"
    env["DATABASE_URL"] = f"{database_url}{sep}options=-c%20statement_timeout%3D2000"
    st = load_settings(env)
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE migrator.batches IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseError) as err:
            backfill.run(st, plan, backfill.Options(poll_seconds=0.1))
    msg = err.value.one_line()
    assert "statement_timeout" in msg and "lost" not in msg, msg


def test_the_backfill_monitor_runs_a_pass_again_after_a_deadlock(
    database_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock (e.g. with the application, on migrator.changes) rolls back one ledger
    statement of a pass: the monitor runs the pass again instead of giving up."""
    from migrator.backfill import ledger
    from migrator.ddl import steps

    make_documents(database_url, 0)
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    api.adopt(settings, plan)
    real = ledger.batches_from_changes
    calls: list[int] = []

    def deadlock_once(*args: object, **kw: object) -> list[int]:
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "batches_from_changes", deadlock_once)
    with contextlib.closing(connect(database_url)) as conn:
        Executor(conn).run(steps.expand(plan, api.live_facts(conn, plan)).forward, LockPolicy())
        enq = backfill.Enqueuer(REDIS, plan, 60.0)
        try:
            mon = backfill.Monitor(
                conn,
                plan,
                enq,
                60.0,
                backfill.Options(poll_seconds=0.01),
                {"rows_eligible": 0, "rows_done": 0, "written": 0},
                time.monotonic(),
            )
            out = mon.loop(lambda: None)
        finally:
            enq.close()
    assert out["complete"] is True and len(calls) == 2
