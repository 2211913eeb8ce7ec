"""What migrator can learn about the database server's machine: memory, and rows to index.

Read-only. The server's memory comes from its own /proc/meminfo (and cgroup limit) through
pg_read_file, which needs superuser or pg_read_server_files: without it the answer is None
("not known") and callers fall back to the plan's caps. Never raises for a missing privilege.
"""

from __future__ import annotations

import contextlib

import psycopg
from psycopg import sql

from migrator.ddl import statements as q
from migrator.plan.model import Plan


def _read_server_file(conn: psycopg.Connection, path: str) -> str | None:
    """A small file on the server's machine, or None (no privilege, no such file, not Linux)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT pg_read_file(%s, 0, 4096, true)", (path,)).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row and row[0] is not None else None


def parse_meminfo(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            with contextlib.suppress(IndexError, ValueError):
                return int(parts[1]) * 1024
    return None


def server_memory_bytes(conn: psycopg.Connection) -> int | None:
    """The server machine's memory (the lower of MemTotal and a cgroup limit), or None."""
    meminfo = _read_server_file(conn, "/proc/meminfo")
    total = parse_meminfo(meminfo) if meminfo else None
    if total is None:
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_server_file(conn, path)
        if limit and limit.strip().isdigit():
            total = min(total, int(limit.strip()))
    return total


def rows_to_index(conn: psycopg.Connection, plan: Plan) -> int:
    """Rows with a target vector: from fresh statistics (after ANALYZE), else counted."""
    row = conn.execute(
        "SELECT greatest(c.reltuples, 0)::bigint, s.null_frac FROM pg_class c "
        "LEFT JOIN pg_stats s ON s.schemaname = %s AND s.tablename = %s AND s.attname = %s "
        "WHERE c.oid = %s::regclass",
        (
            plan.table.schema_,
            plan.table.name,
            plan.target.column,
            q.table_ident(plan).as_string(None),
        ),
    ).fetchone()
    if row is not None and row[1] is not None and int(row[0]) > 0:
        return round(int(row[0]) * (1.0 - float(row[1])))
    counted = conn.execute(
        sql.SQL("SELECT count({}) FROM {}").format(
            sql.Identifier(plan.target.column), q.table_ident(plan)
        )
    ).fetchone()
    return int(counted[0]) if counted else 0
