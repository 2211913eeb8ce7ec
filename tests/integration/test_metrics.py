"""/metrics of a worker, of the search service and of the exporter expose the documented names."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import httpx
import psycopg
import psycopg.sql
import pytest

from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.embedding.server import run_server_in_thread
from migrator.ops.exporter import MigrationCollector
from tests.backfill_helpers import make_documents, unique_plan, workers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def documented(prefix: str) -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return set(re.findall(rf"`({prefix}[a-z0-9_]+)`", text))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def names(exposition: str) -> set[str]:
    out = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out


def test_worker_metrics_expose_documented_names(database_url: str, settings: Settings) -> None:
    server = run_server_in_thread()
    try:
        make_documents(database_url, 600)
        plan = unique_plan(server.url, backfill__batch_size=200)
        env = dict(settings.environ)
        env["CELERY_BROKER_URL"] = REDIS
        env.pop("MIGRATOR_REDIS_URL", None)
        st = load_settings(env)
        port = free_port()
        with workers(
            database_url,
            REDIS,
            plan.queue,
            n=1,
            concurrency=2,
            extra_env={"MIGRATOR_METRICS_PORT": str(port)},
        ):
            backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
            text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.stop()
    exposed = names(text)
    expected = (
        documented("migrator_")
        - documented("migrator_search_")
        - {n for n in documented("migrator_") if n in EXPORTER_NAMES | PACING_MEASURED}
    )
    base = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exposed}
    missing = {n for n in expected if re.sub(r"_(total)$", "", n) not in base}
    assert not missing, f"documented but not exposed by the worker: {missing}"
    rows = [line for line in text.splitlines() if line.startswith("migrator_rows_embedded_total")]
    assert sum(float(line.split()[-1]) for line in rows) == 600


EXPORTER_NAMES = {
    "migrator_exporter_up",
    "migrator_phase",
    "migrator_batches",
    "migrator_dead_letters",
    "migrator_pending_changes",
    "migrator_rows_written",
    "migrator_queue_depth",
    "migrator_index_build_progress",
    "migrator_pacing_pace",
    "migrator_pacing_paused",
    "migrator_pacing_max_p99_ratio",
}
# Exported once pacing measured a baseline / probed (tests/integration/test_pacing.py).
PACING_MEASURED = {
    "migrator_pacing_baseline_p99_seconds",
    "migrator_pacing_p99_seconds",
    "migrator_pacing_p99_ratio",
}


def test_exporter_collects_documented_names(database_url: str) -> None:
    make_documents(database_url, 50)
    plan = unique_plan("http://127.0.0.1:9/v1")
    from migrator.db.connect import ensure_schema

    ensure_schema(database_url)
    families = list(MigrationCollector(database_url, plan, queue_depth=lambda: 3).collect())
    got = {f.name for f in families}
    assert got == EXPORTER_NAMES
    assert documented("migrator_") >= EXPORTER_NAMES | PACING_MEASURED
    up = next(f for f in families if f.name == "migrator_exporter_up")
    assert up.samples[0].value == 1


def test_search_service_metrics_documented() -> None:
    from migrator.search.service import Metrics

    m = Metrics.create()
    exposed = {
        re.sub(r"_(total|created|bucket|sum|count)$", "", s.name)
        for fam in m.registry.collect()
        for s in fam.samples
    }
    exposed |= {fam.name for fam in m.registry.collect()}
    for name in documented("migrator_search_"):
        assert re.sub(r"_total$", "", name) in exposed, name
    assert documented("migrator_search_"), "docs/operations.md lists no search metrics"


def test_index_build_metric_reads_one_for_a_finished_index(database_url: str) -> None:
    make_documents(database_url, 50)
    plan = unique_plan("http://127.0.0.1:9/v1")
    from migrator.db.connect import ensure_schema

    ensure_schema(database_url)

    def progress() -> float:
        fam = next(
            f
            for f in MigrationCollector(database_url, plan, queue_depth=lambda: 0).collect()
            if f.name == "migrator_index_build_progress"
        )
        return float(fam.samples[0].value)

    assert progress() == 0.0  # no index yet
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER TABLE {} ADD COLUMN {} vector({})").format(
                psycopg.sql.Identifier(plan.table.name),
                psycopg.sql.Identifier(plan.target.column),
                psycopg.sql.Literal(plan.target.model.dimensions),
            )
        )
        conn.execute(
            psycopg.sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} vector_cosine_ops)").format(
                psycopg.sql.Identifier(plan.index_name),
                psycopg.sql.Identifier(plan.table.name),
                psycopg.sql.Identifier(plan.target.column),
            )
        )
    assert progress() == 1.0  # finished and valid: it read 0 before
