"""Pacing that protects search, end to end: real PostgreSQL, a real Redis broker, real Celery
worker processes, the real `openai` client against the local embeddings server.

A limit no probe can meet (max_p99_ratio 0.01) throttles the backfill to its floor and pauses
it; while paused no batch is claimed and no row is written; raising the limit live (the stored
plan, as a rerun of `migrator backfill` stores it) resumes it to completion. Invariants only.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.cli import cli
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.ops.exporter import MigrationCollector
from tests.backfill_helpers import assert_all_fresh, make_documents, unique_plan, wait_for, workers

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ROWS, BATCH = 3000, 50


@pytest.fixture
def server() -> Any:
    # 50 ms a request: batches last long enough for the pause to land mid-backfill.
    handle: ServerHandle = run_server_in_thread(latency_ms=50)
    yield handle
    handle.stop()


def _ledger(url: str, name: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), "
            "count(*) FILTER (WHERE status = 'running'), "
            "coalesce(sum(rows_written), 0), max(claimed_at) FROM migrator.batches "
            "WHERE migration = %s",
            (name,),
        ).fetchone()
        written = conn.execute(
            "SELECT count(*) FROM documents WHERE embedding_v2 IS NOT NULL"
        ).fetchone()
    assert row is not None and written is not None
    return {
        "done": int(row[0]),
        "running": int(row[1]),
        "rows_written": int(row[2]),
        "last_claim": row[3],
        "rows_done": int(written[0]),
    }


def _set_ratio(url: str, name: str, ratio: float) -> None:
    """What a rerun of `migrator backfill` with an edited plan file stores (a tuning key)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE migrator.migrations SET plan = jsonb_set(plan, "
            "'{backfill,pacing,max_p99_ratio}', to_jsonb(%s::float8)) WHERE name = %s",
            (ratio, name),
        )


def _gauges(url: str, plan: Any) -> dict[str, float]:
    return {
        f.name: f.samples[0].value
        for f in MigrationCollector(url, plan).collect()
        if f.name.startswith("migrator_pacing_") and f.samples
    }


def test_over_the_limit_pauses_every_worker_and_a_raised_limit_resumes(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, ROWS)
    plan = unique_plan(
        server.url,
        backfill__batch_size=BATCH,
        backfill__concurrency=1,
        backfill__pacing={
            "enabled": True,
            "max_p99_ratio": 0.01,  # every probe is over it
            "probe_every_seconds": 0.3,
            "probe_queries": 10,
            "min_pace": 0.5,  # 1 -> 0.5 (the floor) -> paused
            "start_pace": 1.0,
        },
    )
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    env.pop("MIGRATOR_REDIS_URL", None)
    st = load_settings(env)
    result: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.update(backfill.run(st, plan, backfill.Options(poll_seconds=0.2)))
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    with workers(database_url, REDIS, plan.queue, n=2, concurrency=1):
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        assert wait_for(lambda: api.status(st, plan).get("pacing", {}).get("state") == "paused", 90)
        # Batches claimed before the pause finish; then nothing runs.
        assert wait_for(lambda: _ledger(database_url, plan.name)["running"] == 0, 60)
        paused = _ledger(database_url, plan.name)
        status = api.status(st, plan)
        pc = status["pacing"]
        assert pc["pace"] == 0 and pc["baseline_p99_ms"] > 0 and pc["ratio"] > 0.01
        assert paused["rows_done"] < ROWS, "the backfill finished before pacing paused it"
        gauges = _gauges(database_url, plan)
        assert gauges["migrator_pacing_paused"] == 1 and gauges["migrator_pacing_pace"] == 0
        assert gauges["migrator_pacing_baseline_p99_seconds"] > 0
        # Several probes later (each over the limit), still paused: no claim, no row written.
        assert _probes_seen(database_url, plan.name, 5, timeout=60)
        still = _ledger(database_url, plan.name)
        assert api.status(st, plan)["pacing"]["state"] == "paused"
        assert still == paused, (paused, still)
        out = CliRunner().invoke(
            cli, ["status", "--json", "--database-url", database_url, _file(plan, st)]
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["pacing"]["state"] == "paused"
        text = CliRunner().invoke(cli, ["status", "--database-url", database_url, _file(plan, st)])
        assert "pacing: PAUSED" in text.output, text.output

        _set_ratio(database_url, plan.name, 100.0)  # the operator raises the limit live
        runner.join(240)
        assert not runner.is_alive() and not errors, errors
    assert result.get("complete"), result
    done = _ledger(database_url, plan.name)
    # On a loaded machine the pause can land before the first claim (last_claim None then).
    assert done["rows_done"] > paused["rows_done"] and done["last_claim"] is not None
    assert paused["last_claim"] is None or done["last_claim"] > paused["last_claim"]
    assert_all_fresh(database_url)
    messages = [e["message"] for e in api.status(st, plan, events_limit=200)["events"]]
    order = [
        next(i for i, m in enumerate(messages) if m.startswith(prefix))
        for prefix in ("pacing baseline", "pacing: throttled", "pacing: paused", "pacing: resumed")
    ]
    assert order == sorted(order), messages
    # A complete backfill stops pacing: catch-up runs at the full rate until the next run.
    assert api.status(st, plan)["pacing"]["state"] == "off"


def _probes_seen(url: str, name: str, n: int, timeout: float) -> bool:
    """True once `n` more probes were stored (each stamps `probed_at`)."""
    seen: set[Any] = set()

    def more() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT probed_at FROM migrator.pacing WHERE migration = %s", (name,)
            ).fetchone()
        if row is not None:
            seen.add(row[0])
        return len(seen) > n

    return wait_for(more, timeout, step=0.05)


