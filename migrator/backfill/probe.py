"""Pacing that protects search, the database part: the probe (k-NN searches through the view the
service reads, in the service's shape and settings), the stored pacing row every worker reads,
and the `Governor` the monitor runs: baseline before the first batch, then probe -> pace.

Owns `migrator.pacing`; the controller itself is pure (`backfill.pacing`). The probe never
writes the user's table; it reads query vectors from the column the view serves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.types.json import Jsonb

from migrator.backfill import pacing
from migrator.db import state
from migrator.db.connect import connect
from migrator.ddl import statements as q
from migrator.plan.model import PacingSpec, Plan, VectorType

log = logging.getLogger(__name__)
BASELINE_PROBES = 4  # the baseline is the median p99 of this many probes
WARM_UP = 20  # queries run (not counted) before the baseline: cold caches would inflate it
PROBE_TIMEOUT_MS = 5000  # a probe query slower than this counts as this slow


def stale_after(spec: PacingSpec) -> float:
    """A pace not refreshed for this long is the coordinator's last word, not a live one:
    workers fall back to `min_pace` (the coordinator stopped: nobody measures search now)."""
    return max(30.0, 6.0 * spec.probe_every_seconds)


@dataclass(frozen=True)
class Served:
    """What the view serves now (the registry): its column, model and vector type."""

    column: str
    fingerprint: str
    vtype: VectorType


def served(conn: psycopg.Connection, plan: Plan) -> Served | None:
    row = conn.execute(
        "SELECT column_name, fingerprint, vector_type FROM migrator.active_models "
        "WHERE view_schema = %s AND view_name = %s",
        (plan.view_schema, plan.view.name),
    ).fetchone()
    return None if row is None else Served(str(row[0]), str(row[1]), VectorType(row[2]))


def sample_vectors(conn: psycopg.Connection, plan: Plan, column: str, n: int) -> list[str]:
    """`n` vectors of the served column as text (cast back by the probe query): a repeatable
    block sample, so a restarted coordinator probes with the same queries."""
    rel = conn.execute(
        "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = %s::regclass",
        (q.table_ident(plan).as_string(conn),),
    ).fetchone()
    rows_est = float(rel[0]) if rel else 0.0
    col, tbl = sql.Identifier(column), q.table_ident(plan)
    found: list[str] = []
    if rows_est > 20 * n:
        pct = min(100.0, max(0.01, 100.0 * 20 * n / rows_est))
        found = [
            str(r[0])
            for r in conn.execute(
                sql.SQL(
                    "SELECT {c}::text FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (17) "
                    "WHERE {c} IS NOT NULL LIMIT %s"
                ).format(c=col, t=tbl),
                (pct, n),
            ).fetchall()
        ]
    if len(found) < n:
        found = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL LIMIT %s").format(
                    c=col, t=tbl
                ),
                (n,),
            ).fetchall()
        ]
    return found


def run_queries(
    conn: psycopg.Connection,
    plan: Plan,
    srv: Served,
    vectors: list[str],
    k: int,
    *,
    settings: dict[str, str],
) -> list[float]:
    """Latency (ms) of one k-NN query per vector, one after another, each in its own
    transaction with the plan's search settings SET LOCAL (what `migrator.search` does);
    only the query itself is timed."""
    stmt = cast(sql.Composed, q.probe_query(plan, srv.vtype))
    out: list[float] = []
    for vec in vectors:
        t0 = time.perf_counter()
        try:
            with conn.transaction(), conn.cursor() as cur:
                for name, value in settings.items():
                    cur.execute("SELECT set_config(%s, %s, true)", (name, value))
                t0 = time.perf_counter()
                cur.execute(stmt, {"q": vec, "fp": srv.fingerprint, "k": k}).fetchall()
            out.append((time.perf_counter() - t0) * 1000.0)
        except pgerr.QueryCanceled:
            out.append(float(PROBE_TIMEOUT_MS))
    return out


# ---- the stored row -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    baseline_p99_ms: float | None
    baseline_p50_ms: float | None
    baseline_queries: int | None
    baseline_shape: dict[str, Any] | None
    pace: float | None
    last_p99_ms: float | None
    last_ratio: float | None
    age_seconds: float  # since the row was last written
    probed_age_seconds: float | None


def read_row(conn: psycopg.Connection, name: str) -> Row | None:
    r = conn.execute(
        "SELECT baseline_p99_ms, baseline_p50_ms, baseline_queries, baseline_shape, pace, "
        "last_p99_ms, last_ratio, extract(epoch FROM clock_timestamp() - updated_at)::float8, "
        "extract(epoch FROM clock_timestamp() - probed_at)::float8 "
        "FROM migrator.pacing WHERE migration = %s",
        (name,),
    ).fetchone()
    if r is None:
        return None
    return Row(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], float(r[7]), None if r[8] is None else r[8]
    )


def store_baseline(
    conn: psycopg.Connection, name: str, p99: float, p50: float, n: int, shape: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO migrator.pacing AS p (migration, baseline_p99_ms, baseline_p50_ms, "
        "baseline_queries, baseline_shape, baseline_at, updated_at) "
        "VALUES (%(m)s, %(p99)s, %(p50)s, %(n)s, %(shape)s, now(), now()) "
        "ON CONFLICT (migration) DO UPDATE SET baseline_p99_ms = excluded.baseline_p99_ms, "
        "baseline_p50_ms = excluded.baseline_p50_ms, baseline_queries = excluded.baseline_queries, "
        "baseline_shape = excluded.baseline_shape, baseline_at = now(), updated_at = now()",
        {"m": name, "p99": p99, "p50": p50, "n": n, "shape": Jsonb(shape)},
    )


def store_pace(
    conn: psycopg.Connection,
    name: str,
    pace: float | None,
    *,
    p99: float | None = None,
    ratio: float | None = None,
) -> None:
    """The pace every worker reads (None: not pacing); with a probe's figures when given."""
    conn.execute(
        "INSERT INTO migrator.pacing AS p (migration, pace, last_p99_ms, last_ratio, probed_at, "
        "updated_at) VALUES (%(m)s, %(pace)s, %(p99)s, %(ratio)s, "
        "CASE WHEN %(p99)s::float8 IS NULL THEN NULL ELSE now() END, now()) "
        "ON CONFLICT (migration) DO UPDATE SET pace = excluded.pace, "
        "last_p99_ms = coalesce(excluded.last_p99_ms, p.last_p99_ms), "
        "last_ratio = coalesce(excluded.last_ratio, p.last_ratio), "
        "probed_at = coalesce(excluded.probed_at, p.probed_at), updated_at = now()",
        {"m": name, "pace": pace, "p99": _finite(p99), "ratio": _finite(ratio)},
    )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def worker_pace(conn: psycopg.Connection, plan: Plan) -> float | None:
    """The pace a worker keeps now (None: full rate, not pacing). A pace the coordinator has
    not refreshed within `stale_after` falls to `min_pace`: nobody measures search then."""
    spec = plan.backfill.pacing
    if not spec.enabled:
        return None
    r = conn.execute(
        "SELECT pace, extract(epoch FROM clock_timestamp() - updated_at)::float8 "
        "FROM migrator.pacing WHERE migration = %s",
        (plan.name,),
    ).fetchone()
    if r is None or r[0] is None:
        return None
    if float(r[1]) > stale_after(spec):
        return spec.min_pace
    return float(r[0])


