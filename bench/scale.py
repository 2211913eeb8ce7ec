"""At scale: backfill with and without an HNSW index on the source, table growth, the index build
with sized vs PostgreSQL-default memory, and how far `migrator plan`'s estimates land.

Two identical tables of --rows corpus rows (local-hash-old@256) in one embedded PostgreSQL; one
with HNSW on the source column (as production tables have), one without (the baseline of the
same run). For each: the live plan's estimate (tokens, time, disk), then `backfill.run` with
real Celery workers and the local embeddings server; then, on the indexed table, the new
index built by `ensure_index` with `maintenance_work_mem: auto` and with PostgreSQL's 64MB.

    .venv/bin/python bench/scale.py --rows 100000 [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bench,
    bench_plan,
    checkpoint,
    corpus_texts,
    load_table,
    print_figures,
    wait_workers_ready,
)

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.verify.index_build import ensure_index


def sizes(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size(%s::regclass), "
            "pg_database_size(current_database()), n_tup_hot_upd, n_tup_upd "
            "FROM pg_stat_user_tables WHERE relid = %s::regclass",
            (table, table, table),
        ).fetchone()
    assert row is not None
    return dict(zip(("heap", "total", "database", "hot", "updates"), map(int, row), strict=True))


def err(estimated: float, actual: float) -> str:
    return f"{estimated:,.0f} vs {actual:,.0f} ({(estimated - actual) / actual:+.1%})"


def relation_bytes(url: str, name: str) -> int:
    """Heap + TOAST + indexes of a relation, 0 when it does not exist."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def run_table(
    b: Bench, table: str, texts: list[str], workers: int, index: bool, storage: str = "column"
) -> dict[str, Any]:
    name = f"scale-{table}"
    plan = bench_plan(b.base_url, name=name, table=table, target__storage=storage)
    load_table(b.url, table, texts, index=index)
    report = api.plan_live(plan, b.settings, workers=workers)
    est = report.estimate or {}
    truth = sum(api.count_tokens(plan, b.settings, texts)[0])
    before = sizes(b.url, table)
    b.start_workers(plan.queue, workers)
    wait_workers_ready(b)
    checkpoint(b.url)
    t0 = time.perf_counter()
    res = backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.2))
    seconds = time.perf_counter() - t0
    b.stop_workers()
    if not res.get("complete"):
        raise SystemExit(f"backfill of {table} did not complete: {res}")
    after = sizes(b.url, table)
    side = relation_bytes(b.url, plan.side_table) if plan.side else 0
    return {
        "side_bytes": side,
        "plan": plan,
        "estimate": est,
        "tokens_true": truth,
        "seconds": seconds,
        "rate": res["rows_written"] / seconds,
        "before": before,
        "after": after,
    }


def build(url: str, plan: Any, setting: str) -> dict[str, Any]:
    from migrator.plan.model import parse_plan

    data = plan.canonical()
    data["index"]["maintenance_work_mem"] = setting
    p = parse_plan(data)
    with contextlib.closing(connect(url)) as conn:
        db0 = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        res = ensure_index(Executor(conn), url, p, LockPolicy(), poll_interval=1.0)
        db1 = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(p.index_name)))
    assert db0 is not None and db1 is not None
    return {"result": res, "grew": int(db1[0]) - int(db0[0])}


