"""cutover, rollback, finalize and abort: switch the search view between columns, drop the old
one, or abandon the migration.

Each command: operator lock + phase guard (db.context.migration_context), its own checks, the step's
statements through the executor, and the phase change in the SAME transaction as the switch,
so the view, the registry and the phase can never disagree. Renders nothing (the CLI does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from migrator.backfill import preflight, refresh
from migrator.bridge import store as bridge_store
from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import state, view_catalog
from migrator.db.context import Context
from migrator.db.executor import RunResult
from migrator.db.state import State
from migrator.ddl import statements as q
from migrator.ddl import steps
from migrator.ddl.facts import Facts
from migrator.errors import PhaseError, PreflightError
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
    # Rollback through a bridge: new-model queries mapped into the old column (docs/bridge.md).
    bridge_id: int | None = None

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


def _require_target_index(ctx: Context) -> None:
    plan = ctx.plan
    on = plan.side_table if plan.side else plan.table.name
    idx = insp.index_on(ctx.conn, plan.table.schema_, on, plan.target.column)
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
        (*step.forward, steps.record_phase(plan, after)),
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
    return view_matches_snapshot(ctx.conn, ctx.plan, migration.view_snapshot)


def view_matches_snapshot(conn: Any, plan: Plan, snapshot: dict[str, Any] | None) -> bool | None:
    """Definition, options, owner, grants (and comment) equal to what adopt recorded."""
    snap = snapshot or {}
    if not snap.get("definition"):
        return None
    facts, definition = insp.view_facts(conn, plan)
    grants: list[Any] = [g.as_dict() for g in facts.view_grants]
    stored = snap.get("grants", [])
    if stored and isinstance(stored[0], list):  # snapshots before grant options were kept
        grants = [[g["grantee"], g["privilege"]] for g in grants if not g["column"]]
    return (
        definition == snap["definition"]
        and [list(o) for o in facts.view_options] == [list(o) for o in snap.get("options", [])]
        and facts.view_owner == snap.get("owner")
        and grants == stored
        and ("comment" not in snap or facts.view_comment == snap["comment"])
    )


def cutover(settings: Settings, plan: Plan) -> SwitchResult:
    """Point the view at the target column, if the latest verification passed and is current."""
    with preflight.context(settings, plan, "cutover") as ctx:
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


def rollback(settings: Settings, plan: Plan, *, bridge: bool | None = None) -> SwitchResult:
    """Point the view back at the source column (kept fresh by change capture since cutover).
    `bridge`: serve it to new-model queries through the newest bridge (None: only when a
    bridge stands in for a retired old model, docs/bridge.md)."""
    with preflight.context(settings, plan, "rollback") as ctx:
        step = steps.rollback(plan, ctx.facts())
        chosen = bridge_store.rollback_bridge(ctx.conn, plan, bridge)
        if chosen is not None:
            step = replace(
                step, forward=(*step.forward, *bridge_store.switch_statements(plan, chosen))
            )
        res = _switch(ctx, step, State.ROLLED_BACK, report_id=None)
        return replace(res, bridge_id=chosen)


def finalize_allowed_at(migration: state.Migration, plan: Plan) -> datetime | None:
    if migration.cutover_at is None:
        return None
    return migration.cutover_at + timedelta(hours=plan.cutover.rollback_window_hours)


def check_finalize(settings: Settings, plan: Plan, *, force: bool = False) -> None:
    """Every check of finalize (pre-flight, phase, rollback window, dependents), read-only:
    the CLI runs it before asking for a confirmation, so it never asks for a refusal."""
    with preflight.context(settings, plan, "finalize") as ctx:
        _finalize_checks(ctx, yes=True, force=force)


def _finalize_checks(ctx: Context, *, yes: bool, force: bool) -> state.Migration:
    migration = ctx.migration
    assert migration is not None
    if migration.phase is State.FINALIZING:
        # A finalize that stopped part-way: confirmed and inside its window already.
        _confirm(ctx.plan, yes)
    else:
        _check_finalize(ctx, migration, yes=yes, force=force)
    refuse_dependents(ctx, ctx.plan.source.column, "finalize")
    return migration


def finalize(settings: Settings, plan: Plan, *, yes: bool, force: bool = False) -> FinalizeResult:
    """Drop the old column, its indexes and migrator's trigger. Irreversible."""
    with preflight.context(settings, plan, "finalize") as ctx:
        migration = _finalize_checks(ctx, yes=yes, force=force)
        facts = ctx.facts()
        step = steps.finalize(plan, facts)
        res = ctx.executor().run(step.forward, ctx.ddl_policy())
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
    _confirm(plan, yes)


