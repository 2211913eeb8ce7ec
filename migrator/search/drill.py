"""`migrator drill`: a search load at a fixed rate from several processes, judged per phase.

Each worker process searches the plan's view through migrator.search; the parent polls the
migration's phase and buckets every query by the phase it started in: failed queries, rows
from another model than the query's, empty answers, hit rate and latency percentiles.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.ddl import statements as q
from migrator.demo.corpus import Doc, make_query
from migrator.plan.model import Plan
from migrator.search.client import SearchClient

# (started at, wall clock s; latency ms; ok; mixed rows; rows; hit; model switch retries; error)
Record = tuple[float, float, bool, int, int, bool, int, str]


def sample_queries(
    conn: psycopg.Connection, plan: Plan, n: int = 200, seed: int = 7
) -> list[tuple[str, str]]:
    """(query, primary key of the row it was drawn from): a random span of a row's text."""
    conn.execute("SELECT setseed(%s)", (((seed % 1000) / 1000.0),))
    rows = conn.execute(
        sql.SQL(
            "SELECT {pk}::text, {text} FROM {tbl} WHERE {ok} ORDER BY random() LIMIT %s"
        ).format(
            pk=sql.Identifier(plan.table.primary_key),
            text=q.text_expr(plan),
            tbl=q.table_ident(plan),
            ok=q.eligible_predicate(plan),
        ),
        (n,),
    ).fetchall()
    rng = random.Random(seed)
    return [(make_query(Doc(pk, "", text), rng), pk) for pk, text in rows]


@dataclass(frozen=True)
class WorkerArgs:
    conninfo: str
    view: str
    pk: str | None
    queries: list[tuple[str, str]]
    rate: float
    k: int
    environ: dict[str, str]
    seed: int


def _worker(args: WorkerArgs, start: Any, stop: Any, ready: Any, out: Any) -> None:
    """One load process: warm up, wait for the common start, search at `rate` until stopped."""
    records: list[Record] = []
    rng = random.Random(args.seed)
    with SearchClient(args.conninfo, view=args.view, environ=args.environ, pool_size=1) as client:
        with contextlib.suppress(Exception):
            client.search(args.queries[0][0], args.k)
        ready.put(args.seed)
        start.wait()
        interval = 1.0 / args.rate
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # A fixed schedule, not "as fast as answered": a slow phase must show in latency,
            # yet after a stall we resume the rate instead of bursting to catch up.
            next_at = max(next_at + interval, time.monotonic() - interval)
            text, expect = args.queries[rng.randrange(len(args.queries))]
            records.append(_one(client, args, text, expect))
    out.put(records)


def _one(client: SearchClient, args: WorkerArgs, text: str, expect: str) -> Record:
    t_wall, t0 = time.time(), time.perf_counter()
    try:
        res = client.search(text, args.k)
    except Exception as exc:  # a failed query is the measurement, not a crash
        return (
            t_wall,
            (time.perf_counter() - t0) * 1000,
            False,
            0,
            0,
            False,
            0,
            f"{type(exc).__name__}: {exc}"[:300],
        )
    hit = args.pk is not None and any(str(h.row.get(args.pk)) == expect for h in res.hits)
    return (
        t_wall,
        (time.perf_counter() - t0) * 1000,
        True,
        res.mixed,
        len(res.hits),
        hit,
        res.model_switch_retries,
        "",
    )


@dataclass
class PhaseStats:
    phase: str
    started_s: float
    queries: int = 0
    failed: int = 0
    mixed_rows: int = 0
    empty: int = 0
    hits: int = 0
    switch_retries: int = 0
    latencies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        ok = self.queries - self.failed
        return {
            "phase": self.phase,
            "started_s": round(self.started_s, 2),
            "queries": self.queries,
            "failed": self.failed,
            "cross_model_rows": self.mixed_rows,
            "empty": self.empty,
            "hit_rate": round(self.hits / ok, 4) if ok else None,
            "model_switch_retries": self.switch_retries,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2),
        }


@dataclass
class DrillReport:
    qps_target: float
    processes: int
    seconds: float
    phases: list[PhaseStats]
    errors: list[str]

    @property
    def queries(self) -> int:
        return sum(p.queries for p in self.phases)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.phases)

    @property
    def cross_model_rows(self) -> int:
        return sum(p.mixed_rows for p in self.phases)

    @property
    def empty(self) -> int:
        return sum(p.empty for p in self.phases)

    def as_dict(self) -> dict[str, Any]:
        return {
            "qps_target": self.qps_target,
            "qps_achieved": round(self.queries / self.seconds, 1) if self.seconds else 0.0,
            "processes": self.processes,
            "seconds": round(self.seconds, 2),
            "queries": self.queries,
            "failed": self.failed,
            "cross_model_rows": self.cross_model_rows,
            "empty": self.empty,
            "phases": [p.as_dict() for p in self.phases],
            "errors": self.errors[:10],
        }