def _file(plan: Any, st: Settings) -> str:
    import yaml

    path = st.home / "plan.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.canonical()))
    return str(path)


def test_a_restarted_coordinator_reuses_the_baseline_and_a_stale_pace_falls_to_the_floor(
    database_url: str, settings: Settings
) -> None:
    from migrator.backfill import probe
    from migrator.backfill.governor import Governor
    from migrator.db.connect import ensure_schema

    make_documents(database_url, 400)
    plan = unique_plan(
        "http://127.0.0.1:9/v1",
        backfill__pacing={"enabled": True, "probe_every_seconds": 0.2, "min_pace": 0.3},
    )
    ensure_schema(database_url)
    api.adopt(settings, plan)
    first = Governor(database_url, plan, "test")
    first.prepare()
    assert first.pace == 0.3  # slow start: start_pace (0.1), not below min_pace
    first.finish(complete=False)  # a coordinator that stopped mid-run
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = probe.read_row(conn, plan.name)
        assert row is not None and row.baseline_p99_ms and row.baseline_p99_ms > 0
        assert row.pace is not None and 0 < row.pace <= 1
        stored = state.stored_plan(conn, plan.name)
        assert stored is not None and probe.worker_pace(conn, stored) == row.pace
        # Nobody refreshed it for longer than stale_after: workers keep min_pace.
        conn.execute(
            "UPDATE migrator.pacing SET pace = 0, updated_at = now() - interval '1 hour' "
            "WHERE migration = %s",
            (plan.name,),
        )
        assert probe.worker_pace(conn, stored) == 0.3
        assert probe.status(conn, stored)["stale"] is True
        baseline_at = conn.execute(
            "SELECT baseline_at FROM migrator.pacing WHERE migration = %s", (plan.name,)
        ).fetchone()
    second = Governor(database_url, plan, "test")
    second.prepare()
    assert second.baseline == row.baseline_p99_ms and second.pace == 0.0  # resumes paused
    second.finish(complete=True)  # a complete backfill stops pacing
    with psycopg.connect(database_url, autocommit=True) as conn:
        again = conn.execute(
            "SELECT baseline_at, pace FROM migrator.pacing WHERE migration = %s", (plan.name,)
        ).fetchone()
        events = [
            e["message"] for e in state.events(conn, plan.name, 100) if "baseline" in e["message"]
        ]
    assert again is not None and baseline_at is not None
    assert again[0] == baseline_at[0] and again[1] is None
    assert len(events) == 1, events
