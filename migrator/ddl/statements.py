"""Statement builders on psycopg.sql: identifiers quoted, keywords from closed enums, values bound.

Pure: no connection is needed to build or render a statement (`Statement.render()`), which is
what makes `migrator plan --offline` a true dry run of what the executor will run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from psycopg import sql

from migrator.ddl.viewdef import SIDE_ALIAS
from migrator.plan.model import (
    CaptureNames,
    IndexMethod,
    ModelSpec,
    Plan,
    VectorType,
    template_parts,
)

SCHEMA = "migrator"
CHANGES_CHANNEL = "migrator_active_model"


class Lock(StrEnum):
    NONE = "no table lock"
    ACCESS_SHARE = "ACCESS SHARE"
    ROW_EXCLUSIVE = "ROW EXCLUSIVE"
    SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
    SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
    ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"


@dataclass(frozen=True)
class Statement:
    """One SQL statement with what an operator needs to judge it before it runs."""

    query: sql.Composable
    purpose: str
    lock: Lock = Lock.NONE
    lock_on: str = ""
    # DDL runs under lock_timeout and is retried on SQLSTATE 55P03 (lock_not_available).
    ddl: bool = True
    # False for statements PostgreSQL refuses inside a transaction block (CONCURRENTLY).
    transactional: bool = True
    # True: commit what came before; this statement opens a transaction of its own.
    new_transaction: bool = False

    def render(self) -> str:
        return self.query.as_string(None)

    def lock_text(self) -> str:
        return f"{self.lock.value} on {self.lock_on}" if self.lock_on else self.lock.value


def table_ident(plan: Plan) -> sql.Identifier:
    return sql.Identifier(plan.table.schema_, plan.table.name)


def table_label(plan: Plan) -> str:
    return f"{plan.table.schema_}.{plan.table.name}"


def view_ident(plan: Plan) -> sql.Identifier:
    return sql.Identifier(plan.view_schema, plan.view.name)


def view_label(plan: Plan) -> str:
    return f"{plan.view_schema}.{plan.view.name}"


def side_name(plan: Plan, column: str) -> str | None:
    """The side table `column` lives in: the target's (storage side_table), the source's
    (source.side_table: an earlier migration's), or None (a column of the table)."""
    if plan.side and column == plan.target.column:
        return plan.side_table
    if column == plan.source.column:
        return plan.source.side_table
    return None


def side_ident(plan: Plan, column: str | None = None) -> sql.Identifier:
    """The side table of `column` (default: the target's): (primary key, vector)."""
    name = plan.side_table if column is None else side_name(plan, column)
    assert name is not None
    return sql.Identifier(plan.table.schema_, name)


def side_label(plan: Plan, column: str | None = None) -> str:
    name = plan.side_table if column is None else side_name(plan, column)
    return f"{plan.table.schema_}.{name}"


def in_side(plan: Plan, column: str) -> bool:
    """Does `column` live in a side table (not in the table itself)?"""
    return side_name(plan, column) is not None


def vectors_from(
    plan: Plan, column: str | tuple[str, ...], alias: str | None = None
) -> sql.Composable:
    """A FROM item with the table's columns and `column` (or each of several): the table
    itself, or the table left-joined to the side table of each column that lives in one, so
    readers see every vector as a NULL-able column of the row whatever the storage."""
    columns = (column,) if isinstance(column, str) else column
    sides = [c for c in columns if in_side(plan, c)]
    if not sides:
        if alias is None:
            return table_ident(plan)
        return sql.SQL("{} AS {}").format(table_ident(plan), sql.Identifier(alias))
    pk = sql.Identifier(plan.table.primary_key)
    picks = sql.SQL("").join(
        sql.SQL(", s{}.{}").format(sql.SQL(str(i)), sql.Identifier(c)) for i, c in enumerate(sides)
    )
    joins = sql.SQL("").join(
        sql.SQL(" LEFT JOIN {} AS s{} USING ({})").format(side_ident(plan, c), sql.SQL(str(i)), pk)
        for i, c in enumerate(sides)
    )
    return sql.SQL("(SELECT b.*{picks} FROM {tbl} AS b{joins}) AS {alias}").format(
        picks=picks,
        tbl=table_ident(plan),
        joins=joins,
        alias=sql.Identifier(alias or plan.table.name),
    )


def column_type(vtype: VectorType, dims: int | None) -> sql.Composable:
    if dims is None:
        return sql.SQL(vtype.value)
    return sql.SQL("{}({})").format(sql.SQL(vtype.value), sql.Literal(int(dims)))


def _text_col(name: str, alias: str | None) -> sql.Composable:
    return sql.SQL("{}::text").format(
        sql.Identifier(alias, name) if alias else sql.Identifier(name)
    )


def text_expr(plan: Plan, alias: str | None = None) -> sql.Composable:
    """The SQL expression of the text to embed: NULL when no column it names holds text.

    A template's NULL columns read as '' inside the text; a template whose columns are all
    NULL or blank yields NULL, not its literal text alone ("Title: "), so it is never sent.
    """
    if plan.text.column is not None:
        return (
            sql.Identifier(alias, plan.text.column) if alias else sql.Identifier(plan.text.column)
        )
    assert plan.text.template is not None
    parts: list[sql.Composable] = []
    for kind, value in template_parts(plan.text.template):
        parts.append(sql.Literal(value) if kind == "literal" else _text_col(value, alias))
    return sql.SQL("CASE WHEN {} THEN concat({}) END").format(
        eligible_predicate(plan, alias), sql.SQL(", ").join(parts)
    )


def text_hash_expr(plan: Plan, alias: str | None = None) -> sql.Composable:
    """Content hash used by the compare-and-set write: a row is written only for its current text."""
    return sql.SQL("md5({})").format(text_expr(plan, alias))


def eligible_predicate(plan: Plan, alias: str | None = None) -> sql.Composable:
    """Rows with text worth embedding: at least one column the text names holds non-blank text.

    NULL, empty and whitespace-only text are never sent; nor is a template's literal text
    alone (judging the whole template would make every row eligible).
    """
    tests = [
        sql.SQL("btrim(coalesce({}, ''), E' \\t\\r\\n') <> ''").format(_text_col(c, alias))
        for c in plan.text.columns
    ]
    if len(tests) == 1:
        return tests[0]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(tests))


