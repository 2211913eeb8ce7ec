"""verify while the application writes (issue 13): rows queued for the catch-up are its lag,
not missing coverage (5 passes out of 5 with a steady writer and the catch-up running);
search-time settings change mid-migration, the target model still cannot; verify refuses
before the backfill is complete and builds no index."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from pathlib import Path

import psycopg
import pytest

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.db.catalog import index_info
from migrator.db.connect import connect
from migrator.embedding.server import run_server_in_thread
from migrator.errors import PhaseError
from migrator.search.client import SearchClient, session_settings
from migrator.verify.run import VerifyFailed, VerifyOptions, verify
from migrator.worker.beat import catch_up_once
from tests.backfill_helpers import make_documents, random_text, unique_plan, workers

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ROWS = 3_000  # large enough that the planner serves the search from the HNSW index


def _settings(settings: Settings) -> Settings:
    env = dict(settings.environ)
    env["CELERY_BROKER_URL"] = REDIS
    env.pop("MIGRATOR_REDIS_URL", None)
    return load_settings(env)


class _Loop(threading.Thread):
    """Calls `step` every `period` seconds until stopped; counts the calls."""

    def __init__(self, step: object, period: float) -> None:
        super().__init__(daemon=True)
        self.step, self.period, self.calls = step, period, 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                self.step()  # type: ignore[operator]
                self.calls += 1
            except BaseException as exc:  # handed to the test thread
                self.errors.append(exc)
                return


def test_verify_passes_5_of_5_under_steady_writes(database_url: str, settings: Settings) -> None:
    server = run_server_in_thread()
    try:
        make_documents(database_url, ROWS, old_vectors=True)
        with psycopg.connect(database_url, autocommit=True) as conn:  # production has one
            conn.execute("CREATE INDEX ON documents USING hnsw (embedding vector_cosine_ops)")
        plan = unique_plan(
            server.url,
            backfill__batch_size=100,
            verify__sample_size=100,
            verify__ladder=[40],
            # Each written row also leaves its old vector stale until the refresh: the same
            # bound as the lag, so one writer at this rate stays well inside it.
            verify__max_stale_fraction=0.05,
            verify__catch_up_wait_seconds=30,
            # The subject here is coverage under writes. The index gate (tested on its own in
            # test_verify_ladder.py) compares two models' spaces on 100 queries: at that sample
            # its 0.02 default is about one standard error of the difference.
            verify__max_recall_drop=0.1,
        )
        st = _settings(settings)
        env = dict(st.environ)
        with workers(database_url, REDIS, plan.queue, n=1, concurrency=2):
            backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
            rng = random.Random(11)
            written = [0]

            def write() -> None:  # the application: 10 text updates per second
                with psycopg.connect(database_url, autocommit=True) as conn:
                    pk = rng.randint(1, ROWS)
                    conn.execute(
                        "UPDATE documents SET body = %s WHERE id = %s", (random_text(rng), pk)
                    )
                written[0] += 1

            writer = _Loop(write, 0.1)
            catch_up = _Loop(lambda: catch_up_once(plan.name, env), 0.5)  # what beat runs
            writer.start()
            catch_up.start()
            outcomes = []
            lags = []
            try:
                for _ in range(5):
                    before = written[0]
                    try:
                        out = verify(st, plan, VerifyOptions(build_index=True))
                        outcomes.append(("pass", out.report))
                    except VerifyFailed as exc:
                        outcomes.append(("fail", exc.outcome.report))
                    cov = outcomes[-1][1].check("coverage")
                    lags.append(cov.detail("catch_up_lag"))
                    assert written[0] > before  # the writer really ran during this verify
            finally:
                writer.stop.set()
                catch_up.stop.set()
                writer.join(10)
                catch_up.join(30)
        assert not writer.errors and not catch_up.errors, (writer.errors, catch_up.errors)
        failed = [[r.check(k).summary for k in r.failed] for s, r in outcomes if s == "fail"]
        assert not failed, failed
        # Every report counts the lag and no row as missing.
        assert all(r.check("coverage").detail("missing") == 0 for _, r in outcomes)
        # The scenario is real: some snapshot saw rows in the catch-up (the old gate failed
        # each such run, "59,520 of 59,521 eligible rows have a vector; 1 pending").
        assert sum(lags) > 0, lags
    finally:
        server.stop()


def test_search_settings_change_mid_migration_the_model_does_not(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, 300, old_vectors=True)
    plan = unique_plan("http://127.0.0.1:9", verify__sample_size=50)
    plan = plan.model_copy(
        update={
            "source": plan.source.model_copy(
                update={"model": plan.source.model.model_copy(update={"provider": "local"})}
            ),
            "target": plan.target.model_copy(
                update={"model": plan.target.model.model_copy(update={"provider": "local"})}
            ),
        }
    )
    api.adopt(settings, plan)
    view = f"{plan.view_schema}.{plan.view.name}"
    with SearchClient(database_url, view=view, environ=settings.environ) as client:
        assert client.active_model().ef_search == 40
    tuned = plan.model_copy(
        update={"index": plan.index.model_copy(update={"ef_search": 120, "max_scan_tuples": 5000})}
    )
    api.adopt(settings, tuned)  # accepted: search-time settings are tuning
    with SearchClient(database_url, view=view, environ=settings.environ) as client:
        model = client.active_model()
        applied = dict(session_settings(model))
        assert model.ef_search == 120 and applied["hnsw.ef_search"] == "120"
        assert applied["hnsw.max_scan_tuples"] == "5000"
        assert client.search("bakivo tomu", k=3).hits  # the query runs with them
    with contextlib.closing(connect(database_url)) as conn:
        stored = state.stored_plan(conn, plan.name)
        assert stored is not None and stored.index.ef_search == 120
        events = state.events(conn, plan.name, 20)
        assert any("tuning updated: index.ef_search" in str(e.get("message")) for e in events)
    other = tuned.model_copy(
        update={
            "target": tuned.target.model_copy(
                update={"model": tuned.target.model.model_copy(update={"name": "another-model"})}
            )
        }
    )
    with pytest.raises(PhaseError, match="plan file changed"):
        api.adopt(settings, other)


def test_verify_refuses_before_the_backfill_completes(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    make_documents(database_url, 300, old_vectors=True)
    plan = unique_plan("http://127.0.0.1:9", verify__sample_size=50)
    local = {"provider": "local"}
    plan = plan.model_copy(
        update={
            "source": plan.source.model_copy(
                update={"model": plan.source.model.model_copy(update=local)}
            ),
            "target": plan.target.model_copy(
                update={"model": plan.target.model.model_copy(update=local)}
            ),
        }
    )
    api.adopt(settings, plan)
    from migrator.backfill import expand
    from migrator.backfill.preflight import context

    with context(settings, plan, "expand") as ctx:
        expand.expand(ctx)
    # A backfill that has not run: every eligible row still NULL, the phase expanded.
    with pytest.raises(PhaseError) as err:
        verify(settings, plan, VerifyOptions())
    assert err.value.exit_code == 7
    assert "the backfill is not complete: 300 of 300 eligible rows have no vector yet" in str(
        err.value
    )
    assert "migrator backfill PLAN" in (err.value.hint or "")
    with contextlib.closing(connect(database_url)) as conn:
        assert index_info(conn, plan).state == "absent"  # no index on an empty column
        # Open backfill batches refuse too, whatever the phase says.
        conn.execute(
            "INSERT INTO migrator.batches (migration, kind, key_lo, key_hi) VALUES "
            "(%s, 'range', '1', '100')",
            (plan.name,),
        )
        state.set_phase(conn, plan.name, state.State.BACKFILLED)
    with pytest.raises(PhaseError, match="1 backfill batches open"):
        verify(settings, plan, VerifyOptions())
    time.sleep(0)
