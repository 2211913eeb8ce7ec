"""Search latency through the view at a fixed rate: before the backfill, during it, and around
the cutover. The search load is `migrator.search.drill` (2 processes, each query embedded by the same
local server the backfill uses, HNSW on the source column); queries are bucketed by the phase
they started in. Same run, same machine: the ratio during/before is the figure.

    .venv/bin/python bench/search_impact.py [--rows 50000] [--qps 40] [--before 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, bench_plan, corpus_texts, load_table, print_figures, wait_workers_ready

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.search.drill import Drill, DrillReport
from migrator.verify.run import VerifyFailed, VerifyOptions, verify


def phase(report: DrillReport, name: str) -> dict[str, Any]:
    for p in report.phases:
        if p.phase == name:
            return p.as_dict()
    return {"phase": name, "queries": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}


def first_seconds(report: DrillReport, name: str, seconds: float, qps: float) -> list[float]:
    """Latencies of the queries that started in the first `seconds` of a phase (records are
    kept in start order within a phase)."""
    for p in report.phases:
        if p.phase == name:
            return p.latencies[: max(1, int(seconds * qps))]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--qps", type=float, default=40.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--before", type=float, default=15.0, help="seconds of load before")
    ap.add_argument("--after", type=float, default=8.0, help="seconds of load after cutover")
    ap.add_argument(
        "--rpm",
        type=int,
        default=None,
        help="the plan's requests_per_minute: throttle the backfill",
    )
    args = ap.parse_args()
    texts = corpus_texts(args.rows)
    with Bench() as b:
        # ef_search 100: at 40 the index-recall gate (0.9) failed at 50k rows.
        plan = bench_plan(
            b.base_url,
            name="bench-search",
            index__ef_search=100,
            backfill__requests_per_minute=args.rpm,
        )
        print(f"loading {args.rows:,} rows with an HNSW index on the source column...", flush=True)
        load_table(b.url, plan.table.name, texts, index=True)
        api.adopt(b.settings, plan)
        b.start_workers(plan.queue, args.workers)
        wait_workers_ready(b)
        drill = Drill(
            b.url, plan, qps=args.qps, processes=args.processes, environ=dict(b.settings.environ)
        )
        drill.start()
        try:
            time.sleep(args.before)
            t0 = time.monotonic()
            res = backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.25))
            print(
                f"backfill: {res['rows_written']:,} rows in {time.monotonic() - t0:.1f} s",
                flush=True,
            )
            t0 = time.monotonic()
            try:
                verify(b.settings, plan, VerifyOptions())
                print(f"verify (index build + checks): {time.monotonic() - t0:.1f} s", flush=True)
                time.sleep(3.0)
                cut = switch.cutover(b.settings, plan)
                print(
                    f"cutover: lock wait {cut.lock_wait_ms} ms, hold {cut.hold_ms} ms", flush=True
                )
                time.sleep(args.after)
            except VerifyFailed as exc:  # the before/during figures still stand
                print(f"verify failed, no cutover: {exc.one_line()}", flush=True)
        finally:
            report = drill.stop()
    before, during = phase(report, "planned"), phase(report, "expanded")
    verified, cutover = phase(report, "verified"), phase(report, "cut_over")
    around = first_seconds(report, "cut_over", 1.0, args.qps)
    for p in report.phases:
        d = p.as_dict()
        print(
            f"  {d['phase']:<11} {d['queries']:>5} queries, {d['failed']} failed, "
            f"p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, p99 {d['p99_ms']} ms"
        )
    ratio = during["p99_ms"] / before["p99_ms"] if before["queries"] else float("nan")
    print_figures(
        f"search impact, {args.rows:,} rows, {args.qps:.0f} q/s through the view, "
        f"backfill budget {args.rpm or 'none'} rpm",
        [
            (
                "before backfill p50 / p99 (ms)",
                f"{before['p50_ms']} / {before['p99_ms']}  ({before['queries']} queries)",
            ),
            (
                "during backfill p50 / p99 (ms)",
                f"{during['p50_ms']} / {during['p99_ms']}  ({during['queries']} queries)",
            ),
            ("ratio p99 during / before", f"{ratio:.2f}  (target <= 1.50)"),
            ("verified, before cutover p50 / p99", f"{verified['p50_ms']} / {verified['p99_ms']}"),
            (
                "first 1 s after cutover p50 / max",
                (
                    f"{np.percentile(around, 50):.1f} / {max(around):.1f} ({len(around)} queries)"
                    if around
                    else "n/a"
                ),
            ),
            ("after cutover p50 / p99 (ms)", f"{cutover['p50_ms']} / {cutover['p99_ms']}"),
            ("failed searches", str(report.failed)),
            ("cross-model rows", str(report.cross_model_rows)),
        ],
    )


if __name__ == "__main__":
    main()