# ---------------------------------------------------------------------------------------------
# Change capture: a BEFORE trigger on writes of the text columns and of both vector columns.
#
# Maintained columns (the new one; after cutover the old one too) belong to migrator: when the
# text changes and the statement did not write the column, or when anyone but migrator writes
# the column WITHOUT changing the text (an ORM saving back a vector it loaded before another
# connection changed the text), the vector is cleared and the row queued in migrator.changes,
# so the catch-up re-embeds it. The watched column (the old one, before cutover) belongs to the
# application: it is never touched, but the same two cases are recorded in
# migrator.stale_sources, so they can be counted and refreshed with the old model.
# migrator's own writes (compare-and-set on the text's hash) mark themselves with
# SET LOCAL migrator.writer = '<migration>' and pass through.
# ---------------------------------------------------------------------------------------------

WRITER_SETTING = "migrator.writer"
STALE_TEXT_CHANGED = "text changed, old vector not rewritten"
STALE_WRITTEN_ALONE = "old vector written without its text"


def mark_writer(plan: Plan) -> sql.Composable:
    """migrator's own vector writes say so for the rest of their transaction (SET LOCAL)."""
    return sql.SQL("SELECT set_config({}, {}, true)").format(
        sql.Literal(WRITER_SETTING), sql.Literal(plan.name)
    )


def _same(c: str) -> sql.Composable:
    # Vectors compare as text: the function's search_path (pg_catalog) cannot see pgvector's
    # "=" operator, and IS NOT DISTINCT FROM on the vector type itself fails to resolve.
    return sql.SQL("NEW.{c}::text IS NOT DISTINCT FROM OLD.{c}::text").format(c=sql.Identifier(c))


