"""What the database user may do, read from the catalog: the privileges each command's steps
need (own the table for ALTER TABLE and CREATE INDEX, TRIGGER, own or create the view, create
in migrator's schema...), so a command is refused before its first statement, not halfway.

Read-only: `has_*_privilege` and `pg_has_role(..., 'USAGE')` (PostgreSQL's own test for "has
the privileges of the owner", which is what ALTER, DROP and CREATE OR REPLACE check).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from migrator.ddl import statements as q
from migrator.plan.model import Plan

SCHEMA = "migrator"


@dataclass(frozen=True)
class Needs:
    """Which privileges a command's steps use."""

    own_table: bool = False  # ALTER TABLE (expand, finalize), CREATE INDEX (verify)
    trigger: bool = False  # CREATE TRIGGER (expand)
    write_table: bool = False  # UPDATE of the vector columns (workers, refresh)
    view: bool = False  # CREATE OR REPLACE VIEW (adopt, cutover, rollback)
    own_function: bool = False  # CREATE OR REPLACE FUNCTION of the capture function (cutover)


# command -> needs; "plan" asks for everything the whole migration will need.
ALL = Needs(True, True, True, True, True)
BY_COMMAND: dict[str, Needs] = {
    "plan": ALL,
    "adopt": Needs(view=True),
    "backfill": Needs(own_table=True, trigger=True, write_table=True, view=True),
    "verify": Needs(own_table=True),
    "cutover": Needs(view=True, own_function=True),
    "rollback": Needs(view=True),
    "finalize": Needs(own_table=True),
}


def problems(conn: psycopg.Connection, plan: Plan, needs: Needs) -> list[tuple[str, str]]:
    """(what, what to do) for each privilege the user lacks; [] when all are there."""
    user = str(_one(conn, "SELECT current_user"))
    out: list[tuple[str, str]] = []
    table = q.table_label(plan)
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE'), "
        "has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'UPDATE'), "
        "has_table_privilege(c.oid, 'TRIGGER') FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (plan.table.schema_, plan.table.name),
    ).fetchone()
    if row is not None:  # a missing table is the catalog checks' finding
        owner, owns, select, update, trigger = row
        fix = f"run migrator as {owner} (or a member of it), or GRANT {owner} TO {user}"
        if needs.own_table and not owns:
            out.append(
                (
                    f"{user} does not own {table} (owner {owner}): ALTER TABLE and CREATE "
                    "INDEX need the owner's privileges",
                    fix,
                )
            )
        if not select:
            out.append(
                (f"{user} may not SELECT from {table}", f"GRANT SELECT ON {table} TO {user}")
            )
        if needs.write_table and not update:
            out.append(
                (
                    f"{user} may not UPDATE {table} (workers write the vector columns)",
                    f"GRANT UPDATE ON {table} TO {user}",
                )
            )
        if needs.trigger and not trigger:
            out.append(
                (
                    f"{user} may not create triggers on {table}",
                    f"GRANT TRIGGER ON {table} TO {user}",
                )
            )
    if needs.view:
        out += _view(conn, plan, user)
    out += _own_schema(conn, plan, user, needs)
    return out


def _view(conn: psycopg.Connection, plan: Plan, user: str) -> list[tuple[str, str]]:
    view = q.view_label(plan)
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (plan.view_schema, plan.view.name),
    ).fetchone()
    # A view whose column type changes is dropped and created again: CREATE on its schema too.
    creates = row is None or plan.source.type is not plan.target.type
    out: list[tuple[str, str]] = []
    if row is not None and not row[1]:
        out.append(
            (
                f"{user} does not own the view {view} (owner {row[0]}): CREATE OR REPLACE "
                "VIEW needs the owner's privileges",
                f"run migrator as {row[0]}, or GRANT {row[0]} TO {user}",
            )
        )
    if creates and not _schema_priv(conn, plan.view_schema, "CREATE"):
        out.append(
            (
                f"{user} may not create the view {view} (no CREATE on schema {plan.view_schema})",
                f"GRANT CREATE ON SCHEMA {plan.view_schema} TO {user}",
            )
        )
    return out


def _own_schema(
    conn: psycopg.Connection, plan: Plan, user: str, needs: Needs
) -> list[tuple[str, str]]:
    exists = _one(conn, "SELECT to_regnamespace(%s) IS NOT NULL", (SCHEMA,))
    if not exists:
        if _one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"):
            return []
        return [
            (
                f"{user} may not create migrator's schema {SCHEMA!r} in this database",
                f"GRANT CREATE ON DATABASE <this database> TO {user}, or create the schema "
                f"{SCHEMA} owned by {user}",
            )
        ]
    out: list[tuple[str, str]] = []
    if not (_schema_priv(conn, SCHEMA, "USAGE") and _schema_priv(conn, SCHEMA, "CREATE")):
        out.append(
            (
                f"{user} may not use and create in migrator's schema {SCHEMA!r}",
                f"GRANT USAGE, CREATE ON SCHEMA {SCHEMA} TO {user}",
            )
        )
    if needs.own_function:
        owner = _one(
            conn,
            "SELECT pg_get_userbyid(p.proowner) FROM pg_proc p JOIN pg_namespace n ON n.oid = "
            "p.pronamespace WHERE n.nspname = %s AND p.proname = %s AND NOT pg_has_role("
            "current_user, p.proowner, 'USAGE')",
            (SCHEMA, plan.function_name),
        )
        if owner:
            out.append(
                (
                    f"{user} does not own the change-capture function "
                    f"{SCHEMA}.{plan.function_name} (owner {owner})",
                    f"run migrator as {owner}, or GRANT {owner} TO {user}",
                )
            )
    return out


def _schema_priv(conn: psycopg.Connection, schema: str, privilege: str) -> bool:
    return bool(
        _one(
            conn,
            # CASE, not AND: has_schema_privilege raises on a schema that does not exist.
            "SELECT CASE WHEN to_regnamespace(%s) IS NULL THEN false "
            "ELSE has_schema_privilege(%s, %s) END",
            (schema, schema, privilege),
        )
    )


def _one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]
