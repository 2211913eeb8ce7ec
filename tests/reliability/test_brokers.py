"""Matrix 4-6: the broker restarts (with and without persistence) and a 429 storm with a broker
blip while retries are published. The ledger in PostgreSQL, not the broker, decides what is
done: lost messages are found again and "complete" never comes before the database says so."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.config import Settings
from migrator.embedding.server import ServerHandle
from tests.backfill_helpers import assert_all_fresh, kill_workers, make_documents, wait_for
from tests.reliability_helpers import (
    Action,
    FaultProxy,
    PrivateRedis,
    Request,
    Writer,
    assert_accounting,
    assert_searches_clean,
    faulty_plan,
    private_redis,
    retry_after_headers,
    search_load,
    settings_for,
    start_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _done(url: str, name: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM migrator.batches WHERE migration = %s AND status = 'done'",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


class CompletionWatch:
    """Polls the phase; the moment it reads 'backfilled', counts the eligible rows still
    without a vector. A premature "complete" shows as a non-zero count."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.missing_at_complete: int | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CompletionWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:
            self.error = exc
            raise

    def _watch(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                row = conn.execute(
                    "SELECT phase FROM migrator.migrations WHERE name = %s", (self.name,)
                ).fetchone()
                if row and row[0] == "backfilled":
                    count = conn.execute(
                        "SELECT count(*) FROM documents WHERE embedding_v2 IS NULL AND "
                        "btrim(body, E' \\t\\r\\n') <> ''"
                    ).fetchone()
                    self.missing_at_complete = int(count[0]) if count else None
                    return


def _restart_mid_run(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
    *,
    crash: bool,
) -> dict[str, Any]:
    n = 3000
    make_documents(database_url, n)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=100,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(delay=0.05)
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    result: dict[str, Any] = {}
    try:
        with search_load(database_url, plan, qps=20) as load:
            writer = Writer(database_url, n).start()
            watch = CompletionWatch(database_url, plan.name).start()
            runner = threading.Thread(
                target=lambda: result.update(
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=2.0))
                )
            )
            runner.start()
            assert wait_for(lambda: _done(database_url, plan.name) >= 5, 60)
            log = writer.stop()  # writes before the restart; the watch needs a still table
            queued = broker.client().llen(plan.queue)
            broker.restart(down_for=2.0, crash=crash)
            after = broker.client().llen(plan.queue)
            runner.join(180)
            assert not runner.is_alive()
            wait_for(lambda: watch.missing_at_complete is not None, 3)
            watch.stop()
    finally:
        kill_workers(procs)
    assert result["complete"], result
    assert watch.error is None
    assert watch.missing_at_complete == 0, "complete was reported before the database agreed"
    assert_all_fresh(database_url)
    assert_accounting(database_url, n, log)
    assert_searches_clean(load)
    return {"queued_before": queued, "queued_after": after, **result}


