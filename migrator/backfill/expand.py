"""The start of a migration: adopting the view and expanding the table (the read-only checks
before them are backfill.preflight).

Each runs inside a command's `db.context.Context` (lock held, phase guarded) and goes through the
one executor; nothing here renders or reads a plan file.
"""

from __future__ import annotations

import time

import psycopg

from migrator.db import catalog as insp
from migrator.db import state
from migrator.db.context import Context
from migrator.db.executor import RunResult
from migrator.ddl.steps import adopt as adopt_step
from migrator.ddl.steps import expand as expand_step
from migrator.errors import PreflightError
from migrator.plan.model import Plan


def inspected(conn: psycopg.Connection, plan: Plan) -> insp.Inspection:
    """The catalog facts a step needs (the command's pre-flight checked them already; a change
    since, by another session, is still refused cleanly)."""
    ins = insp.inspect(conn, plan, sample=0)
    if ins.errors:
        raise PreflightError(ins.errors[0].what, hint="fix the plan or the database, then rerun")
    return ins


def adopt(ctx: Context) -> RunResult:
    """Register the migration; create the view, or confirm the user's and leave it alone.

    Runs after the read-only checks. The snapshot records what adopt found (the view, the
    registry entry, the target column), which is what rollback compares with and abort
    returns to.
    """
    plan = ctx.plan
    ins = inspected(ctx.conn, plan)
    body = ins.facts.view_body
    if body is not None and body.serves != plan.source.column:
        raise PreflightError(
            f"view {plan.view_schema}.{plan.view.name} serves {body.serves}, not the plan's "
            f"source column {plan.source.column}",
            hint="adopt a view that serves the source column; nothing was changed",
        )
    snapshot = insp.view_snapshot(ctx.conn, plan, ins)
    t0 = time.perf_counter()
    res = ctx.executor().run(adopt_step(plan, ins.facts).forward, ctx.ddl_policy())
    if ctx.migration is None or ctx.migration.phase is state.State.ABORTED:
        state.register(ctx.conn, plan)
        state.set_phase(
            ctx.conn, plan.name, state.State.PLANNED, view_snapshot=snapshot, reset_cutover=True
        )
    ctx.refresh()
    ctx.event(
        "ok",
        f"view {plan.view.name} serves {plan.source.column}"
        + (" (the existing view, unchanged)" if body is not None else " (created)"),
        after=state.State.PLANNED.value,
        ms=round((time.perf_counter() - t0) * 1000, 1),
    )
    return res


def expand(ctx: Context) -> RunResult:
    """Add the target column and the change capture (one transaction), phase planned -> expanded."""
    plan = ctx.plan
    assert ctx.migration is not None
    before = ctx.migration.phase.value
    res = ctx.executor().run(expand_step(plan, ctx.facts()).forward, ctx.ddl_policy())
    state.set_phase(ctx.conn, plan.name, state.State.EXPANDED)
    ctx.refresh()
    ctx.event(
        "ok",
        f"added {plan.target.column} and change capture",
        before=before,
        after=state.State.EXPANDED.value,
        attempts=res.attempts,
        hold_ms=round(res.hold_ms, 1),
    )
    return res