class PhasePoller:
    """Polls migrator.migrations for the phase; the transitions, in wall-clock time."""

    def __init__(self, conninfo: str, migration: str, every: float = 0.05) -> None:
        self.conninfo, self.migration, self.every = conninfo, migration, every
        self.timeline: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="drill-phase")

    def start(self) -> None:
        self._read(psycopg.connect(self.conninfo, autocommit=True), close=True)
        self._thread.start()

    def _read(self, conn: psycopg.Connection, *, close: bool = False) -> None:
        row = conn.execute(
            "SELECT phase FROM migrator.migrations WHERE name = %s", (self.migration,)
        ).fetchone()
        phase = str(row[0]) if row else "not started"
        if not self.timeline or self.timeline[-1][1] != phase:
            self.timeline.append((time.time(), phase))
        if close:
            conn.close()

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(self.every):
                with contextlib.suppress(psycopg.Error):
                    self._read(conn)

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.timeline


class Drill:
    """Start the load, do things (or let an operator do them), stop and get the report."""

    def __init__(
        self,
        conninfo: str,
        plan: Plan,
        *,
        qps: float,
        processes: int = 4,
        k: int = 10,
        environ: Mapping[str, str] | None = None,
        queries: int = 200,
    ) -> None:
        if qps <= 0 or processes < 1:
            raise ValueError("qps must be > 0 and processes >= 1")
        self.conninfo, self.plan, self.qps, self.processes, self.k = (
            conninfo,
            plan,
            qps,
            processes,
            k,
        )
        self.environ = dict(environ or {})
        self.n_queries = queries
        self._ctx = mp.get_context("spawn")  # no fork of a process holding threads and sockets
        self._procs: list[Any] = []
        self._out: Any = None
        self._stop: Any = None
        self._poller = PhasePoller(conninfo, plan.name)
        self._t0 = 0.0

    def start(self, timeout: float = 60.0) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            queries = sample_queries(conn, self.plan, self.n_queries)
        if not queries:
            raise ValueError("the table has no rows to draw queries from")
        pk = (
            self.plan.table.primary_key
            if self.plan.table.primary_key in self.plan.view.columns
            else None
        )
        start, self._stop = self._ctx.Event(), self._ctx.Event()
        ready, self._out = self._ctx.Queue(), self._ctx.Queue()
        view = f"{self.plan.view_schema}.{self.plan.view.name}"
        for i in range(self.processes):
            args = WorkerArgs(
                self.conninfo,
                view,
                pk,
                queries,
                self.qps / self.processes,
                self.k,
                self.environ,
                seed=i,
            )
            p = self._ctx.Process(
                target=_worker,
                args=(args, start, self._stop, ready, self._out),
                daemon=True,
                name=f"drill-{i}",
            )
            p.start()
            self._procs.append(p)
        for _ in range(self.processes):
            ready.get(timeout=timeout)
        self._poller.start()
        self._t0 = time.time()
        start.set()

    def stop(self) -> DrillReport:
        self._stop.set()
        t_end = time.time()
        records: list[Record] = []
        for _ in self._procs:
            try:
                records.extend(self._out.get(timeout=60))
            except queue.Empty:
                break
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        timeline = self._poller.stop()
        return build_report(records, timeline, self._t0, t_end, self.qps, self.processes)


def build_report(
    records: Sequence[Record],
    timeline: Sequence[tuple[float, str]],
    t0: float,
    t_end: float,
    qps: float,
    processes: int,
) -> DrillReport:
    """Bucket records by the phase segment each started in (pure: unit-testable)."""
    segments = [PhaseStats(phase, max(0.0, at - t0)) for at, phase in timeline] or [
        PhaseStats("unknown", 0.0)
    ]
    starts = [max(at, t0) for at, _ in timeline] or [t0]
    errors: list[str] = []
    for rec in sorted(records):
        t, lat, ok, mixed, n, hit, retries, err = rec
        i = max(0, int(np.searchsorted(starts, t, side="right")) - 1)
        seg = segments[i]
        seg.queries += 1
        seg.latencies.append(lat)
        seg.switch_retries += retries
        if not ok:
            seg.failed += 1
            if len(errors) < 10:
                errors.append(err)
            continue
        seg.mixed_rows += mixed
        seg.empty += n == 0
        seg.hits += hit
    return DrillReport(qps, processes, t_end - t0, [s for s in segments if s.queries], errors)


def run_drill(
    conninfo: str,
    plan: Plan,
    *,
    qps: float,
    duration: float,
    processes: int = 4,
    environ: Mapping[str, str] | None = None,
    actions: Sequence[tuple[str, Callable[[], object]]] = (),
    on_action: Callable[[str, object], None] | None = None,
) -> DrillReport:
    """Run the load for `duration` s; run `actions` (name, call) evenly spaced within it."""
    drill = Drill(conninfo, plan, qps=qps, processes=processes, environ=environ)
    drill.start()
    try:
        t0 = time.monotonic()
        for i, (name, action) in enumerate(actions):
            time.sleep(max(0.0, t0 + duration * (i + 1) / (len(actions) + 1) - time.monotonic()))
            try:
                outcome: object = action()
            except Exception as exc:  # reported, and the load goes on: that is the point
                outcome = exc
            if on_action:
                on_action(name, outcome)
        time.sleep(max(0.0, t0 + duration - time.monotonic()))
    finally:
        report = drill.stop()
    return report
