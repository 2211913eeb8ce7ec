"""Backfill throughput (rows/s) against the write limit of the same database, same run.

For each repetition, two identical tables are loaded from the corpus (local-hash-old@256):
  write limit: the target vectors (local-hash-new@256, computed beforehand, not timed) written
      by a plain loop: binary COPY of 1,000 rows into a staging table + one UPDATE ... FROM, one
      transaction per 1,000 rows. No queue, no HTTP.
  migrator: `backfill.run` (expand, produce, 2 Celery worker processes, OpenAI client -> local
      embeddings server, compare-and-set writes, the sweep that declares completion).
CPU seconds per component (server, workers, PostgreSQL, this process) show where time goes.

    .venv/bin/python bench/backfill_throughput.py --rows 20000 [--repeat 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

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
    spread,
    wait_workers_ready,
)

from migrator.backfill import monitor as backfill
from migrator.embedding.local import HashEmbedder


def write_limit(
    url: str, table: str, texts: list[str], chunk: int = 1000, naive: bool = False
) -> float:
    """rows/s of the plain COPY + UPDATE loop writing precomputed vectors into a new column.

    Not `naive`: with the join plan forced to primary-key probes, as migrator writes; the
    planner's own choice hashes the whole table per chunk (quadratic in the table size).
    """
    vecs = HashEmbedder("local-hash-new", 256).encode(texts)
    tbl = sql.Identifier(table)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN embedding_v2 vector(256)").format(tbl))
        conn.execute("CREATE TEMP TABLE wl_stage (pk bigint, v vector(256)) ON COMMIT DELETE ROWS")
        update = sql.SQL(
            "UPDATE {} t SET embedding_v2 = s.v FROM wl_stage s WHERE t.id = s.pk"
        ).format(tbl)
        t0 = time.perf_counter()
        for lo in range(0, len(texts), chunk):
            with conn.transaction():
                if not naive:  # the plan migrator's write uses (see migrator/work.py)
                    conn.execute("SET LOCAL enable_hashjoin = off")
                    conn.execute("SET LOCAL enable_mergejoin = off")
                with (
                    conn.cursor() as cur,
                    cur.copy("COPY wl_stage (pk, v) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    cp.set_types(["int8", "vector"])
                    for i in range(lo, min(lo + chunk, len(texts))):
                        cp.write_row((i + 1, vecs[i]))
                conn.execute(update)
        seconds = time.perf_counter() - t0
    return len(texts) / seconds


def start_profilers(pids: dict[str, list[int]], out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy (from PY_SPY, default /tmp/prof-venv/bin/py-spy) on the server and workers:
    collapsed stacks, one file per component, for `summarise_profile`."""
    exe = os.environ.get("PY_SPY", "/tmp/prof-venv/bin/py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for label in ("server", "workers"):
        for pid in pids[label]:
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--subprocesses",
                        "--rate",
                        "200",
                        "--gil",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "-o",
                        str(out / f"{label}-{pid}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    time.sleep(1.0)
    return procs


def migrator_run(
    b: Bench, table: str, name: str, profile: Path | None = None, **overrides: Any
) -> dict[str, Any]:
    plan = bench_plan(b.base_url, name=name, table=table, **overrides)
    pids = {
        "server": [b.server.pid] if b.server else [],
        "workers": [p.pid for p in b.workers],
        "postgres": postgres_pids(b.url),
    }
    profilers = start_profilers(pids, profile) if profile else []
    before = {k: cpu_seconds(v) for k, v in pids.items()}
    import resource

    self0 = resource.getrusage(resource.RUSAGE_SELF)
    res = backfill.run(b.settings, plan, backfill.Options(poll_seconds=0.2))
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {k: cpu_seconds(v) - before[k] for k, v in pids.items()}
    for p in profilers:
        p.send_signal(signal.SIGINT)
        p.wait(30)
    cpu["producer"] = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    res["cpu"] = cpu
    res["timeline"] = timeline(b.url, name)
    if not res.get("complete"):
        raise SystemExit(f"backfill did not complete: {res}")
    return res


def timeline(url: str, name: str) -> dict[str, float]:
    """From the ledger: the span workers were busy, and the mean batch time."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(claimed_at)), "
            "extract(epoch FROM avg(finished_at - claimed_at)), "
            "extract(epoch FROM min(claimed_at) - (SELECT max(at) FROM migrator.events "
            "  WHERE migration = %s AND message = 'backfill started')), count(*) "
            "FROM migrator.batches WHERE migration = %s",
            (name, name),
        ).fetchone()
        gap = conn.execute(
            "SELECT extract(epoch FROM avg(gap)) FROM (SELECT claimed_at - lag(finished_at) "
            "OVER (PARTITION BY claimed_by ORDER BY claimed_at) AS gap FROM migrator.batches "
            "WHERE migration = %s) g",
            (name,),
        ).fetchone()
    assert row is not None and gap is not None
    return {
        "work_s": round(float(row[0] or 0), 2),
        "batch_s": round(float(row[1] or 0), 3),
        "gap_s": round(float(gap[0] or 0), 3),
        "first_claim_s": round(float(row[2] or 0), 2),
        "batches": int(row[3] or 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1, help="-c of each worker process")
    ap.add_argument(
        "--naive-limit",
        action="store_true",
        help="write limit with the planner's own join plan (a hash join)",
    )
    ap.add_argument(
        "--index",
        action="store_true",
        help="an HNSW index on the source column of both tables, as in production",
    )
    ap.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra celery worker flag, e.g. --worker-arg=--prefetch-multiplier=2",
    )
    ap.add_argument("--profile", type=Path, help="write py-spy stacks of server and workers here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="plan override, e.g. backfill__batch_size=1000 (repeatable)",
    )
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    for item in args.set:
        k, v = item.split("=", 1)
        overrides[k] = int(v) if v.isdigit() else v
    texts = corpus_texts(args.rows)
    wl: list[float] = []
    mig: list[float] = []
    ratios: list[float] = []
    with Bench() as b:
        for r in range(args.repeat):
            name = f"bench-r{r}"
            queue = bench_plan(b.base_url, name=name).queue
            b.start_workers(queue, args.workers, args.concurrency, args.worker_arg)
            load_table(b.url, f"wl_{r}", texts, index=args.index)
            load_table(b.url, f"docs_{r}", texts, index=args.index)
            wait_workers_ready(b)
            checkpoint(b.url)
            limit = write_limit(b.url, f"wl_{r}", texts, naive=args.naive_limit)
            checkpoint(b.url)
            prof = args.profile / f"run{r}" if args.profile else None
            res = migrator_run(b, f"docs_{r}", name, prof, **overrides)
            b.stop_workers()
            rate = res["rows_written"] / res["seconds"]
            wl.append(limit)
            mig.append(rate)
            ratios.append(rate / limit)
            cpu = " ".join(f"{k}={v:.1f}s" for k, v in res["cpu"].items())
            print(
                f"run {r + 1}: write limit {limit:,.0f} rows/s; migrator {rate:,.0f} rows/s "
                f"({res['rows_written']:,} rows in {res['seconds']:.1f} s, "
                f"{res['retries']} retries); ratio {rate / limit:.2f}; cpu {cpu}; "
                f"ledger {res['timeline']}",
                flush=True,
            )
    print_figures(
        f"backfill throughput, {args.rows:,} rows, {args.workers} workers x "
        f"-c {args.concurrency}, 256 dims" + (", HNSW on the source column" if args.index else ""),
        [
            ("write limit (rows/s)", spread(wl)),
            ("migrator backfill (rows/s)", spread(mig)),
            ("ratio migrator / write limit", spread(ratios, 2)),
            ("target", ">= 0.60"),
        ],
    )


if __name__ == "__main__":
    main()
