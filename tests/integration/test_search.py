"""The search side across the switch, with real processes: embeddings server, serve-search,
drill workers (several processes, >= 50 queries/s) while cutover -> rollback -> cutover run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator import api, switch
from migrator.config import Settings
from migrator.embedding.local import HashEmbedder
from migrator.embedding.server import start_server_process
from migrator.plan.model import Plan
from migrator.search.client import SearchClient, guarded_query
from migrator.search.drill import Drill
from tests.helpers import create_documents
from tests.switch_helpers import explain_view, free_port, migrated_state, switch_plan

pytestmark = pytest.mark.integration
QUERY = "Return the number of bytes written"


@pytest.fixture
def embeddings_url() -> Iterator[str]:
    proc, url = start_server_process(port=free_port())
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def serve_search(database_url: str, view: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "serve-search",
            "--view",
            view,
            "--port",
            str(port),
            "--database-url",
            database_url,
            "--pool-size",
            "2",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve-search did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _uses_index(url: str, plan: Plan, model_name: str, dims: int, fp: str) -> str:
    vec = HashEmbedder(model_name, dims).encode([QUERY])[0]
    out = explain_view(url, plan, vec, fp)
    line = next(ln for ln in out.splitlines() if "Index Scan" in ln or "Seq Scan" in ln)
    return line.strip()


def test_searches_never_fail_nor_mix_models_through_cutover_rollback_cutover(
    settings: Settings,
    database_url: str,
    embeddings_url: str,
) -> None:
    plan = switch_plan(embeddings_url)  # 256-dim old model -> 384-dim new model, over HTTP
    migrated_state(settings, plan, 2000)
    src, tgt = plan.source.model, plan.target.model
    assert "documents_embedding_hnsw_idx" in _uses_index(
        database_url, plan, src.name, src.dimensions, src.fingerprint()
    )

    with serve_search(database_url, "public.documents_search") as base:
        drill = Drill(database_url, plan, qps=60, processes=3)
        drill.start()
        served: list[tuple[str, str, int]] = []

        def http_search(phase: str) -> None:
            for _ in range(5):
                r = httpx.get(f"{base}/search", params={"q": QUERY, "k": 5}, timeout=10)
                assert r.status_code == 200, r.text
                body = r.json()
                assert all(row["embedding_model"] == body["model"] for row in body["results"])
                served.append((phase, body["model"], len(body["results"])))
                time.sleep(0.1)

        try:
            # Each phase lasts until it served 60 searches, however loaded the machine is.
            assert drill.wait_for(60)
            http_search("verified")
            switches = []
            for action, phase in (
                (switch.cutover, "cut_over"),
                (switch.rollback, "rolled_back"),
                (switch.cutover, "cut_over"),
            ):
                switches.append(action(settings, plan))
                assert drill.wait_for(60)
                http_search(phase)
        finally:
            report = drill.stop()
        metrics = httpx.get(f"{base}/metrics", timeout=5).text

    data = report.as_dict()
    assert data["failed"] == 0, data["errors"]
    assert data["cross_model_rows"] == 0 and data["empty"] == 0
    assert [p["phase"] for p in data["phases"]] == [
        "verified",
        "cut_over",
        "rolled_back",
        "cut_over",
    ]
    for p in data["phases"]:
        # Queries drawn from a row find that row: a query embedded with one model and compared
        # with the other model's vectors would find it by chance only.
        assert p["queries"] >= 50 and p["hit_rate"] >= 0.8, p
    # One transaction each, never retried with nothing blocking it (hold times are benchmark
    # figures: bench/switch.py; a loaded machine stretches them).
    assert all(s.attempts == 1 and s.hold_ms > 0 for s in switches), switches

    expected = {
        "verified": src.fingerprint(),
        "cut_over": tgt.fingerprint(),
        "rolled_back": src.fingerprint(),
    }
    assert all(model == expected[phase] and n == 5 for phase, model, n in served), served
    assert "migrator_search_searches_total 20.0" in metrics
    assert "migrator_search_failed_total 0.0" in metrics
    assert "migrator_search_mixed_rows_total 0.0" in metrics
    assert "migrator_search_model_switch_retries_total" in metrics
    assert "documents_embedding_v2_hnsw_idx" in _uses_index(
        database_url, plan, tgt.name, tgt.dimensions, tgt.fingerprint()
    )


def test_same_dimensions_wrong_model_query_gets_zero_rows_then_retries(
    settings: Settings,
    database_url: str,
) -> None:
    """256 -> 256 dims: a stale query vector WOULD compare; the fingerprint guard stops it."""
    plan = switch_plan(target__model__dimensions=256, target__model__name="local-hash-new")
    migrated_state(settings, plan, 1500)
    with SearchClient(database_url, view="documents_search", registry_ttl=3600) as client:
        old = client.active_model()
        first = client.search(QUERY, 5)
        assert first.fingerprint == plan.source.model.fingerprint() and len(first.hits) == 5
        switch.cutover(settings, plan)
        # The old model's query against the switched view: zero rows, not wrong rows.
        stale = client.query(client.embed(QUERY, old)[0], old, 5)
        assert stale == []
        second = client.search(QUERY, 5)  # cached model is stale: the guard, then a retry
        assert second.model_switch_retries == 1
        assert second.fingerprint == plan.target.model.fingerprint() and len(second.hits) == 5
        assert not second.mixed and {h.model for h in second.hits} == {second.fingerprint}
        assert second.hits[0].row["id"] == first.hits[0].row["id"]  # same best answer
        switch.rollback(settings, plan)
        third = client.search(QUERY, 5)
        assert third.model_switch_retries == 1
        assert third.fingerprint == plan.source.model.fingerprint()
        assert [h.row["id"] for h in third.hits] == [h.row["id"] for h in first.hits]


def test_guarded_query_and_phase_buckets_are_pure() -> None:
    """The SQL the library runs, rendered without a database; the drill's bucketing."""
    from migrator.plan.model import ModelSpec, VectorType
    from migrator.search.client import ActiveModel
    from migrator.search.drill import build_report

    model = ActiveModel(
        "public",
        "documents_search",
        "m",
        "embedding_v2",
        "fp",
        ModelSpec(name="x", dimensions=3),
        VectorType.HALFVEC,
        3,
        columns=("id", "title"),
    )
    from migrator.search.client import guarded_query

    assert guarded_query(model).as_string(None) == (
        'SELECT "id", "title", "embedding_model" AS _model, "embedding" <=> %(q)s::halfvec '
        'AS _distance FROM "public"."documents_search" WHERE "embedding_model" = %(fp)s '
        'AND "embedding" IS NOT NULL ORDER BY "embedding" <=> %(q)s::halfvec LIMIT %(k)s'
    )
    t0 = 1000.0
    timeline = [(t0 - 5, "verified"), (t0 + 2, "cut_over")]
    recs = [
        (t0 + 1, 5.0, True, 0, 10, True, 0, ""),
        (t0 + 3, 7.0, True, 0, 10, False, 1, ""),
        (t0 + 4, 9.0, False, 0, 0, False, 0, "boom"),
        (t0 + 4.5, 1.0, True, 2, 10, True, 0, ""),
    ]
    rep = build_report(recs, timeline, t0, t0 + 5, 1.0, 1)
    d = rep.as_dict()
    assert [p["phase"] for p in d["phases"]] == ["verified", "cut_over"]
    assert d["phases"][0]["queries"] == 1 and d["phases"][0]["started_s"] == 0.0
    cut = d["phases"][1]
    assert cut["queries"] == 3 and cut["failed"] == 1 and cut["cross_model_rows"] == 2
    assert cut["hit_rate"] == 0.5 and cut["model_switch_retries"] == 1 and d["errors"] == ["boom"]


