"""The scheduled catch-up pass (what Celery beat runs): changed rows are re-embedded."""

from __future__ import annotations

import os
import random

import psycopg
import pytest

from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.embedding.server import run_server_in_thread
from migrator.worker.beat import beat_schedule, catch_up_once
from tests.backfill_helpers import (
    assert_all_fresh,
    make_documents,
    random_text,
    unique_plan,
    wait_for,
    workers,
)

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def test_catch_up_pass_re_embeds_changed_rows(database_url: str, settings: Settings) -> None:
    server = run_server_in_thread()
    try:
        make_documents(database_url, 400)
        plan = unique_plan(server.url, backfill__batch_size=100)
        env = dict(settings.environ)
        env["CELERY_BROKER_URL"] = REDIS
        env.pop("MIGRATOR_REDIS_URL", None)
        st = load_settings(env)
        with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
            backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        rng = random.Random(3)
        with psycopg.connect(database_url, autocommit=True) as conn:
            for pk in rng.sample(range(1, 401), 25):
                conn.execute("UPDATE documents SET body = %s WHERE id = %s", (random_text(rng), pk))
            stale = conn.execute("SELECT count(*) FROM documents WHERE embedding_v2 IS NULL")
            assert stale.fetchone() == (25,)  # the trigger cleared exactly the changed rows

        # No worker runs yet: the pass turns the changes into batches and cannot be complete
        # (with workers running, a fast machine could finish the batches within the pass).
        first = catch_up_once(plan.name, env)
        assert first["complete"] is False
        with psycopg.connect(database_url) as conn:
            open_ = conn.execute(
                "SELECT role, count(*), sum(cardinality(ids)) FROM migrator.batches "
                "WHERE migration = %s AND status = 'pending' AND kind = 'ids' GROUP BY role",
                (plan.name,),
            ).fetchall()
        # The new column's catch-up, and (backfill.refresh_source) the old vectors of text the
        # rows no longer have.
        assert sorted(open_) == [("source", 1, 25), ("target", 1, 25)]

        with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):

            def settled() -> bool:
                return bool(catch_up_once(plan.name, env).get("complete"))

            assert wait_for(settled, timeout=120, step=0.5)
        assert_all_fresh(database_url)
    finally:
        server.stop()


def test_beat_schedule_routes_to_the_plan_queue() -> None:
    sched = beat_schedule("plans/local-demo.yaml", 15)
    entry = sched["catch-up:demo-local"]
    assert entry["task"] == "migrator.catch_up"
    assert entry["options"]["queue"] == "migrator.demo-local.embedding_v2"
    assert entry["schedule"] == 15
