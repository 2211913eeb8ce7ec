"""The start of a migration: the read-only checks, adopting the view, expanding the table.

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


def preflight(conn: psycopg.Connection, plan: Plan) -> insp.Inspection:
    ins = insp.inspect(conn, plan, sample=0)
    if ins.errors:
        first = ins.errors[0].what
        more = (
            f" (and {len(ins.errors) - 1} more: see `migrator plan PLAN`)"
            if len(ins.errors) > 1
            else ""
        )
        raise PreflightError(first + more, hint="fix the plan or the database, then rerun")
    return ins


def adopt(ctx: Context) -> RunResult:
    """Register the migration and create (or confirm) the view on the source column, after the
    read-only checks; the view as found is kept as the snapshot rollback returns to."""
    ins = preflight(ctx.conn, ctx.plan)
    snapshot = {
        "definition": ins.view_definition,
        "options": list(ins.facts.view_options),
        "owner": ins.facts.view_owner,
        "grants": list(ins.facts.view_grants),
    }
    t0 = time.perf_counter()
    res = ctx.executor().run(adopt_step(ctx.plan, ins.facts).forward, ctx.ddl_policy())
    if ctx.migration is None:
        state.register(ctx.conn, ctx.plan)
        state.set_phase(ctx.conn, ctx.plan.name, state.State.PLANNED, view_snapshot=snapshot)
    ctx.refresh()
    ctx.event(
        "ok",
        f"view {ctx.plan.view.name} serves {ctx.plan.source.column}",
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
