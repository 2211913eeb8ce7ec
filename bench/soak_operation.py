"""The operation soak (`bench/soak.py --scenario operation`): a follower (`backfill --follow`)
runs a backfill and its catch-up for minutes while a worker is SIGKILLed every 30-60 s, the
provider is down for 2 minutes twice (the embeddings server's error_rate 1.0) and a writer
changes rows at a steady rate. Default settings for leases (20 s) and stalls (600 s).

Reports the time from each kill to the killed batch being claimed by another worker and to it
being done (max, p50), rows lost and wrong vectors (every row recomputed), and whether the
follower was still running at the end (it must never exit on its own).
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from migrator import api
from migrator.backfill import ledger
from migrator.backfill import monitor as backfill
from migrator.config import load_settings
from migrator.embedding.server import ServerHandle, run_server_in_thread
from tests.backfill_helpers import child_pids, kill_workers, make_documents, unique_plan
from tests.reliability_helpers import (
    PrivatePostgres,
    PrivateRedis,
    Writer,
    settings_for,
    start_workers,
)


class _NoSearch:
    records: ClassVar[list[tuple[float, float, bool, int, str]]] = []


class RequeueLines(logging.Handler):
    """Counts the monitor's `re-enqueueing batch N:` lines per batch."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.per_batch: dict[int, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("re-enqueueing batch "):
            n = int(msg.split()[2].rstrip(":"))
            self.per_batch[n] = self.per_batch.get(n, 0) + 1


class Killed:
    """One SIGKILLed worker's batches, watched until another worker has them and they are done."""

    def __init__(self, at: float, batches: dict[int, str], provider_down: bool) -> None:
        self.at, self.batches, self.provider_down = at, batches, provider_down
        self.requeued: dict[int, float] = {}  # back to pending by the monitor (the lease bound)
        self.reclaimed: dict[int, float] = {}
        self.done: dict[int, float] = {}


