"""Estimates that hold: the token sample is random over a table stored in key order whose text
length grows with the key (the old LIMIT over TABLESAMPLE SYSTEM pages read the low keys)."""

from __future__ import annotations

import contextlib

import psycopg
import pytest

from migrator.api import count_tokens
from migrator.config import Settings
from migrator.db import catalog
from migrator.db.connect import connect
from migrator.ddl import statements as q
from migrator.plan.estimate import BACKFILL_FIXED_SECONDS, DB_SECONDS_PER_ROW_COLUMN, estimate
from tests.helpers import demo_plan

pytestmark = pytest.mark.integration
ROWS = 40_000
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _key_ordered_table(url: str) -> None:
    """Row i's body has 5 + i * 200 / ROWS words: the longest texts are the highest keys."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, "
            "embedding vector(256))"
        )
        with conn.cursor() as cur, cur.copy("COPY documents (id, title, body) FROM STDIN") as cp:
            for i in range(1, ROWS + 1):
                n = 5 + i * 200 // ROWS
                cp.write_row((i, f"t{i}", " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))))
        conn.execute("ANALYZE documents")


def _old_sample(conn: psycopg.Connection, plan: object, rows: int, sample: int) -> list[str]:
    """What `plan` sampled before: SYSTEM pages, then the first `sample` rows of them."""
    from psycopg import sql

    pct = min(100.0, max(0.01, 100.0 * sample * 3 / rows))
    out = conn.execute(
        sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM (%s) REPEATABLE (1) LIMIT %s").format(
            q.text_expr(plan),
            q.table_ident(plan),  # type: ignore[arg-type]
        ),
        (pct, sample),
    ).fetchall()
    return [r[0] for r in out]


def test_token_estimate_within_ten_percent_on_a_key_ordered_table(
    database_url: str, settings: Settings
) -> None:
    plan = demo_plan(source__model__provider="local", target__model__provider="local")
    _key_ordered_table(database_url)
    with contextlib.closing(connect(database_url)) as conn:
        everything = [r[0] for r in conn.execute("SELECT body FROM documents").fetchall()]
        ins = catalog.inspect(conn, plan, sample=500)
        old = _old_sample(conn, plan, ROWS, 500)
    truth = sum(count_tokens(plan, settings, everything)[0])
    assert ins.rows == ROWS and len(ins.sample_texts) == 500
    new = estimate(plan, ROWS, count_tokens(plan, settings, ins.sample_texts)[0]).tokens
    before = estimate(plan, ROWS, count_tokens(plan, settings, old)[0]).tokens
    assert abs(before - truth) / truth > 0.10, (before, truth)  # the scenario bites
    assert abs(new - truth) / truth <= 0.10, (new, truth)
    # Repeatable: the same plan reads the same sample.
    with contextlib.closing(connect(database_url)) as conn:
        assert catalog.inspect(conn, plan, sample=500).sample_texts == ins.sample_texts


def test_live_plan_times_the_provider_and_estimates_from_its_rate(
    database_url: str, settings: Settings
) -> None:
    from migrator import api
    from migrator.embedding.server import run_server_in_thread
    from tests.helpers import create_documents

    create_documents(database_url, 500)
    server = run_server_in_thread(latency_ms=300)  # every request takes at least 300 ms
    try:
        plan = demo_plan(server.url, backfill__concurrency=2)
        calibrated = api.plan_live(plan, settings, workers=1).as_dict()["estimate"]
        assumed = api.plan_live(plan, settings, calibrate=False).as_dict()["estimate"]
    finally:
        server.stop()
    cal = calibrated["calibration"]
    assert cal["requests"] == 3 and 0 < cal["rows_per_request"] <= plan.backfill.batch_size
    assert cal["median_seconds"] >= 0.3  # the server's latency is a floor, whatever the load
    # 2 requests at once (1 worker x 2 in flight) came back together: the server sleeps its
    # latency in threads, side by side, as a hosted API answers.
    assert cal["concurrent_requests"] == 2 and cal["parallelism"] > 0.5
    # 1 worker, 2 requests in flight at the measured parallelism, then its writes.
    rate = (1 + cal["parallelism"]) * cal["rows_per_request"] / cal["median_seconds"]
    assert calibrated["bound_by"] == "the measured provider rate"
    expected = BACKFILL_FIXED_SECONDS + 500 * (1 / rate + DB_SECONDS_PER_ROW_COLUMN)
    assert calibrated["seconds"] == pytest.approx(expected, abs=0.1)
    assert assumed["calibration"] is None and assumed["bound_by"].startswith("throughput")
