"""Pacing that protects search: search p99 through the view before the backfill, during it
without pacing and during it with pacing (backfill.pacing defaults: p99 at most 1.5x the
baseline), with the backfill rate of each. HNSW on the source column, as in production.

Two identical tables (documents_a, documents_b) loaded up front; each run measures its own
"before" on its own table, then backfills it under the same search load. The search load is
the service's database query (k-NN through the view, the plan's settings, query vectors from
the source column) at a fixed rate from its own process, so the figure is the database's
search latency, not the local embeddings server's queueing (the backfill shares that server).

    nice -n 10 .venv/bin/python bench/pacing.py [--rows 100000] [--qps 20] [--before 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bench,
    bench_plan,
    checkpoint,
    corpus_texts,
    cpu_seconds,
    load_table,
    postgres_pids,
    print_figures,
    renice_trees,
    wait_workers_ready,
)

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.backfill import probe
from migrator.db.connect import connect
from migrator.plan.model import Plan


def _load(url: str, plan: Plan, qps: float, stop: Any, out: Any, nice: int | None) -> None:
    """A fixed-rate search load: (wall clock start, latency ms) per query, sent at the end."""
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # below the bench's own: needs root
    conn = connect(url, vector=False, application_name="bench-search")
    srv = probe.served(conn, plan)
    assert srv is not None
    vecs = probe.sample_vectors(conn, plan, srv.column, 500)
    settings = plan.index.search_settings()
    records: list[tuple[float, float]] = []
    interval, i = 1.0 / qps, 0
    next_at = time.monotonic()
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # A fixed schedule: a slow query delays the next one but the schedule does not move.
        next_at += interval
        t = time.time()
        ms = probe.run_queries(
            conn, plan, srv, [vecs[i % len(vecs)]], plan.backfill.pacing.k, settings=settings
        )[0]
        records.append((t, ms))
        i += 1
    conn.close()
    out.put(records)


class Load:
    def __init__(self, url: str, plan: Plan, qps: float, nice: int | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_load, args=(url, plan, qps, self.stop, self.out, nice))

    def __enter__(self) -> Load:
        self.proc.start()
        return self

    def finish(self) -> list[tuple[float, float]]:
        self.stop.set()
        records: list[tuple[float, float]] = self.out.get(timeout=120)
        self.proc.join(30)
        return records

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.terminate()


def window(records: list[tuple[float, float]], t0: float, t1: float) -> np.ndarray:
    return np.asarray([ms for t, ms in records if t0 <= t < t1] or [np.nan])


def fmt(a: np.ndarray) -> str:
    return (
        f"p50 {np.percentile(a, 50):.2f} / p99 {np.percentile(a, 99):.2f} ms ({len(a):,} queries)"
    )


def prewarm(url: str, table: str) -> None:
    """The table and its indexes into shared_buffers (pg_prewarm), as on a database that has
    served search for a while: right after a load the first searches read the HNSW index from
    the page cache (1M rows: "before" p50 4.8 ms cold, 2.6 ms warm), and a cold baseline
    would let pacing run at the full rate."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute(
            "SELECT pg_prewarm(c.oid) FROM pg_class c WHERE c.oid = %s::regclass "
            "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)",
            (table, table),
        )


