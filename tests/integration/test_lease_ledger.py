"""The lease on the ledger against a real PostgreSQL: a live lease refuses a second claim, an
expired one is put back to pending once, and a late worker's commit is refused."""

from __future__ import annotations

import psycopg
import pytest

from migrator import api
from migrator.backfill import ledger
from migrator.config import Settings
from migrator.db.connect import connect
from migrator.plan.model import Role
from tests.backfill_helpers import make_documents, unique_plan, wait_for

pytestmark = pytest.mark.integration


def _expired(conn: psycopg.Connection, batch_id: int) -> bool:
    row = conn.execute(
        "SELECT lease_until < now() FROM migrator.batches WHERE id = %s", (batch_id,)
    ).fetchone()
    return bool(row and row[0])


def test_lease_claim_expiry_and_late_commit(database_url: str, settings: Settings) -> None:
    make_documents(database_url, 50)
    plan = unique_plan("http://127.0.0.1:9/v1", backfill__batch_size=100)
    api.adopt(settings, plan)
    conn = connect(database_url)
    try:
        with conn.transaction():
            (batch_id,) = ledger.id_batches(conn, plan, Role.TARGET, ["1"])
        first = ledger.claim(conn, plan.name, batch_id, "w1", 0.5)
        assert first is not None and first.lease_token
        # A live lease: a second claim (a redelivered message) is refused and says who holds it.
        assert ledger.claim(conn, plan.name, batch_id, "w2", 30) is None
        assert ledger.held_by(conn, batch_id) == "w1"
        assert ledger.renew(conn, batch_id, first.lease_token, 0.5)
        assert wait_for(lambda: _expired(conn, batch_id), 10)
        # Expired: put back once (a second pass finds nothing), then claimed by another worker.
        expired = ledger.expire_leases(conn, plan.name, 600)
        assert [e.id for e in expired] == [batch_id] and expired[0].worker == "w1"
        assert ledger.expire_leases(conn, plan.name, 600) == []
        second = ledger.claim(conn, plan.name, batch_id, "w2", 30)
        assert second is not None and second.lease_token != first.lease_token
        # The first worker comes back late: it can neither renew nor commit, nor release.
        assert not ledger.renew(conn, batch_id, first.lease_token, 30)
        counters = dict(total=1, written=1, skipped=0, stale=0, dead=0, tokens=1)
        assert ledger.finish(conn, batch_id, **counters, lease_token=first.lease_token) == 0
        ledger.release(conn, batch_id, "late", 0.0, worker="w1")
        assert ledger.held_by(conn, batch_id) == "w2"
        assert ledger.finish(conn, batch_id, **counters, lease_token=second.lease_token) == 1
    finally:
        conn.close()


def test_retry_lost_with_its_worker_is_sent_again(database_url: str, settings: Settings) -> None:
    """A released batch's retry lives in its worker (a Celery countdown): if that worker dies,
    the batch is put back once its due time plus the grace passed and the worker is no longer
    seen, not after the stall time."""
    make_documents(database_url, 50)
    plan = unique_plan("http://127.0.0.1:9/v1", backfill__batch_size=100)
    api.adopt(settings, plan)
    conn = connect(database_url)
    try:
        with conn.transaction():
            (batch_id,) = ledger.id_batches(conn, plan, Role.TARGET, ["1"])
        assert ledger.claim(conn, plan.name, batch_id, "w1", 30) is not None
        ledger.release(conn, batch_id, "HTTP 500", 0.2, worker="w1", grace_s=0.3)
        assert ledger.expire_leases(conn, plan.name, 600) == []  # not due yet
        ledger.worker_seen(conn, "w1")
        assert wait_for(lambda: _expired(conn, batch_id), 10)
        # Late but its worker is alive (a busy pool): the retry is not taken from it.
        assert ledger.expire_leases(conn, plan.name, 600, lease_s=30) == []
        # Its worker no longer seen within a lease: the retry is lost with it, sent again.
        expired = ledger.expire_leases(conn, plan.name, 600, lease_s=0.001)
        assert [e.id for e in expired] == [batch_id]
        assert batch_id in ledger.to_enqueue(conn, plan.name, 600, queue_empty=False)
    finally:
        conn.close()