def status(conn: psycopg.Connection, plan: Plan) -> dict[str, Any]:
    """Pacing as `migrator status` and the exporter show it."""
    spec = plan.backfill.pacing
    out: dict[str, Any] = {
        "enabled": spec.enabled,
        "max_p99_ratio": spec.max_p99_ratio,
        "state": pacing.OFF,
        "pace": None,
        "baseline_p99_ms": None,
        "last_p99_ms": None,
        "ratio": None,
        "stale": False,
    }
    with contextlib.suppress(pgerr.UndefinedTable):
        row = read_row(conn, plan.name)
        if row is not None:
            stale = row.pace is not None and row.age_seconds > stale_after(spec)
            pace = spec.min_pace if stale else row.pace
            out.update(
                state=pacing.label(pace if spec.enabled else None),
                pace=pace if spec.enabled else None,
                baseline_p99_ms=_round(row.baseline_p99_ms),
                baseline_p50_ms=_round(row.baseline_p50_ms),
                last_p99_ms=_round(row.last_p99_ms),
                ratio=_round(row.last_ratio),
                probed_seconds_ago=_round(row.probed_age_seconds, 1),
                stale=stale,
            )
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(float(x), digits)


# ---- the coordinator's side ---------------------------------------------------------------


class Governor:
    """What the coordinator runs for pacing. `prepare` before the first batch is dispatched
    (the baseline, measured or reused), then a thread of its own: probe queries spread evenly
    over each `probe_every_seconds` (a burst of queries would sample one instant of a
    backfill whose writes come in bursts), at the end of each interval its p99 -> the
    controller -> the stored pace. `finish` at the end. The stored plan's `backfill.pacing` is
    re-read every interval: it changes live."""

    def __init__(self, url: str, plan: Plan, operator: str) -> None:
        self.url, self.plan, self.operator = url, plan, operator
        self.spec = plan.backfill.pacing
        self.conn: psycopg.Connection | None = None
        self.srv: Served | None = None
        self.vectors: list[str] = []
        self.offset = 0
        self.baseline: float | None = None
        self.pace: float | None = None
        self.ctl: pacing.Controller | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def event(self, result: str, message: str, **details: Any) -> None:
        """An event of the backfill in the migration's log (on the probe's own connection:
        the follower's and the foreground run's connections differ)."""
        state.log_event(
            self._conn(),
            self.plan.name,
            operator=self.operator,
            command="backfill",
            result=result,
            message=message,
            details=details,
        )

    # -- set-up --
    def _conn(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(self.url, vector=False, application_name="migrator-probe")
            self.conn.execute(f"SET statement_timeout = {PROBE_TIMEOUT_MS}")
        return self.conn

    def _shape(self, srv: Served, spec: PacingSpec) -> dict[str, Any]:
        return {
            "column": srv.column,
            "fingerprint": srv.fingerprint,
            "k": spec.k,
            "settings": self.plan.index.search_settings(),
        }

    def _query(self) -> float:
        """One probe query (ms), the next vector of the sample."""
        assert self.srv is not None
        vec = self.vectors[self.offset % len(self.vectors)]
        self.offset = (self.offset + 1) % len(self.vectors)
        return run_queries(
            self._conn(),
            self.plan,
            self.srv,
            [vec],
            self.spec.k,
            settings=self.plan.index.search_settings(),
        )[0]

    def _spread(self, n: int, seconds: float) -> list[float] | None:
        """`n` probe queries evenly spread over `seconds`; None when stopped meanwhile."""
        t0 = time.monotonic()
        out: list[float] = []
        for i in range(n):
            if self._stop.wait(max(0.0, t0 + (i + 0.5) * seconds / n - time.monotonic())):
                return None
            out.append(self._query())
        return out

    def prepare(self) -> None:
        """Before the first batch: the baseline p99 (stored: a restarted coordinator reuses it
        while the view serves the same column with the same settings), the starting pace, and
        the probe thread. A failed probe never stops the backfill: the thread tries again."""
        try:
            self._prepare()
        except psycopg.Error as exc:
            log.warning("pacing: the baseline failed (%s); tried again at the next probe", exc)
            self.baseline, self.conn = None, None
        self._start()

    def _prepare(self) -> None:
        if not self.spec.enabled:
            self._off()
            return
        conn = self._conn()
        srv = served(conn, self.plan)
        if srv is None:
            log.warning("pacing: no model is registered for the view; the backfill is not paced")
            return
        self.srv = srv
        n = self.spec.probe_queries
        self.vectors = sample_vectors(conn, self.plan, srv.column, BASELINE_PROBES * n)
        if not self.vectors:
            log.warning("pacing: no vectors in %s to probe with; not paced", srv.column)
            return
        row = read_row(conn, self.plan.name)
        shape = self._shape(srv, self.spec)
        if row is not None and row.baseline_p99_ms and row.baseline_shape == shape:
            self.baseline = row.baseline_p99_ms
            log.info("pacing: the stored baseline p99 %.2f ms", self.baseline)
        else:
            self._measure_baseline(row, shape)
        # A coordinator that stopped mid-run resumes at the pace it left (never above it).
        self.pace = row.pace if row is not None and row.pace is not None else 1.0
        self.ctl = pacing.Controller(self.spec, self.pace)
        store_pace(conn, self.plan.name, self.pace)

    def _measure_baseline(self, row: Row | None, shape: dict[str, Any]) -> None:
        conn = self._conn()
        if _running(conn, self.plan.name):
            # Workers are running batches (a restart, a cutover, pacing enabled live): pause
            # them and let running batches end, so the new baseline is of search alone.
            store_pace(conn, self.plan.name, 0.0)
            self._quiesce(conn)
        n = self.spec.probe_queries
        for _ in range(min(WARM_UP, len(self.vectors))):
            self._query()
        # Spread over one probe interval in all (4x the probe's rate): long enough to see the
        # database's own variation, short enough not to hold up the first batch for long.
        lat = self._spread(BASELINE_PROBES * n, self.spec.probe_every_seconds) or []
        chunks = [lat[i::BASELINE_PROBES] for i in range(BASELINE_PROBES)]
        p99 = pacing.median([pacing.p99(c) for c in chunks])
        if math.isnan(p99):
            return
        flat = sorted(lat)
        p50 = flat[len(flat) // 2]
        self.baseline = max(p99, 0.01)
        store_baseline(conn, self.plan.name, self.baseline, p50, len(flat), shape)
        self.event(
            "ok",
            f"pacing baseline: search p99 {self.baseline:.2f} ms, p50 {p50:.2f} ms "
            f"({len(flat)} queries through {q.view_label(self.plan)}); limit "
            f"{self.spec.max_p99_ratio:g}x",
            baseline_p99_ms=round(self.baseline, 3),
            baseline_p50_ms=round(p50, 3),
        )

    def _quiesce(self, conn: psycopg.Connection) -> None:
        deadline = time.monotonic() + 2 * self.plan.backfill.lease_seconds + 5
        while time.monotonic() < deadline and _running(conn, self.plan.name):
            time.sleep(0.5)

    def _off(self) -> None:
        with contextlib.suppress(psycopg.Error):
            row = read_row(self._conn(), self.plan.name)
            if row is not None and row.pace is not None:
                store_pace(self._conn(), self.plan.name, None)
        self.pace = None

    # -- the probe thread --
    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="migrator-probe", daemon=True)
            self._thread.start()

    def tick(self) -> None:
        """From the monitor's pass: restart a probe thread that died (it logs why)."""
        if self._thread is not None and not self._stop.is_set():
            self._start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._interval():
                    return
            except psycopg.Error as exc:
                # Never stops the backfill: the pace stays (and goes stale) until a probe works.
                log.warning("pacing probe failed: %s", str(exc).strip().split("\n")[0])
                with contextlib.suppress(Exception):
                    if self.conn is not None:
                        self.conn.close()
                self.conn = None
                if self._stop.wait(self.spec.probe_every_seconds):
                    return

    def _interval(self) -> bool:
        """One probe interval; False when stopped."""
        conn = self._conn()
        stored = state.stored_plan(conn, self.plan.name)
        if stored is not None:
            self.plan, self.spec = stored, stored.backfill.pacing
        if not self.spec.enabled:
            if self.pace is not None:
                self.event("ok", "pacing off: the backfill runs at the full rate")
            self._off()
            return not self._stop.wait(self.spec.probe_every_seconds)
        if self.baseline is None or self.srv is None or served(conn, self.plan) != self.srv:
            # Enabled live, nothing to probe with before, or a cutover / rollback (another
            # column, another index): a new baseline, workers paused meanwhile.
            self._prepare()
            return not self._stop.wait(0.0 if self.baseline else self.spec.probe_every_seconds)
        lat = self._spread(self.spec.probe_queries, self.spec.probe_every_seconds)
        if lat is None:
            return False
        self._decide(conn, pacing.p99(lat))
        return True

    def _decide(self, conn: psycopg.Connection, p99: float) -> None:
        assert self.baseline is not None
        ratio = p99 / self.baseline
        if self.ctl is None:
            self.ctl = pacing.Controller(self.spec, self.pace if self.pace is not None else 1.0)
        self.ctl.spec = self.spec
        d = self.ctl.update(ratio, time.monotonic())
        self.pace = d.pace
        store_pace(conn, self.plan.name, d.pace, p99=p99, ratio=ratio)
        log.info("pacing: p99 %.2f ms (%.2fx) -> pace %.2f", p99, ratio, d.pace)
        if d.change is None:
            return
        what = {
            "throttled": f"throttled to {d.pace:.0%} of the full rate",
            "paused": "paused",
            "resumed": f"resumed at {d.pace:.0%} of the full rate",
            "full": "back to the full rate",
            "futile": f"search stayed over the limit for {self.spec.max_pause_seconds:g} s "
            "while paused, so its slowness is not the backfill's: going on at "
            f"{d.pace:.0%} of the full rate, without pausing until search is back under the "
            "limit",
        }[d.change]
        self.event(
            "ok",
            f"pacing: {what} (search p99 {p99:.2f} ms = {ratio:.2f}x the baseline "
            f"{self.baseline:.2f} ms; limit {self.spec.max_p99_ratio:g}x)",
            pace=d.pace,
            p99_ms=round(p99, 3),
            ratio=round(ratio, 3),
            change=d.change,
        )

    def finish(self, complete: bool) -> None:
        """At the end of the run: stop the probe; a complete backfill stops pacing (catch-up
        batches run at the full rate until the next run); otherwise the pace stays and goes
        stale (workers keep min_pace)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT_MS / 1000 + 5)
        with contextlib.suppress(psycopg.Error):
            if complete and self.pace is not None:
                store_pace(self._conn(), self.plan.name, None)
                self.pace = None
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def _running(conn: psycopg.Connection, name: str) -> bool:
    r = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM migrator.batches WHERE migration = %s AND status = "
        "'running' AND (lease_until IS NULL OR lease_until > now()))",
        (name,),
    ).fetchone()
    return bool(r and r[0])
