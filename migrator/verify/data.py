"""Reading what `verify` measures: a vector column streamed in chunks (or, for the memory
benchmark's baseline, at once), seeded row samples, query embeddings.

Read-only: SELECT and COPY TO only, each in a short transaction so no snapshot is held while
an index builds. Vectors travel as binary COPY parsed by numpy (about 3x faster than a row
per Python object); they never leave the process.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.db.executor import backoff
from migrator.ddl import statements as q
from migrator.embedding import Provider, RetryableError, embed_texts
from migrator.errors import ConfigError
from migrator.plan.model import ModelSpec, Plan
from migrator.verify.metrics import F32, derive_query

_COPY_HEADER = 19  # "PGCOPY\n\377\r\n\0" + flags + header extension length
_COPY_TRAILER = 2  # int16 -1


@dataclass(frozen=True)
class Column:
    """Every non-NULL vector of one column, with its row's key (as text) in the same order."""

    name: str
    ids: tuple[str, ...]
    matrix: F32

    def position(self) -> dict[str, int]:
        return {pk: i for i, pk in enumerate(self.ids)}


def load_column(conn: psycopg.Connection, plan: Plan, column: str, dims: int) -> Column:
    """Keys and vectors of `column` (halfvec read as vector), in primary-key order, one snapshot.
    The whole column in memory: verify streams instead (scan_column); kept as the baseline
    of bench/verify_memory.py."""
    tbl, col = q.vectors_from(plan, column), sql.Identifier(column)
    pk = sql.Identifier(plan.table.primary_key)
    where = sql.SQL("WHERE {col} IS NOT NULL ORDER BY {pk}").format(col=col, pk=pk)
    # Two statements in one REPEATABLE READ transaction see the same rows in the same order:
    # the keys as text (any key type), then the vectors as fixed-width binary records.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # Aliased: an output column named like the key would capture ORDER BY (text order).
        keys = sql.SQL("SELECT {pk}::text AS k FROM {tbl} {w}").format(pk=pk, tbl=tbl, w=where)
        ids = tuple(r[0] for r in conn.execute(keys).fetchall())
        chunks: list[bytes] = []
        copy_sql = sql.SQL("COPY (SELECT {col}::vector FROM {tbl} {w}) TO STDOUT (FORMAT BINARY)")
        with conn.cursor() as cur, cur.copy(copy_sql.format(col=col, tbl=tbl, w=where)) as cp:
            while data := cp.read():
                chunks.append(bytes(data))
    buf = b"".join(chunks)
    record = np.dtype(
        [
            ("fields", ">i2"),
            ("length", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("v", ">f4", (dims,)),
        ]
    )
    n = (len(buf) - _COPY_HEADER - _COPY_TRAILER) // record.itemsize if buf else 0
    if n != len(ids):
        raise RuntimeError(
            f"read {n} vectors of {dims} dimensions for {len(ids)} keys in "
            f"{column}: the column holds vectors of another dimension"
        )
    arr = np.frombuffer(buf, dtype=record, offset=_COPY_HEADER, count=n)
    if n and (arr["dim"] != dims).any():
        raise RuntimeError(f"{column} holds vectors of another dimension than {dims}")
    return Column(column, ids, arr["v"].astype(np.float32))


Visit = Callable[[int, F32], None]


def _record_dtype(dims: int) -> np.dtype[Any]:
    return np.dtype(
        [
            ("fields", ">i2"),
            ("length", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("v", ">f4", (dims,)),
        ]
    )


def scan_column(
    conn: psycopg.Connection,
    plan: Plan,
    column: str,
    dims: int,
    visitors: Sequence[Visit],
    want: Callable[[], Collection[int]],
    *,
    chunk_rows: int = 16_384,
) -> tuple[int, dict[int, str]]:
    """Stream the non-NULL vectors of `column` in primary-key order, `chunk_rows` at a time,
    to every visitor as (position of the chunk's first row, float32 matrix); then look up the
    keys of the positions `want()` names. Memory: one chunk, whatever the table's size.

    Returns (rows read, {position: key as text}). One REPEATABLE READ snapshot for both reads.
    """
    tbl, col = q.vectors_from(plan, column), sql.Identifier(column)
    pk = sql.Identifier(plan.table.primary_key)
    where = sql.SQL("WHERE {col} IS NOT NULL").format(col=col)
    record = _record_dtype(dims)
    size = record.itemsize
    copy_sql = sql.SQL(
        "COPY (SELECT {col}::vector FROM {tbl} {w} ORDER BY {pk}) TO STDOUT (FORMAT BINARY)"
    ).format(col=col, tbl=tbl, w=where, pk=pk)
    rows = 0
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        buf = bytearray()
        header = True
        with conn.cursor() as cur, cur.copy(copy_sql) as cp:
            while data := cp.read():
                buf += data
                if header and len(buf) >= _COPY_HEADER:
                    del buf[:_COPY_HEADER]
                    header = False
                if not header and len(buf) >= chunk_rows * size:
                    rows += _emit(buf, chunk_rows, record, dims, column, rows, visitors)
        if header:  # nothing at all came back (cannot happen with COPY BINARY, kept safe)
            buf.clear()
        tail = len(buf) - _COPY_TRAILER
        if tail % size:
            raise RuntimeError(
                f"{column} holds vectors of another dimension than {dims} "
                "(the binary records do not divide evenly)"
            )
        if tail > 0:
            rows += _emit(buf, tail // size, record, dims, column, rows, visitors)
        positions = sorted(want())
        keys: dict[int, str] = {}
        if positions:
            # Positions count rows in key order from 0, in this same snapshot.
            lookup = sql.SQL(
                "SELECT rn - 1, k FROM (SELECT {pk}::text AS k, row_number() OVER "
                "(ORDER BY {pk}) AS rn FROM {tbl} {w}) s WHERE rn - 1 = ANY(%s)"
            ).format(pk=pk, tbl=tbl, w=where)
            keys = {int(r[0]): str(r[1]) for r in conn.execute(lookup, (positions,))}
    return rows, keys


def _emit(
    buf: bytearray,
    n: int,
    record: np.dtype[Any],
    dims: int,
    column: str,
    offset: int,
    visitors: Sequence[Visit],
) -> int:
    # A view of the buffer (no copy); released before the buffer is shortened.
    arr = np.frombuffer(buf, dtype=record, count=n)
    wrong = bool((arr["fields"] != 1).any() or (arr["dim"] != dims).any())
    matrix = arr["v"].astype(np.float32)  # native byte order, its own memory
    del arr
    del buf[: n * record.itemsize]
    if wrong:
        raise RuntimeError(f"{column} holds vectors of another dimension than {dims}")
    for visit in visitors:
        visit(offset, matrix)
    return n


def sample_rows(
    conn: psycopg.Connection,
    plan: Plan,
    n: int,
    seed: int,
    salt: str,
    *,
    require: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """A seeded, reproducible sample of eligible rows as (key, text): the same seed and data
    give the same rows whatever their physical order. `require`: columns that must be non-NULL."""
    conds = [q.eligible_predicate(plan)]
    conds += [sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in require]
    side = [c for c in require if q.in_side(plan, c)]
    query = sql.SQL(
        "SELECT {pk}::text AS k, {text} AS t FROM {tbl} WHERE {cond} "
        "ORDER BY md5(%(salt)s || {pk}::text), {pk} LIMIT %(n)s"
    ).format(
        pk=sql.Identifier(plan.table.primary_key),
        text=q.text_expr(plan),
        tbl=q.vectors_from(plan, tuple(side)) if side else q.table_ident(plan),
        cond=sql.SQL(" AND ").join(conds),
    )
    rows = conn.execute(query, {"salt": f"{seed}:{salt}:", "n": n}).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def sample_with_vectors(
    conn: psycopg.Connection, plan: Plan, column: str, n: int, seed: int
) -> tuple[list[str], list[str], F32]:
    """Seeded sample of rows holding a vector in `column`: keys, current texts, stored vectors."""
    rows = sample_rows(conn, plan, n, seed, f"fresh:{column}", require=(column,))
    ids = [r[0] for r in rows]
    if not ids:
        return [], [], np.zeros((0, 0), dtype=np.float32)
    text = "SELECT {pk}::text, {col}::vector FROM {tbl} WHERE {pk}::text = ANY(%s)"
    query = sql.SQL(text).format(
        pk=sql.Identifier(plan.table.primary_key),
        col=sql.Identifier(column),
        tbl=q.vectors_from(plan, column),
    )
    with conn.cursor(binary=True) as cur:
        got = {r[0]: r[1] for r in cur.execute(query, (ids,)).fetchall() if r[1] is not None}
    keep = [i for i, pk in enumerate(ids) if pk in got]  # a row may have changed since sampling
    vecs = (
        np.stack([np.asarray(got[ids[i]].to_numpy(), dtype=np.float32) for i in keep])
        if keep
        else np.zeros((0, 0), dtype=np.float32)
    )
    return [ids[i] for i in keep], [rows[i][1] for i in keep], vecs


def queries_for(texts: Sequence[str], seed: int, mode: str) -> list[str]:
    """Queries from row texts: "span" draws 8-15 consecutive words, "text" uses the whole text."""
    if mode == "text":
        return list(texts)
    if mode != "span":
        raise ValueError(f"unknown query mode {mode!r}")
    rng = random.Random(seed)
    return [derive_query(t, rng) for t in texts]


def embed_all(
    provider: Provider,
    spec: ModelSpec,
    texts: Sequence[str],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[F32, list[int]]:
    """Embed texts as the backfill does (same truncation). Returns one row per text (zeros for
    the texts that did not embed: blank, refused, bad vector) and the positions of those.
    A rate limit or server hiccup is retried a few times (honouring Retry-After), since a few
    hundred queries should not fail the whole verification."""
    for attempt in range(1, attempts + 1):
        try:
            out = embed_texts(
                provider,
                list(texts),
                overlong=spec.overlong,
                forbid_zero=True,
                normalize=spec.normalize,
                concurrency=4,
            )
            break
        except RetryableError as exc:
            if attempt == attempts:
                raise
            sleep(min(30.0, exc.retry_after or backoff(attempt, 0.5, 8.0)))
    mat = np.zeros((len(texts), spec.dimensions), dtype=np.float32)
    for i, vec in out.vectors.items():
        mat[i] = vec
    return mat, [i for i in range(len(texts)) if i not in out.vectors]


def row_labels(
    conn: psycopg.Connection, plan: Plan, keys: Sequence[str], chars: int
) -> dict[str, str]:
    """The first `chars` characters of each row's embedded text (for the examples section)."""
    if not keys:
        return {}
    query = sql.SQL(
        "SELECT {pk}::text, left(regexp_replace({text}, '\\s+', ' ', 'g'), %s) FROM {tbl} "
        "WHERE {pk}::text = ANY(%s)"
    ).format(
        pk=sql.Identifier(plan.table.primary_key), text=q.text_expr(plan), tbl=q.table_ident(plan)
    )
    return {str(r[0]): str(r[1] or "") for r in conn.execute(query, (chars, list(keys)))}


def queries_from_column(conn: psycopg.Connection, spec: str, n: int) -> list[str]:
    """Up to n distinct non-blank values of `[schema.]table.column` (a query log), sampled
    reproducibly (by md5 of the text)."""
    parts = spec.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(
            f"queries column {spec!r}: expected [schema.]table.column",
            hint="e.g. --queries-column public.search_log.query",
        )
    *rel, col = parts
    query = sql.SQL(
        "SELECT q FROM (SELECT DISTINCT btrim({c}::text) AS q FROM {t} WHERE "
        "btrim(coalesce({c}::text, '')) <> '') s ORDER BY md5(q), q LIMIT %s"
    ).format(c=sql.Identifier(col), t=sql.Identifier(*rel))
    try:
        with conn.transaction():
            return [str(r[0]) for r in conn.execute(query, (n,))]
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise ConfigError(
            f"queries column {spec}: {exc.diag.message_primary}",
            hint="name an existing [schema.]table.column",
        ) from None
