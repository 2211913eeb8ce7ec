"""Every vector type a plan accepts, end to end: backfill through real workers, verify, cutover,
a catch-up that writes both columns in their own types, search, rollback.

pgvector-python 0.5 dumps halfvec only from `HalfVector` objects: a plan with a halfvec
column failed every batch (`'numpy.ndarray' object has no attribute 'to_binary'`) while the
suite stayed green, because no test backfilled a halfvec column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from migrator import switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.embedding.local import HashEmbedder
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.search.client import search_once
from migrator.verify.run import VerifyOptions, verify
from tests.backfill_helpers import make_documents, unique_plan, workers
from tests.helpers import fetch_vectors

pytestmark = pytest.mark.integration

REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
OLD = HashEmbedder("local-hash-old", 256)
NEW = HashEmbedder("local-hash-new", 384)
# halfvec keeps 11 bits of mantissa: a unit vector's components round within ~5e-4.
ATOL = {"vector": 1e-5, "halfvec": 2e-3}


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


def _assert_column(
    url: str, column: str, model: HashEmbedder, atol: float, where: str = "true"
) -> int:
    """Rows matching `where` with text hold `model`'s vector of their current text."""
    with psycopg.connect(url) as conn:
        bodies = dict(conn.execute(f"SELECT id, body FROM documents WHERE {where}").fetchall())
    got = fetch_vectors(url, column)
    ids = sorted(i for i, b in bodies.items() if b and b.strip())
    want = model.encode([bodies[i] for i in ids])
    wrong = [
        i
        for i, w in zip(ids, want, strict=True)
        if got[i] is None or not np.allclose(got[i], w, atol=atol)
    ]
    assert not wrong, f"{column}: {len(wrong)} rows wrong or NULL, e.g. {wrong[:5]}"
    return len(ids)


@pytest.mark.parametrize(
    ("source_type", "target_type"),
    [("vector", "vector"), ("vector", "halfvec"), ("halfvec", "vector"), ("halfvec", "halfvec")],
)
def test_lifecycle_for_every_vector_type(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    source_type: str,
    target_type: str,
) -> None:
    # Real old-model vectors: verify's parity needs the old model's recall as its baseline.
    make_documents(database_url, 3000, empty_every=101, old_vectors=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE documents ALTER COLUMN embedding TYPE {source_type}(256)")
        conn.execute("ANALYZE documents")  # the rewrite dropped the statistics
    plan = unique_plan(
        server.url,
        source__type=source_type,
        target__type=target_type,
        backfill__batch_size=500,
        verify__sample_size=100,
        # Random pseudo-word texts are a hard case for HNSW: 0.84 recall@10 at ef_search 40.
        # No source index here (exact production): an absolute floor instead of the
        # relative gate, which max_recall_drop 1 turns off.
        verify__min_index_recall=0.75,
        verify__max_recall_drop=1.0,
        verify__ladder=[40],
    )
    st = _settings(settings)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        assert out["complete"] and out["dead_letters"] == 0, out
        _assert_column(database_url, "embedding_v2", NEW, ATOL[target_type])
        verify(st, plan, VerifyOptions())
        switch.cutover(st, plan)
        # After cutover the capture keeps the old column fresh for rollback: the catch-up
        # writes the source column in its own type.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE documents SET body = body || ' revised' WHERE id % 7 = 0")
        again = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        assert again["complete"] and again["dead_letters"] == 0, again
    _assert_column(database_url, "embedding_v2", NEW, ATOL[target_type])
    # The revised rows were re-embedded by the old model (catch-up after cutover).
    revised = _assert_column(database_url, "embedding", OLD, ATOL[source_type], "id % 7 = 0")
    assert revised > 400
    env = {"MIGRATOR_LOCAL_KEY": "x"}
    hit = search_once(database_url, plan.view.name, "revised", k=5, environ=env)
    assert hit.hits and hit.mixed == 0 and hit.fingerprint == plan.target.model.fingerprint()
    switch.rollback(st, plan)
    back = search_once(database_url, plan.view.name, "revised", k=5, environ=env)
    assert back.hits and back.mixed == 0 and back.fingerprint == plan.source.model.fingerprint()
