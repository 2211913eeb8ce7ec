"""No row keeps a vector of text it no longer has, with real concurrent connections.

- An ORM that saves back a vector it loaded before another connection changed the text.
- An application that changes text without writing a new old-model vector (before cutover):
  recorded, counted (status, verify), refreshed with the OLD model (backfill.refresh_source),
  and cutover refuses while too many remain.
The unit of work runs in-process (no Celery) so each interleaving is exact.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from migrator import api, switch
from migrator.backfill import ledger, refresh, work
from migrator.backfill import monitor as backfill
from migrator.backfill.ratelimit import NoLimiter
from migrator.config import Settings, load_settings
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.ddl.statements import STALE_TEXT_CHANGED, STALE_WRITTEN_ALONE
from migrator.embedding import provider_for
from migrator.embedding.local import HashEmbedder
from migrator.errors import PhaseError
from migrator.plan.model import Plan
from tests.backfill_helpers import assert_all_fresh, make_documents, unique_plan
from tests.switch_helpers import mark_verified

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
OLD = HashEmbedder("local-hash-old", 256)
N = 60


def _plan(**kw: Any) -> Plan:
    return unique_plan("", source__model__provider="local", target__model__provider="local", **kw)


def _run_batches(conn: psycopg.Connection, plan: Plan, ids: list[int]) -> None:
    for bid in ids:
        work.run_batch(
            conn,
            plan,
            bid,
            provider=lambda rs: provider_for(rs.model, {}),
            limiter=lambda rs: NoLimiter(),
        )


def _backfilled(database_url: str, settings: Settings, plan: Plan) -> None:
    """Expand and fill the new column through the real unit of work."""
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    backfill.run(load_settings(env), plan, backfill.Options(wait=False))
    with contextlib.closing(connect(database_url)) as conn:
        ids = conn.execute(
            "SELECT id FROM migrator.batches WHERE migration = %s", (plan.name,)
        ).fetchall()
        _run_batches(conn, plan, [int(r[0]) for r in ids])


def _catch_up(conn: psycopg.Connection, plan: Plan, roles: tuple[str, ...] = ("target",)) -> None:
    _run_batches(conn, plan, ledger.batches_from_changes(conn, plan, list(roles)))


def _load(conn: psycopg.Connection, column: str, pk: int) -> tuple[str, Any]:
    row = conn.execute(f"SELECT body, {column} FROM documents WHERE id = %s", (pk,)).fetchone()
    assert row is not None
    return row[0], row[1]


def _old_vector(url: str, pk: int) -> np.ndarray | None:
    with psycopg.connect(url) as conn:
        register_vector(conn)
        row = conn.execute("SELECT embedding FROM documents WHERE id = %s", (pk,)).fetchone()
    assert row is not None
    return None if row[0] is None else np.asarray(row[0].to_numpy(), dtype=np.float32)


def test_an_orm_saving_back_a_loaded_new_vector_never_leaves_it_stale(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, N)
    plan = _plan()
    _backfilled(database_url, settings, plan)
    assert_all_fresh(database_url)
    orm = psycopg.connect(database_url, autocommit=True)  # the ORM's session
    app = psycopg.connect(database_url, autocommit=True)  # another request of the application
    try:
        register_vector(orm)
        _, loaded5 = _load(orm, "embedding_v2", 5)
        _, loaded6 = _load(orm, "embedding_v2", 6)
        app.execute("UPDATE documents SET body = 'text changed by another request' WHERE id = 5")
        app.execute("UPDATE documents SET body = 'another change, not caught up yet' WHERE id = 6")
        with contextlib.closing(connect(database_url)) as conn:
            _catch_up(conn, plan)  # row 5 gets its fresh vector; row 6 not yet
            app.execute("UPDATE documents SET body = 'second change of 6' WHERE id = 6")
            # The ORM saves its objects: the title it edited and the vector it loaded, not
            # the text (which it did not touch).
            orm.execute(
                "UPDATE documents SET title = 'edited', embedding_v2 = %s WHERE id = 5", (loaded5,)
            )
            orm.execute(
                "UPDATE documents SET title = 'edited', embedding_v2 = %s WHERE id = 6", (loaded6,)
            )
            pending = ledger.pending_changes(conn, plan.name)
            _catch_up(conn, plan)
    finally:
        orm.close()
        app.close()
    assert pending >= 1  # the save-back of row 5 was caught and queued
    assert_all_fresh(database_url)


def test_stale_old_vectors_are_recorded_counted_refreshed_and_gate_cutover(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, N)
    plan = _plan()
    _backfilled(database_url, settings, plan)
    orm = psycopg.connect(database_url, autocommit=True)
    app = psycopg.connect(database_url, autocommit=True)
    try:
        register_vector(orm)
        register_vector(app)
        # 7: the application changes the text and does not write the old model's vector.
        app.execute("UPDATE documents SET body = 'seven, rewritten' WHERE id = 7")
        # 9: a diligent request writes text and old vector together; then an ORM session that
        # loaded row 9 earlier saves its old vector back, without the text.
        _, loaded9 = _load(orm, "embedding", 9)
        app.execute(
            "UPDATE documents SET body = 'nine, rewritten', embedding = %s WHERE id = 9",
            (OLD.encode(["nine, rewritten"])[0],),
        )
        orm.execute("UPDATE documents SET embedding = %s WHERE id = 9", (loaded9,))
        # 11: diligent, nothing to record.
        app.execute(
            "UPDATE documents SET body = 'eleven, rewritten', embedding = %s WHERE id = 11",
            (OLD.encode(["eleven, rewritten"])[0],),
        )
        # 13: the text becomes blank, the old vector stays.  15: changed, then deleted.
        app.execute("UPDATE documents SET body = '  ' WHERE id = 13")
        app.execute("UPDATE documents SET body = 'fifteen' WHERE id = 15")
        app.execute("DELETE FROM documents WHERE id = 15")
    finally:
        orm.close()
        app.close()
    with contextlib.closing(connect(database_url)) as conn:
        reasons = dict(
            conn.execute(
                "SELECT pk, reason FROM migrator.stale_sources WHERE migration = %s",
                (plan.name,),
            ).fetchall()
        )
        assert reasons == {
            "7": STALE_TEXT_CHANGED,
            "9": STALE_WRITTEN_ALONE,
            "13": STALE_TEXT_CHANGED,
            "15": STALE_TEXT_CHANGED,
        }
        assert api.progress(conn, plan)["stale_sources"] == 4
        _catch_up(conn, plan)
        assert_all_fresh(database_url)
        Executor(conn).run(steps.index(plan, api.live_facts(conn, plan)).forward, LockPolicy())
        mark_verified(conn, plan, N - 1)
    with pytest.raises(PhaseError, match="4 rows still hold an old vector"):
        switch.cutover(settings, plan)
    with contextlib.closing(connect(database_url)) as conn:
        _run_batches(conn, plan, refresh.batches_from_stale(conn, plan))
        assert refresh.stale_count(conn, plan.name) == 0
        assert refresh.sweep_stale(conn, plan) == []
    for pk, text in ((7, "seven, rewritten"), (9, "nine, rewritten"), (11, "eleven, rewritten")):
        got = _old_vector(database_url, pk)
        assert got is not None and np.allclose(got, OLD.encode([text])[0], atol=1e-5), pk
    assert _old_vector(database_url, 13) is None  # no text: no vector
    res = switch.cutover(settings, plan)
    assert res.stale_sources == 0


def test_after_cutover_the_old_column_is_maintained_against_save_backs(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, N)
    plan = _plan()
    _backfilled(database_url, settings, plan)
    with contextlib.closing(connect(database_url)) as conn:
        Executor(conn).run(steps.index(plan, api.live_facts(conn, plan)).forward, LockPolicy())
        mark_verified(conn, plan, N)
    switch.cutover(settings, plan)
    with psycopg.connect(database_url, autocommit=True) as orm:
        register_vector(orm)
        _, loaded = _load(orm, "embedding", 20)
        orm.execute("UPDATE documents SET body = 'twenty after cutover' WHERE id = 20")
        orm.execute("UPDATE documents SET embedding = %s WHERE id = 20", (loaded,))
        assert _load(orm, "embedding", 20)[1] is None  # cleared, not kept
    with contextlib.closing(connect(database_url)) as conn:
        _catch_up(conn, plan, ("target", "source"))
        assert refresh.stale_count(conn, plan.name) == 0
    got = _old_vector(database_url, 20)
    assert got is not None and np.allclose(got, OLD.encode(["twenty after cutover"])[0], atol=1e-5)
    assert_all_fresh(database_url)
