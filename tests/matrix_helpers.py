"""The real-world schema matrix: tables built the way teams build them (filtered and joined
views, security_invoker, GRANT ALL, row-level security, mixed-case names, a second vector
column, views on views), a writer that behaves like an application, and the checks a user
would make after each phase.

Owns test data and checks only; every phase runs through migrator's public API.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator.ddl import statements as q
from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan
from tests.backfill_helpers import random_text

OLD = HashEmbedder("local-hash-old", 256)
NEW = HashEmbedder("local-hash-new", 384)
ATOL = {"vector": 1e-5, "halfvec": 2e-3}


@dataclass
class TableSpec:
    """A user's table: `extra` columns with their SQL type and a value for new rows."""

    schema: str
    name: str
    n: int
    pk: str = "id"
    text: str = "body"
    embedding: str = "embedding"
    extra: dict[str, tuple[str, Callable[[int], Any]]] = field(default_factory=dict)
    partition_by_range: bool = False
    composite_pk: bool = False

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def create_table(conn: psycopg.Connection, t: TableSpec, *, seed: int = 3) -> None:
    """The table with n rows whose old vectors are the old model's vectors of their text."""
    register_vector(conn)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(t.schema)))
    cols = [
        sql.SQL("{} bigint NOT NULL").format(sql.Identifier(t.pk)),
        sql.SQL("title text"),
        sql.SQL("{} text").format(sql.Identifier(t.text)),
        *(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(typ))
            for c, (typ, _) in t.extra.items()
        ),
        sql.SQL("{} vector(256)").format(sql.Identifier(t.embedding)),
    ]
    if t.composite_pk:
        key = sql.SQL("PRIMARY KEY ({}, title)").format(sql.Identifier(t.pk))
    else:
        key = sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(t.pk))
    tail = (
        sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(t.pk))
        if t.partition_by_range
        else sql.SQL("")
    )
    conn.execute(
        sql.SQL("CREATE TABLE {} ({}, {}){}").format(t.ident, sql.SQL(", ").join(cols), key, tail)
    )
    if t.partition_by_range:
        for lo in range(0, t.n + 1000, 1000):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(t.schema, f"{t.name}_p{lo}"),
                    t.ident,
                    sql.Literal(lo),
                    sql.Literal(lo + 1000),
                )
            )
    rng = random.Random(seed)
    texts = [random_text(rng) for _ in range(t.n)]
    vecs = OLD.encode(texts)
    names = [t.pk, "title", t.text, *t.extra, t.embedding]
    with (
        conn.cursor() as cur,
        cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                t.ident, sql.SQL(", ").join(sql.Identifier(c) for c in names)
            )
        ) as copy,
    ):
        for i, (text, vec) in enumerate(zip(texts, vecs, strict=True), start=1):
            copy.write_row([i, f"doc {i}", text, *(make(i) for _, make in t.extra.values()), vec])
    conn.execute(sql.SQL("ANALYZE {}").format(t.ident))


def source_index(conn: psycopg.Connection, t: TableSpec) -> str:
    name = f"{t.name}_{t.embedding}_hnsw_idx"
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} vector_cosine_ops)").format(
            sql.Identifier(name), t.ident, sql.Identifier(t.embedding)
        )
    )
    return name


@dataclass
class WriteLog:
    inserted: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    updated: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