def capture_function(
    plan: Plan,
    maintained: tuple[str, ...],
    watched: str | None = None,
    names: CaptureNames | None = None,
) -> sql.Composable:
    changed = sql.SQL(" OR ").join(
        sql.SQL("NEW.{c} IS DISTINCT FROM OLD.{c}").format(c=sql.Identifier(c))
        for c in plan.text.columns
    )
    # Storage side_table: the new vector is not a column of the row; a text change deletes it
    # from the side table (in the same transaction as the change) and queues the row.
    side = [c for c in maintained if in_side(plan, c)]
    maintained = tuple(c for c in maintained if not in_side(plan, c))
    side_clear: sql.Composable = sql.SQL("")
    if side:
        side_clear = sql.SQL("    IF text_changed THEN\n{deletes}    END IF;\n").format(
            deletes=sql.SQL("").join(
                sql.SQL("      DELETE FROM {side} WHERE {pk} = OLD.{pk};\n").format(
                    side=side_ident(plan, c), pk=sql.Identifier(plan.table.primary_key)
                )
                for c in side
            )
        )
    clears = sql.SQL("").join(
        sql.SQL(
            "    IF text_changed THEN\n"
            "      IF {same} THEN NEW.{c} := NULL; END IF;\n"
            "    ELSIF NOT ({same}) THEN\n"
            "      NEW.{c} := NULL; written := true;\n"
            "    END IF;\n"
        ).format(c=sql.Identifier(c), same=_same(c))
        for c in maintained
    )
    record: sql.Composable = sql.SQL("")
    if watched is not None and in_side(plan, watched):
        # The old vectors in an earlier migration's side table: only a text change makes one
        # stale (the application does not write them there alongside its text).
        record = sql.SQL(
            "    IF text_changed AND EXISTS (SELECT 1 FROM {side} WHERE {pk} = OLD.{pk}) THEN\n"
            "      INSERT INTO migrator.stale_sources (migration, pk, reason) VALUES ({name}, "
            "NEW.{pk}::text, {changed})\n"
            "      ON CONFLICT (migration, pk) DO UPDATE SET reason = EXCLUDED.reason, "
            "detected_at = now(), batched_at = NULL, refreshed_at = NULL;\n"
            "    END IF;\n"
        ).format(
            side=side_ident(plan, watched),
            name=sql.Literal(plan.name),
            pk=sql.Identifier(plan.table.primary_key),
            changed=sql.Literal(STALE_TEXT_CHANGED),
        )
    elif watched is not None:
        record = sql.SQL(
            "    IF NEW.{c} IS NOT NULL AND (text_changed = ({same})) THEN\n"
            "      INSERT INTO migrator.stale_sources (migration, pk, reason) VALUES ({name}, "
            "NEW.{pk}::text, CASE WHEN text_changed THEN {changed} ELSE {alone} END)\n"
            "      ON CONFLICT (migration, pk) DO UPDATE SET reason = EXCLUDED.reason, "
            "detected_at = now(), batched_at = NULL, refreshed_at = NULL;\n"
            "    END IF;\n"
        ).format(
            c=sql.Identifier(watched),
            same=_same(watched),
            name=sql.Literal(plan.name),
            pk=sql.Identifier(plan.table.primary_key),
            changed=sql.Literal(STALE_TEXT_CHANGED),
            alone=sql.Literal(STALE_WRITTEN_ALONE),
        )
    nulls: list[sql.Composable] = [
        sql.SQL("NEW.{} IS NULL").format(sql.Identifier(c)) for c in maintained
    ]
    if side:
        # A new row has no side row; an updated one lost it just above (text_changed).
        nulls.append(sql.SQL("TG_OP = 'INSERT' OR text_changed"))
    any_null = sql.SQL(" OR ").join(nulls)
    body = sql.SQL(
        "\nDECLARE\n"
        "  text_changed boolean := false;\n"
        "  written boolean := false;\n"
        "BEGIN\n"
        "  IF coalesce(current_setting({guc}, true), '') = {name} THEN RETURN NEW; END IF;\n"
        "  IF TG_OP = 'UPDATE' THEN\n"
        "    text_changed := {changed};\n"
        "{side_clear}"
        "{clears}"
        "{record}"
        "    IF NOT (text_changed OR written) THEN RETURN NEW; END IF;\n"
        "  END IF;\n"
        "  IF {any_null} THEN\n"
        "    INSERT INTO migrator.changes (migration, pk) VALUES ({name}, NEW.{pk}::text);\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END\n"
    ).format(
        guc=sql.Literal(WRITER_SETTING),
        changed=changed,
        side_clear=side_clear,
        clears=clears,
        record=record,
        any_null=any_null,
        name=sql.Literal(plan.name),
        pk=sql.Identifier(plan.table.primary_key),
    )
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
    ).format(
        fn=sql.Identifier(SCHEMA, (names or plan.capture).function),
        body=sql.Literal(body.as_string(None)),
    )


