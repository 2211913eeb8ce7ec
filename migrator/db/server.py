"""What migrator can learn about the database server: memory, disk room, table sizes, rows.

Read-only. The server's memory comes from its own /proc/meminfo (and cgroup limit) through
pg_read_file, which needs superuser or pg_read_server_files: without it the answer is None
("not known") and callers fall back to the plan's caps. Never raises for a missing privilege.
"""

from __future__ import annotations

import contextlib
import os

import psycopg
from psycopg import sql

from migrator.ddl import statements as q
from migrator.plan.estimate import IndexSize, TableStorage
from migrator.plan.index_memory import parse_size
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


def rows_to_index(conn: psycopg.Connection, plan: Plan, *, fresh_stats: bool = True) -> int:
    """Rows with a target vector: from statistics just refreshed by ANALYZE, else counted
    (statistics from before the backfill would say the column is empty). Storage side_table:
    the side table's rows."""
    name, ident = (
        (plan.side_table, q.side_ident(plan))
        if plan.side
        else (plan.table.name, q.table_ident(plan))
    )
    row = (
        None
        if not fresh_stats
        else conn.execute(
            "SELECT greatest(c.reltuples, 0)::bigint, s.null_frac FROM pg_class c "
            "LEFT JOIN pg_stats s ON s.schemaname = %s AND s.tablename = %s AND s.attname = %s "
            "WHERE c.oid = %s::regclass",
            (plan.table.schema_, name, plan.target.column, ident.as_string(None)),
        ).fetchone()
    )
    if row is not None and row[1] is not None and int(row[0]) > 0:
        return round(int(row[0]) * (1.0 - float(row[1])))
    counted = conn.execute(
        sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(plan.target.column), ident)
    ).fetchone()
    return int(counted[0]) if counted else 0


def _local_host(conn: psycopg.Connection) -> bool:
    host = conn.info.host or ""
    return host.startswith("/") or host in ("localhost", "127.0.0.1", "::1", "")


def free_disk_bytes(conn: psycopg.Connection) -> tuple[int | None, str]:
    """Free bytes on the server's data directory when it is on this machine, else None.

    `SHOW data_directory` needs superuser or pg_read_all_settings; the directory must be
    visible here (the embedded database, or a server on localhost). A remote server's disk
    cannot be measured from SQL: declare backfill.max_database_size instead.
    """
    if not _local_host(conn):
        return None, "the server is not on this machine"
    try:
        with conn.transaction():
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return None, "data_directory is not readable (needs pg_read_all_settings)"
    path = str(row[0]) if row else ""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, f"data directory {path} is not visible from here"
    return st.f_bavail * st.f_frsize, f"free space on {path}"


def table_storage(conn: psycopg.Connection, plan: Plan) -> TableStorage:
    """Sizes of the plan's table and its indexes, the database's size and the room left."""
    table = q.table_ident(plan).as_string(None)
    row = conn.execute(
        "SELECT greatest(c.reltuples, 0)::bigint, pg_relation_size(c.oid), "
        "coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), "
        "pg_database_size(current_database()) FROM pg_class c WHERE c.oid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    rows, heap, toast, db_bytes = (int(v) for v in row)
    if rows == 0 and heap > 0:
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(q.table_ident(plan)))
        rows = int((counted.fetchone() or (0,))[0])
    indexes = tuple(
        IndexSize(str(name), str(am), int(size), int(dims or 0), int(efc or 64))
        for name, am, size, dims, efc in conn.execute(
            "SELECT i.relname, am.amname, pg_relation_size(i.oid), "
            "  (SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = x.indrelid "
            "   AND a.attnum = x.indkey[0] AND am.amname IN ('hnsw', 'ivfflat')), "
            "  (SELECT substring(o FROM 'ef_construction=([0-9]+)')::int "
            "   FROM unnest(i.reloptions) o WHERE o LIKE 'ef_construction=%%') "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_am am ON am.oid = i.relam WHERE x.indrelid = %s::regclass",
            (table,),
        ).fetchall()
    )
    limit = plan.backfill.max_database_size
    if limit is not None:
        room: int | None = parse_size(limit) - db_bytes
        source = f"backfill.max_database_size {limit}"
    else:
        room, source = free_disk_bytes(conn)
    return TableStorage(rows, heap, toast, indexes, db_bytes, room, source)


def rows_left_to_fill(conn: psycopg.Connection, plan: Plan, rows: int, exists: bool) -> int:
    """Rows still without a target vector: all of them before expand, else from statistics."""
    if not exists:
        return rows
    if plan.side:
        got = conn.execute(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
            (q.side_ident(plan).as_string(None),),
        ).fetchone()
        return max(0, rows - int(got[0])) if got else rows
    row = conn.execute(
        "SELECT null_frac FROM pg_stats WHERE schemaname = %s AND tablename = %s AND attname = %s",
        (plan.table.schema_, plan.table.name, plan.target.column),
    ).fetchone()
    return rows if row is None or row[0] is None else round(rows * float(row[0]))
