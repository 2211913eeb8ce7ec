"""The phases of a migration as data: each step lists its forward and backward statements.

Pure: steps are built from the plan plus a few facts read from the database (or their offline
defaults), never run here. The executor runs them; `migrator plan` renders the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from psycopg import sql

from migrator.ddl import statements as q
from migrator.ddl import view_sql
from migrator.ddl.facts import Facts as Facts  # re-exported: steps.Facts predates facts.py
from migrator.ddl.phases import State
from migrator.ddl.statements import Lock, Statement
from migrator.errors import PreflightError
from migrator.plan.index_memory import BuildSizing, human, size_build
from migrator.plan.model import CaptureNames, Plan


class Phase(StrEnum):
    ADOPT = "adopt"
    EXPAND = "expand"
    BACKFILL = "backfill"
    INDEX = "index"
    CUTOVER = "cutover"
    ROLLBACK = "rollback"
    FINALIZE = "finalize"
    ABORT = "abort"


@dataclass(frozen=True)
class Step:
    phase: Phase
    summary: str
    forward: tuple[Statement, ...]
    backward: tuple[Statement, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _names(plan: Plan, facts: Facts) -> CaptureNames:
    return facts.capture or plan.capture


def _phase(plan: Plan, phase: State, purpose: str, *, new_transaction: bool = False) -> Statement:
    return Statement(
        q.record_phase(plan.name, phase.value),
        purpose,
        Lock.ROW_EXCLUSIVE,
        "migrator.migrations",
        ddl=False,
        new_transaction=new_transaction,
    )


def _drop_capture(
    plan: Plan, names: CaptureNames, *, new_transaction: bool = False
) -> tuple[Statement, Statement]:
    """Detach the change-capture trigger, then drop its function."""
    return (
        # DROP TRIGGER takes ACCESS EXCLUSIVE (CREATE TRIGGER only SHARE ROW EXCLUSIVE).
        Statement(
            q.drop_trigger(plan, names),
            "detach the change-capture trigger",
            Lock.ACCESS_EXCLUSIVE,
            q.table_label(plan),
            new_transaction=new_transaction,
        ),
        Statement(q.drop_function(plan, names), "drop the change-capture function"),
    )


def record_phase(plan: Plan, phase: State) -> Statement:
    """The phase change as the last statement of a step's transaction (cutover, rollback)."""
    return _phase(plan, phase, f"record the phase {phase.value}")


def adopt(plan: Plan, facts: Facts = Facts()) -> Step:
    src = plan.source
    notes = ["Services read the view, never the table: see docs/adopting-the-view.md."]
    if facts.view_body is None:
        stmts = view_sql.switch(plan, src.column, src.type, src.model, facts, type_changes=False)
    else:
        # The user's view already serves the source column with its fingerprint (checked when
        # the facts were read): adopt leaves it exactly as it is and only registers the model.
        stmts = view_sql.register(plan, src.column, src.type, src.model)
        notes.append(
            f"{q.view_label(plan)} exists and serves {src.column}: it is not changed; later "
            "switches swap only its embedding and model columns."
        )
    return Step(
        Phase.ADOPT,
        f"create or confirm the search view {q.view_label(plan)} on {src.column}",
        stmts,
        notes=tuple(notes),
    )


def expand(plan: Plan, facts: Facts = Facts()) -> Step:
    tbl = q.table_label(plan)
    names = _names(plan, facts)
    if plan.side:
        add = Statement(
            q.create_side_table(plan, facts.pk_type),
            f"create the side table {q.side_label(plan)} for {plan.target.column} (the table "
            "itself is not changed; the foreign key deletes a vector with its row)",
            Lock.SHARE_ROW_EXCLUSIVE,
            tbl,
        )
        drop = Statement(
            q.drop_side_table(plan),
            f"drop {q.side_label(plan)}",
            Lock.ACCESS_EXCLUSIVE,
            q.side_label(plan),
        )
    else:
        add = Statement(
            q.add_target_column(plan),
            f"add {plan.target.column} (nullable, no default: no table rewrite)",
            Lock.ACCESS_EXCLUSIVE,
            tbl,
        )
        drop = Statement(
            q.drop_column(plan, plan.target.column),
            f"drop {plan.target.column}",
            Lock.ACCESS_EXCLUSIVE,
            tbl,
        )
    fwd = (
        add,
        *side_grants(plan, facts),
        Statement(
            q.capture_function(plan, (plan.target.column,), plan.source.column, names),
            "change capture: clear stale new vectors, queue changed rows, record stale old ones",
            Lock.NONE,
            "",
        ),
        Statement(
            q.capture_trigger(plan, names),
            "attach the change-capture trigger",
            Lock.SHARE_ROW_EXCLUSIVE,
            tbl,
        ),
    )
    back = (*_drop_capture(plan, names), drop)
    where = f"{q.side_label(plan)}" if plan.side else tbl
    return Step(
        Phase.EXPAND,
        f"add {plan.target.column} to {where} and change capture to {tbl}",
        fwd,
        back,
        notes=("Its statements run in one transaction: all or nothing.",),
    )