def capture_trigger(plan: Plan, names: CaptureNames | None = None) -> sql.Composable:
    n = names or plan.capture
    # Both vector columns are watched from the start: the function changes at cutover, the
    # trigger does not.
    # (A vector in a side table is not the table's column; a key change cascades to it.)
    vectors = [c for c in (plan.target.column, plan.source.column) if not in_side(plan, c)]
    cols = dict.fromkeys((*plan.text.columns, *vectors))
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT OR UPDATE OF {cols} ON {tbl} "
        "FOR EACH ROW EXECUTE FUNCTION {fn}()"
    ).format(
        trg=sql.Identifier(n.trigger),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        tbl=table_ident(plan),
        fn=sql.Identifier(SCHEMA, n.function),
    )


def add_target_column(plan: Plan) -> sql.Composable:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        table_ident(plan),
        sql.Identifier(plan.target.column),
        column_type(plan.target.type, plan.target.model.dimensions),
    )


def create_side_table(plan: Plan, pk_type: str) -> sql.Composable:
    """The side table: one row per row of the table that has a new vector, deleted with it
    (and its key changed with it) by the foreign key."""
    pk = sql.Identifier(plan.table.primary_key)
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {side} ({pk} {pkt} PRIMARY KEY REFERENCES {tbl} ({pk}) "
        "ON DELETE CASCADE ON UPDATE CASCADE, {col} {vt} NOT NULL)"
    ).format(
        side=side_ident(plan),
        pk=pk,
        pkt=pk_type_sql(pk_type),
        tbl=table_ident(plan),
        col=sql.Identifier(plan.target.column),
        vt=column_type(plan.target.type, plan.target.model.dimensions),
    )


def drop_side_table(plan: Plan) -> sql.Composable:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(side_ident(plan))


def missing_vector(plan: Plan, column: str, alias: sql.Composable) -> sql.Composable:
    """The row has no vector in `column` (NULL, or no side row)."""
    pk = sql.Identifier(plan.table.primary_key)
    if in_side(plan, column):
        return sql.SQL("NOT EXISTS (SELECT 1 FROM {side} AS s WHERE s.{pk} = {a}.{pk})").format(
            side=side_ident(plan, column), pk=pk, a=alias
        )
    return sql.SQL("{a}.{c} IS NULL").format(a=alias, c=sql.Identifier(column))


# ---------------------------------------------------------------------------------------------
# Backfill: read by key range, write through a staging table with a compare-and-set on the text.
# ---------------------------------------------------------------------------------------------


def read_range(
    plan: Plan, column: str | None = None, *, lo: bool = True, hi: bool = True
) -> sql.Composable:
    """Rows of one key range whose vector `column` is still NULL: (pk, pk::text, text, hash).

    A range with no lower (first batch) or no upper bound (last batch) leaves that side out.
    Only NULL vectors are read: the capture trigger clears the column whenever the text
    changes, so a non-NULL vector is already fresh and a rerun skips it.
    """
    pk = sql.Identifier(plan.table.primary_key)
    conds: list[sql.Composable] = []
    if lo:
        conds.append(sql.SQL("{} > %(lo)s").format(pk))
    if hi:
        conds.append(sql.SQL("{} <= %(hi)s").format(pk))
    col = column or plan.target.column
    if in_side(plan, col):
        conds.append(missing_vector(plan, col, table_ident(plan)))
    else:
        conds.append(sql.SQL("{} IS NULL").format(sql.Identifier(col)))
    return sql.SQL(
        "SELECT {pk}, {pk}::text, {text}, {hash} FROM {tbl} WHERE {conds} ORDER BY 1"
    ).format(
        pk=pk,
        text=text_expr(plan),
        hash=text_hash_expr(plan),
        tbl=table_ident(plan),
        conds=sql.SQL(" AND ").join(conds),
    )


