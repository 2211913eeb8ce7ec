"""The whole lifecycle at scale under a search load (issue 17): backfill, verify (the new index
built with sized memory, its progress and ETA sampled), cutover, rollback, cutover, finalize,
while `migrator.search.drill` searches through the view at a fixed rate the whole time.

One table of --rows corpus rows (local-hash-old@256) with HNSW on the source column, as
production tables have; the plan's storage (--storage, default side_table). Prints backfill and
build rates, the build's ETA samples against the time it really took, the table's growth, the
verify's time and peak memory (its own process: VmHWM), and what the searches saw: failed
queries and rows of another model than the query's, by phase.

    .venv/bin/python bench/lifecycle.py --rows 100000
    .venv/bin/python bench/lifecycle.py --rows 1000000 --qps 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, bench_plan, corpus_texts, load_table, print_figures, wait_workers_ready

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.search.drill import Drill
from migrator.verify.index_build import BuildProgress


def table_bytes(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
    return int(row[0]) if row else 0


def _verify_child(environ: dict[str, str], plan_data: dict[str, Any], out: Any) -> None:
    """verify in a process of its own, so its peak memory is its own (VmHWM)."""
    from migrator.config import load_settings
    from migrator.plan.model import parse_plan
    from migrator.verify.run import VerifyOptions, verify

    samples: list[tuple[float, float | None, float | None]] = []
    t0 = time.perf_counter()

    def progress(p: BuildProgress) -> None:
        samples.append((time.perf_counter() - t0, p.fraction, p.eta_seconds))

    res = verify(
        load_settings(environ),
        parse_plan(plan_data),
        VerifyOptions(build_index=True),
        on_index_progress=progress,
    )
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    build = res.index
    out.put(
        {
            "seconds": time.perf_counter() - t0,
            "peak_bytes": hwm,
            "passed": res.report.passed,
            "build_seconds": build.seconds if build else None,
            "vacuum_seconds": build.vacuum_seconds if build else None,
            "rows_indexed": build.sizing.rows if build and build.sizing else None,
            "settings": dict(build.session_settings) if build else {},
            "spilled": build.spilled if build else None,
            "samples": samples,
            "checks": {c.key: c.figure for c in res.report.checks},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--storage", choices=("column", "side_table"), default="side_table")
    ap.add_argument("--qps", type=float, default=20.0)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--max-memory",
        default="4GB",
        help="index.max_maintenance_work_mem (the demo plan's 1GB holds ~600k rows' graph)",
    )
    args = ap.parse_args()
    texts = corpus_texts(args.rows)
    with Bench(server_controls={"timeout": 180}) as b:
        plan = bench_plan(
            b.base_url,
            name="bench-lifecycle",
            table="docs_life",
            target__storage=args.storage,
            verify__sample_size=200,
            index__max_maintenance_work_mem=args.max_memory,
        )
        t_load = time.perf_counter()
        load_table(b.url, plan.table.name, texts, index=True)
        load_seconds = time.perf_counter() - t_load
        before = table_bytes(b.url, plan.table.name)
        # The service reads the view: it exists from adopt on (searches before it would fail
        # for want of a relation, which says nothing about migrator).
        api.adopt(b.settings, plan)
        drill = Drill(
            b.url, plan, qps=args.qps, processes=args.processes, environ=dict(b.settings.environ)
        )
        drill.start()
        try:
            b.start_workers(plan.queue, args.workers)
            wait_workers_ready(b)
            t0 = time.perf_counter()
            res = backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.5))
            backfill_seconds = time.perf_counter() - t0
            b.stop_workers()
            after = table_bytes(b.url, plan.table.name)
            print(
                f"backfill: {res['rows_written']:,} rows in {backfill_seconds:,.1f} s", flush=True
            )
            queue: Any = mp.get_context("spawn").Queue()
            child = mp.get_context("spawn").Process(
                target=_verify_child, args=(dict(b.settings.environ), plan.canonical(), queue)
            )
            child.start()
            ver = queue.get()
            child.join()
            print(f"verify: {ver['seconds']:,.1f} s, passed {ver['passed']}", flush=True)
            switches = []
            for action in (switch.cutover, switch.rollback, switch.cutover):
                r = action(b.settings, plan)
                switches.append(f"{r.command} hold {r.hold_ms:.1f} ms")
                time.sleep(3.0)
            fin = switch.finalize(b.settings, plan, yes=True, force=True)
            time.sleep(3.0)
        finally:
            report = drill.stop()
    build = ver["build_seconds"] - (ver["vacuum_seconds"] or 0.0)
    etas = [
        (t, eta)
        for t, frac, eta in ver["samples"]
        if eta is not None and frac is not None and 0.2 <= frac <= 0.8
    ]
    eta_text = "no sample"
    if etas:
        t, eta = etas[len(etas) // 2]
        # The verify's clock started before the build (preflight, VACUUM): finish from t0.
        finish = ver["build_seconds"] + (ver["samples"][0][0] if ver["samples"] else 0.0)
        eta_text = f"at {t:,.0f} s the ETA said {eta:,.0f} s left; {finish - t:,.0f} s were"
    print_figures(
        f"lifecycle, {args.rows:,} rows, storage {args.storage}, {args.qps:.0f} q/s",
        [
            ("load (rows + source HNSW index) (s)", f"{load_seconds:,.1f}"),
            (
                "backfill (rows/s)",
                f"{res['rows_written'] / backfill_seconds:,.0f} ({backfill_seconds:,.1f} s)",
            ),
            (
                "table growth (total MB)",
                f"{before / 2**20:,.1f} -> {after / 2**20:,.1f} ({(after - before) / before:+.2%})",
            ),
            (
                "index build (s, rows/s)",
                f"{build:,.1f} s, {(ver['rows_indexed'] or 0) / max(build, 1e-9):,.0f} rows/s; "
                f"maintenance_work_mem {ver['settings'].get('maintenance_work_mem')}, "
                f"spilled {ver['spilled']}; VACUUM {ver['vacuum_seconds'] or 0:,.1f} s",
            ),
            ("index build progress samples / ETA", f"{len(ver['samples'])}; {eta_text}"),
            (
                "verify (s, peak MB)",
                f"{ver['seconds']:,.1f} s, {ver['peak_bytes'] / 2**20:,.0f} MB; passed {ver['passed']}",
            ),
            (
                "switches",
                "; ".join(switches) + f"; finalize dropped {len(fin.dropped_indexes)} index",
            ),
            ("searches / failed", f"{report.queries:,} / {report.failed}  (target 0 failed)"),
            (
                "failed by phase",
                ", ".join(f"{p.phase} {p.failed}" for p in report.phases if p.failed) or "none",
            ),
            ("first errors", "; ".join(report.errors[:3]) or "none"),
            ("cross-model rows / empty answers", f"{report.cross_model_rows} / {report.empty}"),
            (
                "search p99 by phase (ms)",
                ", ".join(f"{p.phase} {p.as_dict()['p99_ms']}" for p in report.phases),
            ),
        ],
    )


if __name__ == "__main__":
    main()
