"""migrator's own records: the migration row and its phase, the event log, the operator lock.

The phase is a state machine with guards: each command states which phases it may start
from, and a refusal names the phase and the command to run first. Statements here touch only
the `migrator` schema.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from migrator.ddl import statements as q
from migrator.ddl.phases import State as State  # re-exported: the phases live in ddl.phases
from migrator.errors import ConcurrentRunError, PhaseError
from migrator.plan.model import Plan, legacy_capture_names, parse_plan
from migrator.plan.vocab import Storage

# command -> phases it may start from (None: the migration may not exist yet). An aborted
# migration starts again from the beginning with adopt / backfill (same name, same plan).
ALLOWED: dict[str, frozenset[State | None]] = {
    "adopt": frozenset({None, State.PLANNED, State.ABORTED}),
    "expand": frozenset(
        {None, State.PLANNED, State.EXPANDED, State.BACKFILLED, State.VERIFIED, State.ROLLED_BACK}
    ),
    "backfill": frozenset(
        {
            None,
            State.PLANNED,
            State.EXPANDED,
            State.BACKFILLED,
            State.VERIFIED,
            State.ROLLED_BACK,
            State.CUT_OVER,
            State.ABORTED,
        }
    ),
    "verify": frozenset(
        {State.EXPANDED, State.BACKFILLED, State.VERIFIED, State.ROLLED_BACK, State.CUT_OVER}
    ),
    "cutover": frozenset({State.VERIFIED, State.ROLLED_BACK}),
    # Bridge mode (migrator.bridging): fit needs backfilled rows; on/off need the old column.
    "bridge-fit": frozenset(
        {State.EXPANDED, State.BACKFILLED, State.VERIFIED, State.ROLLED_BACK, State.CUT_OVER}
    ),
    "bridge-on": frozenset({State.EXPANDED, State.BACKFILLED, State.VERIFIED, State.ROLLED_BACK}),
    "bridge-off": frozenset({State.EXPANDED, State.BACKFILLED, State.VERIFIED, State.ROLLED_BACK}),
    "rollback": frozenset({State.CUT_OVER}),
    # finalizing: a finalize that stopped part-way; the rerun completes it.
    "finalize": frozenset({State.CUT_OVER, State.FINALIZING}),
    # aborted: only migrator's own rows are deleted again (a cleanup that stopped part-way).
    "abort": frozenset(
        {
            State.PLANNED,
            State.EXPANDED,
            State.BACKFILLED,
            State.VERIFIED,
            State.ROLLED_BACK,
            State.ABORTED,
        }
    ),
}

# Refusals whose way out differs from the phase's usual next step.
REFUSAL_HINTS: dict[tuple[str, State], str] = {
    ("abort", State.CUT_OVER): "the view serves the new column: run `migrator rollback PLAN` "
    "first, then `migrator abort PLAN`",
    ("rollback", State.FINALIZING): "finalize has started (the old column's indexes may be "
    "gone): run `migrator finalize PLAN --yes` again to complete it",
}

NEXT_STEP: dict[State | None, str] = {
    # The same order as docs/quickstart.md: adopt, move the service to the view, backfill.
    None: "run `migrator adopt PLAN`, point the search service at the view "
    "(docs/adopting-the-view.md), then `migrator backfill PLAN`",
    State.PLANNED: "point the search service at the view if it still reads the table "
    "(docs/adopting-the-view.md), then run `migrator backfill PLAN`",
    State.EXPANDED: "run `migrator backfill PLAN` until it completes",
    State.BACKFILLED: "run `migrator verify PLAN`",
    State.VERIFIED: "run `migrator cutover PLAN`",
    State.CUT_OVER: "watch the service; `migrator rollback PLAN` or, later, `migrator finalize PLAN`",
    State.ROLLED_BACK: "fix what made you roll back, `migrator verify PLAN`, then cutover "
    "again; or `migrator abort PLAN` to abandon it",
    State.FINALIZING: "finalize stopped part-way: run `migrator finalize PLAN --yes` again to "
    "complete it",
    State.FINALIZED: "nothing: this migration is finished",
    State.ABORTED: "nothing: this migration was abandoned; `migrator backfill PLAN` starts it "
    "again from the beginning",
}


@dataclass(frozen=True)
class Migration:
    name: str
    phase: State
    plan_hash: str
    plan: dict[str, Any]
    source_fingerprint: str
    target_fingerprint: str
    view_snapshot: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    cutover_at: datetime | None
    trigger_name: str
    function_name: str


def has_table(conn: psycopg.Connection, table: str) -> bool:
    """Whether migrator's schema has this table yet (nothing is created before the first
    command that changes something)."""
    row = conn.execute("SELECT to_regclass(%s)", (f"migrator.{table}",)).fetchone()
    return bool(row and row[0])


def find_migration(conn: psycopg.Connection, name: str) -> Migration | None:
    """The migration's row, or None (none of that name, or migrator's schema not there yet)."""
    return get_migration(conn, name) if has_table(conn, "migrations") else None


def get_migration(conn: psycopg.Connection, name: str) -> Migration | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT name, phase, plan_hash, plan, source_fingerprint, target_fingerprint, "
            "view_snapshot, created_at, updated_at, cutover_at, trigger_name, function_name "
            "FROM migrator.migrations WHERE name = %s",
            (name,),
        ).fetchone()
    if row is None:
        return None
    row["phase"] = State(row["phase"])
    if not row["trigger_name"] or not row["function_name"]:
        row["trigger_name"], row["function_name"] = legacy_capture_names(name)
    return Migration(**row)


def stored_plan(conn: psycopg.Connection, name: str) -> Plan | None:
    """The plan as the last command stored it (tuning keys current), for processes that have no
    plan file: workers, beat. None when no such migration is registered."""
    row = conn.execute("SELECT plan FROM migrator.migrations WHERE name = %s", (name,)).fetchone()
    if row is None:
        return None
    return parse_plan(row[0], path=f"migrator.migrations[{name}]")


def plan_version(conn: psycopg.Connection, name: str) -> str | None:
    """A short fingerprint of the stored plan, tuning keys included: workers compare it on
    every batch and reload the plan (limits, retry policy) when it changed."""
    row = conn.execute(
        "SELECT md5(plan::text) FROM migrator.migrations WHERE name = %s", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def stored_plan_versioned(conn: psycopg.Connection, name: str) -> tuple[Plan, str] | None:
    """The stored plan and its `plan_version`, read together."""
    row = conn.execute(
        "SELECT plan, md5(plan::text) FROM migrator.migrations WHERE name = %s", (name,)
    ).fetchone()
    if row is None:
        return None
    return parse_plan(row[0], path=f"migrator.migrations[{name}]"), str(row[1])


@dataclass(frozen=True)
class Verdict:
    """The latest verification report, when it failed: which gates, and what to do next."""

    report_id: int
    message: str
    hint: str


def latest_verdict(conn: psycopg.Connection, name: str) -> Verdict | None:
    """The latest report of the migration if it failed (None: none yet, or it passed)."""
    if not has_table(conn, "reports"):
        return None
    row = conn.execute(
        "SELECT id, passed, report->'failed', report->>'failure', report->>'next' "
        "FROM migrator.reports WHERE migration = %s ORDER BY id DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is None or row[1]:
        return None
    gates = row[3] or ", ".join(row[2] or []) or "a gate"
    return Verdict(
        int(row[0]),
        f"the latest verification (report {row[0]}) failed: {gates}",
        row[4] or "fix what failed, then run `migrator verify PLAN`",
    )


def guard(command: str, migration: Migration | None, verdict: Verdict | None = None) -> None:
    """Refuse a command the state machine does not allow from the current phase; a failed
    verification (`verdict`) is named with its next step, not only the phase."""
    phase = migration.phase if migration else None
    if phase in ALLOWED[command]:
        return
    current = phase.value if phase else "not started"
    hint = REFUSAL_HINTS.get((command, phase)) if phase else None
    if verdict is not None and hint is None:
        raise PhaseError(
            f"cannot {command}: the migration is {current}; {verdict.message}",
            hint=verdict.hint,
        )
    raise PhaseError(
        f"cannot {command}: the migration is {current}",
        hint=hint or NEXT_STEP.get(phase, "see `migrator status PLAN`"),
    )


def check_plan_unchanged(migration: Migration, plan: Plan) -> None:
    # A migration registered before search settings became tuning stored the older hash.
    if migration.plan_hash not in (plan.plan_hash(), plan.legacy_plan_hash()):
        if _started_in_old_default_storage(migration, plan):
            raise PhaseError(
                f"migration {plan.name!r} started with target.storage column, the default "
                "before side_table became it; this plan file does not set target.storage",
                hint="add `storage: column` under `target:` in the plan file to go on with "
                "this migration as it started (docs/storage.md)",
            )
        raise PhaseError(
            f"the plan file changed since migration {plan.name!r} started "
            f"(hash {migration.plan_hash[:12]} -> {plan.plan_hash()[:12]})",
            hint="restore the original plan, or give the new plan a new name to start a new "
            "migration (tuning keys such as backfill, verify, cutover and the index's "
            "ef_search, probes and iterative scan settings may change freely)",
        )


def _started_in_old_default_storage(migration: Migration, plan: Plan) -> bool:
    """The stored plan is column storage (or older than the setting), the file leaves the
    storage to the default (now side_table), and with `storage: column` it would match."""
    stored = (migration.plan or {}).get("target", {})
    if stored.get("storage", Storage.COLUMN.value) != Storage.COLUMN.value:
        return False
    if not plan.side or "storage" in plan.target.model_fields_set:
        return False
    as_column = plan.model_copy(
        update={"target": plan.target.model_copy(update={"storage": Storage.COLUMN})}
    )
    return migration.plan_hash in (as_column.plan_hash(), as_column.legacy_plan_hash())


def store_tuning(conn: psycopg.Connection, migration: Migration, plan: Plan) -> list[str]:
    """Store the plan file's tuning (same structure) so workers and the search client read the
    current values; returns the dotted keys that changed (empty: nothing written)."""
    current = plan.canonical()
    changed = _changed_keys(migration.plan, current)
    if not changed and migration.plan_hash == plan.plan_hash():
        return []
    conn.execute(
        "UPDATE migrator.migrations SET plan = %s, plan_hash = %s WHERE name = %s",
        (Jsonb(current), plan.plan_hash(), plan.name),
    )
    return changed


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def register(conn: psycopg.Connection, plan: Plan, phase: State = State.PLANNED) -> Migration:
    """Create the migration row if absent; refuse a changed plan for an existing one."""
    existing = get_migration(conn, plan.name)
    if existing is not None:
        check_plan_unchanged(existing, plan)
        return existing
    # The capture's names are stored, not re-derived later: a change of the derivation in a
    # later migrator can never orphan the trigger of a migration that is running.
    names = plan.capture
    conn.execute(
        "INSERT INTO migrator.migrations (name, plan_hash, plan, phase, source_fingerprint, "
        "target_fingerprint, trigger_name, function_name) VALUES (%s, %s, %s, %s, %s, %s, "
        "%s, %s) ON CONFLICT (name) DO NOTHING",
        (
            plan.name,
            plan.plan_hash(),
            Jsonb(plan.canonical()),
            phase.value,
            plan.source.model.fingerprint(),
            plan.target.model.fingerprint(),
            names.trigger,
            names.function,
        ),
    )
    created = get_migration(conn, plan.name)
    assert created is not None
    check_plan_unchanged(created, plan)
    return created


def set_phase(
    conn: psycopg.Connection,
    name: str,
    phase: State,
    *,
    view_snapshot: Any = None,
    reset_cutover: bool = False,
) -> None:
    """Record a phase on its own (statements.record_phase: the one way a phase is written)."""
    conn.execute(
        q.record_phase(name, phase, view_snapshot=view_snapshot, reset_cutover=reset_cutover)
    )


def log_event(
    conn: psycopg.Connection,
    migration: str,
    *,
    operator: str,
    command: str,
    result: str,
    message: str = "",
    phase_before: str | None = None,
    phase_after: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO migrator.events (migration, operator, command, phase_before, phase_after, "
        "result, message, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            migration,
            operator,
            command,
            phase_before,
            phase_after,
            result,
            message,
            Jsonb(json.loads(json.dumps(details or {}, default=str))),
        ),
    )


def events(conn: psycopg.Connection, migration: str, limit: int = 50) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, at, operator, command, phase_before, phase_after, result, message, details "
            "FROM migrator.events WHERE migration = %s ORDER BY id DESC LIMIT %s",
            (migration, limit),
        ).fetchall()
    return list(reversed(rows))


@contextlib.contextmanager
def operator_lock(conn: psycopg.Connection, migration: str) -> Iterator[None]:
    """Session advisory lock: of two operators acting on one migration, exactly one proceeds."""
    got = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"migrator:{migration}",)
    ).fetchone()
    if not got or not got[0]:
        holder = conn.execute(
            "SELECT a.application_name, a.client_addr::text, a.pid FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.objid = (hashtextextended(%s, 0) & 4294967295)::bigint::oid AND l.granted "
            "LIMIT 1",
            (f"migrator:{migration}",),
        ).fetchone()
        who = f" (database backend pid {holder[2]})" if holder else ""
        if holder and str(holder[0]).startswith("migrator:"):
            # application_name is migrator:<host>:<pid>[:<command>] (db.connect.app_name)
            _, host, pid, *cmd = str(holder[0]).split(":", 3)
            doing = f" running `{cmd[0]}`" if cmd else ""
            who = f" (migrator process {pid} on host {host}{doing})"
        raise ConcurrentRunError(
            f"another migrator process is acting on migration {migration!r}{who}",
            hint="wait for it to finish; nothing was changed by this command",
        )
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"migrator:{migration}",)
            )
