"""Paired vectors of backfilled rows (old and new column both set), read in bounded chunks.

Read-only: one server-side cursor in a READ ONLY transaction, `chunk` rows at a time, so memory
stays bounded whatever the sample size. Rows are taken in md5(seed || key) order: a seeded,
reproducible sample; one in `holdout_every` (by another hash of the key) is held out.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator.ddl import statements as q
from migrator.plan.model import Plan

F32 = npt.NDArray[np.float32]


def paired_count(conn: psycopg.Connection, plan: Plan) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL AND {} IS NOT NULL").format(
            q.vectors_from(plan, (plan.source.column, plan.target.column)),
            sql.Identifier(plan.source.column),
            sql.Identifier(plan.target.column),
        )
    ).fetchone()
    return int(row[0]) if row else 0


def _query(plan: Plan) -> sql.Composed:
    pk = sql.Identifier(plan.table.primary_key)
    return sql.SQL(
        "SELECT {pk}::text, {tgt}::vector, {src}::vector, "
        "(get_byte(decode(md5('holdout:' || %(seed)s || {pk}::text), 'hex'), 0) "
        "%% %(every)s) = 0 FROM {tbl} WHERE {src} IS NOT NULL AND {tgt} IS NOT NULL AND {ok} "
        "ORDER BY md5(%(seed)s || ':' || {pk}::text), {pk} LIMIT %(n)s"
    ).format(
        pk=pk,
        tgt=sql.Identifier(plan.target.column),
        src=sql.Identifier(plan.source.column),
        tbl=q.vectors_from(plan, (plan.source.column, plan.target.column)),
        ok=q.eligible_predicate(plan),
    )


def paired_chunks(
    conn: psycopg.Connection,
    plan: Plan,
    *,
    rows: int,
    seed: int,
    holdout_every: int = 5,
    chunk: int = 2000,
    keys: list[str] | None = None,
) -> Iterator[tuple[F32, F32, npt.NDArray[np.bool_]]]:
    """(new vectors, old vectors, is_holdout) chunks of at most `chunk` rows; appends the
    held-out rows' keys to `keys` when given (for the texts of documents-as-queries)."""
    register_vector(conn)
    dims_new, dims_old = plan.target.model.dimensions, plan.source.model.dimensions
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with conn.cursor(name="migrator_bridge_sample", binary=True) as cur:
            cur.itersize = chunk
            cur.execute(_query(plan), {"seed": str(seed), "every": holdout_every, "n": rows})
            while batch := cur.fetchmany(chunk):
                x = np.empty((len(batch), dims_new), dtype=np.float32)
                y = np.empty((len(batch), dims_old), dtype=np.float32)
                hold = np.empty(len(batch), dtype=bool)
                for i, (pk, new, old, h) in enumerate(batch):
                    x[i] = _array(new)
                    y[i] = _array(old)
                    hold[i] = bool(h)
                    if h and keys is not None:
                        keys.append(str(pk))
                yield x, y, hold


def _array(value: object) -> F32:
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)
