"""Storage side_table (issue 17): the new vectors in a table of their own, keyed by the
primary key. Real PostgreSQL + pgvector, real Redis broker, real Celery workers, the real
`openai` client against the local embeddings server."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.plan.model import Plan
from migrator.search.client import SearchClient
from migrator.verify.run import VerifyOptions, verify
from tests.backfill_helpers import (
    NEW,
    OLD,
    assert_all_fresh,
    current_rows,
    make_documents,
    random_text,
    unique_plan,
    wait_for,
    workers,
)
from tests.switch_helpers import mark_verified

pytestmark = pytest.mark.integration

REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


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


def _side_plan(url: str, **overrides: object) -> Plan:
    overrides.setdefault("target__storage", "side_table")
    return unique_plan(url, **overrides)


def _versions(url: str) -> dict[int, str]:
    """Each row's xmin: the transaction that wrote its current version."""
    with psycopg.connect(url) as conn:
        return {int(r[0]): str(r[1]) for r in conn.execute("SELECT id, xmin FROM documents")}


def _columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
    return [r[0] for r in rows]


def test_backfill_under_writes_leaves_the_table_alone(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    """Inserts, text updates, other updates and deletes race the workers: every row ends with
    the vector of its current text in the side table, deleted rows have none, and no row the
    application did not write has a new row version (migrator only read and locked them)."""
    n = 3000
    make_documents(database_url, n, empty_every=50)
    with psycopg.connect(database_url, autocommit=True) as conn:  # production has one
        conn.execute("CREATE INDEX ON documents USING hnsw (embedding vector_cosine_ops)")
    server.set_controls(latency_ms=20)  # long enough for the writer to race the workers
    plan = _side_plan(
        server.url, backfill__batch_size=200, target__model__max_inputs_per_request=50
    )
    side = plan.side_table
    st = _settings(settings)
    before = _versions(database_url)
    rng = random.Random(5)
    stop = threading.Event()
    log: dict[str, set[int]] = {"inserted": set(), "deleted": set(), "text": set(), "other": set()}

    def writer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set() and conn.execute(
                "SELECT to_regclass(%s)", (side,)
            ).fetchone() == (None,):
                time.sleep(0.05)
            next_id = n + 1
            while not stop.is_set():
                op, pk = rng.random(), rng.randint(1, n)
                if op < 0.3:
                    conn.execute(
                        "INSERT INTO documents (id, title, body) VALUES (%s, 't', %s)",
                        (next_id, random_text(rng)),
                    )
                    log["inserted"].add(next_id)
                    next_id += 1
                elif op < 0.6:
                    conn.execute(
                        "UPDATE documents SET body = %s WHERE id = %s", (random_text(rng), pk)
                    )
                    log["text"].add(pk)
                elif op < 0.85:
                    conn.execute("UPDATE documents SET title = title || '!' WHERE id = %s", (pk,))
                    log["other"].add(pk)
                else:
                    conn.execute("DELETE FROM documents WHERE id = %s", (pk,))
                    log["deleted"].add(pk)
                time.sleep(0.002)

    thread = threading.Thread(target=writer, daemon=True)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        thread.start()
        done: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: done.update(backfill.run(st, plan, backfill.Options(poll_seconds=0.3)))
        )
        runner.start()
        # Three seconds of writes from the moment change capture is there (expand), however
        # long the machine takes to get that far.
        assert wait_for(lambda: bool(log["inserted"]), 120)
        time.sleep(3.0)
        stop.set()
        thread.join(10)
        runner.join(180)
        assert not runner.is_alive()
        final = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert all(log.values()), {k: len(v) for k, v in log.items()}
    assert final["complete"] and final["pending_changes"] == 0
    counts = assert_all_fresh(database_url, side=side)
    assert counts["eligible"] > n * 0.9
    # The table: no target column, and no new row version of any row the writer left alone.
    assert plan.target.column not in _columns(database_url, "documents")
    after = _versions(database_url)
    touched = set().union(*log.values())
    rewritten = [i for i in after if i not in touched and after[i] != before.get(i)]
    assert not rewritten, f"{len(rewritten)} rows rewritten by the backfill, e.g. {rewritten[:5]}"
    # Deleted rows took their side rows with them (the foreign key), nothing came back.
    with psycopg.connect(database_url) as conn:
        orphans = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} s WHERE NOT EXISTS "
                "(SELECT 1 FROM documents d WHERE d.id = s.id)"
            ).format(sql.Identifier(side))
        ).fetchone()
    assert orphans == (0,)
    rows = current_rows(database_url, side)
    assert not log["deleted"] & set(rows)
    status = api.status(st, plan)
    assert status["progress"]["rows_done"] == counts["eligible"]
    assert status["progress"]["rows_pending"] == 0


