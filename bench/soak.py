"""Soak: a backfill of 100k rows with every fault injected at random, checked at the end.

Private services only (an embedded PostgreSQL under a temporary home, a redis-server on a free
port, the embeddings server behind a fault proxy), so it disturbs nobody. While the backfill
runs: concurrent inserts/updates/deletes, a search load, and at random intervals a SIGKILLed
worker pool process, a SIGKILLed worker, a Redis crash-restart (no persistence: queued
messages lost), a database restart, 429 storms with Retry-After; 5xx, timeouts and connection
resets throughout. At the end: rows lost, wrong vectors (every row recomputed with
HashEmbedder), dead letters, failed searches. Prints the figures as JSON.

    .venv/bin/python bench/soak.py --rows 100000

`--scenario operation` runs the long-running operation soak instead (bench/soak_operation.py):
a follower, a worker SIGKILLed every 30-60 s, the provider down for 2 minutes twice, a steady
writer; it reports the time to recover each killed batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrator import api, backfill  # noqa: E402
from migrator.config import load_settings  # noqa: E402
from migrator.embedding.local import HashEmbedder  # noqa: E402
from migrator.embedding.server import run_server_in_thread  # noqa: E402
from migrator.errors import MigratorError  # noqa: E402
from migrator.search.client import SearchClient  # noqa: E402
from tests.backfill_helpers import child_pids, kill_workers, make_documents  # noqa: E402
from tests.reliability_helpers import (  # noqa: E402
    Action,
    FaultProxy,
    PrivatePostgres,
    PrivateRedis,
    Request,
    Writer,
    faulty_plan,
    retry_after_headers,
    settings_for,
    start_workers,
)


class SearchLoad:
    """Search threads through the view; each query logged with its time window and outcome."""

    def __init__(
        self, url: str, view: str, queries: list[str], threads: int = 2, qps: float = 10.0
    ) -> None:
        self.url, self.view, self.queries, self.qps = url, view, queries, qps
        self.records: list[tuple[float, float, bool, int, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with SearchClient(self.url, view=self.view, pool_size=1) as client:
            while not self._stop.wait(1.0 / self.qps):
                t0 = time.monotonic()
                try:
                    res = client.search(rng.choice(self.queries), 10)
                    self.records.append((t0, time.monotonic(), True, res.mixed, ""))
                except Exception as exc:
                    self.records.append(
                        (t0, time.monotonic(), False, 0, f"{type(exc).__name__}: {exc}"[:200])
                    )


class Soak:
    def __init__(
        self,
        rows: int,
        seed: int,
        workdir: Path,
        fault_every: tuple[float, float],
        chaos_seconds: float,
    ) -> None:
        self.rows, self.rng, self.dir = rows, random.Random(seed), workdir
        self.fault_every, self.chaos_seconds = fault_every, chaos_seconds
        self.faults: dict[str, int] = {}
        self.db_outages: list[tuple[float, float]] = []
        self.procs: list[Any] = []
        self.storm_until = 0.0
        self.producer_restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def note(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def produce(self, st: Any, plan: Any, should_stop: Any) -> dict[str, Any]:
        try:
            return backfill.run(
                st,
                plan,
                backfill.Options(poll_seconds=0.5, stall_after=5.0, should_stop=should_stop),
            )
        except (MigratorError, psycopg.Error) as exc:
            self.producer_restarts += 1
            print(f"producer stopped ({type(exc).__name__}: {exc}); rerunning", flush=True)
            time.sleep(1.0)
            return {}

    # ---- provider faults, all the time --------------------------------------------------
    def policy(self, req: Request) -> Action | None:
        r = self.rng.random()
        if time.monotonic() < self.storm_until:
            return Action(
                status=429,
                headers=retry_after_headers(
                    self.rng.choice((0.5, 1.0, 2.0)), ms=self.rng.random() < 0.5
                ),
            )
        if r < 0.03:
            return Action(status=self.rng.choice((500, 502, 503)))
        if r < 0.05:
            return Action(delay=2.5)  # past the 2 s client timeout
        if r < 0.07:
            return Action(reset=True)
        return None

    # ---- process faults, at random ------------------------------------------------------
    def injector(self, broker: PrivateRedis, pg: PrivatePostgres, url: str, queue: str) -> None:
        kinds = ["kill-child", "kill-worker", "redis-restart", "db-restart", "429-storm"]
        while not self._stop.wait(self.rng.uniform(*self.fault_every)):
            kind = self.rng.choice(kinds)
            alive = [p for p in self.procs if p.poll() is None]
            if kind == "kill-child" and alive:
                kids = child_pids(self.rng.choice(alive).pid)
                if kids:
                    os.kill(self.rng.choice(kids), signal.SIGKILL)
            elif kind == "kill-worker" and alive:
                victim = self.rng.choice(alive)
                kill_workers([victim])
                self.procs.remove(victim)
                self.procs += start_workers(url, broker.url, queue, n=1, concurrency=2)
            elif kind == "redis-restart":
                broker.restart(down_for=self.rng.uniform(0.5, 3.0), crash=True)
            elif kind == "db-restart":
                t0 = time.monotonic()
                pg.stop()
                time.sleep(self.rng.uniform(1.0, 4.0))
                pg.start()
                self.db_outages.append((t0, time.monotonic()))
            elif kind == "429-storm":
                self.storm_until = time.monotonic() + self.rng.uniform(2.0, 6.0)
            else:
                continue
            self.note(kind)

    def run(self) -> dict[str, Any]:
        pg = PrivatePostgres(self.dir / "pg")
        url = pg.start()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        t_load = time.monotonic()
        bodies = make_documents(url, self.rows, empty_every=997)
        print(f"loaded {self.rows} rows in {time.monotonic() - t_load:.1f} s", flush=True)
        broker = PrivateRedis(self.dir / "redis", persistent=False)
        broker.start()
        server = run_server_in_thread()
        proxy = FaultProxy(server.url).start()
        proxy.policy = self.policy
        env = {**os.environ, "DATABASE_URL": url, "MIGRATOR_HOME": str(self.dir / "home")}
        st = settings_for(load_settings(env), broker.url)
        plan = faulty_plan(
            server,
            proxy,
            backfill__batch_size=500,
            target__model__max_inputs_per_request=100,
            target__model__request_timeout_seconds=2.0,
            backfill__retry__max_attempts=20,
        )
        api.adopt(st, plan)
        self.procs = start_workers(url, broker.url, plan.queue, n=2, concurrency=2)
        rng = random.Random(3)
        queries = [
            " ".join(b.split()[:8]) for b in rng.sample(list(bodies.values()), 200) if b.strip()
        ]
        search = SearchLoad(url, f"{plan.view_schema}.{plan.view.name}", queries)
        search.start()
        writer = Writer(url, self.rows, pause=0.005).start()
        inj = threading.Thread(
            target=self.injector, args=(broker, pg, url, plan.queue), daemon=True
        )
        t0 = time.monotonic()
        inj.start()
        chaos_end = t0 + self.chaos_seconds
        out: dict[str, Any] = {}
        try:
            # Chaos: faults and writes while the producer runs (and is rerun when it dies).
            while time.monotonic() < chaos_end:
                self.produce(st, plan, lambda: time.monotonic() > chaos_end)
            writer.stop()
            self._stop.set()
            inj.join(60)
            # Calm: the last pass catches up the writes; nothing is injected any more.
            while not out.get("complete"):
                out = self.produce(st, plan, None)
            seconds = time.monotonic() - t0
        finally:
            self._stop.set()
            inj.join(30)
            writer.stop()
            search.stop()
            kill_workers(self.procs)
        figures = self.check(url, writer, search, out, seconds, proxy.counts())
        proxy.stop()
        server.stop()
        broker.stop(crash=True)
        pg.stop()
        return figures

    def check(
        self,
        url: str,
        writer: Writer,
        search: SearchLoad,
        out: dict[str, Any],
        seconds: float,
        proxy_counts: dict[str, int],
    ) -> dict[str, Any]:
        log = writer.log
        with psycopg.connect(url) as conn:
            register_vector(conn)
            rows = conn.execute("SELECT id, body, embedding_v2 FROM documents").fetchall()
            dead = {
                int(r[0])
                for r in conn.execute(
                    "SELECT pk FROM migrator.dead_letters WHERE resolved_at IS NULL"
                ).fetchall()
            }
        ids = {int(r[0]) for r in rows}
        expected_rows = self.rows + len(log.inserted) - len(log.deleted)
        lost = len(log.inserted - ids) + max(0, expected_rows - len(ids))
        resurrected = len(log.deleted & ids)
        eligible = [
            (int(i), b, v)
            for i, b, v in rows
            if b is not None and b.strip(" \t\r\n") and int(i) not in dead
        ]
        model = HashEmbedder("local-hash-new", 384)
        wrong = 0
        for k in range(0, len(eligible), 5000):
            chunk = eligible[k : k + 5000]
            exp = model.encode([b for _, b, _ in chunk])
            for (_, _, got), e in zip(chunk, exp, strict=True):
                if got is None or not np.allclose(np.asarray(got.to_numpy()), e, atol=1e-5):
                    wrong += 1
        blank_with_vector = sum(
            1 for i, b, v in rows if v is not None and not (b or "").strip(" \t\r\n")
        )

        def during_outage(a: float, b: float) -> bool:
            return any(a < end + 5.0 and b > start - 1.0 for start, end in self.db_outages)

        failed = [r for r in search.records if not r[2]]
        failed_outside = [r for r in failed if not during_outage(r[0], r[1])]
        return {
            "rows_initial": self.rows,
            "rows_final": len(ids),
            "inserted": len(log.inserted),
            "updated_text": len(log.text),
            "deleted": len(log.deleted),
            "write_errors_during_outages": log.errors,
            "faults_injected": {
                **self.faults,
                **{f"proxy-{k}": v for k, v in proxy_counts.items() if k != "forward"},
            },
            "faults_total": sum(self.faults.values())
            + sum(v for k, v in proxy_counts.items() if k not in ("forward", "mutated")),
            "producer_restarts": self.producer_restarts,
            "rows_lost": lost,
            "deleted_rows_back": resurrected,
            "rows_checked": len(eligible),
            "wrong_vectors": wrong,
            "blank_rows_with_vector": blank_with_vector,
            "dead_letters": len(dead),
            "searches": len(search.records),
            "searches_failed": len(failed_outside),
            "searches_failed_during_db_outage": len(failed) - len(failed_outside),
            "search_errors": sorted({r[4] for r in failed_outside})[:5],
            "cross_model_rows": sum(r[3] for r in search.records),
            "duplicate_executions": out.get("duplicate_executions"),
            "rows_written": out.get("rows_written"),
            "seconds": round(seconds, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--fault-every", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN_S", "MAX_S")
    )
    ap.add_argument(
        "--chaos-seconds",
        type=float,
        default=120.0,
        help="how long faults and writes go on (then a clean catch-up pass)",
    )
    ap.add_argument("--scenario", choices=("chaos", "operation"), default="chaos")
    ap.add_argument("--outage-seconds", type=float, default=120.0, help="operation: each outage")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="migrator-soak-") as tmp:
        soak = Soak(args.rows, args.seed, Path(tmp), tuple(args.fault_every), args.chaos_seconds)
        if args.scenario == "operation":
            from bench.soak_operation import OperationSoak

            n = args.outage_seconds
            op = OperationSoak(
                args.rows, args.seed, Path(tmp) / "op", outages=((40.0, n), (100.0 + n, n))
            )
            figures = op.run(soak.check)
        else:
            figures = soak.run()
    print(json.dumps(figures, indent=2))
    ok = (
        figures["rows_lost"] == 0
        and figures["wrong_vectors"] == 0
        and figures["searches_failed"] == 0
        and figures["deleted_rows_back"] == 0
        and figures["cross_model_rows"] == 0
        and figures.get("follower_running_at_end", True)
        and figures.get("killed_batches_recovered") == figures.get("killed_batches")
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