def build_seconds(res: Any) -> float:
    return float(res.seconds - (res.vacuum_seconds or 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-build", action="store_true", help="Only the backfills and the estimates.")
    ap.add_argument(
        "--no-column-hnsw",
        action="store_true",
        help="Skip the column mode over an HNSW source (hours past 300k rows on 2 cores).",
    )
    ap.add_argument(
        "--no-default-build",
        action="store_true",
        help="Skip the build with PostgreSQL's default 64MB (hours past 300k rows).",
    )
    args = ap.parse_args()
    texts = corpus_texts(args.rows)
    runs: dict[str, dict[str, Any]] = {}
    # A loaded machine takes longer than the default 15 s to start the embeddings server.
    with Bench(server_controls={"timeout": 180}) as b:
        plan_runs = [
            ("column, no index", "docs_bare", False, "column"),
            ("column, HNSW source", "docs_hnsw", True, "column"),
            ("side_table, no index", "docs_side_bare", False, "side_table"),
            ("side_table, HNSW source", "docs_side", True, "side_table"),
        ]
        for label, table, index, storage in plan_runs:
            if args.no_column_hnsw and table == "docs_hnsw":
                continue
            runs[label] = run_table(b, table, texts, args.workers, index, storage)
            print(f"{label}: {runs[label]['rate']:,.0f} rows/s", flush=True)
        built = runs.get("side_table, HNSW source") or runs["column, HNSW source"]
        if args.no_build:
            sized = default = None
        else:
            sized = build(b.url, built["plan"], "auto")
            default = None if args.no_default_build else build(b.url, built["plan"], "64MB")
    bare = runs["column, no index"]
    out: list[tuple[str, str]] = [
        (f"backfill, {label} (rows/s)", f"{r['rate']:,.0f} ({r['seconds']:,.1f} s)")
        for label, r in runs.items()
    ]
    for label, r in runs.items():
        if label != "column, no index":
            out.append(
                (f"rate ratio {label} / column, no index", f"{r['rate'] / bare['rate']:.2f}")
            )
    if "side_table, no index" in runs and "side_table, HNSW source" in runs:
        sb, sh = runs["side_table, no index"], runs["side_table, HNSW source"]
        out.append(
            ("rate ratio side_table HNSW source / no index", f"{sh['rate'] / sb['rate']:.2f}")
        )
    for label, r in runs.items():
        if r["side_bytes"]:
            b0, a0 = r["before"], r["after"]
            out.append(
                (
                    f"table growth, {label} (total MB)",
                    f"{b0['total'] / 2**20:,.1f} -> {a0['total'] / 2**20:,.1f} "
                    f"({(a0['total'] - b0['total']) / b0['total']:+.2%}); updates {a0['updates']:,}",
                )
            )
            disk = r["estimate"]["disk"]
            out.append(
                (
                    f"side table estimate vs measured (MB), {label}",
                    err(
                        (disk["heap_bytes"] + disk["index_entries_bytes"]) / 2**20,
                        r["side_bytes"] / 2**20,
                    ),
                )
            )
    for label, r in runs.items():
        b0, a0 = r["before"], r["after"]
        out.append(
            (
                f"heap growth, {label} (MB)",
                f"{b0['heap'] / 2**20:,.0f} -> {a0['heap'] / 2**20:,.0f} "
                f"({a0['heap'] / b0['heap']:.2f}x); HOT {a0['hot']:,} of {a0['updates']:,}",
            )
        )
        est = r["estimate"]
        cal = est.get("calibration") or {}
        out.append(
            (
                f"calibration, {label}",
                f"{cal.get('requests')} requests of {cal.get('rows_per_request')} rows, median "
                f"{cal.get('median_seconds')} s, {cal.get('concurrent_requests')} at once "
                f"{cal.get('concurrent_seconds')} s (parallelism {cal.get('parallelism')}); "
                f"bound by {est['bound_by']}",
            )
        )
        out.append((f"tokens estimate vs true, {label}", err(est["tokens"], r["tokens_true"])))
        out.append((f"time estimate vs measured (s), {label}", err(est["seconds"], r["seconds"])))
        grown = a0["database"] - b0["database"]
        disk = est["disk"]
        # The estimate includes the new index; the backfill alone is compared with its part.
        out.append(
            (
                f"disk estimate (backfill part) vs database growth (MB), {label}",
                err(
                    (disk["heap_bytes"] + disk["index_entries_bytes"]) / 2**20,
                    grown / 2**20,
                ),
            )
        )
        if r is built and sized is not None:
            out.append(
                (
                    "new index size estimate vs built (MB)",
                    err(disk["new_index_bytes"] / 2**20, sized["result"].size_bytes / 2**20),
                )
            )
    if sized is not None:
        builds = [("auto", sized)] + ([("PostgreSQL default 64MB", default)] if default else [])
        for label, r in builds:
            res = r["result"]
            s = dict(res.session_settings)
            vac = res.vacuum_seconds or 0.0
            out.append(
                (
                    f"index build, {label}",
                    f"{res.seconds - vac:,.1f} s (+ VACUUM {vac:,.1f} s), maintenance_work_mem {s['maintenance_work_mem']}, "
                    f"graph estimate {res.sizing.graph_bytes / 2**20:,.0f} MB, "
                    f"spilled {res.spilled}",
                )
            )
            out.append(
                (
                    f"index build rows/s, {label}",
                    f"{res.sizing.rows / max(build_seconds(res), 1e-9):,.0f}",
                )
            )
    if sized is not None and default is not None:
        out.append(
            (
                "build time ratio default / auto",
                f"{build_seconds(default['result']) / build_seconds(sized['result']):.2f}",
            )
        )
    print_figures(f"scale, {args.rows:,} rows, 256 dims, {args.workers} workers", out)


if __name__ == "__main__":
    main()