def side_grants(plan: Plan, facts: Facts) -> tuple[Statement, ...]:
    """Who reads the side table through the view after cutover: the view's owner (a view
    reads its tables with its owner's rights), and with security_invoker every role that may
    select from the view. Storage column, or a view adopt creates: nobody else."""
    if not plan.side or not facts.live:
        return ()
    roles: list[str] = []
    if facts.view_owner and not facts.adopt_created_view:
        roles.append(facts.view_owner)
    invoker = any(
        k == "security_invoker" and v.lower() in ("true", "on", "1") for k, v in facts.view_options
    )
    if invoker:
        roles += [g.grantee for g in facts.view_grants if g.privilege.value == "SELECT"]
    out = []
    for role in dict.fromkeys(roles):
        to = sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)
        out.append(
            Statement(
                sql.SQL("GRANT SELECT ON {} TO {}").format(q.side_ident(plan), to),
                f"let {role} read the side table through the view",
                Lock.NONE,
                q.side_label(plan),
            )
        )
    return tuple(out)


def backfill(plan: Plan, facts: Facts = Facts()) -> Step:
    tbl = q.table_label(plan)
    tgt = plan.target
    fwd = (
        Statement(
            q.read_range(plan),
            "workers: read a batch's current text and its hash",
            Lock.ACCESS_SHARE,
            tbl,
            ddl=False,
        ),
        Statement(
            q.create_stage(plan, facts.pk_type, tgt.type, tgt.model.dimensions),
            "workers: staging table for a binary COPY of the vectors",
            ddl=False,
        ),
        Statement(
            q.cas_update(plan, tgt.column, facts.pk_type, tgt.type, tgt.model.dimensions),
            "workers: compare-and-set write (only rows whose text is unchanged)",
            Lock.ROW_EXCLUSIVE,
            q.side_label(plan) if plan.side else tbl,
            ddl=False,
        ),
    )
    src = plan.source
    refresh = (
        Statement(
            q.read_ids(plan, facts.pk_type, src.column, stale=True),
            f"workers, source role: read rows whose {src.column} is NULL or recorded stale",
            Lock.ACCESS_SHARE,
            tbl,
            ddl=False,
        ),
        Statement(
            q.cas_update(
                plan, src.column, facts.pk_type, src.type, src.model.dimensions, stale=True
            ),
            f"workers, source role: compare-and-set write of {src.column} with {src.model.name}",
            Lock.ROW_EXCLUSIVE,
            tbl,
            ddl=False,
        ),
    )
    notes = [
        "Each batch: claim in migrator.batches, read, embed, COPY into migrator_stage, "
        "UPDATE, mark done, in one transaction per batch.",
        (
            f"Storage side_table: each batch INSERTs into {q.side_label(plan)}; the table gets "
            "row locks (FOR SHARE) and no new row versions, its indexes no new entries."
            if plan.side
            else "Every UPDATE writes a new row version: expect the heap to grow until VACUUM."
        ),
        "Workers' writes run with SET LOCAL migrator.writer: change capture trusts only those.",
    ]
    if plan.backfill.refresh_source:
        notes.append(
            f"backfill.refresh_source: rows whose {src.column} is of text they no longer have "
            f"are re-embedded with {src.model.name} before cutover (source-role batches)."
        )
    return Step(
        Phase.BACKFILL,
        f"fill {tgt.column} with {tgt.model.name} through queue {plan.queue}",
        fwd + refresh,
        notes=tuple(notes),
    )


def build_sizing(plan: Plan, facts: Facts = Facts()) -> BuildSizing:
    """The build's memory for the rows the facts name (offline: the plan's setting or cap)."""
    idx, tgt = plan.index, plan.target
    setting = idx.maintenance_work_mem
    if facts.index_rows is None and setting == "auto":
        setting = idx.max_maintenance_work_mem
    return size_build(
        rows=facts.index_rows or 0,
        dimensions=tgt.model.dimensions,
        vector_type=tgt.type,
        method=idx.method,
        m=idx.m,
        setting=setting,
        cap=idx.max_maintenance_work_mem,
        workers=idx.max_parallel_maintenance_workers,
        server_memory_bytes=facts.server_memory_bytes,
    )


