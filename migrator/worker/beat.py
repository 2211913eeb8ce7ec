"""Catch-up on a schedule: the `migrator.catch_up` task and an optional Celery beat schedule.

`celery -A migrator.worker.app beat` with MIGRATOR_BEAT_PLANS=plans/a.yaml[,plans/b.yaml] runs
one catch-up pass per plan every MIGRATOR_BEAT_SECONDS (default 30): changed rows become
batches, lost or stalled batches are enqueued again, and the phase moves to backfilled once
the database says the backfill is complete. Same pass as `migrator backfill --follow`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from migrator.backfill import monitor as backfill
from migrator.backfill.broker import broker_url
from migrator.config import load_settings
from migrator.db import state
from migrator.db.connect import connect, resolve_url
from migrator.errors import ConcurrentRunError
from migrator.plan.model import load_plan, parse_plan

log = logging.getLogger(__name__)
TASK = "migrator.catch_up"


def catch_up_once(migration: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One pass for `migration` (plan read from migrator's schema); returns what it saw."""
    settings = load_settings(environ)
    conn = connect(resolve_url(settings), application_name="migrator-catch-up")
    try:
        row = conn.execute(
            "SELECT plan FROM migrator.migrations WHERE name = %s", (migration,)
        ).fetchone()
        if row is None:
            return {"migration": migration, "skipped": "unknown migration"}
        plan = parse_plan(row[0])
        phase = backfill._phase(conn, plan)
        if phase in (state.State.PLANNED, state.State.FINALIZED):
            return {"migration": migration, "skipped": f"phase {phase.value}"}
        stall = float(plan.backfill.stall_after_seconds)
        enq = backfill.Enqueuer(broker_url(settings), plan, stall)
        try:
            with backfill._monitor_lock(conn, plan.name):
                mon = backfill.Monitor(
                    conn, plan, enq, stall, backfill.Options(), {}, time.monotonic()
                )
                complete = mon.tick(phase)
                if complete:
                    backfill._try_mark_complete(conn, plan, settings.operator)
        except ConcurrentRunError:
            return {"migration": migration, "skipped": "a follower is running"}
        finally:
            enq.close()
        return {"migration": migration, "complete": complete, "phase": phase.value}
    finally:
        conn.close()


def beat_schedule(plan_paths: str, seconds: float) -> dict[str, dict[str, Any]]:
    """Celery beat entries for the plan files named (comma-separated)."""
    schedule: dict[str, dict[str, Any]] = {}
    for path in filter(None, (p.strip() for p in plan_paths.split(","))):
        plan = load_plan(path)
        schedule[f"catch-up:{plan.name}"] = {
            "task": TASK,
            "schedule": seconds,
            "args": [plan.name],
            "options": {"queue": plan.queue, "expires": seconds},
        }
    return schedule


def register(app: Any, environ: Mapping[str, str]) -> None:
    @app.task(name=TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def catch_up(migration: str) -> dict[str, Any]:
        return catch_up_once(migration)

    plans = environ.get("MIGRATOR_BEAT_PLANS")
    if plans:
        with contextlib.suppress(ValueError):
            seconds = float(environ.get("MIGRATOR_BEAT_SECONDS", "30"))
            app.conf.beat_schedule = beat_schedule(plans, seconds)
