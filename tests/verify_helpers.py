"""Test data for `verify`: a 20k-row corpus table whose target column is filled directly.

The backfill is not used here, so verify is tested on its own: steps.expand runs through the
Executor (column + change capture), then HashEmbedder('local-hash-new', 384) vectors of every
row's body are written with a binary COPY and one UPDATE. A session-wide template database
holds the result; each test gets a clone (CREATE DATABASE ... TEMPLATE), which is fast.
"""

from __future__ import annotations

import contextlib
import functools
import sysconfig
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator.db import state
from migrator.db.connect import connect, ensure_schema
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import statements as q
from migrator.ddl import steps
from migrator.demo.corpus import Doc, load_docstrings
from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan
from tests.conftest import with_database
from tests.helpers import demo_plan

ROWS = 20_000
EMPTY_EVERY = 500  # rows 1, 501, ... have blank text: counted apart, never failures


@functools.lru_cache(maxsize=2)
def corpus(n: int) -> tuple[Doc, ...]:
    """n distinct real documents: the stdlib's docstrings (about 15k here), then those of the
    installed packages (the stdlib alone is too small for 20k rows)."""
    docs = list(load_docstrings(limit=n))
    seen = {d.body for d in docs}
    if len(docs) < n:
        for d in load_docstrings(limit=2 * n, stdlib=sysconfig.get_paths()["purelib"]):
            if d.body not in seen:
                seen.add(d.body)
                docs.append(d)
            if len(docs) == n:
                break
    assert len(docs) == n, f"only {len(docs)} documents available"
    return tuple(docs)


def local_plan(**overrides: object) -> Plan:
    """The demo plan with both models in-process (provider local): no HTTP in the loop.
    The ladder is cut to two rungs here to keep these tests short; the full default ladder is
    exercised in test_verify_ladder.py."""
    overrides.setdefault("verify__ladder", [40, 100])
    return demo_plan(source__model__provider="local", target__model__provider="local", **overrides)


def bodies(n: int = ROWS, empty_every: int = EMPTY_EVERY) -> list[str]:
    out = [d.body for d in corpus(n)]
    for i in range(0, n, empty_every):
        out[i] = "   " if i % 2 else ""
    return out


def create_table(url: str, n: int = ROWS, empty_every: int = EMPTY_EVERY) -> None:
    """documents(id, title, body, category, embedding vector(256)) with the old model's vectors."""
    docs, texts = corpus(n), bodies(n, empty_every)
    vecs = HashEmbedder("local-hash-old", 256).encode([t if t.strip() else "x" for t in texts])
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, "
            "category text, embedding vector(256))"
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY documents (id, title, body, category, embedding) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "text", "text", "text", "vector"])
            for i, (d, body) in enumerate(zip(docs, texts, strict=True), start=1):
                copy.write_row(
                    (i, d.title, body, d.key.split(".")[0], vecs[i - 1] if body.strip() else None)
                )
        # Production tables have an index on the source column: verify compares with it.
        conn.execute(
            "CREATE INDEX documents_embedding_idx ON documents USING hnsw "
            "(embedding vector_cosine_ops)"
        )
        conn.execute("ANALYZE documents")


def fill_target(url: str, plan: Plan, n: int = ROWS, empty_every: int = EMPTY_EVERY) -> None:
    """Expand (column + trigger) through the Executor, then write the new model's vectors."""
    with contextlib.closing(connect(url)) as conn:
        Executor(conn).run(steps.expand(plan).forward, LockPolicy())
    texts = bodies(n, empty_every)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    vecs = HashEmbedder("local-hash-new", 384).encode([texts[i] for i in keep])
    with contextlib.closing(connect(url)) as conn, conn.transaction():
        conn.execute(q.mark_writer(plan))  # stands in for the workers: change capture trusts it
        conn.execute("CREATE TEMP TABLE stage (id bigint, v vector(384)) ON COMMIT DROP")
        with conn.cursor() as cur, cur.copy("COPY stage FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for j, i in enumerate(keep):
                copy.write_row((i + 1, vecs[j]))
        conn.execute(
            sql.SQL("UPDATE documents d SET {} = s.v FROM stage s WHERE d.id = s.id").format(
                sql.Identifier(plan.target.column)
            )
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE documents")


def register(url: str, plan: Plan, phase: state.State = state.State.BACKFILLED) -> None:
    ensure_schema(url)
    with contextlib.closing(connect(url)) as conn:
        state.register(conn, plan, phase)
        state.set_phase(conn, plan.name, phase)


# Imported into several test modules, the session fixture is registered once per module:
# this cache makes the later ones reuse the database the first one built.
_TEMPLATES: dict[str, str] = {}


@pytest.fixture(scope="session")
def verify_template(pg_server: str) -> Iterator[str]:
    """Name of a template database: 20k rows, target filled, migrator schema, index built."""
    if pg_server in _TEMPLATES:
        yield _TEMPLATES[pg_server]
        return
    name = _build_template(pg_server)
    _TEMPLATES[pg_server] = name
    yield name
    _TEMPLATES.pop(pg_server, None)
    with psycopg.connect(pg_server, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _build_template(pg_server: str) -> str:
    from migrator.verify.index_build import ensure_index

    name = f"verify_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    plan = local_plan()
    create_table(url)
    ensure_schema(url)
    fill_target(url, plan)
    with contextlib.closing(connect(url)) as conn:
        ensure_index(Executor(conn), url, plan, LockPolicy())
    return name


@pytest.fixture
def verify_db(pg_server: str, verify_template: str) -> Iterator[str]:
    """A fresh clone of the template for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(verify_template)
            )
        )
    yield with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def unit_random(n: int, dims: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def set_vectors(url: str, column: str, ids: list[int], vecs: np.ndarray) -> None:
    """Overwrite vectors as a buggy worker would (marked as migrator's writes, so change
    capture lets them through): what verify must catch."""
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("SELECT set_config(%s, %s, false)", (q.WRITER_SETTING, local_plan().name))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("UPDATE documents SET {} = %s WHERE id = %s").format(
                    sql.Identifier(column)
                ),
                [(v, i) for v, i in zip(vecs, ids, strict=True)],
            )


def column_vectors(url: str, column: str) -> tuple[list[int], np.ndarray]:
    """(ids, matrix) of a column's non-NULL vectors, row by row (independent of verify_data)."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            sql.SQL("SELECT id, {c} FROM documents WHERE {c} IS NOT NULL ORDER BY id").format(
                c=sql.Identifier(column)
            )
        ).fetchall()
    return [int(r[0]) for r in rows], np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)
