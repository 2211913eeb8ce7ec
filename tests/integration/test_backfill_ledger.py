"""The ledger and the unit of work against a real PostgreSQL, without Celery; the shared rate
budget against a real Redis; lost messages found from the database."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from migrator import api
from migrator.backfill import ledger, work
from migrator.backfill import monitor as backfill
from migrator.backfill.ratelimit import NoLimiter, RedisLimiter
from migrator.config import Settings, load_settings
from migrator.db.connect import connect
from migrator.embedding import provider_for
from migrator.embedding.server import ServerHandle, run_server_in_thread
from tests.backfill_helpers import assert_all_fresh, make_documents, unique_plan, workers

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle = run_server_in_thread()
    yield handle
    handle.stop()


def _settings(settings: Settings) -> Settings:
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    env.pop("MIGRATOR_REDIS_URL", None)
    return load_settings(env)


def _run(conn: psycopg.Connection, plan: object, batch_id: int) -> work.BatchOutcome:
    return work.run_batch(
        conn,
        plan,
        batch_id,  # type: ignore[arg-type]
        provider=lambda rs: provider_for(rs.model, {}),
        limiter=lambda rs: NoLimiter(),
    )


def test_ranges_follow_key_order_and_resume(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 1050)
    plan = unique_plan(server.url, backfill__batch_size=100)
    st = _settings(settings)
    # Enqueue only: nothing consumes the queue in this test.
    backfill.run(st, plan, backfill.Options(wait=False))
    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key_lo, key_hi FROM migrator.batches WHERE migration = %s ORDER BY id",
            (plan.name,),
        ).fetchall()
        assert rows[0] == (None, "100") and rows[1] == ("100", "200")
        assert rows[-1] == ("1000", None) and len(rows) == 11  # the last range is open above
        # A rerun creates no second set of ranges.
        assert list(ledger.create_range_batches(conn, plan)) == []
        # Every batch's rows: exactly batch_size (keys compared as numbers, not text).
        total = 0
        for b in conn.execute(
            "SELECT id FROM migrator.batches WHERE migration = %s", (plan.name,)
        ).fetchall():
            out = _run(conn, plan, int(b[0]))
            assert out.status == "done" and out.total <= 100
            total += out.total
        assert total == 1050
    assert_all_fresh(database_url)


def test_duplicate_execution_writes_nothing_and_is_counted(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 300)
    plan = unique_plan(server.url, backfill__batch_size=300)
    backfill.run(_settings(settings), plan, backfill.Options(wait=False))
    with connect(database_url) as conn:
        (bid,) = conn.execute(
            "SELECT id FROM migrator.batches WHERE migration = %s ORDER BY id LIMIT 1", (plan.name,)
        ).fetchone()  # type: ignore[misc]
        first = _run(conn, plan, bid)
        assert first.written == 300
        # A redelivered message of a finished batch does nothing at all.
        assert _run(conn, plan, bid).status == "not-open"
        # A second execution that had claimed the batch before the first one finished.
        conn.execute("UPDATE migrator.batches SET status = 'running' WHERE id = %s", (bid,))
        second = _run(conn, plan, bid)
        assert second.status == "duplicate" and second.written == 0 and second.total == 0
        prog = api.progress(conn, plan)
    assert prog["duplicate_executions"] == 1 and prog["rows_written"] == 300


def test_stale_text_is_not_overwritten_and_changes_become_batches(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 200)
    plan = unique_plan(server.url, backfill__batch_size=200)
    backfill.run(_settings(settings), plan, backfill.Options(wait=False))
    with connect(database_url) as conn:
        (bid,) = conn.execute(
            "SELECT id FROM migrator.batches WHERE migration = %s ORDER BY id LIMIT 1", (plan.name,)
        ).fetchone()  # type: ignore[misc]

        class ChangingProvider:
            """Changes row 5's text while its batch is being embedded."""

            def __init__(self) -> None:
                self.inner = provider_for(plan.target.model, {})

            def __getattr__(self, name: str) -> object:
                return getattr(self.inner, name)

            def embed(self, texts: list[str]) -> object:
                with psycopg.connect(database_url, autocommit=True) as other:
                    other.execute("UPDATE documents SET body = 'brand new text' WHERE id = 5")
                    other.execute("DELETE FROM documents WHERE id = 6")
                return self.inner.embed(texts)

        out = work.run_batch(
            conn,
            plan,
            bid,
            provider=lambda rs: ChangingProvider(),  # type: ignore[arg-type,return-value]
            limiter=lambda rs: NoLimiter(),
        )
        assert out.stale == 2 and out.written == 198
        v = conn.execute("SELECT embedding_v2 IS NULL FROM documents WHERE id = 5").fetchone()
        assert v == (True,)
        ids = ledger.batches_from_changes(conn, plan, ["target"])
        assert len(ids) == 1
        assert ledger.batches_from_changes(conn, plan, ["target"]) == []  # marked processed
        assert _run(conn, plan, ids[0]).written == 1
    assert_all_fresh(database_url)


def test_lost_messages_are_found_from_the_database(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 600)
    plan = unique_plan(server.url, backfill__batch_size=100)
    st = _settings(settings)
    backfill.run(st, plan, backfill.Options(wait=False))
    # The broker loses every message (a restart without persistence).
    redis.Redis.from_url(REDIS).delete(plan.queue)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2, stall_after=1.0))
    assert out["complete"]
    assert_all_fresh(database_url)


def test_redis_budget_is_shared_and_a_pause_stops_everyone() -> None:
    client = redis.Redis.from_url(REDIS)
    key = f"migrator:ratelimit:test-{uuid.uuid4().hex[:8]}"
    a = RedisLimiter(client, key, rpm=600, tpm=None)
    b = RedisLimiter(client, key, rpm=600, tpm=None)
    t0 = time.monotonic()
    granted = 0
    while time.monotonic() - t0 < 1.0:
        (a if granted % 2 else b).acquire(1, 0)
        granted += 1
    # Two limiters, one budget: an 18-request burst (BURST of a minute) plus 9.7/s of refill.
    assert 18 <= granted <= 32
    b.pause(0.4)
    t1 = time.monotonic()
    a.acquire(1, 0)
    assert time.monotonic() - t1 >= 0.39
    tok = RedisLimiter(client, key + ":t", rpm=None, tpm=6000)
    assert tok.try_acquire(1, 180) == 0.0  # the bucket holds BURST (3%) of a minute
    assert tok.try_acquire(1, 180) > 0.0
    client.delete(key, key + ":t")
