"""The gates of `verify`, one function each: coverage, vector health, freshness, index recall,
model parity (labelled evaluation is in verify_labelled). Each returns a `report.Check` with its figure, the plan's
threshold and the verdict.

Read-only on the database. Exact search is numpy over vectors read once (verify_data), which
isolates model quality from index quality; index recall alone goes through the index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.backfill import ledger, refresh
from migrator.ddl import statements as q
from migrator.plan.model import IndexMethod, IterativeScan, Plan, Role, VectorType
from migrator.verify.data import Column
from migrator.verify.metrics import (
    F32,
    ann_recall_with_ties,
    distances,
    exact_topk,
    hit_rate_at_k,
    overlap_at_k,
    ratio,
    rowwise_cosine,
    vector_health,
)
from migrator.verify.report import Check, Status, gate

FRESH_MIN_COSINE = 0.999


def coverage(conn: psycopg.Connection, plan: Plan) -> tuple[Check, int]:
    """Eligible rows holding a target vector; pending, empty-text rows and dead letters apart.
    Also returns the table's row count (the base of the report's staleness)."""
    t0 = time.perf_counter()
    tgt = sql.Identifier(plan.target.column)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE {e}), count(*) FILTER (WHERE {e} AND {t} IS NOT "
            "NULL), count(*) FILTER (WHERE NOT ({e}) AND {t} IS NOT NULL) FROM {tbl}"
        ).format(e=q.eligible_predicate(plan), t=tgt, tbl=q.table_ident(plan))
    ).fetchone()
    assert row is not None
    total, eligible, done, empty_with_vector = (int(x) for x in row)
    share = done / eligible if eligible else 1.0
    details = {
        "rows": total,
        "eligible": eligible,
        "done": done,
        "pending": eligible - done,
        "empty_text": total - eligible,
        "empty_text_with_vector": empty_with_vector,
        "dead_letters": ledger.dead_letter_count(conn, plan.name, role=Role.TARGET),
        "changes_pending": ledger.pending_changes(conn, plan.name),
    }
    summary = (
        f"{done:,} of {eligible:,} eligible rows have a vector; "
        f"{eligible - done:,} pending, "
        f"{details['dead_letters']:,} dead letters, {total - eligible:,} empty-text rows"
    )
    return gate(
        "coverage",
        "coverage",
        share,
        plan.verify.min_coverage,
        ">=",
        summary,
        details,
        time.perf_counter() - t0,
        over=eligible,
    ), total


def old_vectors(conn: psycopg.Connection, plan: Plan, rows: int) -> Check:
    """Rows whose old vector is of text they no longer have (change capture's records): what a
    rollback would serve. Gated like staleness at cutover when backfill.refresh_source is on."""
    t0 = time.perf_counter()
    stale = refresh.stale_count(conn, plan.name)
    details: dict[str, Any] = {
        "stale": stale,
        "rows": rows,
        "refresh_source": plan.backfill.refresh_source,
        **refresh.stale_reasons(conn, plan.name),
    }
    summary = f"{stale:,} of {rows:,} rows hold an old vector of text they no longer have"
    if not plan.backfill.refresh_source:
        return Check(
            "old_vectors",
            "old vectors (rollback)",
            float(stale),
            None,
            "",
            Status.SKIP,
            summary + "; not gated (backfill.refresh_source is false): a rollback serves them",
            tuple(details.items()),
            time.perf_counter() - t0,
        )
    return gate(
        "old_vectors",
        "old vectors (rollback)",
        stale / rows if rows else None,
        plan.verify.max_stale_fraction,
        "<=",
        summary + " (refreshed by the backfill)",
        details,
        time.perf_counter() - t0,
        over=rows,
    )


def health(target: Column, plan: Plan) -> Check:
    """Dimension, NaN/Inf, zero vectors and (when the model normalises) norms of every vector."""
    t0 = time.perf_counter()
    tol = 1e-2 if plan.target.type is VectorType.HALFVEC else 1e-3
    h = vector_health(
        target.matrix,
        plan.target.model.dimensions,
        normalized=plan.target.model.normalize,
        norm_tol=tol,
    )
    details = {
        "vectors": h.rows,
        "dimensions": plan.target.model.dimensions,
        "wrong_dimension": h.wrong_dimension,
        "nan_or_inf": h.non_finite,
        "zero": h.zero,
        "off_norm": h.off_norm,
        "norm_tolerance": tol if plan.target.model.normalize else None,
        "norm_min": h.norm_min,
        "norm_max": h.norm_max,
        "norm_mean": h.norm_mean,
    }
    summary = (
        f"{h.invalid:,} bad of {h.rows:,} vectors ({h.non_finite} NaN/Inf, {h.zero} zero, "
        f"{h.off_norm} off-norm, {h.wrong_dimension} wrong dimension)"
    )
    return gate(
        "health",
        "vector health",
        float(h.invalid),
        float(plan.verify.max_invalid_vectors),
        "<=",
        summary,
        details,
        time.perf_counter() - t0,
        over=h.rows,
    )


def freshness(
    plan: Plan,
    ids: Sequence[str],
    stored: F32,
    embedded: F32,
    failed: Sequence[int],
    seconds: float,
) -> Check:
    """Stored target vectors of sampled rows against their current text embedded again now."""
    bad = set(failed)
    ok = [i for i in range(len(ids)) if i not in bad]
    cos = rowwise_cosine(stored[ok], embedded[ok]) if ok else np.zeros(0)
    stale = int((cos < FRESH_MIN_COSINE).sum())
    details = {
        "sampled": len(ids),
        "compared": len(ok),
        "not_embedded": len(failed),
        "mismatched": stale,
        "min_cosine": float(cos.min()) if cos.size else None,
        "required_cosine": FRESH_MIN_COSINE,
    }
    summary = (
        f"{stale:,} of {len(ok):,} sampled rows hold a vector that is not their current "
        f"text's (cosine < {FRESH_MIN_COSINE})"
    )
    return gate(
        "freshness",
        "freshness sample",
        float(stale),
        float(plan.verify.max_invalid_vectors),
        "<=",
        summary,
        details,
        seconds,
        over=len(ok),
    )


def _search_settings(conn: psycopg.Connection, plan: Plan) -> dict[str, str]:
    """SET LOCAL the search parameters the service will use; returns them for the report."""
    idx = plan.index
    if idx.method is IndexMethod.HNSW:
        wanted = {
            "hnsw.ef_search": str(idx.ef_search),
            "hnsw.iterative_scan": idx.iterative_scan.value,
        }
    else:
        # ivfflat knows relaxed_order only: strict ordering is an hnsw setting.
        scan = idx.iterative_scan
        if scan is IterativeScan.STRICT:
            scan = IterativeScan.RELAXED
        wanted = {"ivfflat.probes": str(idx.probes), "ivfflat.iterative_scan": scan.value}
    for name, value in wanted.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    return wanted


def ann_query(plan: Plan) -> sql.Composed:
    """The service's query shape, ORDER BY distance LIMIT k: the planner serves it by the index."""
    text = "SELECT {pk}::text FROM {tbl} ORDER BY {col} {op} %(q)s::{vt} LIMIT %(k)s"
    return sql.SQL(text).format(
        pk=sql.Identifier(plan.table.primary_key),
        tbl=q.table_ident(plan),
        col=sql.Identifier(plan.target.column),
        op=sql.SQL(plan.index.metric.operator),
        vt=sql.SQL(plan.target.type.value),
    )


def index_scan_used(conn: psycopg.Connection, plan: Plan, query: F32, k: int) -> bool:
    """True when EXPLAIN shows the plan's index serving the search (in the caller's transaction)."""
    explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + ann_query(plan)
    row = conn.execute(explain, {"q": query, "k": k}).fetchone()
    assert row is not None
    plan_json = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return plan.index_name in json.dumps(plan_json)


def index_recall(
    conn: psycopg.Connection,
    plan: Plan,
    index_state: str,
    target: Column,
    queries: F32,
    k: int,
    exact: Exact | None = None,
) -> Check:
    """recall@k of the index against exact search on the target column, at the plan's settings."""
    t0 = time.perf_counter()
    threshold = plan.verify.min_index_recall
    if index_state != "valid":
        return gate(
            "index",
            "index recall",
            None,
            threshold,
            ">=",
            f"index {plan.index_name} is {index_state}: no recall can be measured",
            {"index": plan.index_name, "state": index_state},
            time.perf_counter() - t0,
            over=len(queries),
        )
    if len(queries) == 0 or len(target.ids) == 0:
        return gate(
            "index",
            "index recall",
            None,
            threshold,
            ">=",
            "no queries or no vectors",
            {"index": plan.index_name, "state": index_state},
            time.perf_counter() - t0,
            over=min(len(queries), len(target.ids)),
        )
    pos = target.position()
    lat: list[float] = []
    ann: list[list[str]] = []
    stmt = ann_query(plan)
    with conn.transaction():
        settings = _search_settings(conn, plan)
        used = index_scan_used(conn, plan, queries[0], k)
        for vec in queries:
            t = time.perf_counter()
            found = conn.execute(stmt, {"q": vec, "k": k}, prepare=True).fetchall()
            ann.append([r[0] for r in found])
            lat.append(time.perf_counter() - t)
    exact_d = (exact or topk(target, queries, k, plan)).distances
    true_d = [_true_distances(queries[i], ids, pos, target, plan) for i, ids in enumerate(ann)]
    recall = ann_recall_with_ties(true_d, exact_d[:, -1].tolist(), k)
    details: dict[str, Any] = {
        "index": plan.index_name,
        "state": index_state,
        "queries": len(ann),
        "index_scan_used": used,
        **settings,
        "short_results": sum(len(a) < k for a in ann),
        "latency_ms_mean": 1000 * float(np.mean(lat)),
        "latency_ms_p95": 1000 * float(np.percentile(lat, 95)),
    }
    if not used:
        return Check(
            "index",
            "index recall",
            recall,
            threshold,
            ">=",
            Status.FAIL,
            f"the planner did not use {plan.index_name}: the measured recall says "
            "nothing about the index",
            tuple(details.items()),
            time.perf_counter() - t0,
        )
    at = ", ".join(f"{a}={b}" for a, b in settings.items())
    summary = f"recall@{k} {recall:.3f} over {len(ann)} queries at {at}"
    return gate(
        "index",
        "index recall",
        recall,
        threshold,
        ">=",
        summary,
        details,
        time.perf_counter() - t0,
        over=len(ann),
    )


def _true_distances(
    query: F32, ids: Sequence[str], pos: dict[str, int], target: Column, plan: Plan
) -> list[float]:
    """Exact distances of the rows the index returned; a row written after the column was read
    has no known vector and counts as a miss."""
    known = [pos.get(p) for p in ids]
    rows = [j for j in known if j is not None]
    d = distances(query[None, :], target.matrix[rows], plan.index.metric)[0] if rows else []
    it = iter(d)
    return [float(next(it)) if j is not None else float("inf") for j in known]


@dataclass(frozen=True)
class Exact:
    """Exact top-k of queries in one column: keys per query, and the distances."""

    ids: list[list[str]]
    distances: F32


def topk(col: Column, queries: F32, k: int, plan: Plan) -> Exact:
    idx, dist = exact_topk(queries, col.matrix, k, plan.index.metric)
    return Exact([[col.ids[j] for j in row] for row in idx.tolist()], dist)


def parity(
    plan: Plan,
    own: Sequence[str],
    old_top: Sequence[Sequence[str]],
    new_top: Sequence[Sequence[str]],
    k: int,
    not_embedded: int,
    seconds: float,
) -> Check:
    """Self-retrieval recall@k of each model (does a row's derived query find the row), their
    ratio new/old against the plan, and the overlap of the two top-k lists."""
    old = hit_rate_at_k(old_top, own, k)
    new = hit_rate_at_k(new_top, own, k)
    # No baseline (the old model found none of its own rows) is not a pass: the source vectors
    # are stale, NULL or of another model, and a ratio to zero says nothing.
    r = ratio(new, old)
    details = {
        "queries": len(own),
        "not_embedded": not_embedded,
        f"recall@{k}_old": old,
        f"recall@{k}_new": new,
        "ratio": r,
        f"overlap@{k}": overlap_at_k(old_top, new_top, k),
    }
    if r is None:
        summary = (
            f"recall@{k} old {old:.3f}: the old model found none of its own rows, so there is "
            f"no baseline (source vectors stale, NULL or of another model?); new {new:.3f} "
            f"over {len(own)} rows"
        )
    else:
        summary = f"recall@{k} old {old:.3f}, new {new:.3f}; ratio {r:.3f} over {len(own)} rows"
    return gate(
        "parity",
        "model parity",
        r,
        plan.verify.min_recall_ratio,
        ">=",
        summary,
        details,
        seconds,
        over=len(own),
    )


def skipped(key: str, title: str, why: str) -> Check:
    return Check(key, title, None, None, "", Status.SKIP, why)
