"""The catch-up never gives up: `backfill --follow` and the beat pass keep running through a
provider outage longer than the retry policy, retry failed batches after a cool-down, and
turn rows that keep failing into dead letters (status and the exporter show them)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from migrator import api
from migrator.backfill import ledger
from migrator.backfill import monitor as backfill
from migrator.config import Settings
from migrator.embedding.server import ServerHandle
from migrator.ops.exporter import MigrationCollector
from migrator.worker.beat import catch_up_once
from tests.backfill_helpers import assert_all_fresh, kill_workers, make_documents, wait_for
from tests.reliability_helpers import (
    Action,
    FaultProxy,
    PrivateRedis,
    faulty_plan,
    settings_for,
    start_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _statuses(url: str, name: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return ledger.summary(conn, name)["batches"]  # type: ignore[no-any-return]


def test_follower_outlives_an_outage_longer_than_the_retry_policy(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    make_documents(database_url, 300)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__retry__max_attempts=2,
        backfill__failed_cooldown_seconds=0.5,
        backfill__dead_after_failures=100,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    down = threading.Event()
    down.set()
    proxy.policy = lambda req: Action(status=503) if down.is_set() else None
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    stop = threading.Event()
    result: dict[str, object] = {}
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            opts = backfill.Options(follow=True, poll_seconds=0.3, should_stop=stop.is_set)
            result.update(backfill.run(st, plan, opts))
        except BaseException as exc:  # the follower must not die: record why it did
            errors.append(exc)

    follower = threading.Thread(target=follow)
    try:
        follower.start()
        # The outage outlasts the retry policy: batches fail, the follower keeps running.
        assert wait_for(lambda: _statuses(database_url, plan.name).get("failed", 0) >= 1, 60)
        # The beat pass does not raise over failed batches either.
        beat = catch_up_once(plan.name, st.environ)
        assert "complete" in beat or "skipped" in beat, beat
        assert follower.is_alive(), errors
        down.clear()
        assert wait_for(lambda: set(_statuses(database_url, plan.name)) == {"done"}, 120), (
            _statuses(database_url, plan.name)
        )
        assert follower.is_alive(), errors
    finally:
        stop.set()
        follower.join(60)
        kill_workers(procs)
    assert not errors, errors
    assert result.get("complete"), result
    with psycopg.connect(database_url) as conn:
        rounds = conn.execute(
            "SELECT coalesce(sum(failures), 0) FROM migrator.batches WHERE migration = %s",
            (plan.name,),
        ).fetchone()
    assert rounds is not None and rounds[0] >= 1  # at least one batch came back from failed
    assert_all_fresh(database_url)


def test_rows_failing_every_round_become_dead_letters(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    make_documents(database_url, 200)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__retry__max_attempts=1,
        backfill__failed_cooldown_seconds=0.2,
        backfill__dead_after_failures=3,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(status=401)  # a key the old model no longer accepts
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        # Beat passes only: each pass retries what cooled down; none raises.
        def settled() -> bool:
            out = catch_up_once(plan.name, st.environ)
            return bool(out.get("complete"))

        backfill.run(st, plan, backfill.Options(wait=False))
        assert wait_for(settled, 120, step=0.3), _statuses(database_url, plan.name)
    finally:
        kill_workers(procs)
    with psycopg.connect(database_url) as conn:
        eligible = ledger.row_counts(conn, plan, plan.target.column)["rows_eligible"]
        dead = ledger.dead_letter_count(conn, plan.name)
        rounds = conn.execute(
            "SELECT min(failures), max(failures) FROM migrator.batches WHERE migration = %s "
            "AND status = 'dead'",
            (plan.name,),
        ).fetchone()
    assert dead == eligible > 0
    assert rounds == (3, 3)
    status = api.status(st, plan)
    assert len(status["dead_letters"]) == min(50, dead)
    families = {f.name: f for f in MigrationCollector(database_url, plan).collect()}
    assert families["migrator_dead_letters"].samples[0].value == dead
