"""Read-only inspection of the live database for `migrator plan`: does the plan fit the table?

Only SELECTs against the catalog and a small sample of the table; never a write, never a lock
stronger than ACCESS SHARE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from migrator.db import state
from migrator.db.view_catalog import read_view
from migrator.ddl import statements as q
from migrator.ddl.facts import Facts, RegistryRow
from migrator.plan.model import CaptureNames, Plan, VectorType, legacy_capture_names


@dataclass
class Finding:
    level: str  # "error" | "warning" | "info"
    what: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "message": self.what}


@dataclass
class Inspection:
    findings: list[Finding] = field(default_factory=list)
    pgvector_version: str | None = None
    server_version: str | None = None
    rows: int | None = None
    rows_exact: bool = False
    sample_texts: list[str] = field(default_factory=list)
    view_definition: str | None = None
    facts: Facts = Facts()
    target_exists: bool = False
    index_state: str = "absent"  # absent | valid | invalid | other (see IndexInfo)

    def error(self, msg: str) -> None:
        self.findings.append(Finding("error", msg))

    def warn(self, msg: str) -> None:
        self.findings.append(Finding("warning", msg))

    def info(self, msg: str) -> None:
        self.findings.append(Finding("info", msg))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]


# pgvector 0.8.2-0.8.4 fixed a parallel HNSW build overflow and HNSW vacuum corruption ("graph
# not repaired"): a backfill rewrites every row, so VACUUM runs over the index of the old column.
MIN_PGVECTOR = (0, 8, 4)


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.8.4' -> (0, 8, 4); a suffix such as '0.9.0-dev' is ignored."""
    return tuple(int(m) for m in re.findall(r"\d+", version.split("-")[0])[:3])


