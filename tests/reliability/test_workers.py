"""Matrix 1-3: worker processes killed at the worst moments, and a batch that outlives the
broker's visibility timeout. Each runs under a search load and concurrent writes, and checks
that every row holds exactly the new model's vector of its current text, that no row was
written twice, and that duplicates were counted."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.config import Settings
from migrator.embedding.server import ServerHandle
from tests.backfill_helpers import (
    assert_all_fresh,
    child_pids,
    kill_workers,
    make_documents,
    wait_for,
)
from tests.reliability_helpers import (
    SHORT_VISIBILITY_APP,
    Action,
    FaultProxy,
    PrivateRedis,
    Request,
    Writer,
    assert_accounting,
    assert_searches_clean,
    faulty_plan,
    search_load,
    settings_for,
    start_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _batches(url: str, name: str) -> list[tuple[int, str, int, int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts, executions, rows_written FROM migrator.batches "
            "WHERE migration = %s ORDER BY id",
            (name,),
        ).fetchall()
    return [(int(a), str(b), int(c), int(d), int(e)) for a, b, c, d, e in rows]


@pytest.mark.slow
def test_child_killed_after_embedding_then_whole_worker_killed(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    n = 3000
    make_documents(database_url, n)
    # One request per batch, one pool process per worker: the kill after the 4th answer hits
    # the process that holds those vectors and has not written them yet.
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=100,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    w0 = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=1)
    killed: dict[str, object] = {}

    def kill_child_after_answer() -> None:
        kids = child_pids(w0[0].pid)
        if kids:
            os.kill(kids[0], signal.SIGKILL)
            killed["child"] = kids[0]
            killed["at_request"] = len(proxy.log)

    def policy(req: Request) -> Action | None:
        server_time = 0.05  # a little latency, so the writer races the workers
        if req.n == 4:
            return Action(delay=server_time, after=kill_child_after_answer)
        return Action(delay=server_time)

    proxy.policy = policy
    result: dict[str, object] = {}
    w1: list = []
    try:
        with search_load(database_url, plan, qps=20) as load:
            writer = Writer(database_url, n).start()
            runner = threading.Thread(
                target=lambda: result.update(
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=3.0))
                )
            )
            runner.start()
            assert wait_for(lambda: "child" in killed, 30), "the child was never killed"
            assert wait_for(
                lambda: sum(b[1] == "done" for b in _batches(database_url, plan.name)) >= 8, 60
            )
            # Now the whole first worker (master and pool) dies; a second one takes over.
            kill_workers(w0)
            done_at_kill = sum(b[1] == "done" for b in _batches(database_url, plan.name))
            w1 = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
            time.sleep(2.0)
            log = writer.stop()
            runner.join(180)
            assert not runner.is_alive()
            # Writes that raced the end of the run are caught up by a rerun.
            final = backfill.run(st, plan, backfill.Options(poll_seconds=0.2, stall_after=3.0))
    finally:
        kill_workers(w0 + w1)
    assert result.get("complete") and final["complete"]
    counts = assert_all_fresh(database_url)
    assert_accounting(database_url, n, log)
    batches = _batches(database_url, plan.name)
    assert all(b[1] == "done" for b in batches)
    assert done_at_kill < len(batches), "the worker was killed after the end: nothing tested"
    # The killed batches ran again (at-least-once) yet each row was written exactly once.
    assert any(b[2] >= 2 for b in batches), batches
    # A row is written again only after its text changed (the change capture clears it).
    written = sum(b[4] for b in batches)
    assert counts["eligible"] <= written <= counts["eligible"] + len(log.text) + len(log.deleted)
    assert_searches_clean(load)


@pytest.mark.slow
def test_batch_outliving_the_visibility_timeout_stays_with_its_worker(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    """Redis redelivers an unacked message after the visibility timeout even while the task
    runs: the second worker finds the batch under a live lease (its worker renews it) and
    does nothing, so nothing is embedded twice and the vectors stay right."""
    n = 600
    make_documents(database_url, n)
    # Two batches of 300 rows (and an empty open-ended one), three single-process workers:
    # a redelivered message finds an idle worker while the first execution still runs.
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=300,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=300,
        # Time limits (90% of the stall) far above the 6 s requests: only the broker's
        # redelivery can start a second delivery, never a soft time limit's retry.
        backfill__stall_after_seconds=120,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(delay=6.0)  # every batch outlives the 2 s timeout
    env = {"MIGRATOR_TEST_VISIBILITY_TIMEOUT": "2"}
    procs = start_workers(
        database_url,
        broker.url,
        plan.queue,
        n=3,
        concurrency=1,
        extra_env=env,
        app=SHORT_VISIBILITY_APP,
    )
    try:
        with search_load(database_url, plan, qps=10) as load:
            out = backfill.run(st, plan, backfill.Options(poll_seconds=0.3))
            # Completion came from the database; a duplicate may still be running: wait until
            # every execution that claimed a batch has finished it.
            assert wait_for(
                lambda: all(b[2] == b[3] for b in _batches(database_url, plan.name)), 40
            ), _batches(database_url, plan.name)
    finally:
        kill_workers(procs)
    assert out["complete"]
    counts = assert_all_fresh(database_url)
    assert out["rows_written"] == counts["eligible"]
    batches = _batches(database_url, plan.name)
    # Each batch ran once: the redeliveries (every batch outlived the timeout 3 times) found
    # it held and did nothing.
    assert all(b[2] == 1 and b[3] == 1 for b in batches), batches
    assert sum(b[4] for b in batches) == counts["eligible"]
    with psycopg.connect(database_url) as conn:
        prog = api.progress(conn, plan)
    assert prog["duplicate_executions"] == 0 and prog["rows_written"] == counts["eligible"]
    # One request per non-empty batch reached the server: no batch was embedded twice.
    assert proxy.counts().get("delay", 0) == len([b for b in batches if b[4]])
    assert_searches_clean(load, min_queries=5)


def test_batch_past_its_time_limit_is_retried_not_failed(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    """A batch slowed past its soft time limit (a long pause, a hung request) is slow, not
    broken: it must be retried, never failed for good."""
    make_documents(database_url, 400)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=200,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=200,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    # stall_after 3 s gives tasks a 5 s time limit (4.5 s soft); the first answer is a 429
    # asking for a 6 s pause, which the task waits out in place.
    proxy.policy = lambda req: (
        Action(status=429, headers={"retry-after": "6"}) if req.n == 1 else None
    )
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        with search_load(database_url, plan, qps=10) as load:
            out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2, stall_after=3.0))
    finally:
        kill_workers(procs)
    assert out["complete"] and "failed" not in out["batches"] and out["retries"] >= 1
    assert_all_fresh(database_url)
    assert_searches_clean(load, min_queries=5)