def _user_view(plan: Plan) -> str:
    """The service's own view: an alias, a filter, security_invoker (owned and read by other
    roles, set up by the test)."""
    return (
        "CREATE VIEW documents_search WITH (security_invoker = true) AS SELECT d.id, d.title, "
        "d.body, "
        "d.embedding::vector AS embedding, "
        f"'{plan.source.model.fingerprint()}'::text AS embedding_model "
        "FROM documents d WHERE d.category <> 'c3'"
    )


def _viewdef(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_get_viewdef('documents_search'::regclass)").fetchone()
    assert row is not None
    return str(row[0])


def _scans(doc: object) -> dict[str, tuple[str, str]]:
    """relation -> (node type, index) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    out: dict[str, tuple[str, str]] = {}

    def walk(node: dict[str, object]) -> None:
        if "Relation Name" in node:
            out[str(node["Relation Name"])] = (str(node["Node Type"]), str(node.get("Index Name")))
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            walk(child)

    walk(doc[0]["Plan"])  # type: ignore[index]
    return out


def _plan_json(url: str, plan: Plan, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        for k, v in plan.index.search_settings().items():
            conn.execute("SELECT set_config(%s, %s, false)", (k, v))
        vec = "[" + ",".join(f"{x:.6f}" for x in NEW.encode([query])[0]) + "]"
        row = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT id FROM documents_search "
            "WHERE embedding_model = %s AND embedding IS NOT NULL AND title <> 'x' "
            "ORDER BY embedding <=> %s::vector LIMIT 10",
            (plan.target.model.fingerprint(), vec),
        ).fetchone()
    assert row is not None
    return row[0] if not isinstance(row[0], str) else json.loads(row[0])


def test_lifecycle_through_the_joined_view(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    """adopt a user's filtered view, backfill, verify (index built on the side table), cutover
    (the view joins the side table, keeps its filter, searches use the new index), rollback
    (the view exactly as it was), cutover again, finalize, and a deleted row's vector goes."""
    # The side table is dense (five 384-dim vectors per page): below a few thousand rows the
    # planner rightly prefers a sequential scan and sort to the HNSW index.
    n = 5000
    make_documents(database_url, n, old_vectors=True)
    probe = _side_plan(server.url)
    tag = probe.name.replace("-", "_")
    owner, reader = f"owner_{tag}", f"reader_{tag}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE INDEX ON documents USING hnsw (embedding vector_cosine_ops)")
        conn.execute(_user_view(probe))
        for role in (owner, reader):
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON documents TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("ALTER VIEW documents_search OWNER TO {}").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON documents_search TO {}").format(sql.Identifier(reader))
        )
    original = _viewdef(database_url)
    plan = _side_plan(
        server.url,
        name=probe.name,
        backfill__queue=probe.queue,
        backfill__batch_size=250,
        verify__sample_size=100,
        verify__ladder=[40],
        verify__max_recall_drop=0.1,
        # The view filters rows out after the join: iterative scans keep the index scan going.
        index__iterative_scan="relaxed_order",
    )
    st = _settings(settings)
    # plan shows both modes for this table; column storage over an HNSW source is warned of.
    dry = api.plan_live(plan, st, calibrate=False)
    assert dry.estimate is not None and dry.estimate["storage"] == "side_table"
    modes = dry.estimate["modes"]
    assert modes["column"]["index_write_seconds_per_row"] > 0
    assert modes["side_table"]["index_write_seconds_per_row"] == 0
    assert modes["side_table"]["disk_bytes"] < modes["column"]["disk_bytes"]
    assert not [f for f in dry.findings if "storage column" in f.what]
    as_column = _side_plan(server.url, name=probe.name, target__storage="column")
    assert [
        f
        for f in api.plan_live(as_column, st, calibrate=False).findings
        if f.level == "warning" and "consider target.storage: side_table" in f.what
    ]
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert out["complete"]
    assert_all_fresh(database_url, side=plan.side_table)
    outcome = verify(st, plan, VerifyOptions(build_index=True))
    assert outcome.report.passed
    with psycopg.connect(database_url) as conn:
        on = conn.execute(
            "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = %s::regclass",
            (plan.index_name,),
        ).fetchone()
    assert on == (plan.side_table,)

    switch.cutover(st, plan)
    cut = _viewdef(database_url)
    assert plan.side_table in cut and "migrator_side" in cut and "'c3'" in cut
    scans = _scans(_plan_json(database_url, plan, "an example query"))
    # The k-NN order comes from the side table's HNSW index; the table is probed by key.
    assert scans[plan.side_table] == ("Index Scan", plan.index_name)
    assert scans["documents"] == ("Index Scan", "documents_pkey")
    with SearchClient(database_url, view="documents_search") as client:
        hits = client.search("Return the number of bytes written", 10)
    assert len(hits.hits) == 10 and not hits.mixed
    assert hits.fingerprint == plan.target.model.fingerprint()
    with psycopg.connect(database_url) as conn:
        cats = conn.execute(
            "SELECT count(*) FROM documents_search v JOIN documents d USING (id) "
            "WHERE d.category = 'c3'"
        ).fetchone()
    assert cats == (0,)  # the user's filter survived the join
    # The reader (security_invoker: its own rights) can read the side table through the view.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
        seen = conn.execute("SELECT count(*) FROM documents_search").fetchone()
    assert seen is not None and seen[0] > 0

    back = switch.rollback(st, plan)
    assert back.view_matches_snapshot is True
    assert _viewdef(database_url) == original
    switch.cutover(st, plan)
    assert _viewdef(database_url) == cut
    switch.finalize(st, plan, yes=True, force=True)
    assert plan.source.column not in _columns(database_url, "documents")
    with SearchClient(database_url, view="documents_search") as client:
        hits = client.search("Return the number of bytes written", 10)
    assert len(hits.hits) == 10 and not hits.mixed
    # A later migration from the side table is refused, saying so, before anything changes.
    models = plan.canonical()
    later = unique_plan(
        server.url,
        source__column=plan.target.column,
        source__model=models["target"]["model"],
        target__column="embedding_v3",
        target__model=models["source"]["model"],
    )
    refused = api.plan_live(later, st, calibrate=False)
    assert [p for p in refused.problems if "side table of an earlier migration" in p.what]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM documents WHERE id = 1")
        gone = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE id = 1").format(sql.Identifier(plan.side_table))
        ).fetchone()
    assert gone == (0,)


