"""The gates of `verify`, one function each: coverage (with the catch-up's lag), vector
health, freshness, model parity (labelled evaluation: labelled.py; the index gate:
index_gate.py). Each returns a `report.Check` with its figure, the threshold and the verdict.

Read-only on the database. Exact search is numpy over the streamed columns (samples.py),
which isolates model quality from index quality; index recall alone goes through the index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from migrator.backfill import ledger, refresh
from migrator.ddl import statements as q
from migrator.plan.model import Plan, Role, VectorType
from migrator.verify.metrics import (
    F32,
    Health,
    hit_rate_at_k,
    overlap_at_k,
    ratio,
    rowwise_cosine,
)
from migrator.verify.report import Check, Status, gate

FRESH_MIN_COSINE = 0.999


def _lag_predicate(plan: Plan) -> sql.Composed:
    """A row waiting for the catch-up: an unprocessed change record, or its key in an open
    catch-up batch of the new column (changes become batches and are marked processed at once)."""
    pk = sql.SQL("t.{}::text").format(sql.Identifier(plan.table.primary_key))
    return sql.SQL(
        "(EXISTS (SELECT 1 FROM migrator.changes c WHERE c.migration = %(m)s "
        "AND c.processed_at IS NULL AND c.pk = {pk}) OR EXISTS (SELECT 1 FROM migrator.batches b "
        "WHERE b.migration = %(m)s AND b.role = 'target' AND b.kind = 'ids' "
        "AND b.status IN ('pending', 'running') AND {pk} = ANY(b.ids)))"
    ).format(pk=pk)


@dataclass(frozen=True)
class Counts:
    total: int
    eligible: int
    done: int
    empty_with_vector: int
    lag: int  # eligible rows without a vector that the catch-up has queued

    @property
    def missing(self) -> int:
        """Eligible rows without a vector that nothing is going to fill."""
        return self.eligible - self.done - self.lag


def count_rows(conn: psycopg.Connection, plan: Plan) -> Counts:
    """One snapshot: rows, eligible, done, empty with a vector, and the catch-up's lag."""
    tgt = sql.SQL("t.{}").format(sql.Identifier(plan.target.column))
    e = q.eligible_predicate(plan, "t")
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE {e}), count(*) FILTER (WHERE {e} AND {t} IS "
            "NOT NULL), count(*) FILTER (WHERE NOT ({e}) AND {t} IS NOT NULL), count(*) FILTER "
            "(WHERE {e} AND {t} IS NULL AND {lag}) FROM {tbl}"
        ).format(
            e=e, t=tgt, tbl=q.vectors_from(plan, plan.target.column, "t"), lag=_lag_predicate(plan)
        ),
        {"m": plan.name},
    ).fetchone()
    assert row is not None
    return Counts(*(int(x) for x in row))


def coverage(
    conn: psycopg.Connection, plan: Plan, counts: Counts | None = None, waited: float = 0.0
) -> tuple[Check, int]:
    """Eligible rows holding a target vector or queued for the catch-up (its lag, reported
    and bounded by verify.max_stale_fraction, not a miss); dead letters and empty-text rows
    apart. Also returns the table's row count (the base of the report's staleness)."""
    t0 = time.perf_counter()
    c = counts or count_rows(conn, plan)
    total, eligible, done = c.total, c.eligible, c.done
    covered = done + c.lag
    share = covered / eligible if eligible else 1.0
    details = {
        "rows": total,
        "eligible": eligible,
        "done": done,
        "pending": eligible - done,
        "catch_up_lag": c.lag,
        "missing": c.missing,
        "waited_seconds": round(waited, 1),
        "empty_text": total - eligible,
        "empty_text_with_vector": c.empty_with_vector,
        "dead_letters": ledger.dead_letter_count(conn, plan.name, role=Role.TARGET),
        "changes_pending": ledger.pending_changes(conn, plan.name),
    }
    summary = (
        f"{done:,} of {eligible:,} eligible rows have a vector; {c.lag:,} queued for the "
        f"catch-up (lag), {c.missing:,} missing, "
        f"{details['dead_letters']:,} dead letters, {total - eligible:,} empty-text rows"
    )
    allowed = plan.verify.max_stale_fraction * eligible
    if c.lag > allowed:
        summary += (
            f"; the catch-up lag exceeds verify.max_stale_fraction "
            f"({plan.verify.max_stale_fraction:.1%}) after {waited:.0f} s: is the catch-up "
            "(`migrator backfill PLAN --follow` or Celery beat) running?"
        )
        share = done / eligible if eligible else 0.0
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


def health(h: Health, plan: Plan) -> Check:
    """Dimension, NaN/Inf, zero vectors and (when the model normalises) norms of every vector
    (counted while the column streams by: streaming.RunningHealth)."""
    t0 = time.perf_counter()
    tol = 1e-2 if plan.target.type is VectorType.HALFVEC else 1e-3
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


def index_unusable(plan: Plan, index_state: str, queries: int) -> Check:
    """The index gate when nothing can be measured: the index is absent or INVALID, or there
    is no query or vector to measure with. Never a pass."""
    if index_state != "valid":
        summary = f"index {plan.index_name} is {index_state}: no recall can be measured"
    else:
        summary = "no queries or no vectors"
    return gate(
        "index",
        "index recall",
        None,
        plan.verify.min_index_recall or 0.0,
        ">=",
        summary,
        {"index": plan.index_name, "state": index_state},
        over=queries if index_state == "valid" else 0,
    )


@dataclass(frozen=True)
class Exact:
    """Exact top-k of queries in one column: keys per query, and the distances."""

    ids: list[list[str]]
    distances: F32


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
