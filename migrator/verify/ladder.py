"""The recall/latency ladder: one index (the production one on the source column, or the new
one) measured on the sampled queries at several ef_search (HNSW) or probes (IVFFlat) values.

Read-only. Every setting runs in its own transaction with the plan's search settings SET LOCAL
and the one being climbed overridden; the query is the service's shape (ORDER BY distance
LIMIT k), EXPLAIN confirms the index serves it, and each query's latency is the database's own
"Execution Time" from EXPLAIN (ANALYZE, TIMING OFF), so client round trips do not count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.ddl import statements as q
from migrator.plan.model import IndexMethod, Plan, VectorType
from migrator.verify.metrics import F32, ann_recall_with_ties

HNSW_LADDER = (40, 64, 100, 200, 400)
IVFFLAT_LADDER = (1, 5, 10, 20, 50)
# A sequential scan is exact: its latency is measured on this many queries only.
EXACT_LATENCY_QUERIES = 50

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Subject:
    """What is measured: `index` on `column` (None: no usable index, the scan is exact)."""

    role: str  # "production" | "new"
    column: str
    vtype: VectorType
    index: str | None
    method: IndexMethod | None

    @property
    def setting(self) -> str | None:
        if self.method is IndexMethod.HNSW:
            return "hnsw.ef_search"
        if self.method is IndexMethod.IVFFLAT:
            return "ivfflat.probes"
        return None


@dataclass(frozen=True)
class Point:
    value: int | None  # ef_search or probes; None for an exact scan
    recall: float
    p50_ms: float
    p99_ms: float
    index_used: bool
    short_results: int
    # Whether the planner picks the index by itself (measured with sequential scans allowed):
    # False on a table small enough that an exact scan costs less; the recall above is the
    # index's either way (measured with enable_seqscan off).
    planner_chooses: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "recall": self.recall,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "index_used": self.index_used,
            "short_results": self.short_results,
            "planner_chooses": self.planner_chooses,
        }


@dataclass(frozen=True)
class Measure:
    subject: Subject
    current: int | None  # the value the service uses today
    points: tuple[Point, ...]
    queries: int

    def at(self, value: int | None) -> Point | None:
        return next((p for p in self.points if p.value == value), None)

    @property
    def today(self) -> Point | None:
        return self.at(self.current)


def ladder_values(plan: Plan, method: IndexMethod, current: int) -> tuple[int, ...]:
    """The plan's ladder (or the method's default) plus the current value, ascending; values
    an index cannot take (ef_search > 1000, probes > lists) are left out."""
    base = plan.verify.ladder or (HNSW_LADDER if method is IndexMethod.HNSW else IVFFLAT_LADDER)
    cap = 1000 if method is IndexMethod.HNSW else (plan.index.lists or 32768)
    return tuple(sorted({v for v in (*base, current) if 1 <= v <= cap}))


def current_value(plan: Plan, method: IndexMethod | None) -> int | None:
    if method is IndexMethod.HNSW:
        return plan.index.ef_search
    if method is IndexMethod.IVFFLAT:
        return plan.index.probes
    return None


def _query(plan: Plan, s: Subject) -> sql.Composed:
    text = (
        "SELECT {pk}::text, {col} {op} %(q)s::{vt} FROM {tbl} "
        "ORDER BY {col} {op} %(q)s::{vt} LIMIT %(k)s"
    )
    return sql.SQL(text).format(
        pk=sql.Identifier(plan.table.primary_key),
        # Storage side_table: the side table itself, which holds the index.
        tbl=q.side_ident(plan, s.column) if q.in_side(plan, s.column) else q.table_ident(plan),
        col=sql.Identifier(s.column),
        op=sql.SQL(plan.index.metric.operator),
        vt=sql.SQL(s.vtype.value),
    )


def _explain(
    conn: psycopg.Connection, stmt: sql.Composed, params: dict[str, Any], *, analyze: bool = True
) -> Any:
    what = "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " if analyze else "EXPLAIN (FORMAT JSON) "
    row = conn.execute(sql.SQL(what) + stmt, params).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return doc[0]


def measure(
    conn: psycopg.Connection,
    plan: Plan,
    subject: Subject,
    queries: F32,
    kth_exact: Sequence[float],
    k: int,
    *,
    progress: Progress | None = None,
    step: tuple[int, int] = (0, 0),
) -> Measure:
    """Recall@k (ties counted as hits, exact k-th distance given) and database latency of
    `subject` at each ladder value (one exact point when it has no index)."""
    say = progress or (lambda _m: None)
    stmt = _query(plan, subject)
    base = plan.index.search_settings()
    current = current_value(plan, subject.method)
    values: tuple[int | None, ...]
    if subject.method is None:
        values = (None,)
    else:
        assert current is not None
        values = ladder_values(plan, subject.method, current)
    done, total = step
    points = []
    for value in values:
        done += 1
        label = f"{subject.setting} {value}" if value is not None else "exact scan"
        say(f"index ladder: {subject.role} index, {label} ({done}/{total or len(values)})")
        points.append(_point(conn, stmt, subject, base, value, queries, kth_exact, k))
    return Measure(subject, current, tuple(points), len(queries))


def _point(
    conn: psycopg.Connection,
    stmt: sql.Composed,
    subject: Subject,
    base: dict[str, str],
    value: int | None,
    queries: F32,
    kth_exact: Sequence[float],
    k: int,
) -> Point:
    settings = dict(base)
    if subject.setting is not None and value is not None:
        settings[subject.setting] = str(value)
    exact = subject.index is None
    found: list[list[float]] = []
    lat: list[float] = []
    used, chooses = False, True
    with conn.transaction():
        for name, v in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, v))
        if subject.index is not None and len(queries):
            # The plan only (no ANALYZE): the scan the planner would pick is not run.
            doc = _explain(conn, stmt, {"q": queries[0], "k": k}, analyze=False)
            chooses = subject.index in json.dumps(doc["Plan"])
            # What is measured is the index: on a small table (a side table of a few thousand
            # narrow rows, probes close to the list count) the planner rightly prefers a
            # sequential scan and a sort, which would measure exact search instead; as the
            # table grows it turns to the index, whose recall is then what the service gets.
            # EXPLAIN below still confirms the index served the queries.
            conn.execute("SELECT set_config('enable_seqscan', 'off', true)")
        for i, vec in enumerate(queries):
            params = {"q": vec, "k": k}
            if not exact or i < EXACT_LATENCY_QUERIES:
                doc = _explain(conn, stmt, params)
                lat.append(float(doc["Execution Time"]))
                if i == 0 and subject.index is not None:
                    used = subject.index in json.dumps(doc["Plan"])
            if exact:
                continue
            rows = conn.execute(stmt, params, prepare=True).fetchall()
            # A row without a vector has no distance (never from an index): a miss.
            found.append([float("inf") if r[1] is None else float(r[1]) for r in rows])
    if exact:
        # No index: the database sorts every row, which is exact by definition.
        recall, short = 1.0, 0
    else:
        recall = ann_recall_with_ties(found, list(kth_exact), k) if found else 0.0
        short = sum(len(f) < k for f in found)
    arr = np.asarray(lat or [0.0])
    return Point(
        value,
        recall,
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
        used,
        short,
        chooses,
    )
