"""`migrator abort`: abandon a migration and return the table, the view and the registry to
their state before adopt (pgroll's rollback of an incomplete migration).

Allowed before cutover and after a rollback, refused while cut over. Everything that can be
checked is checked before the first statement; the statements are steps.abort (shown by
`migrator plan`). The migration's row stays, phase `aborted`, with its event log. Renders
nothing (the CLI does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from migrator import switch
from migrator.api import migration_context
from migrator.config import Settings
from migrator.db.state import State
from migrator.ddl import statements as q
from migrator.ddl import steps
from migrator.errors import PhaseError, PreflightError
from migrator.plan.model import Plan


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
    with migration_context(settings, plan, "abort") as ctx:
        migration = ctx.migration
        assert migration is not None
        before = migration.phase
        if not yes:
            raise PhaseError(
                f"abort drops {plan.target.column} with every new vector in it, migrator's "
                "trigger and its records of this migration",
                hint="confirm with --yes",
            )
        facts = ctx.facts()
        if before is State.ABORTED:
            # A cleanup that stopped part-way: only migrator's own rows are left to delete.
            stmts = steps.abort_cleanup(plan)
            dropped_column, dropped_view, registry = None, False, "unchanged"
        else:
            _check(ctx, facts)
            stmts = steps.abort(plan, facts).forward
            dropped_column = None if facts.target_preexisted else plan.target.column
            dropped_view = facts.adopt_created_view
            prior = facts.prior_registry
            registry = f"restored to {prior.migration}" if prior else "removed"
        res = ctx.executor().run(stmts, ctx.ddl_policy())
        ctx.refresh()
        matches = switch.view_matches_snapshot(ctx.conn, plan, migration.view_snapshot)
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


def _check(ctx: Any, facts: steps.Facts) -> None:
    """Read-only: what would make a statement of the abort fail, refused up front."""
    plan = ctx.plan
    if not facts.target_preexisted:
        switch.refuse_dependents(ctx, plan.target.column, "abort")
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
