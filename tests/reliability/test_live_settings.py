"""Settings apply live: a change of `backfill.requests_per_minute` in the stored plan mid-run
is followed by every worker from its next batch (the batch records the plan version it was
claimed with, the shared bucket counts grants by the limits they were charged under)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.backfill.ratelimit import bucket_key
from migrator.config import Settings
from migrator.db import state
from migrator.embedding.server import ServerHandle
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
OLD_RPM, NEW_RPM = 6000, 6001


def _claims(url: str, name: str) -> list[tuple[int, str, str | None, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, claimed_by, plan_version, rows_total FROM migrator.batches "
            "WHERE migration = %s AND status = 'done' ORDER BY id",
            (name,),
        ).fetchall()
    return [(int(a), str(b), c, int(d)) for a, b, c, d in rows]


def test_requests_per_minute_change_is_followed_by_every_worker(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    make_documents(database_url, 800)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=20,
        backfill__concurrency=1,
        backfill__requests_per_minute=OLD_RPM,
        target__model__max_inputs_per_request=20,
    )
    st = settings_for(settings, broker.url, MIGRATOR_REDIS_URL=broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(delay=0.05)
    procs = start_workers(database_url, broker.url, plan.queue, n=2, concurrency=1)
    result: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: result.update(backfill.run(st, plan, backfill.Options(poll_seconds=0.3)))
    )
    try:
        runner.start()
        assert wait_for(lambda: len(_claims(database_url, plan.name)) >= 6, 120)
        # The operator changes a tuning key (what a rerun of `migrator backfill` stores).
        with psycopg.connect(database_url, autocommit=True) as conn:
            old_version = state.plan_version(conn, plan.name)
            conn.execute(
                "UPDATE migrator.migrations SET plan = jsonb_set(plan, "
                "'{backfill,requests_per_minute}', to_jsonb(%s::int)) WHERE name = %s",
                (NEW_RPM, plan.name),
            )
            new_version = state.plan_version(conn, plan.name)
            row = conn.execute("SELECT now()").fetchone()
        assert new_version != old_version and row is not None
        runner.join(240)
        assert not runner.is_alive()
    finally:
        kill_workers(procs)
    assert result.get("complete"), result
    claims = _claims(database_url, plan.name)
    before = [c for c in claims if c[2] == old_version]
    after = [c for c in claims if c[2] == new_version]
    assert before and after and len(before) + len(after) == len(claims), claims
    # Every worker process that ran batches before the change ran batches after it too.
    workers_before = {c[1] for c in before}
    assert len(workers_before) == 2 and workers_before <= {c[1] for c in after}, claims
    # A batch claimed with the new version asked the shared bucket with the new limit only:
    # one request per non-empty batch.
    grants = broker.client().hgetall(bucket_key(plan.name, "target") + ":grants")
    counts = {k.decode(): int(v) for k, v in grants.items()}
    assert counts.get(f"{NEW_RPM}/0", 0) == len([c for c in after if c[3]]), (counts, claims)
    assert counts.get(f"{OLD_RPM}/0", 0) == len([c for c in before if c[3]]), (counts, claims)
    assert_all_fresh(database_url)