_PK_TYPE_RE = re.compile(r"^[a-z][a-z0-9 _]*(\(\d+(,\d+)?\))?$")


def pk_type_sql(pk_type: str) -> sql.Composable:
    """The primary key's type as read from the catalog (format_type), checked before use."""
    if not _PK_TYPE_RE.match(pk_type):
        raise ValueError(f"unsupported primary key type {pk_type!r}")
    return sql.SQL(pk_type)


def _stale_open(plan: Plan, alias: str) -> sql.Composable:
    """The row has an old vector change capture found stale (not refreshed yet)."""
    return sql.SQL(
        "EXISTS (SELECT 1 FROM migrator.stale_sources AS st WHERE st.migration = {m} "
        "AND st.pk = {pk}::text AND st.refreshed_at IS NULL)"
    ).format(m=sql.Literal(plan.name), pk=sql.Identifier(alias, plan.table.primary_key))


def read_ids(
    plan: Plan, pk_type: str, column: str | None = None, *, stale: bool = False
) -> sql.Composable:
    """Like `read_range`, for a list of keys (catch-up, sweep and dead-letter batches).

    `stale` (batches of the source role): also the rows whose old vector change capture
    recorded as stale, which are not NULL (before cutover the old column is never cleared).
    """
    name = column or plan.target.column
    col = sql.Identifier(name)
    cond: sql.Composable
    tbl: sql.Composable = sql.SQL("{} AS t").format(table_ident(plan))
    if stale:
        cond = sql.SQL("(t.{col} IS NULL OR {open})").format(col=col, open=_stale_open(plan, "t"))
        if in_side(plan, name):
            tbl = vectors_from(plan, name, "t")  # an old vector in a side table: joined
    else:
        cond = missing_vector(plan, name, sql.Identifier("t"))
    return sql.SQL(
        "SELECT t.{pk}, t.{pk}::text, {text}, {hash} FROM {tbl} "
        "WHERE t.{pk} = ANY(%(ids)s::text[]::{pkt}[]) AND {cond} ORDER BY 1"
    ).format(
        pk=sql.Identifier(plan.table.primary_key),
        text=text_expr(plan, "t"),
        hash=text_hash_expr(plan, "t"),
        tbl=tbl,
        pkt=pk_type_sql(pk_type),
        cond=cond,
    )


def create_stage(plan: Plan, pk_type: str, vtype: VectorType, dims: int) -> sql.Composable:
    # The stage's key has the table's key type, so the UPDATE below joins on the primary key
    # index instead of casting every row of the table to text.
    return sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} (pk {pkt}, text_hash text, v {vt}) "
        "ON COMMIT DELETE ROWS"
    ).format(
        stage=stage_ident(pk_type, vtype, dims),
        pkt=pk_type_sql(pk_type),
        vt=column_type(vtype, dims),
    )


def stage_ident(pk_type: str, vtype: VectorType, dims: int) -> sql.Identifier:
    # One stage per (key type, vector type) in a session: a worker may serve several migrations.
    tag = hashlib.md5(pk_type.encode()).hexdigest()[:6]
    return sql.Identifier(f"migrator_stage_{tag}_{vtype.value}_{dims}")