def vacuum(plan: Plan) -> Statement:
    """VACUUM (never FULL: that rewrites the table under ACCESS EXCLUSIVE), with ANALYZE."""
    if plan.side:
        # The table has no dead row versions of the backfill; the side table is new: its
        # visibility map and statistics, before the build.
        target, label = q.side_ident(plan), q.side_label(plan)
        purpose = "set the side table's visibility map and statistics before the build"
    else:
        target, label = q.table_ident(plan), q.table_label(plan)
        purpose = "reclaim the backfill's dead row versions before the build locks autovacuum out"
    return Statement(
        sql.SQL("VACUUM (ANALYZE) {}").format(target),
        purpose,
        Lock.SHARE_UPDATE_EXCLUSIVE,
        label,
        ddl=False,
        transactional=False,
    )


def index(plan: Plan, facts: Facts = Facts()) -> Step:
    tbl = q.side_label(plan) if plan.side else q.table_label(plan)
    sizing = build_sizing(plan, facts)
    set_mem = Statement(
        sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(sizing.setting)),
        "memory for the index build (session setting)",
        ddl=False,
        transactional=False,
    )
    set_par = Statement(
        sql.SQL("SET max_parallel_maintenance_workers = {}").format(
            sql.Literal(plan.index.max_parallel_maintenance_workers)
        ),
        "parallel workers for the build (session setting)",
        ddl=False,
        transactional=False,
    )
    build = Statement(
        q.create_index(plan),
        f"build {plan.index_name} without blocking writes",
        Lock.SHARE_UPDATE_EXCLUSIVE,
        tbl,
        transactional=False,
    )
    drop = Statement(
        q.drop_index(plan.table.schema_, plan.index_name),
        f"drop {plan.index_name}",
        Lock.SHARE_UPDATE_EXCLUSIVE,
        tbl,
        transactional=False,
    )
    notes = ["An INVALID index left by a failed build is detected, dropped and rebuilt."]
    if plan.index.maintenance_work_mem == "auto":
        if facts.index_rows is None:
            notes.append(
                "maintenance_work_mem is sized at build time to the HNSW graph of the rows "
                f"indexed, up to {plan.index.max_maintenance_work_mem} (shown: the cap)."
            )
        else:
            notes.append(
                f"maintenance_work_mem {sizing.setting}: the graph of {sizing.rows:,} rows "
                f"needs about {human(sizing.graph_bytes)}."
            )
    warning = sizing.warning() if facts.index_rows is not None else None
    if warning:
        notes.append(f"Warning: {warning}.")
    forward = (vacuum(plan),) if plan.index.vacuum_before_build else ()
    return Step(
        Phase.INDEX,
        f"build the {plan.index.method.value} index on {plan.target.column}",
        (*forward, set_mem, set_par, build),
        (drop,),
        notes=tuple(notes),
    )


def _type_changes(plan: Plan) -> bool:
    return plan.source.type is not plan.target.type


def cutover(plan: Plan, facts: Facts = Facts()) -> Step:
    tgt, src = plan.target, plan.source
    fwd = view_sql.switch(
        plan, tgt.column, tgt.type, tgt.model, facts, type_changes=_type_changes(plan)
    )
    keep_old = Statement(
        q.capture_function(plan, (tgt.column, src.column), names=_names(plan, facts)),
        f"change capture now also keeps {src.column} fresh (for rollback) instead of "
        "recording its stale vectors",
    )
    back = view_sql.switch(
        plan, src.column, src.type, src.model, facts, type_changes=_type_changes(plan)
    )
    notes = [
        "One short transaction under the cutover lock_timeout, retried in attempts.",
        "Only the view's embedding and model columns change: its FROM, joins, WHERE and other "
        "columns are its own definition, kept as PostgreSQL deparses it.",
    ]
    if _type_changes(plan):
        notes.append(
            f"The view's embedding column changes type ({src.type.value} -> {tgt.type.value}), "
            "which CREATE OR REPLACE VIEW cannot do: the view is dropped and re-created in one "
            "transaction with its owner, every grant (grant options and column grants too) and "
            "its comment. Services must cast the query vector to the active type "
            "(migrator.search does)."
        )
    return Step(
        Phase.CUTOVER,
        f"switch {q.view_label(plan)} to {tgt.column}",
        (*fwd, keep_old),
        back,
        notes=tuple(notes),
    )


def rollback(plan: Plan, facts: Facts = Facts()) -> Step:
    cut = cutover(plan, facts)
    return Step(
        Phase.ROLLBACK,
        f"switch {q.view_label(plan)} back to {plan.source.column}",
        cut.backward,
        cut.forward,
        notes=("The view's definition, owner, grants and options end as they were.",),
    )


