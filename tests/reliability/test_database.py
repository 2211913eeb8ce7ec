"""Matrix 15, 16 and 21: DDL behind a long transaction (bounded search latency, no errors, the
step completes after), a cancelled index build (INVALID detected, cutover refused, rebuilt),
and the database going away mid-backfill and coming back."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.embedding.server import ServerHandle
from migrator.errors import DatabaseError, PhaseError
from migrator.verify.index_build import ensure_index, index_info
from tests.backfill_helpers import assert_all_fresh, kill_workers, make_documents, wait_for
from tests.reliability_helpers import (
    FaultProxy,
    PrivatePostgres,
    PrivateRedis,
    Writer,
    assert_accounting,
    assert_searches_clean,
    faulty_plan,
    search_load,
    settings_for,
    start_workers,
)
from tests.switch_helpers import fill_target, migrated_state, switch_plan

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
LOCK_MS = 200


def _max_latency_ms(load: dict[str, Any]) -> float:
    return max(p["max_ms"] for p in load["data"]["phases"])


def test_ddl_behind_a_long_transaction_keeps_searches_flowing(
    database_url: str, settings: Settings, broker: PrivateRedis
) -> None:
    n = 2000
    plan = switch_plan(ddl__lock_timeout_ms=LOCK_MS, ddl__attempts=200)
    settings = settings_for(settings, broker.url)  # batches are queued, nobody consumes them
    make_documents(database_url, n)
    api.adopt(settings, plan)
    # A write transaction left open: it blocks ADD COLUMN and CREATE INDEX CONCURRENTLY.
    blocker = psycopg.connect(database_url)
    outcome: dict[str, Any] = {}
    with search_load(database_url, plan, qps=30, processes=2) as load:
        time.sleep(1.0)
        blocker.execute("UPDATE documents SET title = title WHERE id = 1")
        # ADD COLUMN + trigger need ACCESS EXCLUSIVE: they wait behind the blocker.
        expand = threading.Thread(
            target=lambda: outcome.update(
                expand=backfill.run(settings, plan, backfill.Options(wait=False))
            )
        )
        expand.start()
        time.sleep(2.5)
        assert expand.is_alive(), "the DDL did not wait for the long transaction"
        blocker.rollback()
        expand.join(30)
        with contextlib.closing(connect(database_url)) as conn:
            fill_target(conn, plan)
            # CREATE INDEX CONCURRENTLY waits for the blocker's snapshot, blocking nobody.
            blocker.execute("UPDATE documents SET title = title WHERE id = 1")
            build = threading.Thread(
                target=lambda: outcome.update(
                    index=ensure_index(
                        Executor(conn), database_url, plan, LockPolicy(LOCK_MS, 0, 200)
                    )
                )
            )
            build.start()
            time.sleep(2.0)
            assert build.is_alive(), "the index build did not wait for the long transaction"
            blocker.rollback()
            build.join(60)
            assert index_info(conn, plan).state == "valid"
            phase = state.get_migration(conn, plan.name)
    blocker.close()
    assert outcome["expand"]["phase"] == "expanded" and phase is not None
    assert outcome["index"].action in ("built", "rebuilt")
    data = assert_searches_clean(load, min_queries=100)
    # A search waits at most one lock_timeout behind a waiting DDL, never the whole blocker.
    assert _max_latency_ms(load) < LOCK_MS + 600, data["phases"]


def test_cancelled_index_build_refuses_cutover_until_rebuilt(
    settings: Settings, database_url: str
) -> None:
    plan = switch_plan()
    migrated_state(settings, plan, 3000)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP INDEX "{plan.index_name}"')
    errors: list[BaseException] = []
    with (
        search_load(database_url, plan, qps=20) as load,
        contextlib.closing(connect(database_url)) as build_conn,
    ):
        pid = build_conn.info.backend_pid

        def build() -> None:
            try:
                ensure_index(Executor(build_conn), database_url, plan, LockPolicy())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=build)
        thread.start()
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_progress_create_index WHERE pid = %s", (pid,)
                    ).fetchone()
                    == (1,)
                ),
                30,
                0.01,
            )
            conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(30)
        assert errors and isinstance(errors[0], DatabaseError)
        assert index_info(build_conn, plan).state == "invalid"
        with pytest.raises(PhaseError, match="no valid index"):
            switch.cutover(settings, plan)
        res = ensure_index(Executor(build_conn), database_url, plan, LockPolicy())
        assert res.action == "rebuilt" and res.invalid_dropped == 1
        assert index_info(build_conn, plan).state == "valid"
        cut = switch.cutover(settings, plan)
        time.sleep(1.0)
    assert cut.phase_after == "cut_over"
    assert_searches_clean(load)


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(tmp_path / "pg")
    url = pg.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    try:
        yield pg
    finally:
        pg.stop()


@pytest.mark.slow
def test_database_restart_mid_backfill(
    private_pg: PrivatePostgres,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
    tmp_path: Path,
) -> None:
    url = private_pg.url
    n = 3000
    make_documents(url, n)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=100,
    )
    env = {**settings.environ, "DATABASE_URL": url, "MIGRATOR_HOME": str(tmp_path / "home")}
    st = settings_for(load_settings(env), broker.url)
    api.adopt(st, plan)
    procs = start_workers(url, broker.url, plan.queue, n=1, concurrency=2)
    first: dict[str, Any] = {}

    def produce() -> None:
        try:
            first["out"] = backfill.run(
                st, plan, backfill.Options(poll_seconds=0.3, stall_after=3.0)
            )
        except BaseException as exc:
            first["error"] = exc

    try:
        writer = Writer(url, n).start()
        runner = threading.Thread(target=produce)
        runner.start()
        assert wait_for(lambda: _done(url, plan.name) >= 5, 60)
        private_pg.stop()
        time.sleep(3.0)
        assert private_pg.start() == url, "the database came back elsewhere"
        runner.join(120)
        log = writer.stop()
        # The producer lost its connection (and the operator lock with it): rerun to resume,
        # as the error says. The workers were not restarted.
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=3.0))
    finally:
        kill_workers(procs)
    err = first.get("error")
    # The producer stops with a one-line database error (exit 4), not a traceback.
    assert isinstance(err, DatabaseError), repr(err)
    assert "\n" not in err.one_line() and "rerun" in err.one_line()
    assert out["complete"]
    assert_all_fresh(url)
    assert_accounting(url, n, log)
    assert log.errors > 0, "the writer never saw the database go away"


def _done(url: str, name: str) -> int:
    with contextlib.suppress(psycopg.Error), psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM migrator.batches WHERE migration = %s AND status = 'done'",
            (name,),
        ).fetchone()
        return int(row[0]) if row else 0
    return 0