def cas_update(
    plan: Plan,
    column: str,
    pk_type: str,
    vtype: VectorType,
    dims: int,
    *,
    stale: bool = False,
) -> sql.Composable:
    """Write staged vectors only where the row still holds the text that was embedded.

    `IS NULL` as well: a vector already there is fresh (the capture trigger clears it on every
    text change), so a duplicated or redelivered batch writes nothing and adds no row versions.
    `stale` (source role): also over an old vector recorded stale and not refreshed yet, and a
    staged NULL (the text became blank) clears one; a row whose text became NULL compares
    equal to its NULL hash. Returns the keys written.
    """
    if in_side(plan, column) and stale:
        return cas_upsert(plan, column, pk_type, vtype, dims)
    if in_side(plan, column):
        return cas_insert(plan, pk_type, vtype, dims)
    if stale:
        # Either NULL, or an old vector the capture found open (its text changed).
        match = sql.SQL(
            "{hash} IS NOT DISTINCT FROM s.text_hash AND NOT (t.{col} IS NULL AND s.v IS NULL) "
            "AND (t.{col} IS NULL OR {open})"
        )
    else:
        match = sql.SQL("{hash} = s.text_hash AND t.{col} IS NULL")
    parts = {
        "col": sql.Identifier(column),
        "pk": sql.Identifier(plan.table.primary_key),
        "hash": text_hash_expr(plan, "t"),
        "open": _stale_open(plan, "t"),
    }
    return sql.SQL(
        "UPDATE {tbl} AS t SET {col} = s.v FROM {stage} AS s WHERE t.{pk} = s.pk AND {match} "
        "RETURNING t.{pk}::text"
    ).format(
        tbl=table_ident(plan),
        stage=stage_ident(pk_type, vtype, dims),
        match=match.format(**parts),
        **parts,
    )


def cas_insert(plan: Plan, pk_type: str, vtype: VectorType, dims: int) -> sql.Composable:
    """Storage side_table's compare-and-set: insert the staged vectors of rows that still hold
    the text embedded, and have no side row yet (one there is fresh: change capture deletes it
    on every text change). FOR SHARE holds the rows' text until commit: a concurrent text
    change either committed first (its row fails the hash) or waits, and then its capture
    deletes what this wrote. The table gets row locks, no row versions. Returns the keys."""
    pk = sql.Identifier(plan.table.primary_key)
    return sql.SQL(
        "WITH ok AS (SELECT s.pk, s.v FROM {stage} AS s JOIN {tbl} AS t ON t.{pk} = s.pk "
        "WHERE {hash} = s.text_hash AND s.v IS NOT NULL FOR SHARE OF t) "
        "INSERT INTO {side} ({pk}, {col}) SELECT pk, v FROM ok ON CONFLICT ({pk}) DO NOTHING "
        "RETURNING {pk}::text"
    ).format(
        stage=stage_ident(pk_type, vtype, dims),
        tbl=table_ident(plan),
        pk=pk,
        hash=text_hash_expr(plan, "t"),
        side=side_ident(plan),
        col=sql.Identifier(plan.target.column),
    )


def cas_upsert(
    plan: Plan, column: str, pk_type: str, vtype: VectorType, dims: int
) -> sql.Composable:
    """`cas_update(stale=True)` for old vectors in a side table (source.side_table): rows
    whose text is what was embedded and that have no old vector or one recorded stale; a
    staged NULL (the text became blank) deletes the side row. Returns the keys written."""
    pk = sql.Identifier(plan.table.primary_key)
    parts = {
        "stage": stage_ident(pk_type, vtype, dims),
        "tbl": table_ident(plan),
        "side": side_ident(plan, column),
        "pk": pk,
        "col": sql.Identifier(column),
        "hash": text_hash_expr(plan, "t"),
        "open": _stale_open(plan, "t"),
    }
    return sql.SQL(
        "WITH ok AS (SELECT s.pk, s.v FROM {stage} AS s JOIN {tbl} AS t ON t.{pk} = s.pk "
        "LEFT JOIN {side} AS o ON o.{pk} = s.pk WHERE {hash} IS NOT DISTINCT FROM s.text_hash "
        "AND NOT (o.{pk} IS NULL AND s.v IS NULL) AND (o.{pk} IS NULL OR {open}) FOR SHARE OF t), "
        "gone AS (DELETE FROM {side} AS d USING ok WHERE d.{pk} = ok.pk AND ok.v IS NULL "
        "RETURNING d.{pk}), "
        "put AS (INSERT INTO {side} ({pk}, {col}) SELECT pk, v FROM ok WHERE v IS NOT NULL "
        "ON CONFLICT ({pk}) DO UPDATE SET {col} = EXCLUDED.{col} RETURNING {pk}) "
        "SELECT {pk}::text FROM gone UNION ALL SELECT {pk}::text FROM put"
    ).format(**parts)