def column_types(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _expect_vector(cols: dict[str, str], name: str, vtype: VectorType, dims: int) -> str | None:
    actual = cols.get(name)
    wanted = f"{vtype.value}({dims})"
    if actual is None:
        return None
    if actual != wanted:
        return f"column {name} is {actual}, the plan says {wanted}"
    return ""


def view_facts(conn: psycopg.Connection, plan: Plan) -> tuple[Facts, str | None]:
    """The view's part of the facts, and its definition (None: no such relation)."""
    view = read_view(conn, plan)
    facts = Facts(
        view_options=view.options,
        view_owner=view.owner,
        view_grants=view.grants,
        live=True,
        view_body=view.body,
        view_comment=view.comment,
        view_problem=view.problem,
        view_dependents=view.dependents,
        view_foreign_grantors=view.foreign_grantors,
        adopt_created_view=not view.exists,
    )
    return facts, view.definition


def _with_table_facts(
    conn: psycopg.Connection, plan: Plan, view: Facts, cols: dict[str, str]
) -> Facts:
    """The view's facts completed with the table's (indexes of the old column, key type) and
    the migration's own record (capture names, what adopt found)."""
    srcidx = tuple(
        n
        for n, _ in index_on(
            conn,
            plan.table.schema_,
            plan.source.side_table or plan.table.name,
            plan.source.column,
        )
    )
    pk_type = cols.get(plan.table.primary_key, "bigint")
    facts = replace(view, source_indexes=srcidx, pk_type=pk_type, live=True)
    row = _migration_row(conn, plan.name)
    if row is None:
        return replace(facts, target_preexisted=plan.target.column in cols)
    trigger, function, snap = row
    snap = snap or {}
    reg = snap.get("registry")
    return replace(
        facts,
        # A row without names was registered before names were stored (schema 0001).
        capture=CaptureNames(trigger, function)
        if trigger and function
        else legacy_capture_names(plan.name),
        adopt_created_view=not snap.get("definition"),
        target_preexisted=bool(snap.get("target_existed", False)),
        prior_registry=RegistryRow(**reg) if reg else None,
    )


def _migration_row(conn: psycopg.Connection, name: str) -> tuple[Any, Any, Any] | None:
    if not state.has_table(conn, "migrations"):
        return None
    row = conn.execute(
        "SELECT trigger_name, function_name, view_snapshot FROM migrator.migrations "
        "WHERE name = %s",
        (name,),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def live_facts(conn: psycopg.Connection, plan: Plan) -> Facts:
    """What the phase statements depend on in the live database (see facts.Facts)."""
    view, _ = view_facts(conn, plan)
    cols = column_types(conn, plan.table.schema_, plan.table.name)
    return _with_table_facts(conn, plan, view, cols)


def view_snapshot(conn: psycopg.Connection, plan: Plan, ins: Inspection) -> dict[str, Any]:
    """The view, its registry entry and the target column as adopt finds them (JSON): what
    rollback compares with and abort returns to."""
    f = ins.facts
    reg = conn.execute(
        "SELECT migration, column_name, fingerprint, model::text, vector_type, dimensions, "
        "switched_at::text FROM migrator.active_models WHERE view_schema = %s AND view_name = %s",
        (plan.view_schema, plan.view.name),
    ).fetchone()
    fields = ("migration", "column", "fingerprint", "model_json", "vector_type", "dimensions")
    return {
        "definition": ins.view_definition,
        "options": [list(o) for o in f.view_options],
        "owner": f.view_owner,
        "grants": [g.as_dict() for g in f.view_grants],
        "comment": f.view_comment,
        "registry": dict(zip((*fields, "switched_at"), reg, strict=True)) if reg else None,
        "target_existed": ins.target_exists,
    }


def index_on(
    conn: psycopg.Connection, schema: str, table: str, column: str
) -> list[tuple[str, bool]]:
    """(name, valid) of indexes whose only key is `column`."""
    rows = conn.execute(
        "SELECT i.relname, x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
        "WHERE n.nspname = %s AND t.relname = %s AND a.attname = %s AND x.indnatts = 1",
        (schema, table, column),
    ).fetchall()
    return [(r[0], bool(r[1])) for r in rows]


def inspect(conn: psycopg.Connection, plan: Plan, *, sample: int = 500) -> Inspection:
    ins = Inspection()
    schema, table = plan.table.schema_, plan.table.name
    ins.server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if ext is None:
        avail = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if avail:
            ins.error(
                f"pgvector is available ({avail[0]}) but not installed: CREATE EXTENSION vector"
            )
        else:
            ins.error("pgvector is not available on this server: install pgvector >= 0.8.4")
    else:
        ins.pgvector_version = str(ext[0])
        if version_tuple(ins.pgvector_version) < MIN_PGVECTOR:
            ins.error(
                f"pgvector {ins.pgvector_version} is installed; migrator needs "
                f"{'.'.join(map(str, MIN_PGVECTOR))} or later: 0.8.3 and 0.8.4 fixed HNSW "
                "index corruption on VACUUM, which the row versions a backfill writes exercise "
                "(install pgvector >= 0.8.4, then ALTER EXTENSION vector UPDATE)"
            )
    cols = column_types(conn, schema, table)
    if not cols:
        ins.error(f"table {schema}.{table} does not exist (or is not visible to this user)")
        return ins
    pk = conn.execute(
        "SELECT array_agg(a.attname) FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid "
        "AND a.attnum = ANY(x.indkey) WHERE x.indrelid = %s::regclass AND x.indisprimary",
        (f"{_quote(schema)}.{_quote(table)}",),
    ).fetchone()
    pk_cols = list(pk[0] or []) if pk else []
    if pk_cols != [plan.table.primary_key]:
        ins.error(
            f"primary key of {schema}.{table} is {pk_cols or 'missing'}, the plan says "
            f"[{plan.table.primary_key}] (a single-column primary key is required)"
        )
    for col in plan.text.columns:
        if col not in cols:
            ins.error(f"text column {col} does not exist in {schema}.{table}")
    src_at = plan.source.side_table or table
    problem = _expect_vector(
        column_types(conn, schema, src_at) if plan.source.side_table else cols,
        plan.source.column,
        plan.source.type,
        plan.source.model.dimensions,
    )
    if problem is None:
        side = f"{table}_{plan.source.column}"
        if not plan.source.side_table and plan.source.column in column_types(conn, schema, side):
            ins.error(
                f"source column {plan.source.column} is in {schema}.{side}, the side table of "
                f"an earlier migration (storage side_table): set source.side_table: {side}"
            )
        else:
            ins.error(f"source column {plan.source.column} does not exist in {schema}.{src_at}")
    elif problem:
        ins.error(f"source {problem}")
    if plan.side:
        _inspect_side(conn, plan, ins, cols)
        problem = None
    else:
        problem = _expect_vector(
            cols, plan.target.column, plan.target.type, plan.target.model.dimensions
        )
    if problem:
        ins.error(f"target {problem}: choose another target.column")
    elif problem == "":
        ins.target_exists = True
        ins.info(f"target column {plan.target.column} already exists (resumed migration)")
    for name in plan.view.columns:
        if name not in cols:
            ins.error(f"view column {name} does not exist in {schema}.{table}")
    _inspect_table(conn, plan, ins)
    _inspect_index(conn, plan, ins)
    facts, viewdef = view_facts(conn, plan)
    ins.view_definition = viewdef
    ins.facts = _with_table_facts(conn, plan, facts, cols)
    fresh = _migration_row(conn, plan.name) is None
    if not plan.side and not plan.source.side_table and ins.facts.source_indexes and fresh:
        ins.warn(
            f"storage column writes a new version of every row of {q.table_label(plan)} and "
            f"re-inserts its unchanged old vector into {', '.join(ins.facts.source_indexes)}: "
            "at 100k rows that backfill was 8.6x slower than storage side_table and the table "
            "doubled; consider target.storage: side_table (docs/storage.md)"
        )
    if any(
        k == "security_barrier" and v.lower() in ("true", "on", "1") for k, v in facts.view_options
    ):
        ins.warn(
            f"view {q.view_label(plan)} has security_barrier: PostgreSQL does not flatten "
            "such views, so searches through it cannot use the vector index (seq scan); "
            "prefer security_invoker"
        )
    if viewdef is not None:
        have = list(column_types(conn, plan.view_schema, plan.view.name))
        want = [*plan.view.columns, plan.view.embedding_alias, plan.view.model_alias]
        if have != want:
            ins.error(
                f"view {q.view_label(plan)} exists with columns {have}; migrator manages "
                f"views shaped {want}: rename the old view or adjust view.columns "
                "(see docs/adopting-the-view.md)"
            )
        else:
            _inspect_view(plan, ins)
    if viewdef is None:
        ins.info(
            f"view {q.view_label(plan)} does not exist yet: `migrator adopt` (or backfill) "
            "creates it on the source column"
        )
    if not ins.errors and sample > 0:
        # Only the dry run estimates: a command's pre-flight must not scan the whole table.
        _count_and_sample(conn, plan, ins, sample)
    return ins


def _inspect_table(conn: psycopg.Connection, plan: Plan, ins: Inspection) -> None:
    """Tables migrator cannot migrate safely are refused before anything changes."""
    row = conn.execute(
        "SELECT c.relkind::text, c.relispartition, row_security_active(c.oid), current_user "
        "FROM pg_class c WHERE c.oid = %s::regclass",
        (f"{_quote(plan.table.schema_)}.{_quote(plan.table.name)}",),
    ).fetchone()
    assert row is not None
    relkind, is_partition, rls_active, user = row
    label = q.table_label(plan)
    if relkind == "p":
        ins.error(
            f"table {label} is partitioned: PostgreSQL cannot CREATE INDEX CONCURRENTLY on a "
            "partitioned table, so migrator cannot build the new index without blocking "
            "writes; migrate each partition with its own plan and view, or build the index "
            "yourself (see docs/adopting-the-view.md)"
        )
    elif is_partition:
        ins.error(
            f"table {label} is a partition: PostgreSQL adds columns on the partitioned table "
            "only; migrator does not migrate partitioned tables yet"
        )
    if rls_active:
        ins.error(
            f"row-level security applies to {user} on {label}: migrator would see (and "
            "backfill and verify) only some rows; run migrator as the table's owner (without "
            "FORCE ROW LEVEL SECURITY) or as a role with BYPASSRLS"
        )


def _inspect_side(
    conn: psycopg.Connection, plan: Plan, ins: Inspection, cols: dict[str, str]
) -> None:
    """Storage side_table: the target column must not be the table's (the joined view would
    read two), and the side table is migrator's: absent, or this migration's own."""
    label = q.side_label(plan)
    if plan.target.column in cols:
        ins.error(
            f"target column {plan.target.column} exists in {q.table_label(plan)}: storage "
            f"side_table keeps it in {label}; choose another target.column"
        )
    side = column_types(conn, plan.table.schema_, plan.side_table)
    if not side:
        exists = conn.execute(
            "SELECT to_regclass(%s)", (q.side_ident(plan).as_string(conn),)
        ).fetchone()
        if exists is not None and exists[0] is not None:
            ins.error(f"{label} exists and is not a table: set target.side_table in the plan")
        return
    want = {
        plan.table.primary_key: cols.get(plan.table.primary_key, ""),
        plan.target.column: f"{plan.target.type.value}({plan.target.model.dimensions})",
    }
    if side != want or _migration_row(conn, plan.name) is None:
        ins.error(
            f"table {label} exists and is not this migration's side table: set "
            "target.side_table in the plan to another name"
        )
        return
    ins.target_exists = True
    ins.info(f"side table {label} already exists (resumed migration)")


def _inspect_view(plan: Plan, ins: Inspection) -> None:
    """Can the view's two managed columns be swapped without touching anything else?"""
    f, label = ins.facts, q.view_label(plan)
    if f.view_problem is not None or f.view_body is None:
        ins.error(
            f"view {label} cannot be adopted: {f.view_problem}; migrator keeps your view and "
            "swaps only its two managed columns, so it must read the table's vector column "
            "and a model constant (see docs/adopting-the-view.md)"
        )
        return
    body = f.view_body
    if plan.side and body.table is None:
        ins.error(
            f"view {label} does not name {q.table_label(plan)} exactly once in its FROM "
            "clause: storage side_table joins the side table to it there; use storage column "
            "or select from the table once"
        )
    expected = {
        plan.source.column: plan.source.model.fingerprint(),
        plan.target.column: plan.target.model.fingerprint(),
    }[body.serves]
    if body.fingerprint != expected:
        ins.error(
            f"view {label} serves {body.serves} but its {plan.view.model_alias} column is "
            f"{body.fingerprint!r}, not that model's fingerprint {expected!r}: services that "
            "filter on it would find no rows; recreate the view with "
            f"'{expected}'::text AS {plan.view.model_alias} (keep your FROM and WHERE)"
        )
    if plan.source.type is not plan.target.type:
        dependents = f.view_dependents
        if dependents:
            ins.error(
                f"view {label} has dependents ({', '.join(dependents)}): this plan changes "
                f"its embedding type ({plan.source.type.value} -> {plan.target.type.value}), "
                "which drops and re-creates the view and would take them along; drop them "
                "first (and re-create them after cutover), or keep the vector type"
            )
        if f.view_foreign_grantors:
            ins.error(
                f"grants on view {label} were made by {', '.join(f.view_foreign_grantors)}, "
                "which migrator's role cannot act as: this plan re-creates the view (its "
                "embedding type changes) and could not make them again; grant migrator's role "
                "membership in them, or re-grant from the view's owner"
            )


def _inspect_index(conn: psycopg.Connection, plan: Plan, ins: Inspection) -> None:
    info = index_info(conn, plan)
    ins.index_state = info.state
    if info.state == "other":
        ins.error(
            f"index name {plan.index_name} is taken by an index on {info.on}: "
            "set index.name in the plan"
        )
    elif info.state == "invalid":
        ins.warn(
            f"index {plan.index_name} exists but is INVALID (a failed build): "
            "verify will drop and rebuild it"
        )


@dataclass(frozen=True)
class IndexInfo:
    """The plan's index as the catalog has it; `on` names what an index of another column with
    the same name indexes ("table.column")."""

    state: str  # "absent" | "valid" | "invalid" | "other" (the name is taken elsewhere)
    oid: int | None = None
    definition: str = ""
    on: str = ""


def index_info(conn: psycopg.Connection, plan: Plan) -> IndexInfo:
    """The state of the plan's index, found by name in the table's schema."""
    row = conn.execute(
        "SELECT i.oid, x.indisvalid AND x.indisready, t.relname, a.attname, "
        "pg_get_indexdef(i.oid) FROM pg_class i "
        "JOIN pg_namespace n ON n.oid = i.relnamespace JOIN pg_index x ON x.indexrelid = i.oid "
        "JOIN pg_class t ON t.oid = x.indrelid "
        "LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
        "WHERE n.nspname = %s AND i.relname = %s",
        (plan.table.schema_, plan.index_name),
    ).fetchone()
    if row is None:
        return IndexInfo("absent")
    on = plan.side_table if plan.side else plan.table.name
    if row[2] != on or row[3] != plan.target.column:
        return IndexInfo("other", int(row[0]), str(row[4]), f"{row[2]}.{row[3]}")
    return IndexInfo("valid" if row[1] else "invalid", int(row[0]), str(row[4]))


def _count_and_sample(conn: psycopg.Connection, plan: Plan, ins: Inspection, sample: int) -> None:
    est = conn.execute(
        "SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c WHERE c.oid = %s::regclass",
        (f"{_quote(plan.table.schema_)}.{_quote(plan.table.name)}",),
    ).fetchone()
    estimate = int(est[0]) if est else 0
    if estimate < 2_000_000:
        cnt = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(q.table_ident(plan))
        ).fetchone()
        ins.rows, ins.rows_exact = int(cnt[0]) if cnt else 0, True
    else:
        ins.rows = estimate
    if not ins.rows:
        ins.warn(f"table {q.table_label(plan)} is empty")
        return
    ins.sample_texts = sample_texts(conn, plan, ins.rows, sample)


# Up to this many heap pages BERNOULLI (every row with the same chance, reads every page) is
# cheap enough; past it SYSTEM picks whole pages at random, this many of them.
BERNOULLI_MAX_PAGES = 131_072  # 1 GB of heap
SYSTEM_PAGES = 4_000


def sample_texts(
    conn: psycopg.Connection, plan: Plan, rows: int, sample: int, *, seed: int = 42
) -> list[str]:
    """A random sample of the texts to embed, the same on every run (REPEATABLE).

    A table stored in key order often has text length correlated with the key: the sample
    must not favour any part of it. BERNOULLI draws rows; SYSTEM (large tables) draws pages,
    thousands of them so no few pages dominate. Either draws a few times the rows needed and
    keeps `sample` of them in an order unrelated to storage (md5 of the row's ctid): a plain
    LIMIT would keep the first pages' rows, the very bias this avoids.
    """
    if rows <= 0 or sample <= 0:
        return []
    pages_row = conn.execute(
        "SELECT greatest(relpages, 1) FROM pg_class WHERE oid = %s::regclass",
        (q.table_ident(plan).as_string(None),),
    ).fetchone()
    pages = int(pages_row[0]) if pages_row else 1
    if pages <= BERNOULLI_MAX_PAGES:
        method = sql.SQL("BERNOULLI")
        pct = min(100.0, 100.0 * sample * 3 / rows)
    else:
        method = sql.SQL("SYSTEM")
        pct = min(100.0, max(100.0 * sample * 3 / rows, 100.0 * SYSTEM_PAGES / pages))
    out = conn.execute(
        sql.SQL(
            "SELECT {} FROM {} TABLESAMPLE {} (%s) REPEATABLE (%s) "
            "ORDER BY md5(ctid::text) LIMIT %s"
        ).format(q.text_expr(plan), q.table_ident(plan), method),
        (pct, seed, sample),
    ).fetchall()
    return [r[0] for r in out if r[0] is not None]


def _quote(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def as_dict(ins: Inspection) -> dict[str, Any]:
    return {
        "server_version": ins.server_version,
        "pgvector_version": ins.pgvector_version,
        "rows": ins.rows,
        "rows_exact": ins.rows_exact,
        "view_definition": ins.view_definition,
        "target_exists": ins.target_exists,
        "index_state": ins.index_state,
        "findings": [f.as_dict() for f in ins.findings],
    }


@dataclass(frozen=True)
class VectorIndex:
    """An HNSW or IVFFlat index on one vector column (the production index, for verify)."""

    name: str
    method: str  # "hnsw" | "ivfflat"
    opclass: str
    valid: bool
    partial: bool
    definition: str


def vector_indexes(
    conn: psycopg.Connection, schema: str, table: str, column: str
) -> list[VectorIndex]:
    """HNSW/IVFFlat indexes whose only key is `column`, valid first, then by name."""
    rows = conn.execute(
        "SELECT i.relname, am.amname, opc.opcname, x.indisvalid AND x.indisready, "
        "x.indpred IS NOT NULL, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
        "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
        "JOIN pg_opclass opc ON opc.oid = x.indclass[0] "
        "WHERE n.nspname = %s AND t.relname = %s AND a.attname = %s AND x.indnatts = 1 "
        "AND am.amname IN ('hnsw', 'ivfflat') ORDER BY 4 DESC, 1",
        (schema, table, column),
    ).fetchall()
    return [VectorIndex(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5]) for r in rows]