def finalize(plan: Plan, facts: Facts = Facts()) -> Step:
    """finalizing first, then the old indexes (CONCURRENTLY), then one last transaction.

    Every state in between is one the state machine knows: `finalizing` refuses rollback,
    the change capture keeps running until the last transaction, and a rerun resumes.
    """
    tbl = q.table_label(plan)
    names = _names(plan, facts)
    stmts: list[Statement] = [
        _phase(plan, State.FINALIZING, "record the phase finalizing (rollback refused from here)")
    ]
    for name in facts.source_indexes:
        stmts.append(
            Statement(
                q.drop_index(plan.table.schema_, name),
                f"drop {name} (index of the old column)",
                Lock.SHARE_UPDATE_EXCLUSIVE,
                tbl,
                transactional=False,
            )
        )
    stmts += [
        *_drop_capture(plan, names, new_transaction=True),
        (
            Statement(
                sql.SQL("DROP TABLE IF EXISTS {}").format(q.side_ident(plan, plan.source.column)),
                f"drop {q.side_label(plan, plan.source.column)}, the old vectors' side table "
                "(irreversible)",
                Lock.ACCESS_EXCLUSIVE,
                q.side_label(plan, plan.source.column),
            )
            if plan.source.side_table
            else Statement(
                q.drop_column(plan, plan.source.column),
                f"drop {plan.source.column} (irreversible)",
                Lock.ACCESS_EXCLUSIVE,
                tbl,
            )
        ),
        _phase(plan, State.FINALIZED, "record the phase finalized"),
    ]
    notes = [
        "Irreversible: the old vectors are gone; rollback is no longer possible.",
        "The phase becomes finalizing first: if a later part fails (a lock timeout, Ctrl-C) "
        "rollback stays refused, change capture keeps running and a rerun of finalize resumes.",
        "The trigger, its function, the old column and the phase finalized go in one last "
        "transaction.",
    ]
    if not facts.live:
        notes.append("Indexes on the old column are found in the live database and dropped first.")
    return Step(
        Phase.FINALIZE,
        f"drop {plan.source.column} and migrator's trigger",
        tuple(stmts),
        notes=tuple(notes),
    )


def abort(plan: Plan, facts: Facts = Facts()) -> Step:
    """Undo adopt and expand: the table, the view and the registry as adopt found them."""
    tbl = q.table_label(plan)
    names = _names(plan, facts)
    tgt = plan.target
    stmts: list[Statement] = list(_drop_capture(plan, names))
    notes = [
        "Allowed before cutover and after a rollback; refused while cut over (roll back first).",
        "One transaction for the table, the view, the registry and the phase aborted; then "
        "migrator's rows of this migration (queued changes, batches, dead letters, reports, bridges) "
        "in a second one, so the table's lock is not held while they are deleted. The "
        "migration's row and its event log are kept.",
    ]
    if plan.side:
        stmts.append(
            Statement(
                q.drop_side_table(plan),
                f"drop {q.side_label(plan)} and its index (the new vectors are discarded)",
                Lock.ACCESS_EXCLUSIVE,
                q.side_label(plan),
            )
        )
    elif facts.target_preexisted:
        notes.append(f"{tgt.column} existed before adopt: it is kept.")
    else:
        stmts.append(
            Statement(
                q.drop_column(plan, tgt.column),
                f"drop {tgt.column} and its index (the new vectors are discarded)",
                Lock.ACCESS_EXCLUSIVE,
                tbl,
            )
        )
    if facts.adopt_created_view:
        stmts.append(view_sql.drop_view(plan))
        notes.append(
            f"adopt created {q.view_label(plan)}: abort drops it (move services back to the "
            "table first)."
        )
    else:
        notes.append(
            f"{q.view_label(plan)} existed before adopt and serves {plan.source.column} as it "
            "did: it is left exactly as it is."
        )
    stmts += [
        view_sql.restore_registry(plan, facts.prior_registry),
        Statement(q.notify_switch(plan), "announce the change (NOTIFY)", ddl=False),
        _phase(plan, State.ABORTED, "record the phase aborted"),
        *abort_cleanup(plan),
    ]
    return Step(
        Phase.ABORT, f"abandon the migration and restore {tbl}", tuple(stmts), notes=tuple(notes)
    )


def abort_cleanup(plan: Plan) -> tuple[Statement, ...]:
    """migrator's rows of the migration, in a transaction of their own (rerun safe)."""
    return tuple(
        Statement(
            q.delete_ledger(plan, table),
            f"delete this migration's rows of migrator.{table}",
            Lock.ROW_EXCLUSIVE,
            f"migrator.{table}",
            ddl=False,
            new_transaction=i == 0,
        )
        for i, table in enumerate(q.LEDGER_TABLES)
    )


PHASES = (adopt, expand, backfill, index, cutover, rollback, finalize, abort)


def all_steps(plan: Plan, facts: Facts = Facts()) -> list[Step]:
    """Every phase's step; a step the facts forbid (a view migrator cannot swap) is shown
    with the reason and no statements, never with statements that would be wrong."""
    out = []
    for build in PHASES:
        try:
            out.append(build(plan, facts))
        except PreflightError as exc:
            out.append(Step(Phase(build.__name__), f"refused: {exc.message}", ()))
    return out