def _confirm(plan: Plan, yes: bool) -> None:
    if not yes:
        raise PhaseError(
            f"finalize is irreversible: it drops {plan.source.column} and rollback becomes "
            "impossible",
            hint="confirm with --yes",
        )


def refuse_dependents(ctx: Context, column: str, command: str) -> None:
    """DROP COLUMN fails on views or constraints that use the column: find them first."""
    names = ctx.facts().capture or ctx.plan.capture
    deps = view_catalog.column_dependents(ctx.conn, ctx.plan, column, own_trigger=names.trigger)
    if deps:
        raise PreflightError(
            f"cannot {command}: {', '.join(deps)} use{'s' if len(deps) == 1 else ''} "
            f"{q.table_label(ctx.plan)}.{column}, which {command} drops",
            hint="change them to stop using the column, then rerun; nothing was changed",
        )


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} min"


# ---- abort ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbortResult:
    phase_before: str
    dropped_column: str | None
    dropped_view: bool
    registry: str  # "removed" | "restored to <migration>" | "unchanged"
    view_matches_snapshot: bool | None
    attempts: int
    total_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def abort(settings: Settings, plan: Plan, *, yes: bool) -> AbortResult:
    """Abandon the migration: the table, the view and the registry as adopt found them
    (pgroll's rollback of an incomplete migration). Refused while cut over; the statements are
    steps.abort (shown by `migrator plan`); the migration's row stays, phase aborted."""
    with preflight.context(settings, plan, "abort") as ctx:
        migration = ctx.migration
        assert migration is not None
        before = migration.phase
        if not yes:
            raise PhaseError(
                f"abort drops {q.side_label(plan) if plan.side else plan.target.column} with "
                "every new vector in it, migrator's trigger and its records of this migration",
                hint="confirm with --yes",
            )
        facts = ctx.facts()
        if before is not State.ABORTED:
            _check_abort(ctx, facts)
        if before is State.ABORTED:
            # A cleanup that stopped part-way: only migrator's own rows are left to delete.
            stmts = steps.abort_cleanup(plan)
            dropped_column, dropped_view, registry = None, False, "unchanged"
        else:
            stmts = steps.abort(plan, facts).forward
            dropped_column = None if facts.target_preexisted else plan.target.column
            if plan.side:
                dropped_column = f"{q.side_label(plan)}.{plan.target.column}"
            dropped_view = facts.adopt_created_view
            prior = facts.prior_registry
            registry = f"restored to {prior.migration}" if prior else "removed"
        res = ctx.executor().run(stmts, ctx.ddl_policy())
        ctx.refresh()
        matches = view_matches_snapshot(ctx.conn, plan, migration.view_snapshot)
        result = AbortResult(
            before.value,
            dropped_column,
            dropped_view,
            registry,
            matches,
            res.attempts,
            round(res.total_ms, 2),
        )
        ctx.event(
            "ok",
            f"aborted: {q.table_label(plan)} and {q.view_label(plan)} as before adopt",
            before=before.value,
            after=State.ABORTED.value,
            **{k: v for k, v in result.as_dict().items() if k != "phase_before"},
        )
        return result


def check_abort(settings: Settings, plan: Plan) -> None:
    """Every check of abort (pre-flight, phase, dependents, the view), read-only: run before
    the CLI asks for a confirmation."""
    with preflight.context(settings, plan, "abort") as ctx:
        assert ctx.migration is not None
        if ctx.migration.phase is not State.ABORTED:
            _check_abort(ctx, ctx.facts())


def _check_abort(ctx: Context, facts: Facts) -> None:
    """Read-only: what would make a statement of the abort fail, refused up front."""
    plan = ctx.plan
    if not facts.target_preexisted:
        refuse_dependents(ctx, plan.target.column, "abort")
    if facts.adopt_created_view and facts.view_dependents:
        raise PreflightError(
            f"cannot abort: {', '.join(facts.view_dependents)} depend on {q.view_label(plan)}, "
            "which adopt created and abort drops",
            hint="drop them first (or keep the migration); nothing was changed",
        )
    body = facts.view_body
    if not facts.adopt_created_view and body is not None and body.serves != plan.source.column:
        raise PreflightError(
            f"cannot abort: {q.view_label(plan)} serves {body.serves}, not {plan.source.column}",
            hint="run `migrator rollback PLAN` first; nothing was changed",
        )
