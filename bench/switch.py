"""The switch: lock wait and hold time of the cutover/rollback transaction under a search load,
and what the searches saw (failed queries, rows of another model than the query's).

Backfills and verifies a table, starts `migrator.search.drill` at a fixed rate, then runs
cutover -> rollback -> cutover ... `--cycles` times, a second apart.

    .venv/bin/python bench/switch.py [--rows 20000] [--cycles 5] [--qps 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, bench_plan, corpus_texts, load_table, print_figures, wait_workers_ready

from migrator import switch
from migrator.backfill import monitor as backfill
from migrator.search.drill import Drill
from migrator.verify.run import VerifyOptions, verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--qps", type=float, default=40.0)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    texts = corpus_texts(args.rows)
    waits: list[float] = []
    holds: list[float] = []
    attempts: list[int] = []
    with Bench() as b:
        plan = bench_plan(b.base_url, name="bench-switch")
        load_table(b.url, plan.table.name, texts, index=True)
        b.start_workers(plan.queue, 2)
        wait_workers_ready(b)
        backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.25))
        verify(b.settings, plan, VerifyOptions())
        drill = Drill(
            b.url, plan, qps=args.qps, processes=args.processes, environ=dict(b.settings.environ)
        )
        drill.start()
        try:
            time.sleep(2.0)
            for _ in range(args.cycles):
                for action in (switch.cutover, switch.rollback):
                    r = action(b.settings, plan)
                    waits.append(r.lock_wait_ms)
                    holds.append(r.hold_ms)
                    attempts.append(r.attempts)
                    print(
                        f"{r.command:<9} lock wait {r.lock_wait_ms:7.2f} ms, hold "
                        f"{r.hold_ms:6.2f} ms, attempts {r.attempts}",
                        flush=True,
                    )
                    time.sleep(1.0)
        finally:
            report = drill.stop()
    w, h = np.asarray(waits), np.asarray(holds)
    print_figures(
        f"switch under {args.qps:.0f} q/s, {len(holds)} switches, {args.rows:,} rows",
        [
            ("lock wait p50 / max (ms)", f"{np.median(w):.2f} / {w.max():.2f}"),
            ("hold p50 / max (ms)", f"{np.median(h):.2f} / {h.max():.2f}  (target < 50)"),
            ("attempts max", str(max(attempts))),
            ("searches / failed", f"{report.queries} / {report.failed}  (target 0 failed)"),
            ("cross-model rows / empty answers", f"{report.cross_model_rows} / {report.empty}"),
            (
                "search p99 by phase (ms)",
                ", ".join(f"{p.phase} {p.as_dict()['p99_ms']}" for p in report.phases),
            ),
        ],
    )


if __name__ == "__main__":
    main()
