"""Backfill end to end: real PostgreSQL, real Redis broker, real Celery worker processes, the
real `openai` client against the local embeddings server."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.cli import cli
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.embedding.server import ServerHandle, run_server_in_thread
from tests.backfill_helpers import (
    POISON,
    assert_all_fresh,
    assert_old_fresh,
    current_rows,
    make_documents,
    random_text,
    unique_plan,
    workers,
)

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
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    n = int(os.environ.get("MIGRATOR_TEST_BACKFILL_ROWS", "20000"))
    make_documents(database_url, n, empty_every=97)
    plan = unique_plan(server.url)
    st = _settings(settings, REDIS)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        t0 = time.monotonic()
        summary = backfill.run(st, plan, backfill.Options(poll_seconds=0.3))
        seconds = time.monotonic() - t0
    print(
        f"\nbackfill of {n} rows: {seconds:.1f} s, {summary['rows_written'] / seconds:.0f} rows/s"
        f" (summary {summary['rows_per_second']} rows/s)"
    )
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
    out = CliRunner().invoke(
        cli, ["status", "--json", "--database-url", database_url, _plan_file(plan, st)]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["progress"]["rows_done"] == counts["eligible"]


def _plan_file(plan: object, st: Settings) -> str:
    import yaml

    path = st.home / "plan.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.canonical()))  # type: ignore[attr-defined]
    return str(path)


def test_phase_is_not_moved_backwards(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 300)
    plan = unique_plan(server.url, backfill__batch_size=100)
    st = _settings(settings, REDIS)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=1):
        backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        with psycopg.connect(database_url, autocommit=True) as conn:
            state.set_phase(conn, plan.name, state.State.VERIFIED)
        out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert out["complete"] and out["phase"] == "verified"


def test_concurrent_inserts_updates_deletes_during_backfill(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    n = 4000
    make_documents(database_url, n, empty_every=50)
    server.set_controls(latency_ms=20)  # long enough for the writer to race the workers
    plan = unique_plan(
        server.url, backfill__batch_size=200, target__model__max_inputs_per_request=50
    )
    st = _settings(settings, REDIS)
    rng = random.Random(3)
    stop = threading.Event()
    log: dict[str, set[int]] = {"inserted": set(), "deleted": set(), "text": set(), "other": set()}

    def writer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Start once change capture is there: the trigger must see every write below.
            while (
                not stop.is_set()
                and conn.execute(
                    "SELECT 1 FROM pg_trigger WHERE tgname = %s", (plan.trigger_name,)
                ).fetchone()
                is None
            ):
                time.sleep(0.05)
            next_id = n + 1
            while not stop.is_set():
                op = rng.random()
                pk = rng.randint(1, n)
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
                    conn.execute(
                        "UPDATE documents SET category = 'x', title = title || '!' WHERE id = %s",
                        (pk,),
                    )
                    log["other"].add(pk)
                else:
                    conn.execute("DELETE FROM documents WHERE id = %s", (pk,))
                    log["deleted"].add(pk)
                time.sleep(0.002)

    thread = threading.Thread(target=writer, daemon=True)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        thread.start()
        result: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: result.update(backfill.run(st, plan, backfill.Options(poll_seconds=0.3)))
        )
        runner.start()
        time.sleep(3.0)
        stop.set()
        thread.join(10)
        runner.join(120)
        assert not runner.is_alive()
        # Writes that raced the end of the first run are caught up by a second pass.
        final = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    assert log["inserted"] and log["text"] and log["deleted"] and log["other"]
    assert final["complete"] and final["pending_changes"] == 0
    assert_all_fresh(database_url)
    rows = current_rows(database_url)
    deleted = log["deleted"]
    # The writer changed text without writing the old model's vector: each such row got its
    # old vector refreshed (backfill.refresh_source), so a rollback would serve fresh vectors.
    assert final["stale_sources"] == 0
    assert assert_old_fresh(database_url, log["text"] - deleted) > 0
    assert not deleted & set(rows), "a deleted row came back"
    # Row accounting: initial + inserted - deleted (deleted ids are distinct initial rows).
    assert len(rows) == n + len(log["inserted"]) - len(deleted)
    # Unrelated column updates do not queue re-embedding and keep the vector.
    before = current_rows(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET category = 'y', title = 'z' WHERE id <= 200")
        changes = conn.execute(
            "SELECT count(*) FROM migrator.changes WHERE migration = %s AND processed_at IS NULL",
            (plan.name,),
        ).fetchone()
    assert changes == (0,)
    after = current_rows(database_url)
    assert all((before[i][1] is None) == (after[i][1] is None) for i in before if i <= 200)


def test_poison_row_is_dead_lettered_alone_and_replayed_after_a_fix(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 1200, poison_ids=(777,))
    server.set_controls(poison_marker=POISON)
    plan = unique_plan(server.url, backfill__batch_size=300)
    st = _settings(settings, REDIS)
    with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
        first = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
        assert first["complete"] and first["dead_letters"] == 1
        assert_all_fresh(database_url, dead={777})
        status = api.status(st, plan)
        assert [d["pk"] for d in status["dead_letters"]] == ["777"]
        assert "poison" in status["dead_letters"][0]["reason"]
        assert status["progress"]["dead_letters"] == 1
        # The provider is fixed; the replay fills the row and resolves the dead letter.
        server.set_controls(poison_marker=None)
        out = CliRunner().invoke(
            cli,
            [
                "backfill",
                "--retry-dead-letters",
                "--json",
                "--database-url",
                database_url,
                "--broker-url",
                REDIS,
                _plan_file(plan, st),
            ],
        )
        assert out.exit_code == 0, out.output
    assert_all_fresh(database_url)
    assert api.status(st, plan)["dead_letters"] == []
