"""Pacing that protects search, the coordinator's side: the baseline before the first batch,
then a probe thread that turns search latency into the pace every worker keeps.

Runs in `migrator backfill` (and `--follow`) only; SQL lives in `backfill.probe`, the
controller in `backfill.pacing`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import Any

import psycopg

from migrator.backfill import ledger, pacing
from migrator.backfill.probe import (
    BASELINE_PROBES,
    PROBE_TIMEOUT_MS,
    WARM_UP,
    Row,
    Served,
    read_row,
    run_queries,
    sample_vectors,
    served,
    store_baseline,
    store_pace,
)
from migrator.db import state
from migrator.db.connect import connect
from migrator.ddl import statements as q
from migrator.plan.model import PacingSpec, Plan

log = logging.getLogger(__name__)


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
        self.window = pacing.Window()
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
            self.conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(PROBE_TIMEOUT_MS),)
            )
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
        # A coordinator that stopped mid-run resumes at the pace it left (never above it); a
        # new run starts slow (`start_pace`) and grows while search stays under the limit.
        start = max(self.spec.start_pace, self.spec.min_pace)
        self.pace = row.pace if row is not None and row.pace is not None else start
        self.ctl = pacing.Controller(self.spec, self.pace)
        self.window.reset()
        store_pace(conn, self.plan.name, self.pace)

    def _measure_baseline(self, row: Row | None, shape: dict[str, Any]) -> None:
        conn = self._conn()
        if ledger.running_leased(conn, self.plan.name):
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
        while time.monotonic() < deadline and ledger.running_leased(conn, self.plan.name):
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
        self._decide(conn, lat)
        return True

    def _decide(self, conn: psycopg.Connection, latencies: list[float]) -> None:
        assert self.baseline is not None
        self.window.add(latencies)
        p99 = self.window.p99()
        ratio = p99 / self.baseline
        if self.ctl is None:
            self.ctl = pacing.Controller(self.spec, self.pace if self.pace is not None else 1.0)
        self.ctl.spec = self.spec
        d = self.ctl.update(ratio, time.monotonic(), settled=self.window.settled)
        if d.pace != self.pace:
            self.window.reset()
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
