"""A migrated state for the switch and search tests, built without the backfill and verify code.

documents + an HNSW index on the source column, adopt, expand, the target column filled with
the target model's vectors, its index built, a passing report recorded, phase VERIFIED.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator import api
from migrator.config import Settings
from migrator.db import state
from migrator.db.catalog import live_facts
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import statements as q
from migrator.ddl import steps
from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan
from migrator.verify import gate
from tests.helpers import create_documents, demo_plan


def switch_plan(base_url: str | None = None, **overrides: Any) -> Plan:
    """The demo plan; with no embeddings server, both models run in-process ("local")."""
    if base_url is None:
        overrides.setdefault("source__model__provider", "local")
        overrides.setdefault("target__model__provider", "local")
    return demo_plan(base_url, **overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan_file(plan: Plan, directory: Path) -> str:
    """The plan as a YAML file, for the CLI."""
    path = directory / f"{plan.name}.yaml"
    path.write_text(yaml.safe_dump(plan.canonical(), sort_keys=False))
    return str(path)


def source_index(plan: Plan) -> str:
    return f"{plan.table.name}_{plan.source.column}_hnsw_idx"


def migrated_state(
    settings: Settings,
    plan: Plan,
    n: int = 2000,
    *,
    before_adopt: Callable[[psycopg.Connection], None] | None = None,
) -> None:
    """Bring a fresh database to VERIFIED for `plan` (documents table created here)."""
    url = settings.database_url
    assert url
    src = plan.source
    create_documents(url, n, model=src.model.name, dims=src.model.dimensions)
    with contextlib.closing(connect(url)) as conn:
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {})").format(
                sql.Identifier(source_index(plan)),
                q.table_ident(plan),
                sql.Identifier(src.column),
                sql.SQL(plan.index.metric.opclass(src.type)),
            )
        )
        if before_adopt is not None:
            before_adopt(conn)
    api.adopt(settings, plan)
    with contextlib.closing(connect(url)) as conn:
        facts = live_facts(conn, plan)
        Executor(conn).run(steps.expand(plan, facts).forward, LockPolicy())
        fill_target(conn, plan)
        Executor(conn).run(steps.index(plan, facts).forward, LockPolicy())
        mark_verified(conn, plan, n)


def fill_target(conn: psycopg.Connection, plan: Plan) -> None:
    """Embed every body with the target model and write it with COPY + UPDATE."""
    register_vector(conn)
    tgt = plan.target
    rows = conn.execute(
        sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(q.text_expr(plan), q.table_ident(plan))
    ).fetchall()
    vecs = HashEmbedder(tgt.model.name, tgt.model.dimensions).encode(
        [r[1] if r[1] and r[1].strip() else "x" for r in rows]
    )
    with conn.transaction():
        conn.execute(q.mark_writer(plan))  # stands in for the workers: change capture trusts it
        conn.execute("CREATE TEMP TABLE fill_stage (id bigint, v vector) ON COMMIT DROP")
        with (
            conn.cursor() as cur,
            cur.copy("COPY fill_stage (id, v) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "vector"])
            for (pk, text), vec in zip(rows, vecs, strict=True):
                if text and text.strip():
                    copy.write_row((pk, vec))
        conn.execute(
            sql.SQL("UPDATE {} AS t SET {} = s.v::{} FROM fill_stage s WHERE t.id = s.id").format(
                q.table_ident(plan),
                sql.Identifier(tgt.column),
                q.column_type(tgt.type, tgt.model.dimensions),
            )
        )
    conn.execute(sql.SQL("ANALYZE {}").format(q.table_ident(plan)))


def mark_verified(conn: psycopg.Connection, plan: Plan, rows: int) -> int:
    """Record a passing report (watermark = now) and set the phase to VERIFIED."""
    mark = gate.changes_watermark(conn, plan.name)
    rid = gate.record_report(
        conn, plan, passed=True, report={"by": "switch_helpers"}, rows=rows, watermark=mark
    )
    state.set_phase(conn, plan.name, state.State.VERIFIED)
    return rid


def view_catalog(url: str, plan: Plan) -> dict[str, Any]:
    """Everything about the view a rollback must restore exactly, straight from pg_class."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT c.reloptions, c.relowner::regrole::text, c.relacl::text[], "
            "pg_get_viewdef(c.oid, true), "
            "(SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) "
            " FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), "
            "(SELECT array_agg(a.attname || '=' || a.attacl::text ORDER BY a.attnum) "
            " FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
            " AND a.attacl IS NOT NULL), obj_description(c.oid, 'pg_class') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (plan.view_schema, plan.view.name),
        ).fetchone()
    assert row is not None, "the view does not exist"
    return {
        "reloptions": row[0],
        "owner": row[1],
        "acl": row[2],
        "definition": row[3],
        "column_types": row[4],
        "column_acl": row[5],
        "comment": row[6],
    }


def explain_view(
    url: str,
    plan: Plan,
    vector: Any,
    fingerprint: str,
    vtype: str = "vector",
    *,
    seqscan: bool = True,
) -> str:
    """EXPLAIN of the guarded search through the view, with the plan's ef_search.

    `seqscan=False` asks whether an index *can* serve it: on a small table the planner
    rightly prefers a scan and a sort, with or without migrator."""
    vt = sql.SQL("halfvec" if vtype == "halfvec" else "vector")
    with psycopg.connect(url) as conn:
        register_vector(conn)
        if not seqscan:
            conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(plan.index.ef_search),))
        rows = conn.execute(
            sql.SQL(
                "EXPLAIN SELECT id FROM {v} WHERE embedding_model = %(fp)s "
                "ORDER BY embedding <=> %(q)s::{vt} LIMIT 10"
            ).format(v=q.view_ident(plan), vt=vt),
            {"fp": fingerprint, "q": vector},
        ).fetchall()
    return "\n".join(r[0] for r in rows)
