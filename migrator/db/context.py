"""The context of a command that changes things: connection, operator lock, phase guard, events.

`migration_context` connects, upgrades migrator's schema, takes the migration's advisory lock,
refuses a changed plan or a phase the state machine forbids, and logs the outcome as events.
Phase packages (backfill, verify, switch) open it; it knows nothing of any of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import state
from migrator.db.connect import app_name, connect, ensure_schema, resolve_url
from migrator.db.executor import Executor, LockPolicy
from migrator.db.state import State
from migrator.ddl.steps import Facts
from migrator.errors import MigratorError
from migrator.plan.model import Plan


@dataclass
class Context:
    settings: Settings
    plan: Plan
    url: str
    conn: psycopg.Connection
    command: str
    migration: state.Migration | None

    def executor(self) -> Executor:
        return Executor(self.conn)

    def ddl_policy(self) -> LockPolicy:
        d = self.plan.ddl
        return LockPolicy(d.lock_timeout_ms, d.statement_timeout_ms, d.attempts)

    def cutover_policy(self) -> LockPolicy:
        c = self.plan.cutover
        return LockPolicy(c.lock_timeout_ms, 0, c.attempts, backoff_base_s=0.02, backoff_max_s=0.5)

    def event(
        self,
        result: str,
        message: str = "",
        *,
        before: str | None = None,
        after: str | None = None,
        **details: Any,
    ) -> None:
        state.log_event(
            self.conn,
            self.plan.name,
            operator=self.settings.operator,
            command=self.command,
            result=result,
            message=message,
            phase_before=before,
            phase_after=after,
            details=details,
        )

    def refresh(self) -> state.Migration | None:
        self.migration = state.get_migration(self.conn, self.plan.name)
        return self.migration

    def facts(self) -> Facts:
        return insp.live_facts(self.conn, self.plan)


# Read-only checks run after the phase guard and before anything changes (migrator's own schema
# included); raise a MigratorError to refuse. backfill.preflight.require is the one the
# commands pass (through backfill.preflight.context): db itself calls no provider or broker.
Checks = Callable[[psycopg.Connection, Settings, Plan, str, State | None], object]


@contextlib.contextmanager
def migration_context(
    settings: Settings, plan: Plan, command: str, *, checks: Checks | None = None
) -> Iterator[Context]:
    """Connect, take the operator lock, guard the phase, run `checks`, then upgrade migrator's
    schema and hand over; log the outcome. Nothing changes in the database (not even
    migrator's own schema) before the phase guard and the checks pass."""
    url = resolve_url(settings)
    conn = connect(url, application_name=app_name(command))
    try:
        with state.operator_lock(conn, plan.name):
            migration = state.find_migration(conn, plan.name)
            if migration is not None:
                state.check_plan_unchanged(migration, plan)
            ctx = Context(settings, plan, url, conn, command, migration)
            try:
                verdict = (
                    state.latest_verdict(conn, plan.name)
                    if migration is not None and command in ("cutover", "rollback")
                    else None
                )
                state.guard(command, migration, verdict)
                if checks is not None:
                    checks(conn, settings, plan, command, migration.phase if migration else None)
            except MigratorError as exc:
                if migration is not None:
                    ctx.event("refused", exc.one_line(), before=migration.phase.value)
                raise
            ensure_schema(url)
            ctx.refresh()
            if ctx.migration is not None:
                # Tuning (rate limits, thresholds, ef_search...) may change between commands:
                # store the file's values so workers and running services read them.
                changed = state.store_tuning(conn, ctx.migration, plan)
                if changed:
                    ctx.event("ok", "tuning updated: " + ", ".join(changed), keys=changed)
                    ctx.refresh()
            try:
                yield ctx
            except MigratorError as exc:
                with contextlib.suppress(Exception):
                    if ctx.refresh() is not None:
                        ctx.event("error", exc.one_line())
                raise
            except KeyboardInterrupt:
                with contextlib.suppress(Exception):
                    if ctx.refresh() is not None:
                        ctx.event("interrupted", "Ctrl-C; rerun to resume")
                raise
    finally:
        conn.close()
