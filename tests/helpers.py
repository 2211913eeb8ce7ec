"""Test data: a documents table built from the stdlib docstring corpus, embedded with the old model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator.demo.corpus import Doc, load_corpus
from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan, load_plan, parse_plan

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLAN = ROOT / "plans" / "local-demo.yaml"


def demo_plan(base_url: str | None = None, **overrides: object) -> Plan:
    """The demo plan, pointed at a local embeddings server on `base_url` when given."""
    data = load_plan(DEMO_PLAN).model_dump(mode="json", by_alias=True)
    # Pacing (on by default) slows a backfill whenever search through the view is slower than
    # before it: on a CI machine loaded by other suites it would pause these tests' backfills
    # for reasons of no concern to them. Its own tests turn it on (tests/*/test_pacing.py).
    data["backfill"]["pacing"]["enabled"] = False
    # These tests were written against the column storage (they read `embedding_v2` on the
    # table); the default side_table has its own suites (test_side_table.py, the demo, the
    # CLI and the plan files, which use the plan file as it is). `target__storage` overrides.
    data["target"]["storage"] = "column"
    if base_url:
        data["source"]["model"]["base_url"] = base_url
        data["target"]["model"]["base_url"] = base_url
    for path, value in overrides.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return parse_plan(data)


def create_documents(
    url: str,
    n: int,
    *,
    table: str = "documents",
    model: str = "local-hash-old",
    dims: int = 256,
    empty_every: int = 0,
) -> list[Doc]:
    """Create `table` (id bigint pk, title, body, embedding vector(dims)) with n corpus rows."""
    docs = load_corpus(n)
    bodies = [d.body for d in docs]
    if empty_every:
        for i in range(0, n, empty_every):
            bodies[i] = "   " if i % 2 else ""
    vecs = HashEmbedder(model, dims).encode([b if b.strip() else "x" for b in bodies])
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text, category text, "
                "embedding vector({}))"
            ).format(sql.Identifier(table), sql.Literal(dims))
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY {} (id, title, body, category, embedding) FROM STDIN (FORMAT BINARY)"
                ).format(sql.Identifier(table))
            ) as copy,
        ):
            copy.set_types(["int8", "text", "text", "text", "vector"])
            for i, (d, body) in enumerate(zip(docs, bodies, strict=True), start=1):
                vec = vecs[i - 1] if body.strip() else None
                copy.write_row((i, d.title, body, d.key.split(".")[0], vec))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return docs[:n]


def fetch_vectors(url: str, column: str, table: str = "documents") -> dict[int, np.ndarray | None]:
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            sql.SQL("SELECT id, {} FROM {}").format(sql.Identifier(column), sql.Identifier(table))
        ).fetchall()
    return {int(r[0]): _array(r[1]) for r in rows}


def _array(value: object) -> np.ndarray | None:
    """pgvector's loaders return numpy arrays or Vector objects depending on the version."""
    if value is None:
        return None
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)
