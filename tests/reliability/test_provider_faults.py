"""Matrix 7-11: a provider that fails (5xx, timeouts, resets) or answers wrongly (dimension,
count, order, NaN, Inf, zero vectors), and texts that must never be sent (empty, blank, NULL,
too long) or that exceed the request limits. Nothing wrong is ever written: a row gets its
right vector, or stays NULL with the reason recorded."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.config import Settings
from migrator.embedding.server import ServerHandle
from migrator.errors import ProviderError
from tests.backfill_helpers import (
    POISON,
    assert_all_fresh,
    current_rows,
    kill_workers,
    make_documents,
)
from tests.reliability_helpers import (
    Action,
    FaultProxy,
    PrivateRedis,
    Request,
    Writer,
    assert_accounting,
    assert_searches_clean,
    faulty_plan,
    search_load,
    settings_for,
    start_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _batches(url: str, name: str) -> list[tuple[str, str | None, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, error, rows_written FROM migrator.batches "
            "WHERE migration = %s ORDER BY id",
            (name,),
        ).fetchall()
    return [(str(a), b, int(c)) for a, b, c in rows]


def _dead(url: str, name: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pk, reason FROM migrator.dead_letters WHERE migration = %s "
            "AND resolved_at IS NULL",
            (name,),
        ).fetchall()
    return {int(pk): str(reason) for pk, reason in rows}


def test_5xx_timeouts_and_connection_resets(
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
        target__model__max_inputs_per_request=25,
        target__model__request_timeout_seconds=1.0,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    rng = random.Random(5)
    lock = threading.Lock()

    def policy(req: Request) -> Action | None:
        with lock:
            r = rng.random()
        if r < 0.12:
            return Action(status=rng.choice((500, 502, 503)))
        if r < 0.2:
            return Action(delay=1.6)  # past the client's 1 s timeout
        if r < 0.28:
            return Action(reset=True)
        return None

    proxy.policy = policy
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        with search_load(database_url, plan, qps=20) as load:
            writer = Writer(database_url, n).start()
            result: dict[str, Any] = {}
            runner = threading.Thread(
                target=lambda: result.update(
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.3, stall_after=5.0))
                )
            )
            runner.start()
            time.sleep(5.0)
            log = writer.stop()  # the backfill cannot end while rows keep changing
            runner.join(240)
            final = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    finally:
        kill_workers(procs)
    counts = proxy.counts()
    print(f"\nfaults: {counts}")
    assert result["complete"] and final["complete"]
    assert final["dead_letters"] == 0 and "failed" not in final["batches"]
    assert counts.get("reset", 0) and counts.get("delay", 0)
    assert sum(v for k, v in counts.items() if k.startswith("status-5")) > 0
    assert_all_fresh(database_url)
    assert_accounting(database_url, n, log)
    assert_searches_clean(load)


def _mutation(mode: str) -> Any:
    def mutate(answer: dict[str, Any], req: Request) -> dict[str, Any]:
        data = answer["data"]
        marked = [i for i, t in enumerate(req.inputs) if POISON in t]
        if mode == "dim-const":
            for item in data:
                item["embedding"] = item["embedding"][:-1]
        elif mode == "dim-varying" and marked:
            for item in data:
                if item["index"] in marked:
                    item["embedding"] = item["embedding"] + [0.5] * (1 + item["index"] % 3)
        elif mode == "count" and marked:
            data.pop()
        elif mode == "duplicate-index" and marked:
            data[-1]["index"] = data[0]["index"]
        elif mode == "shuffle":
            data.reverse()  # indices still right: the client must map by index
        return answer

    return mutate


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("dim-const", marks=pytest.mark.slow),
        "dim-varying",
        pytest.param("count", marks=pytest.mark.slow),
        pytest.param("duplicate-index", marks=pytest.mark.slow),
        "shuffle",
    ],
)
def test_wrong_answers_write_nothing_and_record_why(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
    mode: str,
) -> None:
    n = 800
    poisoned = (150, 420)
    make_documents(database_url, n, poison_ids=poisoned)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=200,
        backfill__concurrency=1,
        backfill__retry__max_attempts=2,
        target__model__max_inputs_per_request=50,
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(mutate=_mutation(mode))
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        with search_load(database_url, plan, qps=10) as load:
            if mode == "shuffle":
                out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
                assert out["complete"]
            else:
                with pytest.raises(ProviderError, match="batches failed"):
                    backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
                batches = _batches(database_url, plan.name)
                failed = [b for b in batches if b[0] == "failed"]
                assert failed and all(b[2] == 0 for b in failed)
                reason = {
                    "dim-const": "dimensions",
                    "dim-varying": "dimensions",
                    "count": "vectors for",
                    "duplicate-index": "two vectors",
                }[mode]
                assert all(reason in (b[1] or "") for b in failed), failed
                rows = current_rows(database_url)
                written = {i for i, (_, v) in rows.items() if v is not None}
                if mode == "dim-const":
                    assert not written, "a vector of the wrong dimension was written"
                else:
                    # Only the batches holding a poisoned row failed; nothing of theirs written.
                    assert all(i not in written for i in poisoned)
                    assert len(failed) == 2
                    assert len(written) == n - 400
                assert _dead(database_url, plan.name) == {}, "whole-answer faults blame no row"
                # The provider is fixed: a rerun finishes the work.
                proxy.policy = lambda req: None
                out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
                assert out["complete"]
    finally:
        kill_workers(procs)
    assert_all_fresh(database_url)
    assert_searches_clean(load, min_queries=5)


def test_nan_inf_and_zero_vectors_are_dead_lettered_alone(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    n = 1000
    bodies = make_documents(database_url, n)
    bad = {77: float("nan"), 345: float("inf"), 346: float("-inf"), 901: "zero"}
    by_text = {bodies[i]: v for i, v in bad.items()}

    def mutate(answer: dict[str, Any], req: Request) -> dict[str, Any]:
        for item in answer["data"]:
            value = by_text.get(req.inputs[item["index"]])
            if value == "zero":
                item["embedding"] = [0.0] * len(item["embedding"])
            elif value is not None:
                item["embedding"][3] = value
        return answer

    plan = faulty_plan(
        server, proxy, backfill__batch_size=250, target__model__max_inputs_per_request=50
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    proxy.policy = lambda req: Action(mutate=mutate)
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        with search_load(database_url, plan, qps=10) as load:
            out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    finally:
        kill_workers(procs)
    assert out["complete"] and out["dead_letters"] == 4
    dead = _dead(database_url, plan.name)
    assert dead == {
        77: "bad vector: nan",
        345: "bad vector: inf",
        346: "bad vector: inf",
        901: "bad vector: zero vector",
    }
    assert_all_fresh(database_url, dead=set(bad))
    assert_searches_clean(load, min_queries=5)


def test_blank_null_overlong_texts_and_request_limits(
    database_url: str,
    settings: Settings,
    server: ServerHandle,
    proxy: FaultProxy,
    broker: PrivateRedis,
) -> None:
    n = 1500
    make_documents(database_url, n, empty_every=40)
    long_text = " ".join(["overlong"] * 3000)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET body = NULL WHERE id % 97 = 0")
        conn.execute("UPDATE documents SET body = %s WHERE id IN (33, 666, 1234)", (long_text,))
        # Blank to Python, not to the database's btrim: must be recorded, not left pending.
        conn.execute("UPDATE documents SET body = %s WHERE id = 71", ("\u00a0\u2003\u00a0",))
    # The server enforces the limits: any request over them would be refused (and counted).
    server.set_controls(max_inputs=16, max_tokens_per_input=1000)
    plan = faulty_plan(
        server,
        proxy,
        backfill__batch_size=300,
        target__model__max_inputs_per_request=16,
        target__model__max_tokens_per_request=3000,
        target__model__max_tokens_per_input=1000,
        target__model__overlong="dead_letter",
    )
    st = settings_for(settings, broker.url)
    api.adopt(st, plan)
    sizes: list[tuple[int, int]] = []

    def policy(req: Request) -> Action | None:
        sizes.append((len(req.inputs), sum(len(t.split()) for t in req.inputs)))
        if any(not t.strip() for t in req.inputs):
            return Action(status=400)  # an empty input was sent: the test fails below
        return None

    proxy.policy = policy
    procs = start_workers(database_url, broker.url, plan.queue, n=1, concurrency=2)
    try:
        with search_load(database_url, plan, qps=10) as load:
            out = backfill.run(st, plan, backfill.Options(poll_seconds=0.2))
    finally:
        kill_workers(procs)
    assert out["complete"]
    dead = _dead(database_url, plan.name)
    assert set(dead) == {33, 666, 1234, 71}, dead
    assert all(dead[i].startswith("overlong") for i in (33, 666, 1234))
    assert dead[71] == "text is only whitespace"
    counters = server.state.snapshot()["counters"]
    assert counters["rejected"] == 0, counters  # never an empty, overlong or oversized request
    assert max(s for s, _ in sizes) <= 16
    counts = assert_all_fresh(database_url, dead=set(dead))
    assert out["rows_empty"] == counts["rows"] - counts["eligible"] - len(dead) > 0
    assert_searches_clean(load, min_queries=5)