def test_rows_without_a_vector_are_skipped_and_the_index_still_serves(
    settings: Settings, database_url: str
) -> None:
    """Fewer than k vectors (empty-text rows hold NULL): the search returns the rows that have
    one, never a NULL distance; with the index in place the guarded query still uses it."""
    plan = switch_plan()
    create_documents(database_url, 12, empty_every=3)  # rows 1, 4, 7, 10: blank, no vector
    api.adopt(settings, plan)
    with SearchClient(database_url, view="documents_search") as client:
        result = client.search(QUERY, k=20)
        ids = {h.row["id"] for h in result.hits}
    assert len(result.hits) == 8 and ids.isdisjoint({1, 4, 7, 10})
    assert all(h.distance >= 0 for h in result.hits)

    src = plan.source.model
    model = client.active_model()
    vec = HashEmbedder(src.name, src.dimensions).encode([QUERY])[0]
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        conn.execute(
            "CREATE INDEX documents_embedding_hnsw_idx ON documents "
            "USING hnsw (embedding vector_cosine_ops)"
        )
        conn.execute("SET enable_seqscan = off")  # the table is tiny: ask whether it CAN
        explain = "\n".join(
            r[0]
            for r in conn.execute(
                sql.SQL("EXPLAIN ") + guarded_query(model),
                {"q": vec, "fp": model.fingerprint, "k": 5},
            ).fetchall()
        )
    assert "Index Scan using documents_embedding_hnsw_idx" in explain, explain
