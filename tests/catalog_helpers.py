"""What a user would check in the catalog before and after a phase: a snapshot of relations,
columns, indexes, triggers, migrator's functions and every view's definition, owner, ACLs
and options; the rows a view returns (as a given role); who depends on what.

Read-only helpers for tests; every figure comes straight from pg_catalog.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

# Migrator's own bookkeeping tables are not the user's catalog: a snapshot leaves them out.
_SKIP_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "migrator")
# Sessions' temporary tables (the workers' staging tables) are not part of the schema.
_NOT_TEMP = "n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'"


def catalog_snapshot(url: str) -> dict[str, Any]:
    """Every user relation with its columns, indexes, triggers, ACLs and options, every view's
    definition, and the functions in the migrator schema: equal snapshots mean equal catalogs
    as far as a user can see (OIDs aside)."""
    with psycopg.connect(url) as conn:
        rels = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner), "
            "c.relacl::text[], c.reloptions, c.relrowsecurity, c.relforcerowsecurity, "
            "CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END, "
            "obj_description(c.oid, 'pg_class') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname <> ALL(%s) AND {_NOT_TEMP} "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'i', 'I', 'S') ORDER BY 1, 2",
            (list(_SKIP_SCHEMAS),),
        ).fetchall()
        cols = conn.execute(
            "SELECT n.nspname, c.relname, a.attnum, a.attname, "
            "format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attacl::text[], "
            "pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            f"WHERE n.nspname <> ALL(%s) AND {_NOT_TEMP} AND a.attnum > 0 AND NOT a.attisdropped "
            "AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY 1, 2, 3",
            (list(_SKIP_SCHEMAS),),
        ).fetchall()
        indexes = conn.execute(
            "SELECT n.nspname, i.relname, pg_get_indexdef(i.oid), x.indisvalid "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname <> ALL(%s) "
            f"AND {_NOT_TEMP} ORDER BY 1, 2",
            (list(_SKIP_SCHEMAS),),
        ).fetchall()
        triggers = conn.execute(
            "SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "WHERE NOT t.tgisinternal ORDER BY 1, 2"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'migrator' ORDER BY 1"
        ).fetchall()
        policies = conn.execute(
            "SELECT schemaname, tablename, policyname, permissive, roles::text[], cmd, qual "
            "FROM pg_policies ORDER BY 1, 2, 3"
        ).fetchall()
    return {
        "relations": [_freeze(r) for r in rels],
        "columns": [_freeze(r) for r in cols],
        "indexes": [_freeze(r) for r in indexes],
        "triggers": [_freeze(r) for r in triggers],
        "migrator_functions": [r[0] for r in functions],
        "policies": [_freeze(r) for r in policies],
    }


def _freeze(row: Any) -> tuple[Any, ...]:
    """Rows with arrays (ACLs, options) as tuples, so snapshots compare as sets."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in row)


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Only what differs, for a readable assertion message."""
    out: dict[str, Any] = {}
    for key in before:
        b, a = set(before[key]), set(after[key])
        if b != a:
            out[key] = {"gone": sorted(b - a, key=str), "new": sorted(a - b, key=str)}
    return out


def view_rows(url: str, view: sql.Composable, key: str = "id", role: str | None = None) -> set[Any]:
    """The keys a view returns, as `role` when given (RLS and grants apply)."""
    with psycopg.connect(url) as conn:
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {}").format(sql.Identifier(key), view)
        ).fetchall()
    return {r[0] for r in rows}


def capture_objects(url: str) -> dict[str, list[str]]:
    """migrator's triggers on user tables and its functions: empty after finalize or abort."""
    with psycopg.connect(url) as conn:
        trg = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'migrator%'"
        ).fetchall()
        fns = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'migrator'"
        ).fetchall()
    return {"triggers": sorted(r[0] for r in trg), "functions": sorted(r[0] for r in fns)}
