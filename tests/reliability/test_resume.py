"""Matrix 12-14 at the switch and 19: freshness and row accounting of every row through a
cutover under writes, and the orchestrator SIGKILLed inside each step in turn, then rerun:
it converges to the same end state as an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.db.catalog import live_facts
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.embedding.server import ServerHandle
from migrator.plan.model import Plan
from tests.backfill_helpers import assert_all_fresh, kill_workers, make_documents, unique_plan
from tests.conftest import with_database
from tests.helpers import create_documents
from tests.reliability_helpers import (
    FaultProxy,
    PrivateRedis,
    Writer,
    assert_accounting,
    assert_searches_clean,
    faulty_plan,
    search_load,
    settings_for,
    start_workers,
)
from tests.switch_helpers import mark_verified, plan_file, view_catalog

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
ROOT = Path(__file__).resolve().parents[2]


def _pending(url: str, name: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM migrator.changes WHERE migration = %(m)s AND "
            "processed_at IS NULL), (SELECT count(*) FROM migrator.batches WHERE migration = "
            "%(m)s AND status IN ('pending', 'running'))",
            {"m": name},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.slow
def test_every_row_fresh_through_a_cutover_under_writes(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    n = 3000
    make_documents(database_url, n)
    plan = faulty_plan(server, proxy, backfill__batch_size=200, verify__max_stale_fraction=0.5)
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    stop = threading.Event()
    follow: dict[str, Any] = {}
    try:
        with search_load(database_url, plan, qps=20) as load:
            writer = Writer(database_url, n).start()
            # --follow keeps catching up (both columns after the cutover) without the lock.
            follower = threading.Thread(
                target=lambda: follow.update(
                    backfill.run(
                        st,
                        plan,
                        backfill.Options(follow=True, poll_seconds=0.3, should_stop=stop.is_set),
                    )
                )
            )
            follower.start()
            # Writes never stop, so the backfill never looks complete: switch once the
            # initial ranges are done, with the catch-up still running.
            deadline = time.monotonic() + 120
            while not _ranges_done(database_url, plan.name):
                assert time.monotonic() < deadline
                time.sleep(0.3)
            with contextlib.closing(connect(database_url)) as conn:
                facts = live_facts(conn, plan)
                Executor(conn).run(steps.index(plan, facts).forward, LockPolicy())
                mark_verified(conn, plan, n)
            cut = switch.cutover(st, plan)  # while the writer still writes
            time.sleep(2.0)
            log = writer.stop()
            deadline = time.monotonic() + 60
            while _pending(database_url, plan.name) != (0, 0):
                assert time.monotonic() < deadline
                time.sleep(0.3)
            time.sleep(1.0)
            assert _pending(database_url, plan.name) == (0, 0)
            stop.set()
            follower.join(30)
    finally:
        stop.set()
        kill_workers(procs)
    assert cut.phase_after == "cut_over" and follow.get("complete")
    assert_all_fresh(database_url)
    assert_accounting(database_url, n, log)
    assert log.total > 100
    assert_searches_clean(load)


def _ranges_done(url: str, name: str) -> bool:
    with contextlib.suppress(psycopg.Error), psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM "
            "migrator.batches WHERE migration = %s AND kind = 'range'",
            (name,),
        ).fetchone()
        return bool(row and row[0] and row[0] == row[1])
    return False


def _phase(url: str, plan: Plan) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT phase FROM migrator.migrations WHERE name = %s", (plan.name,)
        ).fetchone()
    return str(row[0]) if row else "none"


STEPS = ("backfill", "verify", "cutover", "rollback", "cutover")
AFTER = {
    "backfill": "backfilled",
    "verify": "verified",
    "cutover": "cut_over",
    "rollback": "rolled_back",
}


def _wait_connected(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until `proc` has a session in the database (or has exited)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while proc.poll() is None and time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"migrator:%:{proc.pid}:%",),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)


def _cmd(step: str, path: str) -> list[str]:
    extra = ["--workers", "0"] if step == "backfill" else []
    return [sys.executable, "-m", "migrator", step, *extra, path]


def _end_state(url: str, plan: Plan) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        registry = conn.execute(
            "SELECT column_name, fingerprint FROM migrator.active_models"
        ).fetchall()
        open_batches = conn.execute(
            "SELECT count(*) FROM migrator.batches WHERE status <> 'done'"
        ).fetchone()
        locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        cols = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = "
            "'documents'::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum"
        ).fetchall()
    cat = view_catalog(url, plan)
    return {
        "phase": _phase(url, plan),
        "invalid_indexes": invalid,
        "registry": registry,
        "open_batches": open_batches,
        "advisory_locks": locks,
        "columns": cols,
        "view": {k: cat[k] for k in ("definition", "column_types", "reloptions")},
    }


@contextlib.contextmanager
def _fresh_db(pg_server: str) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    try:
        yield url
    finally:
        with (
            psycopg.connect(pg_server, autocommit=True) as conn,
            contextlib.suppress(psycopg.Error),
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_orchestrator_killed_inside_each_step_then_rerun_converges(
    pg_server: str, settings: Settings, server: ServerHandle, broker: PrivateRedis, tmp_path: Path
) -> None:
    plan = unique_plan(
        server.url,
        backfill__batch_size=100,
        verify__sample_size=100,
        cutover__rollback_window_hours=24,
    )
    path = plan_file(plan, tmp_path)
    ends: dict[str, dict[str, Any]] = {}
    for kill_at in (None, *range(len(STEPS))):
        with _fresh_db(pg_server) as url:
            create_documents(url, 1500)
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "CELERY_BROKER_URL": broker.url,
                "MIGRATOR_HOME": str(tmp_path / "home"),
                "PYTHONPATH": str(ROOT),
            }
            env.pop("MIGRATOR_REDIS_URL", None)
            procs = start_workers(url, broker.url, plan.queue, n=1, concurrency=2)
            killed = []
            try:
                for i, step in enumerate(STEPS):
                    if i == kill_at:
                        p = subprocess.Popen(
                            _cmd(step, path),
                            env=env,
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                        # Inside the step: once the process is connected (its application_name
                        # carries its pid), whatever its start-up takes on this machine (a fixed
                        # sleep stopped landing inside the steps once start-up became fast).
                        _wait_connected(url, p)
                        time.sleep(0.05 * i)
                        if p.poll() is None:
                            os.killpg(p.pid, signal.SIGKILL)
                            killed.append(step)
                        p.wait(10)
                    # The rerun (or the normal run) of this step must succeed.
                    res = subprocess.run(
                        _cmd(step, path),
                        env=env,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=180,
                    )
                    # Exit 7 is right when the killed step had committed before the kill:
                    # the phase says it is done and the rerun refuses to do it twice.
                    done = res.returncode == 7 and i == kill_at and _phase(url, plan) == AFTER[step]
                    assert res.returncode == 0 or done, (
                        kill_at,
                        step,
                        res.stdout[-2000:],
                        res.stderr[-2000:],
                    )
            finally:
                kill_workers(procs)
            st = load_settings({**env})
            assert_all_fresh(url)
            ends[str(kill_at)] = {**_end_state(url, plan), "killed": killed}
            assert api.status(st, plan)["phase"] == "cut_over"
    reference = {k: v for k, v in ends["None"].items() if k != "killed"}
    for key, end in ends.items():
        assert {k: v for k, v in end.items() if k != "killed"} == reference, (key, end)
    assert sum(bool(e["killed"]) for e in ends.values()) >= 3, ends