def run_one(b: Bench, plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    # The loads (and the other run's backfill) leave GBs of dirty pages: flushed here, or the
    # checkpoint that writes them lands in this run's "before" or "during" (search p99 2-3x).
    checkpoint(b.url)
    prewarm(b.url, plan.table.name)
    api.adopt(b.settings, plan)
    with Load(b.url, plan, args.qps, 0 if args.search_client_first else None) as load:
        time.sleep(3.0)  # the load process starts, samples its vectors and warms up
        t_before = time.time()
        time.sleep(args.before)
        t_start = time.time()
        limit = args.max_seconds
        stop = (lambda: time.time() - t_start > limit) if limit else None
        pg, wk = postgres_pids(b.url), [w.pid for w in b.workers]
        srv = [b.server.pid] if b.server is not None else []
        cpu0 = (cpu_seconds(pg), cpu_seconds(wk), cpu_seconds(srv))
        res = backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.5, should_stop=stop))
        t_end = time.time()
        cpu1 = (cpu_seconds(pg), cpu_seconds(wk), cpu_seconds(srv))
        # "After": the workers stopped (a stopped paced backfill's queue would trickle on at
        # min_pace), the same load again: the machine's own drift over the run. A "before"
        # and an "after" far apart say that the ratio is the machine's noise, not pacing.
        b.stop_workers()
        t_after = time.time()
        time.sleep(args.before)
        t_after_end = time.time()
        records = load.finish()
    with psycopg.connect(b.url) as conn:
        events = [
            str(r[0])
            for r in conn.execute(
                "SELECT message FROM migrator.events WHERE migration = %s "
                "AND message LIKE 'pacing%%' ORDER BY id",
                (plan.name,),
            ).fetchall()
        ]
    before = window(records, t_before, t_start)
    during = window(records, t_start, t_end)
    after = window(records, t_after, t_after_end)
    seconds = t_end - t_start
    return {
        "before": before,
        "during": during,
        "after": after,
        "ratio_after": float(np.percentile(during, 99) / np.percentile(after, 99)),
        "ratio": float(np.percentile(during, 99) / np.percentile(before, 99)),
        "rows": res["rows_written"],
        "seconds": seconds,
        "rate": res["rows_written"] / seconds,
        "complete": bool(res.get("complete")),
        "events": events,
        # CPU seconds per second of the backfill: PostgreSQL (every backend: the searches
        # too), the workers, the embeddings server.
        "cpu": tuple((b1 - a) / seconds for a, b1 in zip(cpu0, cpu1, strict=True)),
    }


def _cpu(r: dict[str, Any]) -> str:
    return " / ".join(f"{c:.2f}" for c in r["cpu"])