# ---------------------------------------------------------------------------------------------
# Index and view.
# ---------------------------------------------------------------------------------------------


def create_index(plan: Plan) -> sql.Composable:
    idx = plan.index
    if idx.method is IndexMethod.HNSW:
        params = sql.SQL("m = {}, ef_construction = {}").format(
            sql.Literal(idx.m), sql.Literal(idx.ef_construction)
        )
    else:
        params = sql.SQL("lists = {}").format(sql.Literal(idx.lists or 100))
    return sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {tbl} USING {method} ({col} {ops}) "
        "WITH ({params})"
    ).format(
        name=sql.Identifier(plan.index_name),
        tbl=side_ident(plan) if plan.side else table_ident(plan),
        method=sql.SQL(idx.method.value),
        col=sql.Identifier(plan.target.column),
        ops=sql.SQL(idx.metric.opclass(plan.target.type)),
        params=params,
    )


def drop_index(schema: str, name: str, *, concurrently: bool = True) -> sql.Composable:
    return sql.SQL("DROP INDEX {}IF EXISTS {}").format(
        sql.SQL("CONCURRENTLY " if concurrently else ""), sql.Identifier(schema, name)
    )


def side_join(plan: Plan, column: str | None = None) -> sql.Composable:
    """What the view adds to read a side table (`column`'s, default the target's): an inner
    join, so a k-NN search walks the side table's index (rows without a vector are not in the
    view, as they are in no index), USING the key so an unqualified key column stays
    unambiguous."""
    return sql.SQL(" JOIN {} AS {} USING ({})").format(
        side_ident(plan, column),
        sql.Identifier(SIDE_ALIAS),
        sql.Identifier(plan.table.primary_key),
    )


def view_select(plan: Plan, column: str, vtype: VectorType, fingerprint: str) -> sql.Composable:
    cols: list[sql.Composable] = [sql.Identifier(c) for c in plan.view.columns]
    side = in_side(plan, column)
    ref = sql.Identifier(SIDE_ALIAS, column) if side else sql.Identifier(column)
    cols.append(
        sql.SQL("{}::{} AS {}").format(
            ref, sql.SQL(vtype.value), sql.Identifier(plan.view.embedding_alias)
        )
    )
    cols.append(
        sql.SQL("{}::text AS {}").format(
            sql.Literal(fingerprint), sql.Identifier(plan.view.model_alias)
        )
    )
    return sql.SQL("SELECT {} FROM {}{}").format(
        sql.SQL(", ").join(cols),
        table_ident(plan),
        side_join(plan, column) if side else sql.SQL(""),
    )


def probe_query(plan: Plan, vtype: VectorType) -> sql.Composable:
    """Pacing's probe (backfill.probe): the service's k-NN shape through the view, with the
    model guard. Parameters: q (vector), fp (the served fingerprint), k."""
    emb = sql.Identifier(plan.view.embedding_alias)
    qv = sql.SQL("%(q)s::{}").format(sql.SQL(vtype.value))
    op = sql.SQL(plan.index.metric.operator)  # from a closed enum
    return sql.SQL(
        "SELECT {emb} {op} {qv} AS distance FROM {view} WHERE {m} = %(fp)s AND {emb} IS NOT NULL "
        "ORDER BY {emb} {op} {qv} LIMIT %(k)s"
    ).format(emb=emb, op=op, qv=qv, view=view_ident(plan), m=sql.Identifier(plan.view.model_alias))


