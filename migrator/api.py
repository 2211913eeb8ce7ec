"""The public API behind the CLI: plan, status, adopt, and the database helpers.

Later phases live in their own modules (backfill, verify, switch); this module holds what they
share: opening a migration context with its schema upgraded, its lock held and its events logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import psycopg

from migrator.backfill import expand, ledger, preflight, probe, refresh
from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import state
from migrator.db.connect import connect, ensure_schema, resolve_url
from migrator.db.embedded import stop_embedded_database, stop_embedded_redis
from migrator.db.executor import RunResult
from migrator.db.server import server_memory_bytes
from migrator.ddl.statements import Statement
from migrator.ddl.steps import Step, all_steps, build_sizing
from migrator.errors import ConfigError, PreflightError
from migrator.plan.estimate import DEFAULT_WORKERS, estimate, in_flight
from migrator.plan.model import Plan


def statement_dict(st: Statement, lock_timeout_ms: int) -> dict[str, Any]:
    return {
        "sql": st.render(),
        "purpose": st.purpose,
        "transactional": st.transactional,
        "new_transaction": st.new_transaction,
        "lock": st.lock_text(),
        "lock_timeout_ms": lock_timeout_ms if st.ddl else None,
    }


def _phase_timeout(plan: Plan, step: Step) -> int:
    return (
        plan.cutover.lock_timeout_ms
        if step.phase in ("cutover", "rollback")
        else plan.ddl.lock_timeout_ms
    )


def step_dict(plan: Plan, step: Step) -> dict[str, Any]:
    t = _phase_timeout(plan, step)
    return {
        "phase": step.phase.value,
        "summary": step.summary,
        "notes": list(step.notes),
        "statements": [statement_dict(s, t) for s in step.forward],
        "backward": [statement_dict(s, t) for s in step.backward],
    }


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "plan_hash": plan.plan_hash(),
        "table": f"{plan.table.schema_}.{plan.table.name}",
        "queue": plan.queue,
        "index": plan.index_name,
        "view": f"{plan.view_schema}.{plan.view.name}",
        "source": {"column": plan.source.column, "fingerprint": plan.source.model.fingerprint()},
        "target": {"column": plan.target.column, "fingerprint": plan.target.model.fingerprint()},
    }


@dataclass
class PlanReport:
    plan: Plan
    mode: str
    steps: list[Step]
    inspection: insp.Inspection | None = None
    estimate: dict[str, Any] | None = None
    extra_findings: list[insp.Finding] = field(default_factory=list)
    # The pre-flight's blocking problems (catalog, privileges, keys, providers, Redis).
    problems: list[preflight.Problem] = field(default_factory=list)

    @property
    def findings(self) -> list[insp.Finding]:
        # Errors are the pre-flight's problems (the catalog's among them); then the rest.
        notes = [
            f for f in (self.inspection.findings if self.inspection else []) if f.level != "error"
        ]
        errors = [insp.Finding("error", p.line()) for p in self.problems]
        return errors + notes + self.extra_findings

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def raise_if_not_ok(self) -> None:
        """The first problem's error (and exit code), with every other problem as a line."""
        if self.problems:
            preflight.Result(self.problems).raise_first()
        errors = [f.what for f in self.findings if f.level == "error"]
        if errors:
            raise PreflightError(errors[0], hint="see the findings", more=tuple(errors[1:]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "plan": plan_summary(self.plan),
            "phases": [step_dict(self.plan, s) for s in self.steps],
            "live": insp.as_dict(self.inspection) if self.inspection else None,
            "estimate": self.estimate,
            "findings": [f.as_dict() for f in self.findings],
            "problems": [
                {"message": p.what, "hint": p.hint, "exit_code": p.exit_code} for p in self.problems
            ],
        }


def plan_offline(plan: Plan) -> PlanReport:
    return PlanReport(plan, "offline", all_steps(plan))


def count_tokens(plan: Plan, settings: Settings, texts: list[str]) -> tuple[list[int], str | None]:
    """Token counts of sample texts with the target model's counter; a warning when degraded."""
    try:
        from migrator.embedding import provider_for

        provider = provider_for(plan.target.model, settings.environ)
        try:
            return list(provider.count_tokens(texts)), None
        finally:
            provider.close()
    except ConfigError as exc:
        warning = f"{exc.one_line()}: the backfill will need it"
    except ImportError:
        warning = None
    return [max(1, len(t.encode("utf-8")) // 3) for t in texts], warning


def plan_live(
    plan: Plan, settings: Settings, *, calibrate: bool = True, workers: int = DEFAULT_WORKERS
) -> PlanReport:
    """The dry run against the database: the same pre-flight every command runs (for the whole
    migration: both models, every privilege), the statements with live facts, the estimate.

    `calibrate`: time a few requests of one batch to the target model (the database is only
    read; the provider is sent CALIBRATION_REQUESTS + 1 requests), so the time estimate uses
    the measured rate with `workers` worker processes instead of an assumed one."""
    url = resolve_url(settings)
    with contextlib.closing(connect(url)) as conn:
        conn.execute("SET default_transaction_read_only = on")
        migration = state.find_migration(conn, plan.name)
        phase = migration.phase if migration else None
        checked = preflight.check(conn, settings, plan, "plan", phase, sample=500)
        memory = server_memory_bytes(conn)
    ins = checked.inspection
    assert ins is not None
    # The index step sized for the table's rows, as the build will size it (it recounts then).
    facts = dataclasses.replace(ins.facts, index_rows=ins.rows, server_memory_bytes=memory)
    report = PlanReport(
        plan, "live", all_steps(plan, facts), inspection=ins, problems=checked.problems
    )
    report.extra_findings += [insp.Finding("warning", w) for w in checked.warnings]
    if ins.rows is not None:
        sizing = build_sizing(plan, facts)
        if sizing.warning():
            report.extra_findings.append(
                insp.Finding("warning", f"index build: {sizing.warning()}")
            )
    if migration is not None:
        if migration.plan_hash not in (plan.plan_hash(), plan.legacy_plan_hash()):
            report.problems.insert(
                0,
                preflight.Problem(
                    PreflightError,
                    "the plan file changed since this migration started",
                    "restore it or give the new plan a new name",
                ),
            )
        report.extra_findings.append(
            insp.Finding(
                "info",
                f"migration {plan.name} is {migration.phase.value}: "
                f"{state.NEXT_STEP[migration.phase]}",
            )
        )
    if ins.rows is not None:
        counts, warning = count_tokens(plan, settings, ins.sample_texts)
        if warning:
            report.extra_findings.append(insp.Finding("warning", warning))
        calibration = None
        if calibrate and not report.problems:
            calibration, why = preflight.calibrate(
                plan, settings, ins.sample_texts, in_flight=in_flight(plan, workers)
            )
            if why:
                report.extra_findings.append(insp.Finding("info", why))
        report.estimate = estimate(
            plan, ins.rows, counts, checked.storage, calibration=calibration, workers=workers
        ).as_dict()
    return report


# Re-exported for callers of the API.
live_facts = insp.live_facts


def adopt(settings: Settings, plan: Plan) -> RunResult:
    """Register the migration and create (or confirm) the view on the source column."""
    with preflight.context(settings, plan, "adopt") as ctx:
        return expand.adopt(ctx)


# ---------------------------------------------------------------------------------------------
# Status and the embedded database.
# ---------------------------------------------------------------------------------------------


def status(settings: Settings, plan: Plan, *, events_limit: int = 20) -> dict[str, Any]:
    url = resolve_url(settings)
    with contextlib.closing(connect(url)) as conn:
        # Read-only until a migration exists: status never creates migrator's schema.
        migration = state.find_migration(conn, plan.name)
        if migration is not None:
            ensure_schema(url)  # an older migrator's schema: upgrade it to read it
        out: dict[str, Any] = {
            "plan": plan_summary(plan),
            "phase": None,
            "events": [],
            "next": state.NEXT_STEP[None],
        }
        if migration is None:
            return out
        out["phase"] = migration.phase.value
        out["next"] = state.NEXT_STEP[migration.phase]
        out["plan_changed"] = migration.plan_hash not in (plan.plan_hash(), plan.legacy_plan_hash())
        out["events"] = [
            {**e, "at": e["at"].isoformat()} for e in state.events(conn, plan.name, events_limit)
        ]
        out["progress"] = progress(conn, plan)
        from migrator.backfill.ledger import dead_letters

        out["dead_letters"] = dead_letters(conn, plan.name)
        # The stored plan's pacing settings: they change live, the file may lag behind.
        out["pacing"] = probe.status(conn, state.stored_plan(conn, plan.name) or plan)
        return out


def progress(conn: psycopg.Connection, plan: Plan) -> dict[str, Any]:
    """Backfill progress judged from the database (the ledger and the table), never the broker."""
    s = ledger.summary(conn, plan.name)
    counts: dict[str, int] = {}
    with contextlib.suppress(psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
        counts = ledger.row_counts(conn, plan, plan.target.column)  # the table's, not the ledger's
    return {
        **counts,
        "batches": s["batches"],
        "batches_total": s["batches_total"],
        "rows_written": s["rows_written"],
        "duplicate_executions": s["duplicate_executions"],
        "dead_letters": ledger.dead_letter_count(conn, plan.name),
        "pending_changes": ledger.pending_changes(conn, plan.name),
        # Old vectors of text the row no longer has (what a rollback would serve).
        "stale_sources": refresh.stale_count(conn, plan.name),
        "refresh_source": plan.backfill.refresh_source,
    }


def db_url(settings: Settings) -> str:
    return resolve_url(settings)


def db_stop(settings: Settings) -> dict[str, bool]:
    if settings.database_url:
        raise ConfigError("DATABASE_URL is set: migrator only stops its own embedded database")
    return {
        "postgres": stop_embedded_database(settings.home),
        "redis": stop_embedded_redis(settings.home),
    }
