"""The search view as the catalog knows it: its definition (located for the swap), options,
owner, every grant, comment and what depends on it; and what depends on a table column.

Read-only: SELECTs, a `SET LOCAL search_path` inside a transaction of its own, and the
*describe* of a prepared probe (nothing is executed) that lets PostgreSQL itself say which
table column the view's embedding column reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from migrator.ddl.facts import Grant, Privilege
from migrator.ddl.viewdef import ViewBody, ViewShapeError, parse_view, tokenize
from migrator.plan.model import Plan, VectorType


@dataclass(frozen=True)
class ViewState:
    """One read of the view; `problem` says why migrator cannot swap its columns (if so)."""

    exists: bool
    definition: str | None = None  # pg_get_viewdef(oid, true): what the snapshot compares
    body: ViewBody | None = None
    problem: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    owner: str | None = None
    grants: tuple[Grant, ...] = ()
    comment: str | None = None
    # Roles that made grants on the view and that migrator's role cannot act as: a type
    # change (which re-creates the view) could not make their grants again.
    foreign_grantors: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    dependents: tuple[str, ...] = field(default_factory=tuple)


_GRANTEE = "CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END"


def read_view(conn: psycopg.Connection, plan: Plan) -> ViewState:
    row = conn.execute(
        "SELECT c.oid, c.relkind::text, c.reloptions, pg_get_userbyid(c.relowner), "
        "pg_get_viewdef(c.oid, true), obj_description(c.oid, 'pg_class') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (plan.view_schema, plan.view.name),
    ).fetchone()
    if row is None:
        return ViewState(exists=False)
    oid, relkind, reloptions, owner, pretty, comment = row
    options = tuple(tuple(o.split("=", 1)) for o in (reloptions or ()))
    if relkind != "v":
        return ViewState(
            True, f"<not a view: relkind {relkind}>", problem="it is not a view", owner=owner
        )
    cols = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    state = ViewState(
        True,
        str(pretty),
        options=options,
        owner=owner,
        comment=comment,
        columns=tuple(r[0] for r in cols),
        dependents=_view_dependents(conn, oid),
    )
    try:
        grants = _grants(conn, oid, owner)
        state = replace(state, grants=grants, foreign_grantors=_foreign(conn, grants))
        return replace(state, body=_body(conn, plan, oid, list(state.columns)))
    except ViewShapeError as exc:
        return replace(state, problem=str(exc))


def _grants(conn: psycopg.Connection, oid: int, owner: str) -> tuple[Grant, ...]:
    rows = conn.execute(
        f"SELECT {_GRANTEE}, g.privilege_type, g.is_grantable, pg_get_userbyid(g.grantor), "
        "NULL::text FROM pg_class c, aclexplode(c.relacl) g "
        "WHERE c.oid = %(oid)s AND g.grantee <> c.relowner "
        f"UNION ALL SELECT {_GRANTEE}, g.privilege_type, g.is_grantable, "
        "pg_get_userbyid(g.grantor), a.attname::text FROM pg_attribute a, aclexplode(a.attacl) g "
        "WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY 5 NULLS FIRST, 1, 2",
        {"oid": oid},
    ).fetchall()
    out: list[Grant] = []
    for grantee, privilege, grantable, grantor, column in rows:
        if privilege not in Privilege.__members__:
            raise ViewShapeError(
                f"the view has a privilege this migrator does not know ({privilege}): "
                "upgrade migrator"
            )
        out.append(
            Grant(
                grantee,
                Privilege(privilege),
                bool(grantable),
                None if grantor == owner else grantor,
                column,
            )
        )
    return tuple(out)


def _foreign(conn: psycopg.Connection, grants: tuple[Grant, ...]) -> tuple[str, ...]:
    out = []
    for role in sorted({g.grantor for g in grants if g.grantor is not None}):
        row = conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone()
        if not row or not row[0]:
            out.append(role)
    return tuple(out)


def _view_dependents(conn: psycopg.Connection, oid: int) -> tuple[str, ...]:
    """Views built on this one, its triggers and rules: what DROP VIEW would take along."""
    rows = conn.execute(
        "SELECT DISTINCT pg_describe_object('pg_class'::regclass, r.ev_class, 0) "
        "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = %(oid)s AND r.ev_class <> %(oid)s "
        "UNION SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = %(oid)s "
        "UNION SELECT 'rule ' || rulename FROM pg_rewrite "
        "WHERE ev_class = %(oid)s AND rulename <> '_RETURN' ORDER BY 1",
        {"oid": oid},
    ).fetchall()
    return tuple(r[0] for r in rows)


def _body(conn: psycopg.Connection, plan: Plan, oid: int, columns: list[str]) -> ViewBody:
    """Parse the definition as pg_dump reads it (search_path '': every name qualified)."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")
        row = conn.execute("SELECT pg_get_viewdef(%s::oid, false)", (oid,)).fetchone()
    assert row is not None
    text = str(row[0])
    managed = (plan.source.column, plan.target.column)
    body = parse_view(
        text,
        columns,
        embedding_alias=plan.view.embedding_alias,
        model_alias=plan.view.model_alias,
        managed_columns=managed,
        table=(plan.table.schema_, plan.table.name),
        pk=plan.table.primary_key,
    )
    _check_types(conn, plan, oid)
    _probe(conn, plan, body)
    return body


