"""Pacing that protects search, the database part: the probe (k-NN searches through the view the
service reads, in the service's shape and settings) and the stored pacing row every worker
reads. The coordinator's loop is `backfill.governor`; the controller is pure (`backfill.pacing`).

Owns `migrator.pacing`. The probe never writes the user's table; it reads query vectors from
the column the view serves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.types.json import Jsonb

from migrator.backfill import pacing
from migrator.ddl import statements as q
from migrator.plan.model import PacingSpec, Plan, VectorType

log = logging.getLogger(__name__)
BASELINE_PROBES = 4  # the baseline is the median p99 of this many probes
WARM_UP = 20  # queries run (not counted) before the baseline: cold caches would inflate it
PROBE_TIMEOUT_MS = 5000  # a probe query slower than this counts as this slow


def stale_after(spec: PacingSpec) -> float:
    """A pace not refreshed for this long is the coordinator's last word, not a live one:
    workers fall back to `min_pace` (the coordinator stopped: nobody measures search now)."""
    return max(30.0, 6.0 * spec.probe_every_seconds)


@dataclass(frozen=True)
class Served:
    """What the view serves now (the registry): its column, model and vector type."""

    column: str
    fingerprint: str
    vtype: VectorType


def served(conn: psycopg.Connection, plan: Plan) -> Served | None:
    row = conn.execute(
        "SELECT column_name, fingerprint, vector_type FROM migrator.active_models "
        "WHERE view_schema = %s AND view_name = %s",
        (plan.view_schema, plan.view.name),
    ).fetchone()
    return None if row is None else Served(str(row[0]), str(row[1]), VectorType(row[2]))


def sample_vectors(conn: psycopg.Connection, plan: Plan, column: str, n: int) -> list[str]:
    """`n` vectors of the served column as text (cast back by the probe query): a repeatable
    block sample, so a restarted coordinator probes with the same queries."""
    rel = conn.execute(
        "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = %s::regclass",
        (q.table_ident(plan).as_string(conn),),
    ).fetchone()
    rows_est = float(rel[0]) if rel else 0.0
    col, tbl = sql.Identifier(column), q.table_ident(plan)
    found: list[str] = []
    if rows_est > 20 * n:
        pct = min(100.0, max(0.01, 100.0 * 20 * n / rows_est))
        found = [
            str(r[0])
            for r in conn.execute(
                sql.SQL(
                    "SELECT {c}::text FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (17) "
                    "WHERE {c} IS NOT NULL LIMIT %s"
                ).format(c=col, t=tbl),
                (pct, n),
            ).fetchall()
        ]
    if len(found) < n:
        found = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL LIMIT %s").format(
                    c=col, t=tbl
                ),
                (n,),
            ).fetchall()
        ]
    return found


def run_queries(
    conn: psycopg.Connection,
    plan: Plan,
    srv: Served,
    vectors: list[str],
    k: int,
    *,
    settings: dict[str, str],
) -> list[float]:
    """Latency (ms) of one k-NN query per vector, one after another, each in its own
    transaction with the plan's search settings SET LOCAL (what `migrator.search` does);
    only the query itself is timed."""
    stmt = cast(sql.Composed, q.probe_query(plan, srv.vtype))
    out: list[float] = []
    for vec in vectors:
        t0 = time.perf_counter()
        try:
            with conn.transaction(), conn.cursor() as cur:
                for name, value in settings.items():
                    cur.execute("SELECT set_config(%s, %s, true)", (name, value))
                t0 = time.perf_counter()
                cur.execute(stmt, {"q": vec, "fp": srv.fingerprint, "k": k}).fetchall()
            out.append((time.perf_counter() - t0) * 1000.0)
        except pgerr.QueryCanceled:
            out.append(float(PROBE_TIMEOUT_MS))
    return out


# ---- the stored row -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    baseline_p99_ms: float | None
    baseline_p50_ms: float | None
    baseline_queries: int | None
    baseline_shape: dict[str, Any] | None
    pace: float | None
    last_p99_ms: float | None
    last_ratio: float | None
    age_seconds: float  # since the row was last written
    probed_age_seconds: float | None


def read_row(conn: psycopg.Connection, name: str) -> Row | None:
    r = conn.execute(
        "SELECT baseline_p99_ms, baseline_p50_ms, baseline_queries, baseline_shape, pace, "
        "last_p99_ms, last_ratio, extract(epoch FROM clock_timestamp() - updated_at)::float8, "
        "extract(epoch FROM clock_timestamp() - probed_at)::float8 "
        "FROM migrator.pacing WHERE migration = %s",
        (name,),
    ).fetchone()
    if r is None:
        return None
    return Row(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], float(r[7]), None if r[8] is None else r[8]
    )


def store_baseline(
    conn: psycopg.Connection, name: str, p99: float, p50: float, n: int, shape: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO migrator.pacing AS p (migration, baseline_p99_ms, baseline_p50_ms, "
        "baseline_queries, baseline_shape, baseline_at, updated_at) "
        "VALUES (%(m)s, %(p99)s, %(p50)s, %(n)s, %(shape)s, now(), now()) "
        "ON CONFLICT (migration) DO UPDATE SET baseline_p99_ms = excluded.baseline_p99_ms, "
        "baseline_p50_ms = excluded.baseline_p50_ms, baseline_queries = excluded.baseline_queries, "
        "baseline_shape = excluded.baseline_shape, baseline_at = now(), updated_at = now()",
        {"m": name, "p99": p99, "p50": p50, "n": n, "shape": Jsonb(shape)},
    )


def store_pace(
    conn: psycopg.Connection,
    name: str,
    pace: float | None,
    *,
    p99: float | None = None,
    ratio: float | None = None,
) -> None:
    """The pace every worker reads (None: not pacing); with a probe's figures when given."""
    conn.execute(
        "INSERT INTO migrator.pacing AS p (migration, pace, last_p99_ms, last_ratio, probed_at, "
        "updated_at) VALUES (%(m)s, %(pace)s, %(p99)s, %(ratio)s, "
        "CASE WHEN %(p99)s::float8 IS NULL THEN NULL ELSE now() END, now()) "
        "ON CONFLICT (migration) DO UPDATE SET pace = excluded.pace, "
        "last_p99_ms = coalesce(excluded.last_p99_ms, p.last_p99_ms), "
        "last_ratio = coalesce(excluded.last_ratio, p.last_ratio), "
        "probed_at = coalesce(excluded.probed_at, p.probed_at), updated_at = now()",
        {"m": name, "pace": pace, "p99": _finite(p99), "ratio": _finite(ratio)},
    )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def worker_pace(conn: psycopg.Connection, plan: Plan) -> float | None:
    """The pace a worker keeps now (None: full rate, not pacing). A pace the coordinator has
    not refreshed within `stale_after` falls to `min_pace`: nobody measures search then."""
    spec = plan.backfill.pacing
    if not spec.enabled:
        return None
    r = conn.execute(
        "SELECT pace, extract(epoch FROM clock_timestamp() - updated_at)::float8 "
        "FROM migrator.pacing WHERE migration = %s",
        (plan.name,),
    ).fetchone()
    if r is None or r[0] is None:
        return None
    if float(r[1]) > stale_after(spec):
        return spec.min_pace
    return float(r[0])


def status(conn: psycopg.Connection, plan: Plan) -> dict[str, Any]:
    """Pacing as `migrator status` and the exporter show it."""
    spec = plan.backfill.pacing
    out: dict[str, Any] = {
        "enabled": spec.enabled,
        "max_p99_ratio": spec.max_p99_ratio,
        "state": pacing.OFF,
        "pace": None,
        "baseline_p99_ms": None,
        "last_p99_ms": None,
        "ratio": None,
        "stale": False,
    }
    with contextlib.suppress(pgerr.UndefinedTable):
        row = read_row(conn, plan.name)
        if row is not None:
            stale = row.pace is not None and row.age_seconds > stale_after(spec)
            pace = spec.min_pace if stale else row.pace
            out.update(
                state=pacing.label(pace if spec.enabled else None),
                pace=pace if spec.enabled else None,
                baseline_p99_ms=_round(row.baseline_p99_ms),
                baseline_p50_ms=_round(row.baseline_p50_ms),
                last_p99_ms=_round(row.last_p99_ms),
                ratio=_round(row.last_ratio),
                probed_seconds_ago=_round(row.probed_age_seconds, 1),
                stale=stale,
            )
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(float(x), digits)