class AppWriter:
    """Inserts, text updates and deletes like an application: each write also stores the old
    model's vector of the new text (the app's own write path before the migration)."""

    def __init__(
        self, url: str, t: TableSpec, *, seed: int = 5, pause: float = 0.01, ops: int = 120
    ) -> None:
        # A bounded number of writes: the backfill's catch-up must reach "complete".
        self.url, self.t, self.pause, self.ops = url, t, pause, ops
        self.rng = random.Random(seed)
        self.log = WriteLog()
        self.next_id = t.n + 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="app-writer")

    def __enter__(self) -> AppWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            register_vector(conn)
            for _ in range(self.ops):
                if self._stop.is_set():
                    break
                try:
                    self.step(conn)
                except psycopg.Error as exc:  # counted: the test asserts there are none
                    self.log.errors.append(str(exc).splitlines()[0])
                time.sleep(self.pause)

    def step(self, conn: psycopg.Connection) -> None:
        t, op = self.t, self.rng.random()
        text = random_text(self.rng)
        vec = OLD.encode([text])[0]
        pk = self.rng.randint(1, t.n)
        if op < 0.35:
            names = ["title", t.text, *t.extra, t.embedding]
            values = [f"new {self.next_id}", text]
            values += [make(self.next_id) for _, make in t.extra.values()] + [vec]
            conn.execute(
                sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, {})").format(
                    t.ident,
                    sql.Identifier(t.pk),
                    sql.SQL(", ").join(sql.Identifier(c) for c in names),
                    sql.SQL(", ").join(sql.Placeholder() * len(names)),
                ),
                [self.next_id, *values],
            )
            self.log.inserted.add(self.next_id)
            self.next_id += 1
        elif op < 0.85 and pk not in self.log.deleted:
            conn.execute(
                sql.SQL("UPDATE {} SET {} = %s, {} = %s WHERE {} = %s").format(
                    t.ident,
                    sql.Identifier(t.text),
                    sql.Identifier(t.embedding),
                    sql.Identifier(t.pk),
                ),
                (text, vec, pk),
            )
            self.log.updated.add(pk)
        elif pk not in self.log.deleted:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} = %s").format(t.ident, sql.Identifier(t.pk)),
                (pk,),
            )
            self.log.deleted.add(pk)


def assert_new_vectors_fresh(url: str, plan: Plan) -> int:
    """Every row with text holds exactly the new model's vector of its current text."""
    tgt = plan.target
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            sql.SQL("SELECT {}, {}, {} FROM {}").format(
                sql.Identifier(plan.table.primary_key),
                q.text_expr(plan),
                sql.Identifier(tgt.column),
                q.table_ident(plan),
            )
        ).fetchall()
    ids = [r[0] for r in rows if r[1] and r[1].strip()]
    want = NEW.encode([r[1] for r in rows if r[1] and r[1].strip()])
    got = {r[0]: r[2] for r in rows}
    wrong = []
    for pk, w in zip(ids, want, strict=True):
        v = got[pk]
        arr = None if v is None else _array(v)
        if arr is None or not np.allclose(arr, w, atol=ATOL[tgt.type.value]):
            wrong.append(pk)
    assert not wrong, f"{len(wrong)} rows hold no or a wrong new vector, e.g. {wrong[:5]}"
    return len(ids)


def _array(v: Any) -> np.ndarray:
    """pgvector's loaders return numpy arrays, Vector or HalfVector objects by version."""
    to_numpy = getattr(v, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else v, dtype=np.float32)


def view_acl(url: str, schema: str, name: str) -> dict[str, Any]:
    """Owner, ACL (relation and columns), options and comment of a view."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(c.relowner), c.relacl::text[], c.reloptions, "
            "obj_description(c.oid, 'pg_class'), (SELECT array_agg(a.attname || '=' || "
            "a.attacl::text ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid "
            "AND a.attacl IS NOT NULL) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
    assert row is not None, f"view {schema}.{name} is gone"
    return dict(zip(("owner", "acl", "options", "comment", "column_acl"), row, strict=True))


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Callable[[], bool]]:
    """A should_stop callback for backfill.run: a bug must fail the test, not hang it."""
    end = time.monotonic() + seconds
    yield lambda: time.monotonic() > end


class SearchLoad:
    """Searches through a plan's view with the real SearchClient on a thread, at a steady
    pace, from adopt to finalize: every failed query and every row from another model than
    the query's is counted (in-process: a Drill's spawned process costs seconds per case)."""

    def __init__(self, url: str, plan: Plan, environ: dict[str, str], *, pause: float = 0.05):
        from migrator.search.client import SearchClient

        with psycopg.connect(url) as conn:
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE {} LIMIT 50").format(
                    q.text_expr(plan), q.table_ident(plan), q.eligible_predicate(plan)
                )
            ).fetchall()
        self.queries = [" ".join(r[0].split()[:8]) for r in rows]
        self.client = SearchClient(
            url, view=f"{plan.view_schema}.{plan.view.name}", environ=environ, pool_size=1
        )
        self.pause = pause
        self.done = self.failed = self.mixed = self.hits = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="search-load")

    def __enter__(self) -> SearchLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()

    def _run(self) -> None:
        rng = random.Random(1)
        while not self._stop.is_set():
            try:
                res = self.client.search(rng.choice(self.queries), 5)
                self.mixed += res.mixed
                self.hits += bool(res.hits)
            except Exception as exc:  # a failed query is the measurement
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            self.done += 1
            time.sleep(self.pause)