class OperationSoak:
    def __init__(
        self,
        rows: int,
        seed: int,
        workdir: Path,
        *,
        kill_every: tuple[float, float] = (30.0, 60.0),
        outages: tuple[tuple[float, float], ...] = ((40.0, 120.0), (220.0, 120.0)),
        workers: int = 3,
        writes_per_second: float = 20.0,
    ) -> None:
        self.rows, self.rng, self.dir = rows, random.Random(seed), workdir
        self.kill_every, self.outages, self.n_workers = kill_every, outages, workers
        self.pause = 1.0 / writes_per_second
        self.kills: list[Killed] = []
        self.procs: list[Any] = []
        self.down = False
        self._stop = threading.Event()

    # ---- faults ---------------------------------------------------------------------------
    def _running_of(self, url: str, name: str, pids: set[int]) -> dict[int, str]:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT id, claimed_by FROM migrator.batches WHERE migration = %s "
                "AND status = 'running'",
                (name,),
            ).fetchall()
        return {int(i): str(by) for i, by in rows if by and int(str(by).rsplit(":", 1)[1]) in pids}

    def killer(self, url: str, broker: PrivateRedis, name: str, queue: str) -> None:
        while not self._stop.wait(self.rng.uniform(*self.kill_every)):
            alive = [p for p in self.procs if p.poll() is None]
            # Kill a worker that holds a batch (a kill of an idle worker recovers nothing).
            for _ in range(20):
                held = {
                    p.pid: self._running_of(url, name, {p.pid, *child_pids(p.pid)}) for p in alive
                }
                busy = [p for p in alive if held[p.pid]]
                if busy:
                    break
                if self._stop.wait(0.5):
                    return
            else:
                continue
            victim = self.rng.choice(busy)
            kill_workers([victim])
            self.kills.append(Killed(time.monotonic(), held[victim.pid], self.down))
            self.procs.remove(victim)
            self.procs += start_workers(url, broker.url, queue, n=1, concurrency=2)
            print(f"killed a worker holding batches {sorted(held[victim.pid])}", flush=True)

    def watcher(self, url: str) -> None:
        """Poll the killed batches: when another worker claimed them, when they were done."""
        while not self._stop.wait(0.25):
            open_ = [(k, b) for k in self.kills for b in list(k.batches) if b not in k.done]
            if not open_:
                continue
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT id, status, claimed_by FROM migrator.batches WHERE id = ANY(%s)",
                    ([b for _, b in open_],),
                ).fetchall()
            now = time.monotonic()
            seen = {int(i): (s, by) for i, s, by in rows}
            for k, b in open_:
                status, by = seen.get(b, ("gone", None))
                if b not in k.requeued and status == "done" and by == k.batches[b]:
                    k.batches.pop(b)  # it finished just before the kill: nothing to recover
                    continue
                if b not in k.requeued and (status != "running" or by != k.batches[b]):
                    k.requeued[b] = now - k.at
                if b not in k.reclaimed and status == "running" and by != k.batches[b]:
                    k.reclaimed[b] = now - k.at
                if status in ("done", "dead", "gone"):
                    k.reclaimed.setdefault(b, now - k.at)
                    k.done[b] = now - k.at

    def outage_plan(self, server: ServerHandle, t0: float) -> None:
        for start, length in self.outages:
            if self._stop.wait(max(0.0, t0 + start - time.monotonic())):
                return
            server.set_controls(error_rate=1.0)
            self.down = True
            print(f"provider down for {length:.0f} s", flush=True)
            if self._stop.wait(length):
                return
            server.set_controls(error_rate=0.0)
            self.down = False
            print("provider back", flush=True)

    # ---- the run --------------------------------------------------------------------------
    def settled(self, url: str, plan: Any) -> bool:
        with psycopg.connect(url) as conn:
            s = ledger.summary(conn, plan.name)
            counts = ledger.row_counts(conn, plan, plan.target.column)
            dead = ledger.dead_letter_count(conn, plan.name)
            changes = ledger.pending_changes(conn, plan.name)
        return not s["open"] and not s["failed"] and not changes and counts["rows_pending"] <= dead

    def run(self, check: Any) -> dict[str, Any]:
        pg = PrivatePostgres(self.dir / "pg")
        url = pg.start()
        broker = PrivateRedis(self.dir / "redis", persistent=False)
        server = run_server_in_thread()
        try:
            return self._run(check, pg, url, broker, server)
        finally:
            self._stop.set()
            kill_workers(self.procs)
            server.stop()
            broker.stop(crash=True)
            pg.stop()

    def _run(
        self, check: Any, pg: PrivatePostgres, url: str, broker: PrivateRedis, server: ServerHandle
    ) -> dict[str, Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        make_documents(url, self.rows, empty_every=997)
        broker.start()
        env = {**os.environ, "DATABASE_URL": url, "MIGRATOR_HOME": str(self.dir / "home")}
        st = settings_for(load_settings(env), broker.url)
        plan = unique_plan(
            server.url,
            backfill__batch_size=500,
            target__model__max_inputs_per_request=100,
            # Retries that outlast a short blip, not a 2-minute outage: the follower's
            # cool-down takes over from there.
            backfill__retry__backoff_max_seconds=20.0,
            backfill__failed_cooldown_seconds=15.0,
        )
        api.adopt(st, plan)
        self.procs = start_workers(url, broker.url, plan.queue, n=self.n_workers, concurrency=2)
        writer = Writer(url, self.rows, pause=self.pause).start()
        stop_follow = threading.Event()
        follow_out: dict[str, Any] = {}
        follow_errors: list[str] = []

        def follow() -> None:
            try:
                opts = backfill.Options(
                    follow=True, poll_seconds=1.0, should_stop=stop_follow.is_set
                )
                follow_out.update(backfill.run(st, plan, opts))
            except BaseException as exc:
                follow_errors.append(f"{type(exc).__name__}: {exc}")

        lines = RequeueLines()
        logging.getLogger("migrator.backfill.monitor").addHandler(lines)
        t0 = time.monotonic()
        follower = threading.Thread(target=follow, daemon=True)
        threads = [
            threading.Thread(target=self.killer, args=(url, broker, plan.name, plan.queue)),
            threading.Thread(target=self.watcher, args=(url,)),
            threading.Thread(target=self.outage_plan, args=(server, t0)),
        ]
        follower.start()
        for t in threads:
            t.start()
        chaos_end = t0 + max(s + n for s, n in self.outages) + 30.0
        try:
            while time.monotonic() < chaos_end and follower.is_alive():
                time.sleep(1.0)
            log = writer.stop()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and follower.is_alive():
                if self.settled(url, plan) and all(
                    len(k.done) == len(k.batches) for k in self.kills
                ):
                    break
                time.sleep(2.0)
            alive_at_end = follower.is_alive()
            seconds = time.monotonic() - t0
        finally:
            self._stop.set()
            for t in threads:
                t.join(60)
            stop_follow.set()
            follower.join(60)
            writer.stop()
            kill_workers(self.procs)
        figures = check(url, writer, _NoSearch(), follow_out, seconds, {})
        recover = [v for k in self.kills for v in k.done.values()]
        recover_up = [v for k in self.kills if not k.provider_down for v in k.done.values()]
        reclaim = [v for k in self.kills for v in k.reclaimed.values()]
        requeue = [v for k in self.kills for v in k.requeued.values()]
        with psycopg.connect(url) as conn:
            s = ledger.summary(conn, plan.name)
        figures.update(
            scenario="operation",
            kills=len(self.kills),
            killed_batches=sum(len(k.batches) for k in self.kills),
            killed_batches_recovered=len(recover),
            requeue_seconds_max=round(max(requeue), 1) if requeue else None,
            requeue_seconds_p50=round(statistics.median(requeue), 1) if requeue else None,
            reclaim_seconds_max=round(max(reclaim), 1) if reclaim else None,
            reclaim_seconds_p50=round(statistics.median(reclaim), 1) if reclaim else None,
            recover_seconds_max=round(max(recover), 1) if recover else None,
            recover_seconds_p50=round(statistics.median(recover), 1) if recover else None,
            recover_seconds_max_provider_up=round(max(recover_up), 1) if recover_up else None,
            outages=[list(o) for o in self.outages],
            writes=log.total,
            follower_running_at_end=alive_at_end,
            follower_errors=follow_errors,
            batches=s["batches"],
            re_enqueue_lines=sum(lines.per_batch.values()),
            re_enqueue_lines_per_killed_batch_max=max(
                (lines.per_batch.get(b, 0) for k in self.kills for b in k.batches), default=0
            ),
        )
        return figures