def _rate(r: dict[str, Any]) -> str:
    part = "" if r["complete"] else f", stopped after {r['rows']:,} rows"
    return f"{r['rate']:.0f} rows/s ({r['seconds']:.0f} s{part})"


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--qps", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--before", type=float, default=20.0, help="seconds of load before")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop a backfill after this long (the rate and p99 are of the part done)",
    )
    ap.add_argument("--storage", choices=("column", "side_table"), default="side_table")
    ap.add_argument(
        "--only", choices=("unpaced", "paced"), default=None, help="run one of the two backfills"
    )
    ap.add_argument("--concurrency", type=int, default=None, help="backfill.concurrency")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a backfill.pacing setting of the paced run (repeatable), e.g. min_pace=0.02; "
        "start_pace=0.05 min_pace=0.05 max_p99_ratio=0.01 pause=false holds a fixed pace",
    )
    ap.add_argument(
        "--nice-clients",
        action="store_true",
        help="run the workers and the embeddings server at nice 19: on one machine they stand "
        "for the worker machines and the provider, which in production do not share the "
        "database's CPU (the searches and PostgreSQL keep their priority)",
    )
    ap.add_argument(
        "--shared-buffers",
        default=None,
        help="PostgreSQL's shared_buffers (default: the embedded server's 128MB, less than "
        "the source table and its HNSW index at 100k rows)",
    )
    ap.add_argument(
        "--search-client-first",
        action="store_true",
        help="run the search load's client at nice 0 (run the bench under `nice -n 10`): on "
        "one machine it stands for the search service, which in production has machines of "
        "its own; PostgreSQL's backends, the searches' too, keep the bench's priority",
    )
    ap.add_argument(
        "--no-checksums",
        action="store_true",
        help="data page checksums off (PostgreSQL 18 turns them on by default): readers then "
        "set hint bits without writing full-page images to the WAL",
    )
    args = ap.parse_args()
    texts = corpus_texts(args.rows)
    pg = {"shared_buffers": args.shared_buffers} if args.shared_buffers else {}
    common: dict[str, Any] = {"backfill__batch_size": args.batch_size}
    if args.concurrency:
        common["backfill__concurrency"] = args.concurrency
    paced_set = {
        f"backfill__pacing__{k}": _value(v) for k, v in (s.split("=", 1) for s in args.set)
    }
    with Bench(pg_settings=pg, no_checksums=args.no_checksums) as b:
        plans = {
            "unpaced": bench_plan(
                b.base_url,
                name="bench-unpaced",
                table="documents_a",
                backfill__pacing__enabled=False,
                target__storage=args.storage,
                **common,
            ),
            "paced": bench_plan(
                b.base_url,
                name="bench-paced",
                table="documents_b",
                backfill__pacing__enabled=True,  # the defaults, unless --set
                target__storage=args.storage,
                **common,
                **paced_set,
            ),
        }
        if args.only:
            plans = {args.only: plans[args.only]}
        for plan in plans.values():
            print(
                f"loading {args.rows:,} rows into {plan.table.name} (HNSW on the source)...",
                flush=True,
            )
            load_table(b.url, plan.table.name, texts, index=True)
        out: dict[str, dict[str, Any]] = {}
        for label, plan in plans.items():
            b.start_workers(plan.queue, args.workers)
            wait_workers_ready(b)
            if args.nice_clients:
                renice_trees([w.pid for w in b.workers] + ([b.server.pid] if b.server else []))
            print(f"{label}: backfill of {plan.table.name} under {args.qps:g} q/s...", flush=True)
            out[label] = run_one(b, plan, args)
            r = out[label]
            print(
                f"  {r['rows']:,} rows in {r['seconds']:.1f} s ({r['rate']:.0f} rows/s); "
                f"before {fmt(r['before'])}; during {fmt(r['during'])}; ratio {r['ratio']:.2f}; "
                f"after {fmt(r['after'])}",
                flush=True,
            )
            for e in r["events"]:
                print(f"    {e}")
    if args.only:
        r = out[args.only]
        print_figures(
            f"pacing, {args.only} only, {args.rows:,} rows, settings {args.set}",
            [
                ("before", fmt(r["before"])),
                ("during", fmt(r["during"])),
                ("after (workers stopped)", fmt(r["after"])),
                ("ratio p99 during / before", f"{r['ratio']:.2f}"),
                ("ratio p99 during / after", f"{r['ratio_after']:.2f}"),
                ("backfill rate", _rate(r)),
                ("CPU s/s: postgres, workers, server", _cpu(r)),
                ("shared_buffers", args.shared_buffers or "128MB (default)"),
            ],
        )
        return
    u, p = out["unpaced"], out["paced"]
    print_figures(
        f"pacing, {args.rows:,} rows (256 dims, HNSW on the source, storage {args.storage}), "
        f"{args.workers} workers, "
        f"{args.qps:g} q/s of k-NN through the view",
        [
            ("before (unpaced run)", fmt(u["before"])),
            ("during, no pacing", fmt(u["during"])),
            ("ratio p99 during / before, no pacing", f"{u['ratio']:.2f}"),
            ("before (paced run)", fmt(p["before"])),
            ("during, pacing (max_p99_ratio 1.5)", fmt(p["during"])),
            ("ratio p99 during / before, pacing", f"{p['ratio']:.2f}  (target <= 1.50)"),
            ("after, paced run (workers stopped)", fmt(p["after"])),
            ("ratio p99 during / after, pacing", f"{p['ratio_after']:.2f}"),
            ("backfill rate, no pacing", _rate(u)),
            ("backfill rate, pacing", _rate(p)),
            ("rate paced / unpaced", f"{p['rate'] / u['rate']:.2f}"),
            ("pacing events", str(len(p["events"]))),
            ("CPU s/s unpaced: postgres, workers, server", _cpu(u)),
            ("CPU s/s paced: postgres, workers, server", _cpu(p)),
            ("workers and server niced", "yes" if args.nice_clients else "no"),
            ("search client at nice 0", "yes" if args.search_client_first else "no"),
            ("shared_buffers", args.shared_buffers or "128MB (default)"),
        ],
    )


if __name__ == "__main__":
    main()
