"""Backfill end to end: real PostgreSQL, real Redis broker, real Celery worker processes, the
real `openai` client against the local embeddings server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from migrator import api, backfill, state
from migrator.cli import cli
from migrator.config import Settings, load_settings
from migrator.embedding.server import ServerHandle, run_server_in_thread
from tests.backfill_helpers import assert_all_fresh, make_documents, unique_plan, workers

pytestmark = pytest.mark.integration

REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle = run_server_in_thread()
    yield handle
    handle.stop()


def _settings(settings: Settings, broker: str) -> Settings:
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = broker
    env.pop("MIGRATOR_REDIS_URL", None)
    return load_settings(env)


def test_20k_rows_every_row_fresh_and_status_agrees(
        database_url: str, settings: Settings, server: ServerHandle) -> None:
    n = int(os.environ.get("MIGRATOR_TEST_BACKFILL_ROWS", "20000"))
    make_documents(database_url, n, empty_every=97)
    plan = unique_plan(server.url)
    st = _settings(settings, REDIS)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        t0 = time.monotonic()
        summary = backfill.run(st, plan, backfill.Options(poll_seconds=0.3))
        seconds = time.monotonic() - t0
    print(f"\nbackfill of {n} rows: {seconds:.1f} s, {summary['rows_written'] / seconds:.0f} rows/s"
          f" (summary {summary['rows_per_second']} rows/s)")
    counts = assert_all_fresh(database_url)
    assert summary["complete"] and summary["phase"] == "backfilled"
    assert summary["rows_pending"] == 0 and summary["dead_letters"] == 0
    assert summary["rows_eligible"] == counts["eligible"] == summary["rows_done"]
    assert summary["rows_written"] == counts["eligible"]
    assert summary["rows_empty"] == n - counts["eligible"] > 0
    status = api.status(st, plan)
    prog = status["progress"]
    assert status["phase"] == "backfilled"
    assert prog["rows_done"] == prog["rows_eligible"] == counts["eligible"]
    assert prog["rows_pending"] == 0 and prog["pending_changes"] == 0
    assert prog["batches"] == {"done": prog["batches_total"]}
    # Rerunning is harmless: nothing left to do, nothing rewritten.
    again = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert again["complete"] and again["rows_written_this_run"] == 0
    out = CliRunner().invoke(cli, ["status", "--json", "--database-url", database_url,
                                   _plan_file(plan, st)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["progress"]["rows_done"] == counts["eligible"]


def _plan_file(plan: object, st: Settings) -> str:
    import yaml

    path = st.home / "plan.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.canonical()))  # type: ignore[attr-defined]
    return str(path)


def test_phase_is_not_moved_backwards(database_url: str, settings: Settings,
                                      server: ServerHandle) -> None:
    make_documents(database_url, 300)
    plan = unique_plan(server.url, backfill__batch_size=100)
    st = _settings(settings, REDIS)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=1):
        backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        with psycopg.connect(database_url, autocommit=True) as conn:
            state.set_phase(conn, plan.name, state.State.VERIFIED)
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert out["complete"] and out["phase"] == "verified"