def test_abort_drops_the_side_table_and_leaves_the_table_as_it_was(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 400)
    plan = _side_plan(server.url, backfill__batch_size=100)
    st = _settings(settings)
    cols = _columns(database_url, "documents")
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=1):
        assert backfill.run(st, plan, backfill.Options(poll_seconds=0.2))["complete"]
    switch.abort(st, plan, yes=True)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (plan.side_table,)).fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass "
            "AND NOT tgisinternal"
        ).fetchone() == (0,)
    assert _columns(database_url, "documents") == cols


@pytest.mark.slow  # two whole migrations (~1 min); its SQL is unit-tested in CI
def test_a_later_migration_from_the_side_table(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    """After a side_table migration is finalized, the next one reads its vectors from that side
    table (source.side_table): backfill (the old vectors of changed text refreshed in the old
    side table), verify, cutover (the view's join moves to the new side table), rollback (back
    to the old join exactly), cutover, finalize (the old side table dropped)."""
    n = 5000
    make_documents(database_url, n, old_vectors=True)
    first = _side_plan(server.url, backfill__batch_size=500)
    st = _settings(settings)
    with workers(database_url, REDIS, first.queue, n=1, concurrency=2):
        assert backfill.run(st, first, backfill.Options(poll_seconds=0.2))["complete"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        mark_verified(conn, first, n)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE INDEX ON {} USING hnsw (embedding_v2 vector_cosine_ops)").format(
                sql.Identifier(first.side_table)
            )
        )
    switch.cutover(st, first)
    switch.finalize(st, first, yes=True, force=True)
    served = _viewdef(database_url)
    assert first.side_table in served

    models = first.canonical()
    later = unique_plan(
        server.url,
        source__column=first.target.column,
        source__model=models["target"]["model"],
        source__side_table=first.side_table,
        target__column="embedding_v3",
        target__model=models["source"]["model"],
        target__storage="side_table",
        backfill__batch_size=500,
        verify__sample_size=100,
        verify__ladder=[40],
        verify__max_recall_drop=0.1,
    )
    assert later.side_table == "documents_embedding_v3"
    with workers(database_url, REDIS, later.queue, n=1, concurrency=2):
        assert backfill.run(st, later, backfill.Options(poll_seconds=0.2))["complete"]
        # Text changes: the new side rows go, and the old ones (what rollback serves) are
        # refreshed in the old side table by the next pass.
        changed = list(range(10, 400, 13))
        with psycopg.connect(database_url, autocommit=True) as conn:
            for i in changed:
                conn.execute("UPDATE documents SET body = body || ' changed' WHERE id = %s", (i,))
        again = backfill.run(st, later, backfill.Options(poll_seconds=0.2))
    assert again["complete"] and again["stale_sources"] == 0
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        rows = conn.execute(
            sql.SQL(
                "SELECT d.id, d.body, o.embedding_v2, s.embedding_v3 FROM documents d "
                "LEFT JOIN {} o USING (id) LEFT JOIN {} s USING (id) ORDER BY d.id"
            ).format(sql.Identifier(first.side_table), sql.Identifier(later.side_table))
        ).fetchall()
    bodies = [r[1] for r in rows]
    want_old, want_new = NEW.encode(bodies), OLD.encode(bodies)
    assert all(
        r[2] is not None and np.allclose(r[2].to_numpy(), want_old[i], atol=1e-5)
        for i, r in enumerate(rows)
    ), "an old vector (the earlier side table) is not of its row's current text"
    assert all(
        r[3] is not None and np.allclose(r[3].to_numpy(), want_new[i], atol=1e-5)
        for i, r in enumerate(rows)
    ), "a new vector is not of its row's current text"

    assert verify(st, later, VerifyOptions(build_index=True)).report.passed
    switch.cutover(st, later)
    cut = _viewdef(database_url)
    assert later.side_table in cut and first.side_table not in cut
    with SearchClient(database_url, view="documents_search") as client:
        hits = client.search("Return the number of bytes written", 10)
    assert len(hits.hits) == 10 and not hits.mixed
    assert hits.fingerprint == later.target.model.fingerprint()
    switch.rollback(st, later)
    assert _viewdef(database_url) == served
    switch.cutover(st, later)
    switch.finalize(st, later, yes=True, force=True)
    with psycopg.connect(database_url) as conn:
        gone = conn.execute("SELECT to_regclass(%s)", (first.side_table,)).fetchone()
    assert gone == (None,)
    with SearchClient(database_url, view="documents_search") as client:
        hits = client.search("Return the number of bytes written", 10)
    assert len(hits.hits) == 10 and not hits.mixed
