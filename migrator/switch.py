"""cutover, rollback and finalize: switch the search view between columns, or drop the old one.

Each command: operator lock + phase guard (api.migration_context), its own checks, the step's
statements through the executor, and the phase change in the SAME transaction as the switch,
so the view, the registry and the phase can never disagree. Renders nothing (the CLI does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from migrator.api import Context, migration_context
from migrator.backfill import refresh
from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import state
from migrator.db.executor import RunResult
from migrator.db.state import State
from migrator.ddl import steps
from migrator.ddl.statements import Lock, Statement
from migrator.errors import PhaseError
from migrator.plan.model import Plan
from migrator.verify import gate


@dataclass(frozen=True)
class SwitchResult:
    """What a cutover or rollback did; times in milliseconds, as measured by the executor."""

    command: str
    phase_before: str
    phase_after: str
    column: str
    fingerprint: str
    attempts: int
    lock_wait_ms: float
    hold_ms: float
    total_ms: float
    report_id: int | None = None
    view_matches_snapshot: bool | None = None
    # Rows whose old vector is of text they no longer have (migrator.stale_sources), at cutover.
    stale_sources: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FinalizeResult:
    dropped_column: str
    dropped_indexes: tuple[str, ...]
    forced: bool
    attempts: int
    total_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def phase_statement(plan: Plan, phase: State) -> Statement:
    """The phase change as a statement, so it commits with the switch or not at all."""
    extra = sql.SQL(", cutover_at = now()") if phase is State.CUT_OVER else sql.SQL("")
    return Statement(
        sql.SQL(
            "UPDATE migrator.migrations SET phase = {}, updated_at = now(){} WHERE name = {}"
        ).format(sql.Literal(phase.value), extra, sql.Literal(plan.name)),
        f"record the phase {phase.value}",
        Lock.ROW_EXCLUSIVE,
        "migrator.migrations",
        ddl=False,
    )


def _require_target_index(ctx: Context) -> None:
    plan = ctx.plan
    idx = insp.index_on(ctx.conn, plan.table.schema_, plan.table.name, plan.target.column)
    if not any(valid for _, valid in idx):
        raise PhaseError(
            f"no valid index on {plan.target.column}: searches through the view would scan "
            "the whole table",
            hint="run `migrator verify PLAN` (it builds the index)",
        )


def _switch(
    ctx: Context,
    step: steps.Step,
    after: State,
    *,
    report_id: int | None,
    stale_sources: int | None = None,
) -> SwitchResult:
    plan, before = ctx.plan, ctx.migration
    assert before is not None
    retries: list[float] = []
    res: RunResult = ctx.executor().run(
        (*step.forward, phase_statement(plan, after)),
        ctx.cutover_policy(),
        on_retry=lambda _attempt, delay: retries.append(delay),
    )
    to_target = after is State.CUT_OVER
    model = plan.target if to_target else plan.source
    matches = None if to_target else _view_matches_snapshot(ctx, before)
    result = SwitchResult(
        ctx.command,
        before.phase.value,
        after.value,
        model.column,
        model.model.fingerprint(),
        res.attempts,
        round(res.lock_wait_ms, 2),
        round(res.hold_ms, 2),
        round(res.total_ms, 2),
        report_id,
        matches,
        stale_sources,
    )
    ctx.refresh()
    ctx.event(
        "ok",
        f"view {plan.view.name} serves {model.column} ({model.model.fingerprint()})",
        before=before.phase.value,
        after=after.value,
        attempts=res.attempts,
        lock_wait_ms=result.lock_wait_ms,
        hold_ms=result.hold_ms,
        total_ms=result.total_ms,
        retry_backoff_ms=round(sum(retries) * 1000, 1),
        report_id=report_id,
        view_matches_snapshot=matches,
        stale_sources=stale_sources,
    )
    return result


def _view_matches_snapshot(ctx: Context, migration: state.Migration) -> bool | None:
    """After rollback: is the view exactly as adopt found it (when adopt found one)?"""
    snap = migration.view_snapshot or {}
    if not snap.get("definition"):
        return None
    facts, definition = insp.view_facts(ctx.conn, ctx.plan.view_schema, ctx.plan.view.name)
    return (
        definition == snap["definition"]
        and [list(o) for o in facts.view_options] == [list(o) for o in snap.get("options", [])]
        and facts.view_owner == snap.get("owner")
        and [list(g) for g in facts.view_grants] == [list(g) for g in snap.get("grants", [])]
    )


def cutover(settings: Settings, plan: Plan) -> SwitchResult:
    """Point the view at the target column, if the latest verification passed and is current."""
    with migration_context(settings, plan, "cutover") as ctx:
        # A refusal raised here is logged by migration_context as an event of this command.
        st = gate.require_current_pass(ctx.conn, plan)
        _require_target_index(ctx)
        stale = _check_stale_sources(ctx, st.rows_at_report)
        return _switch(
            ctx,
            steps.cutover(plan, ctx.facts()),
            State.CUT_OVER,
            report_id=st.report_id,
            stale_sources=stale,
        )


def _check_stale_sources(ctx: Context, rows: int) -> int:
    """Old vectors of text their row no longer has would be served again by a rollback. With
    backfill.refresh_source, refuse while more remain than the gate tolerates for new vectors
    (verify.max_stale_fraction): the backfill refreshes them. Either way, report the count."""
    plan = ctx.plan
    stale = refresh.stale_count(ctx.conn, plan.name)
    if plan.backfill.refresh_source and refresh.too_many(stale, rows, plan):
        raise PhaseError(
            f"{stale:,} rows still hold an old vector ({plan.source.column}) of text they no "
            f"longer have (more than {plan.verify.max_stale_fraction:.1%} of {rows:,} rows): "
            "a rollback would serve them",
            hint="run `migrator backfill PLAN` (backfill.refresh_source re-embeds them with the "
            "old model) and cut over again, or set backfill.refresh_source: false to accept them",
        )
    return stale


def rollback(settings: Settings, plan: Plan) -> SwitchResult:
    """Point the view back at the source column (kept fresh by change capture since cutover)."""
    with migration_context(settings, plan, "rollback") as ctx:
        return _switch(ctx, steps.rollback(plan, ctx.facts()), State.ROLLED_BACK, report_id=None)


def finalize_allowed_at(migration: state.Migration, plan: Plan) -> datetime | None:
    if migration.cutover_at is None:
        return None
    return migration.cutover_at + timedelta(hours=plan.cutover.rollback_window_hours)


def finalize(settings: Settings, plan: Plan, *, yes: bool, force: bool = False) -> FinalizeResult:
    """Drop the old column, its indexes and migrator's trigger. Irreversible."""
    with migration_context(settings, plan, "finalize") as ctx:
        migration = ctx.migration
        assert migration is not None
        _check_finalize(ctx, migration, yes=yes, force=force)
        facts = ctx.facts()
        step = steps.finalize(plan, facts)
        res = ctx.executor().run(
            (*step.forward, phase_statement(plan, State.FINALIZED)), ctx.ddl_policy()
        )
        ctx.refresh()
        ctx.event(
            "ok",
            f"dropped {plan.source.column}, its indexes and the change capture",
            before=migration.phase.value,
            after=State.FINALIZED.value,
            forced=force,
            attempts=res.attempts,
            total_ms=round(res.total_ms, 2),
            dropped_indexes=list(facts.source_indexes),
        )
        return FinalizeResult(
            plan.source.column, facts.source_indexes, force, res.attempts, round(res.total_ms, 2)
        )


def _check_finalize(ctx: Context, migration: state.Migration, *, yes: bool, force: bool) -> None:
    plan = ctx.plan
    allowed = finalize_allowed_at(migration, plan)
    row = ctx.conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    if allowed is not None and now < allowed and not force:
        left = allowed - now
        raise PhaseError(
            f"the rollback window is still open for {_hours(left)} (until "
            f"{allowed.isoformat(timespec='seconds')})",
            hint="wait, or pass --force to finalize inside the window",
        )
    if not yes:
        raise PhaseError(
            f"finalize is irreversible: it drops {plan.source.column} and rollback becomes "
            "impossible",
            hint="confirm with --yes",
        )


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} min"