@pytest.mark.slow
def test_redis_restart_with_persistence_loses_nothing(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    out = _restart_mid_run(database_url, settings, server, proxy, broker, crash=False)
    assert out["queued_before"] > 0 and out["queued_after"] > 0  # the messages survived


@pytest.mark.slow
def test_redis_restart_without_persistence_is_caught_by_the_ledger(
    database_url: str, settings: Settings, server: ServerHandle, proxy: FaultProxy, tmp_path: Path
) -> None:
    with private_redis(tmp_path / "redis", persistent=False) as broker:
        out = _restart_mid_run(database_url, settings, server, proxy, broker, crash=True)
    # Every queued message was lost; the stall check found the batches again.
    assert out["queued_before"] > 0 and out["queued_after"] == 0


@pytest.mark.slow
def test_429_storm_with_retry_after_and_a_broker_blip(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    n = 2000
    make_documents(database_url, n)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=50,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    storm = {"until": 0.0, "n": 0}
    sent: list[tuple[float, float]] = []  # (time of a 429, its delay)

    def policy(req: Request) -> Action | None:
        now = time.monotonic()
        if now < storm["until"]:
            storm["n"] += 1
            # Alternate Retry-After (whole seconds) and retry-after-ms (which wins).
            delay = 1.5 if storm["n"] % 2 else 1.0
            sent.append((now, delay))
            return Action(status=429, headers=retry_after_headers(delay, ms=storm["n"] % 2 == 1))
        return None

    proxy.policy = policy
    procs = start_workers(database_url, broker.url, plan.queue, n=2, concurrency=1)
    result: dict[str, Any] = {}
    try:
        with search_load(database_url, plan, qps=20) as load:
            runner = threading.Thread(
                target=lambda: result.update(
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=2.0))
                )
            )
            runner.start()
            assert wait_for(lambda: _done(database_url, plan.name) >= 3, 60)
            storm["until"] = time.monotonic() + 12.0
            # Three in-place attempts later the tasks publish their retries: the broker is
            # away just then.
            time.sleep(2.5)
            broker.restart(down_for=2.5)
            runner.join(240)
            assert not runner.is_alive()
    finally:
        kill_workers(procs)
    assert result["complete"], result
    assert result["dead_letters"] == 0 and "failed" not in result["batches"]
    assert_all_fresh(database_url)
    assert_searches_clean(load)
    assert len(sent) >= 4, "the storm never hit"
    assert result["retries"] >= 1, "no task retry was published"
    # Retry-After was honoured by every worker: no request arrived inside a pause, except
    # those whose budget check came before the pause was recorded (300 ms on a busy box).
    arrivals = [t for t, _ in proxy.log]
    early = [(t0, d) for t0, d in sent if any(t0 + 0.3 < t < t0 + d - 0.05 for t in arrivals)]
    near = [(round(t - sent[0][0], 3), k) for t, k in proxy.log if t >= sent[0][0] - 1]
    assert not early, f"requests sent inside a Retry-After pause: {early[:5]} {near[:40]}"


@pytest.mark.slow
def test_retry_after_over_two_minutes_is_honoured(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    """Retry-After: 150. The shared pause holds every worker for 150 s (a task waits at most
    120 s in place, then goes back to the queue), and no batch fails meanwhile."""
    make_documents(database_url, 600)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=200,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=100,
        backfill__stall_after_seconds=600,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    hit: list[float] = []

    def policy(req: Request) -> Action | None:
        if req.n == 2:
            hit.append(time.monotonic())
            return Action(status=429, headers={"retry-after": "150"})
        return None

    proxy.policy = policy
    procs = start_workers(database_url, broker.url, plan.queue, n=2, concurrency=1)
    try:
        with search_load(database_url, plan, qps=5) as load:
            t0 = time.monotonic()
            out = backfill.run(st, plan, backfill.Options(poll_seconds=1.0))
            seconds = time.monotonic() - t0
    finally:
        kill_workers(procs)
    assert out["complete"] and "failed" not in out["batches"]
    assert_all_fresh(database_url)
    assert hit and seconds >= 150
    inside = [t for t, _ in proxy.log if hit[0] + 0.15 < t < hit[0] + 149.9]
    near = [(round(t - hit[0], 3), k) for t, k in proxy.log]
    assert not inside, f"{len(inside)} requests inside the 150 s pause: {near}"
    assert_searches_clean(load)


RABBIT = os.environ.get("MIGRATOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MIGRATOR_TEST_RABBITMQ_RESTART") != "1",
    reason=(
        "restarts the RabbitMQ node with `rabbitmqctl stop_app/start_app`: on a shared machine "
        "that breaks everyone else's runs; set MIGRATOR_TEST_RABBITMQ_RESTART=1 on a private node"
    ),
)
def test_rabbitmq_restart_mid_run(
    database_url: str, settings: Settings, server: ServerHandle, proxy: FaultProxy
) -> None:
    make_documents(database_url, 3000)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=100,
        backfill__concurrency=1,
        target__model__max_inputs_per_request=100,
    )
    st = settings_for(settings, RABBIT)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(delay=0.05)
    procs = start_workers(database_url, RABBIT, plan.queue, n=1, concurrency=2)
    result: dict[str, Any] = {}
    try:
        with search_load(database_url, plan, qps=20) as load:
            runner = threading.Thread(
                target=lambda: result.update(
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=5.0))
                )
            )
            runner.start()
            assert wait_for(lambda: _done(database_url, plan.name) >= 5, 60)
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
            time.sleep(3.0)
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
            runner.join(240)
    finally:
        kill_workers(procs)
    assert result.get("complete"), result
    assert_all_fresh(database_url)
    assert_searches_clean(load)
