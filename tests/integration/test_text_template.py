"""A template with literal text ("Title: {title}") must not make rows without text eligible:
a row is eligible when at least one column the template names holds non-blank text, and the
text of any other row is never sent to the provider."""

from __future__ import annotations

import os
from collections.abc import Sequence

import psycopg
import pytest

from migrator.backfill import ledger, work
from migrator.backfill import monitor as backfill
from migrator.backfill.ratelimit import NoLimiter
from migrator.config import Settings, load_settings
from migrator.db.connect import connect
from migrator.embedding import Provider, provider_for
from migrator.embedding.base import Matrix
from migrator.embedding.server import run_server_in_thread
from tests.backfill_helpers import unique_plan

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
TEMPLATE = "Title: {title}\n\n{body}"
ROWS = [
    (1, "Parsing", "How to parse JSON"),
    (2, None, None),  # nothing to embed
    (3, "  \t", None),  # only whitespace
    (4, None, "A body without a title"),
    (5, "A title alone", ""),
]


class Recording(Provider):
    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.fingerprint, self.dimensions, self.limits = (
            inner.fingerprint,
            inner.dimensions,
            inner.limits,
        )
        self.sent: list[str] = []

    def embed(self, texts: Sequence[str]) -> Matrix:
        self.sent.extend(texts)
        return self.inner.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate(text, max_tokens)


def test_template_literals_do_not_make_empty_rows_eligible(
    database_url: str, settings: Settings
) -> None:
    server = run_server_in_thread()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, "
                "category text, embedding vector(256))"
            )
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO documents (id, title, body) VALUES (%s, %s, %s)", ROWS)
        plan = unique_plan(server.url, text__column=None, text__template=TEMPLATE)
        env = dict(settings.environ)
        env["CELERY_BROKER_URL"] = REDIS
        backfill.run(load_settings(env), plan, backfill.Options(wait=False))
        rec: dict[str, Recording] = {}

        def provider(rs: work.RoleSpec) -> Provider:
            return rec.setdefault(rs.role, Recording(provider_for(rs.model, {})))

        with connect(database_url) as conn:
            counts = ledger.row_counts(conn, plan, plan.target.column)
            assert counts["rows_eligible"] == 3 and counts["rows_empty"] == 2, counts
            for (bid,) in conn.execute(
                "SELECT id FROM migrator.batches WHERE migration = %s", (plan.name,)
            ).fetchall():
                work.run_batch(conn, plan, bid, provider=provider, limiter=lambda rs: NoLimiter())
            assert ledger.sweep(conn, plan, "target", plan.target.column) == []
            filled = conn.execute(
                "SELECT id FROM documents WHERE embedding_v2 IS NOT NULL ORDER BY id"
            ).fetchall()
    finally:
        server.stop()
    assert sorted(rec["target"].sent) == sorted(
        [
            "Title: Parsing\n\nHow to parse JSON",
            "Title: \n\nA body without a title",
            "Title: A title alone\n\n",
        ]
    )
    assert [r[0] for r in filled] == [1, 4, 5]