def _check_types(conn: psycopg.Connection, plan: Plan, oid: int) -> None:
    row = conn.execute(
        "SELECT t.typname, a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attname = %s",
        (oid, plan.view.embedding_alias),
    ).fetchone()
    assert row is not None
    if row[0] not in {v.value for v in VectorType} or row[1] != -1:
        dims = f"({row[1]})" if row[1] and row[1] > 0 else ""
        raise ViewShapeError(
            f"its {plan.view.embedding_alias} column is {row[0]}{dims}: a switch to a model "
            "of another size would fail; declare it without dimensions "
            f"(`{plan.source.column}::{plan.source.type.value} AS {plan.view.embedding_alias}`)"
        )


def _probe(conn: psycopg.Connection, plan: Plan, body: ViewBody) -> None:
    """Which table column does the embedding entry read? Ask PostgreSQL: describe (never run)
    `SELECT <ref>, <q>.ctid <the view's FROM ...>`; ctid exists on tables only, so a
    subquery or another view in between is refused too."""
    text = body.text
    from_at = _from_offset(text)
    qual = [body.base_qualifier] if body.base_qualifier else []
    for column in (plan.source.column, plan.target.column):
        attnum = _attnum(conn, plan, column)
        if attnum is None:
            continue  # the target column before expand
        probe = (
            sql.SQL("SELECT {}, {} ")
            .format(sql.Identifier(*qual, column), sql.Identifier(*qual, "ctid"))
            .as_string(conn)
            + text[from_at:]
        )
        table, col = _describe(conn, probe)
        if (table, col) != (_table_oid(conn, plan), attnum):
            raise ViewShapeError(
                f"its {plan.view.embedding_alias} column does not read "
                f"{plan.table.schema_}.{plan.table.name}.{column} directly (the view must select "
                "from the table itself, not through a subquery or another view)"
            )


def _from_offset(text: str) -> int:
    depth = 0
    for tok in tokenize(text):
        depth += tok.text in ("(", "[")
        depth -= tok.text in (")", "]")
        if depth == 0 and tok.word() == "from":
            return tok.start
    raise ViewShapeError("the view's select list has no FROM clause")


def _describe(conn: psycopg.Connection, query: str) -> tuple[int, int]:
    pgconn = conn.pgconn
    enc = conn.info.encoding
    res = pgconn.prepare(b"", query.encode(enc))
    if res.error_message:
        raise ViewShapeError(
            "its embedding column does not read the plan's table directly (the view must "
            "select from the table itself, not through a subquery or another view)"
        )
    desc = pgconn.describe_prepared(b"")
    return int(desc.ftable(0)), int(desc.ftablecol(0))


def _table_oid(conn: psycopg.Connection, plan: Plan) -> int:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (plan.table.schema_, plan.table.name),
    ).fetchone()
    return int(row[0]) if row else 0


def _attnum(conn: psycopg.Connection, plan: Plan, column: str) -> int | None:
    row = conn.execute(
        "SELECT a.attnum FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attname = %s AND NOT a.attisdropped",
        (plan.table.schema_, plan.table.name, column),
    ).fetchone()
    return int(row[0]) if row else None


def column_dependents(
    conn: psycopg.Connection, plan: Plan, column: str, *, own_trigger: str | None = None
) -> list[str]:
    """Objects that stop `ALTER TABLE ... DROP COLUMN column` (normal dependencies): views,
    constraints, statistics, policies, triggers. Indexes of the column alone are dropped with
    it, and so is `own_trigger` (the migration's change capture, dropped in the same step)."""
    attnum = _attnum(conn, plan, column)
    if attnum is None:
        return []
    rows = conn.execute(
        "SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN "
        "pg_describe_object('pg_class'::regclass, r.ev_class, 0) "
        "ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END "
        "FROM pg_depend d LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass "
        "AND r.oid = d.objid WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s "
        "AND d.refobjsubid = %s AND d.deptype = 'n' AND NOT (d.classid = 'pg_trigger'::regclass "
        "AND d.objid IN (SELECT t.oid FROM pg_trigger t WHERE t.tgrelid = d.refobjid "
        "AND t.tgname = %s)) ORDER BY 1",
        (_table_oid(conn, plan), attnum, own_trigger),
    ).fetchall()
    return [r[0] for r in rows]