def create_or_replace_view(
    plan: Plan,
    definition: sql.Composable,
    options: tuple[tuple[str, str], ...] = (),
) -> sql.Composable:
    # CREATE OR REPLACE VIEW replaces reloptions with the WITH list given: pass the view's own
    # options every time so the switch keeps security_barrier / check_option exactly as they were.
    with_clause: sql.Composable = sql.SQL("")
    if options:
        with_clause = sql.SQL(" WITH ({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options
            )
        )
    return sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(
        view_ident(plan), with_clause, definition
    )


def upsert_active_model(
    plan: Plan, column: str, vtype: VectorType, model: ModelSpec
) -> sql.Composable:
    return sql.SQL(
        "INSERT INTO migrator.active_models AS a (view_schema, view_name, migration, column_name, "
        "fingerprint, model, vector_type, dimensions, switched_at) VALUES ({vs}, {vn}, {m}, "
        "{col}, {fp}, {model}::jsonb, {vt}, {dims}, now()) "
        "ON CONFLICT (view_schema, view_name) DO UPDATE SET migration = EXCLUDED.migration, "
        "column_name = EXCLUDED.column_name, fingerprint = EXCLUDED.fingerprint, "
        "model = EXCLUDED.model, vector_type = EXCLUDED.vector_type, "
        "dimensions = EXCLUDED.dimensions, switched_at = EXCLUDED.switched_at, bridge_id = NULL"
    ).format(
        vs=sql.Literal(plan.view_schema),
        vn=sql.Literal(plan.view.name),
        m=sql.Literal(plan.name),
        col=sql.Literal(column),
        fp=sql.Literal(model.fingerprint()),
        model=sql.Literal(json.dumps(model.model_dump(mode="json"), sort_keys=True)),
        vt=sql.Literal(vtype.value),
        dims=sql.Literal(model.dimensions),
    )


def notify_switch(plan: Plan) -> sql.Composable:
    return sql.SQL("SELECT pg_notify({}, {})").format(
        sql.Literal(CHANGES_CHANNEL), sql.Literal(view_label(plan))
    )


def drop_trigger(plan: Plan, names: CaptureNames | None = None) -> sql.Composable:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier((names or plan.capture).trigger), table_ident(plan)
    )


def drop_function(plan: Plan, names: CaptureNames | None = None) -> sql.Composable:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
        sql.Identifier(SCHEMA, (names or plan.capture).function)
    )


def record_phase(
    name: str,
    phase: str,
    *,
    view_snapshot: Any = None,
    reset_cutover: bool = False,
) -> sql.Composed:
    """The one statement that records a phase: inside a step's transaction (so it commits with
    the step's changes or not at all) or alone (db.state.set_phase). Adopt also stores the
    view's snapshot; a new start after abort forgets the earlier cutover time."""
    sets = [sql.SQL("phase = {}").format(sql.Literal(str(phase))), sql.SQL("updated_at = now()")]
    if phase == "cut_over":
        sets.append(sql.SQL("cutover_at = now()"))
    elif reset_cutover:
        sets.append(sql.SQL("cutover_at = NULL"))
    if view_snapshot is not None:
        snap = json.dumps(view_snapshot, sort_keys=True, default=str)
        sets.append(sql.SQL("view_snapshot = {}::jsonb").format(sql.Literal(snap)))
    return sql.SQL("UPDATE migrator.migrations SET {} WHERE name = {}").format(
        sql.SQL(", ").join(sets), sql.Literal(name)
    )


# migrator's own rows of one migration; the migrations row and the event log stay (history).
LEDGER_TABLES = (
    "changes",
    "batches",
    "dead_letters",
    "reports",
    "stale_sources",
    "bridges",
    "pacing",
)


def delete_ledger(plan: Plan, table: str) -> sql.Composable:
    if table not in LEDGER_TABLES:
        raise ValueError(f"not a ledger table: {table!r}")
    return sql.SQL("DELETE FROM {} WHERE migration = {}").format(
        sql.Identifier(SCHEMA, table), sql.Literal(plan.name)
    )


def drop_column(plan: Plan, column: str) -> sql.Composable:
    return sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
        table_ident(plan), sql.Identifier(column)
    )
