"""The phases of a migration as data: each step lists its forward and backward statements.

Pure: steps are built from the plan plus a few facts read from the database (or their offline
defaults), never run here. The executor runs them; `migrator plan` renders the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from psycopg import sql

from migrator.ddl import statements as q
from migrator.ddl.statements import Lock, Statement
from migrator.plan.model import ModelSpec, Plan, VectorType


class Phase(StrEnum):
    ADOPT = "adopt"
    EXPAND = "expand"
    BACKFILL = "backfill"
    INDEX = "index"
    CUTOVER = "cutover"
    ROLLBACK = "rollback"
    FINALIZE = "finalize"


@dataclass(frozen=True)
class Facts:
    """What the statements depend on in the live database. Defaults are the offline assumptions."""

    view_options: tuple[tuple[str, str], ...] = ()
    view_owner: str | None = None
    view_grants: tuple[tuple[str, str], ...] = ()  # (grantee, privilege)
    source_indexes: tuple[str, ...] = ()
    pk_type: str = "bigint"
    live: bool = False


@dataclass(frozen=True)
class Step:
    phase: Phase
    summary: str
    forward: tuple[Statement, ...]
    backward: tuple[Statement, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _view_switch(
    plan: Plan,
    column: str,
    vtype: VectorType,
    model: ModelSpec,
    facts: Facts,
    *,
    type_changes: bool,
) -> tuple[Statement, ...]:
    """Point the view at `column`, update the registry and announce it, in one transaction."""
    view = q.view_label(plan)
    fingerprint = model.fingerprint()
    stmts: list[Statement] = []
    if type_changes:
        # CREATE OR REPLACE VIEW cannot change a column's type (vector -> halfvec): drop and
        # create in the same transaction, then restore owner and grants from the catalog.
        stmts.append(
            Statement(
                sql.SQL("DROP VIEW IF EXISTS {}").format(q.view_ident(plan)),
                "drop the view (its embedding column changes type)",
                Lock.ACCESS_EXCLUSIVE,
                view,
            )
        )
    stmts.append(
        Statement(
            q.create_or_replace_view(plan, column, vtype, fingerprint, facts.view_options),
            f"point the view at {column} ({fingerprint})",
            Lock.ACCESS_EXCLUSIVE,
            view,
        )
    )
    if type_changes:
        if facts.view_owner:
            stmts.append(
                Statement(
                    sql.SQL("ALTER VIEW {} OWNER TO {}").format(
                        q.view_ident(plan), sql.Identifier(facts.view_owner)
                    ),
                    "restore the view's owner",
                    Lock.ACCESS_EXCLUSIVE,
                    view,
                )
            )
        for grantee, privilege in facts.view_grants:
            stmts.append(
                Statement(
                    sql.SQL("GRANT {} ON {} TO {}").format(
                        sql.SQL(_privilege(privilege)),
                        q.view_ident(plan),
                        sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
                    ),
                    "restore a grant on the view",
                    Lock.ACCESS_EXCLUSIVE,
                    view,
                )
            )
    stmts.append(
        Statement(
            q.upsert_active_model(plan, column, vtype, model),
            "record the active model in the registry",
            Lock.ROW_EXCLUSIVE,
            "migrator.active_models",
            ddl=False,
        )
    )
    stmts.append(Statement(q.notify_switch(plan), "announce the switch (NOTIFY)", ddl=False))
    return tuple(stmts)


_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}


def _privilege(p: str) -> str:
    if p not in _PRIVILEGES:
        raise ValueError(f"unexpected privilege {p!r}")
    return p


def adopt(plan: Plan, facts: Facts = Facts()) -> Step:
    src = plan.source
    return Step(
        Phase.ADOPT,
        f"create or confirm the search view {q.view_label(plan)} on {src.column}",
        _view_switch(plan, src.column, src.type, src.model, facts, type_changes=False),
        notes=("Services read the view, never the table: see docs/adopting-the-view.md.",),
    )


def expand(plan: Plan, facts: Facts = Facts()) -> Step:
    tbl = q.table_label(plan)
    fwd = (
        Statement(
            q.add_target_column(plan),
            f"add {plan.target.column} (nullable, no default: no table rewrite)",
            Lock.ACCESS_EXCLUSIVE,
            tbl,
        ),
        Statement(
            q.capture_function(plan, (plan.target.column,), plan.source.column),
            "change capture: clear stale new vectors, queue changed rows, record stale old ones",
            Lock.NONE,
            "",
        ),
        Statement(
            q.capture_trigger(plan),
            "attach the change-capture trigger",
            Lock.SHARE_ROW_EXCLUSIVE,
            tbl,
        ),
    )
    back = (
        Statement(
            q.drop_trigger(plan), "detach the change-capture trigger", Lock.SHARE_ROW_EXCLUSIVE, tbl
        ),
        Statement(q.drop_function(plan), "drop the change-capture function"),
        Statement(
            q.drop_column(plan, plan.target.column),
            f"drop {plan.target.column}",
            Lock.ACCESS_EXCLUSIVE,
            tbl,
        ),
    )
    return Step(
        Phase.EXPAND,
        f"add {plan.target.column} and change capture to {tbl}",
        fwd,
        back,
        notes=("All three statements run in one transaction: all or nothing.",),
    )


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
            tbl,
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
        "Every UPDATE writes a new row version: expect the heap to grow until VACUUM.",
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


def index(plan: Plan, facts: Facts = Facts()) -> Step:
    tbl = q.table_label(plan)
    set_mem = Statement(
        sql.SQL("SET maintenance_work_mem = {}").format(
            sql.Literal(plan.index.maintenance_work_mem)
        ),
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
    return Step(
        Phase.INDEX,
        f"build the {plan.index.method.value} index on {plan.target.column}",
        (set_mem, set_par, build),
        (drop,),
        notes=("An INVALID index left by a failed build is detected, dropped and rebuilt.",),
    )


def _type_changes(plan: Plan) -> bool:
    return plan.source.type is not plan.target.type


def cutover(plan: Plan, facts: Facts = Facts()) -> Step:
    tgt, src = plan.target, plan.source
    fwd = _view_switch(
        plan, tgt.column, tgt.type, tgt.model, facts, type_changes=_type_changes(plan)
    )
    keep_old = Statement(
        q.capture_function(plan, (tgt.column, src.column)),
        f"change capture now also keeps {src.column} fresh (for rollback) instead of "
        "recording its stale vectors",
    )
    back = _view_switch(
        plan, src.column, src.type, src.model, facts, type_changes=_type_changes(plan)
    )
    notes = ["One short transaction under the cutover lock_timeout, retried in attempts."]
    if _type_changes(plan):
        notes.append(
            f"The view's embedding column changes type ({src.type.value} -> {tgt.type.value}), "
            "which CREATE OR REPLACE VIEW cannot do: the view is dropped and re-created in one "
            "transaction with its owner and grants. Services must cast the query vector to the "
            "active type (migrator.search does)."
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
    tbl = q.table_label(plan)
    stmts: list[Statement] = [
        Statement(
            q.drop_trigger(plan), "detach the change-capture trigger", Lock.SHARE_ROW_EXCLUSIVE, tbl
        ),
        Statement(q.drop_function(plan), "drop the change-capture function"),
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
    stmts.append(
        Statement(
            q.drop_column(plan, plan.source.column),
            f"drop {plan.source.column} (irreversible)",
            Lock.ACCESS_EXCLUSIVE,
            tbl,
        )
    )
    notes = ["Irreversible: the old vectors are gone; rollback is no longer possible."]
    if not facts.live:
        notes.append("Indexes on the old column are found in the live database and dropped first.")
    return Step(
        Phase.FINALIZE,
        f"drop {plan.source.column} and migrator's trigger",
        tuple(stmts),
        notes=tuple(notes),
    )


PHASES = (adopt, expand, backfill, index, cutover, rollback, finalize)


def all_steps(plan: Plan, facts: Facts = Facts()) -> list[Step]:
    return [build(plan, facts) for build in PHASES]
