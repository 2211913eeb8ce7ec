"""The peer: Timescale's pgai Vectorizer worker on the same corpus, database and embeddings server.

pgai lives in its own venv (never the project's): create it once with
    python3 -m venv /tmp/pgai-venv
    /tmp/pgai-venv/bin/pip install 'pgai[vectorizer-worker]==0.12.1'
`pgai install` puts its SQL (schema `ai`) into the bench database; each configuration gets a
fresh copy of the table and a vectorizer (no chunking, `ai.embedding_openai(..., base_url =>`
the local server), no index, no scheduling), then `pgai vectorizer worker --once` runs until the
queue is empty. Offline, tiktoken reads the encodings pgai bundles (TIKTOKEN_CACHE_DIR).
Then, in the same run, migrator's backfill on another copy (2 workers) for the ratio.

    .venv/bin/python bench/pgai_peer.py --rows 20000 [--pgai /tmp/pgai-venv]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill_throughput import migrator_run
from common import (
    Bench,
    bench_plan,
    checkpoint,
    corpus_texts,
    load_table,
    print_figures,
    spread,
    wait_workers_ready,
)

# (destination, batch_size, concurrency, worker processes): pgai's defaults are batch 50,
# concurrency 1, one process; its workers share the queue with FOR UPDATE SKIP LOCKED.
CONFIGS = [
    ("column", 50, 1, 1),
    ("column", 500, 4, 1),
    ("table", 500, 2, 1),
    ("table", 1000, 4, 1),
    ("table", 500, 2, 2),
    ("table", 1000, 2, 2),
    ("column", 500, 2, 2),
]


def pgai_install(venv: Path, url: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "pgai"), "install", "-d", url],
        check=True,
        capture_output=True,
        timeout=300,
    )


def tiktoken_dir(venv: Path) -> str:
    found = list((venv / "lib").glob("python3*/site-packages/pgai/vectorizer/tiktoken_cache"))
    if not found:
        raise SystemExit(f"no tiktoken_cache in {venv}: is pgai[vectorizer-worker] installed?")
    return str(found[0])


def create_vectorizer(
    url: str, table: str, base_url: str, dest: str, batch: int, concurrency: int
) -> int:
    destination = (
        "ai.destination_column('embedding_v2')" if dest == "column" else "ai.destination_table()"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT ai.create_vectorizer(%s::regclass, name => %s, "
            "loading => ai.loading_column('body'), "
            "embedding => ai.embedding_openai('local-hash-new', 256, "
            "  api_key_name => 'OPENAI_API_KEY', base_url => %s), "
            "chunking => ai.chunking_none(), formatting => ai.formatting_python_template(), "
            "indexing => ai.indexing_none(), scheduling => ai.scheduling_none(), "
            f"destination => {destination}, "
            "processing => ai.processing_default(batch_size => %s, concurrency => %s))",
            (table, table, base_url, batch, concurrency),
        ).fetchone()
    assert row is not None
    return int(row[0])


def pending(url: str, vid: int) -> int:
    """Exact queue length (ai.vectorizer_status caps its estimate above 10,000 items)."""
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        where = conn.execute(
            "SELECT queue_schema, queue_table FROM ai.vectorizer WHERE id = %s", (vid,)
        ).fetchone()
        assert where is not None
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(where[0], where[1]))
        ).fetchone()
    return int(row[0]) if row else 0


def written(url: str, table: str, dest: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        if dest == "column":
            q = f"SELECT count(*) FROM {table} WHERE embedding_v2 IS NOT NULL"
        else:
            q = f"SELECT count(DISTINCT id) FROM {table}_embedding_store"
        row = conn.execute(q).fetchone()
    return int(row[0]) if row else 0


def run_pgai(
    b: Bench, venv: Path, table: str, vid: int, concurrency: int, procs: int, n: int
) -> dict[str, float]:
    """Run `procs` workers --once; poll the queue to time the processing window."""
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": "bench",
        "TIKTOKEN_CACHE_DIR": tiktoken_dir(venv),
        "HOME": str(b.home),
    }
    log = open(b.home / f"pgai-{table}.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    workers = [
        subprocess.Popen(
            [
                str(venv / "bin" / "pgai"),
                "vectorizer",
                "worker",
                "-d",
                b.url,
                "--once",
                "-i",
                str(vid),
                "-c",
                str(concurrency),
                "--log-level",
                "WARN",
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        for _ in range(procs)
    ]
    first = None
    while any(w.poll() is None for w in workers):
        left = pending(b.url, vid)
        if first is None and left < n:
            first = time.monotonic()
        time.sleep(0.1)
    t_end = time.monotonic()
    log.close()
    if any(w.returncode != 0 for w in workers):
        tail = (b.home / f"pgai-{table}.log").read_text(errors="replace")[-800:]
        raise SystemExit(f"a pgai worker failed: {tail}")
    return {"wall_s": t_end - t0, "first_progress_s": (first or t_end) - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--pgai", type=Path, default=Path("/tmp/pgai-venv"))
    ap.add_argument("--configs", default="all", help="comma-separated indexes into CONFIGS")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the home (logs) afterwards")
    args = ap.parse_args()
    if not (args.pgai / "bin" / "pgai").exists():
        raise SystemExit(f"pgai is not installed in {args.pgai} (see this script's docstring)")
    configs = (
        CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    )
    texts = corpus_texts(args.rows)
    eligible = sum(1 for t in texts if t.strip())
    results: list[tuple[str, float, float]] = []
    with Bench(keep=args.keep) as b:
        pgai_install(args.pgai, b.url)
        for i, (dest, batch, conc, procs) in enumerate(configs):
            table = f"pgai_{i}"
            load_table(b.url, table, texts)
            if dest == "table":  # its view joins the source's columns with `embedding`
                with psycopg.connect(b.url, autocommit=True) as conn:
                    conn.execute(f"ALTER TABLE {table} RENAME embedding TO embedding_old")
            vid = create_vectorizer(b.url, table, b.base_url, dest, batch, conc)
            checkpoint(b.url)
            r = run_pgai(b, args.pgai, table, vid, conc, procs, eligible)
            done = written(b.url, table, dest)
            rate = done / r["wall_s"]
            steady = done / max(1e-9, r["wall_s"] - r["first_progress_s"])
            label = f"pgai {dest} batch {batch} c {conc} x {procs} proc"
            results.append((label, rate, steady))
            print(
                f"{label}: {done:,} rows in {r['wall_s']:.1f} s = {rate:,.0f} rows/s "
                f"(after the first batch: {steady:,.0f} rows/s)",
                flush=True,
            )
        plan = bench_plan(b.base_url, name="bench-peer", table="docs_peer")
        b.start_workers(plan.queue, args.workers)
        load_table(b.url, "docs_peer", texts)
        wait_workers_ready(b)
        checkpoint(b.url)
        res = migrator_run(b, "docs_peer", "bench-peer")
        mig = res["rows_written"] / res["seconds"]
        print(
            f"migrator: {res['rows_written']:,} rows in {res['seconds']:.1f} s = {mig:,.0f} rows/s",
            flush=True,
        )
    best = max(results, key=lambda r: r[2])
    rows = [
        (label, f"{rate:,.0f} rows/s (steady {steady:,.0f})") for label, rate, steady in results
    ]
    rows += [
        ("migrator backfill, 2 workers", f"{mig:,.0f} rows/s"),
        ("best pgai (steady, generous)", best[0]),
        ("ratio migrator / best pgai", spread([mig / best[2]], 2)),
        ("target", ">= 2.00"),
    ]
    print_figures(f"peer: pgai vectorizer worker vs migrator, {args.rows:,} rows, 256 dims", rows)


if __name__ == "__main__":
    main()
