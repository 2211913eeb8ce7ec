"""The sunset case end to end, with real processes: two embeddings servers (the old model's and
the new one's) over the openai client, Celery workers, drill load processes. The old model's
server is stopped mid-backfill; `bridge on --old-model-gone` keeps every search answered through
bridge on -> cutover -> rollback (bridge) -> cutover, and the catch-up of the old column after
cutover runs without the dead model (bridged vectors)."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from migrator import bridging, switch
from migrator.backfill import monitor as backfill
from migrator.bridge import store
from migrator.config import Settings, load_settings
from migrator.embedding.local import HashEmbedder
from migrator.embedding.server import start_server_process
from migrator.search.client import SearchClient
from migrator.search.drill import Drill
from migrator.verify.run import verify
from tests.backfill_helpers import random_text, workers
from tests.helpers import create_documents, demo_plan
from tests.switch_helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # `pytest -m slow`
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ROWS = 2000


def _count(url: str, where: str) -> int:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM documents WHERE {where}").fetchone()
        except psycopg.errors.UndefinedColumn:  # before expand
            return 0
    assert row is not None
    return int(row[0])


def _control(base: str, **changes: Any) -> None:
    r = httpx.post(base.removesuffix("/v1") + "/control", json=changes, timeout=5)
    assert r.status_code == 200, r.text


def test_sunset_drill_bridge_on_cutover_rollback_cutover(
    settings: Settings, database_url: str
) -> None:
    old_proc, old_url = start_server_process(port=free_port(), timeout=90)
    # Slow answers from the new model: the backfill is still running when the old one dies.
    new_proc, new_url = start_server_process(port=free_port(), timeout=90, latency_ms=300)
    tag = uuid.uuid4().hex[:8]
    plan = demo_plan(
        None,
        name=f"sunset-{tag}",
        source__model__base_url=old_url,
        target__model__base_url=new_url,
        backfill__batch_size=50,
        backfill__queue=f"migrator.test-{tag}.embedding_v2",
        bridge__min_rows=200,
        bridge__min_retention=0.5,
    )
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    env.pop("MIGRATOR_REDIS_URL", None)
    st = load_settings(env)
    create_documents(database_url, ROWS)
    drill: Drill | None = None
    try:
        with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
            done = threading.Event()
            outcome: dict[str, Any] = {}

            def run_backfill() -> None:
                try:
                    outcome["result"] = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
                except Exception as exc:  # reported by the assertion below
                    outcome["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=run_backfill, daemon=True).start()
            deadline = time.monotonic() + 120
            while _count(database_url, "embedding_v2 IS NOT NULL") < ROWS // 4:
                assert not done.is_set(), outcome
                assert time.monotonic() < deadline, "the backfill did not progress"
                time.sleep(0.1)
            # The sunset: the old model's server goes away mid-backfill.
            old_proc.terminate()
            old_proc.wait(10)
            mid = _count(database_url, "embedding_v2 IS NOT NULL")
            assert mid < ROWS

            fitted = bridging.fit(st, plan)
            assert fitted.figures["documents"]["recall@10_old"] is None  # the old model is gone
            assert any("old model not measured" in n for n in fitted.notes)
            on = bridging.bridge_on(st, plan, old_model_gone=True)
            assert on.bridge_id == fitted.bridge_id and on.replaces_source

            # bridge off is refused while the bridge stands in for a dead model.
            with pytest.raises(Exception, match="without the bridge every search would fail"):
                bridging.bridge_off(st, plan)

            drill = Drill(database_url, plan, qps=30, processes=2, queries=100)
            drill.start()
            assert drill.wait_for(40)
            _control(new_url, latency_ms=0)
            assert done.wait(300), "the backfill did not finish"
            assert "error" not in outcome, outcome
            assert drill.wait_for(40)

            # Its baseline is the bridge: the old model cannot embed; the bridge line says so.
            line = next(c for c in verify(st, plan).report.checks if c.key == "bridge")
            assert line.detail("documents")["recall@10_old"] is None
            switch.cutover(st, plan)
            assert drill.wait_for(40)

            # Rows changed after cutover: the catch-up refreshes the old column too, through
            # the bridge, since the old model is gone.
            rng = random.Random(5)
            changed = {pk: random_text(rng) for pk in rng.sample(range(1, ROWS + 1), 20)}
            with psycopg.connect(database_url, autocommit=True) as conn:
                for pk, text in changed.items():
                    conn.execute("UPDATE documents SET body = %s WHERE id = %s", (text, pk))
            backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
            assert drill.wait_for(40)

            back = switch.rollback(st, plan)  # falls back to the bridge: the old model is gone
            assert back.bridge_id == fitted.bridge_id
            assert drill.wait_for(40)
            _assert_changed_rows(database_url, plan, changed, fitted.bridge_id)

            verify(st, plan)
            # Searches in the verified phase too: a phase no search started in is not reported,
            # and verify can take less time than the poller needs to see it.
            assert drill.wait_for(40)
            switch.cutover(st, plan)
            assert drill.wait_for(40)
    finally:
        report = drill.stop() if drill is not None else None
        for proc in (old_proc, new_proc):
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(10)

    assert report is not None
    data = report.as_dict()
    assert data["failed"] == 0, data["errors"]
    assert data["cross_model_rows"] == 0 and data["empty"] == 0
    phases = [p["phase"] for p in data["phases"]]
    # The backfill ends while the load runs; rollback -> verify again -> the second cutover.
    assert phases[-5:] == ["verified", "cut_over", "rolled_back", "verified", "cut_over"], phases
    for p in data["phases"]:
        assert p["queries"] > 0 and p["hit_rate"] > 0, p
    with psycopg.connect(database_url) as conn:
        dead = conn.execute(
            "SELECT count(*) FROM migrator.dead_letters WHERE migration = %s", (plan.name,)
        ).fetchone()
        reg = conn.execute("SELECT bridge_id FROM migrator.active_models").fetchone()
    assert dead == (0,) and reg == (None,)  # the second cutover retired the bridge again


def _assert_changed_rows(url: str, plan: Any, changed: dict[int, str], bridge_id: int) -> None:
    """Each changed row's old vector is the bridged new-model vector of its new text, and a
    search through the rolled-back view finds the row by its new text."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        bridge = store.get(conn, bridge_id)
        assert bridge is not None
        rows = conn.execute(
            "SELECT id, embedding FROM documents WHERE id = ANY(%s) ORDER BY id",
            (list(changed),),
        ).fetchall()
    new = HashEmbedder(plan.target.model.name, plan.target.model.dimensions)
    for pk, vec in rows:
        expect = bridge.map.apply(new.encode([changed[pk]]))[0]
        got = np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec, dtype=np.float32)
        assert float(got @ expect) > 0.999, pk
    with SearchClient(url, view="documents_search") as client:
        found = 0
        for pk, text in changed.items():
            res = client.search(text, 10)
            assert res.bridge_id == bridge_id and res.mixed == 0
            found += any(h.row["id"] == pk for h in res.hits)
    assert found == len(changed)
