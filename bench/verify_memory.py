"""Peak memory of verify's exact ground truth: the streamed scan (data.scan_column with a
running top-k and running vector health) against the old whole-column load (data.load_column,
metrics.exact_topk, metrics.vector_health) as the baseline, at two table sizes, same run.

A table of N random unit vectors (256 dims, bigint keys) per size; each measurement runs in
its own process (peak RSS, VmHWM, is per process image and cannot be reset), which
computes the exact top-10 of 200 queries over the whole column and its health counts, and
prints its peak RSS, the RSS after imports (the interpreter, numpy, psycopg), and the seconds.

    .venv/bin/python bench/verify_memory.py [--rows 100000,1000000] [--queries 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIMS = 256
MB = 1024.0  # ru_maxrss is in kB on Linux


def _rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss survives execve, so a child started by
    a big parent would report the parent's size); ru_maxrss where /proc is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB


def child(url: str, table: str, mode: str, n_queries: int) -> None:
    """One measurement in this process; prints a JSON line."""
    import psycopg  # noqa: F401  (imported before the baseline RSS is read)

    from migrator.db.connect import connect
    from migrator.plan.model import Metric
    from migrator.verify import data
    from migrator.verify.metrics import exact_topk, vector_health
    from migrator.verify.streaming import RunningHealth, RunningTopK, chunk_rows
    from tests.helpers import demo_plan

    plan = demo_plan(table__name=table, target__model__dimensions=DIMS)
    queries = np.random.default_rng(5).standard_normal((n_queries, DIMS)).astype(np.float32)
    base = _rss_mb()
    t0 = time.perf_counter()
    with contextlib.closing(connect(url)) as conn:
        if mode == "streamed":
            top = RunningTopK(queries, 10, Metric.COSINE)
            health = RunningHealth(DIMS, normalized=True, norm_tol=1e-3)
            rows, keys = data.scan_column(
                conn,
                plan,
                "embedding_v2",
                DIMS,
                [top.add, health.add],
                top.positions,
                chunk_rows=chunk_rows(n_queries, DIMS),
            )
            first = [keys[int(p)] for p in top.pos[0]]
            bad = health.result().invalid
        else:
            col = data.load_column(conn, plan, "embedding_v2", DIMS)
            idx, _ = exact_topk(queries, col.matrix, 10, Metric.COSINE)
            rows = len(col.ids)
            first = [col.ids[int(j)] for j in idx[0]]
            bad = vector_health(col.matrix, DIMS, normalized=True, norm_tol=1e-3).invalid
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "rows": rows,
                "peak_mb": _rss_mb(),
                "base_mb": base,
                "seconds": seconds,
                "first_query_top10": first,
                "invalid": bad,
            }
        )
    )


def load(url: str, table: str, n: int) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(n)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, embedding vector(256), "
            "embedding_v2 vector(256))"
        )
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {table} (id, body, embedding_v2) FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["int8", "text", "vector"])
            for lo in range(0, n, 50_000):
                m = rng.standard_normal((min(50_000, n - lo), DIMS)).astype(np.float32)
                m /= np.linalg.norm(m, axis=1, keepdims=True)
                for i, v in enumerate(m):
                    cp.write_row((lo + i + 1, "x", v))
        conn.execute(f"VACUUM ANALYZE {table}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--home", default=None)
    ap.add_argument("--child", nargs=4, metavar=("URL", "TABLE", "MODE", "QUERIES"))
    args = ap.parse_args()
    if args.child:
        url, table, mode, nq = args.child
        child(url, table, mode, int(nq))
        return
    from migrator.db.embedded import embedded_database_url, stop_embedded_database

    home = Path(args.home or tempfile.mkdtemp(prefix="verify-mem-"))
    url = embedded_database_url(home)
    root = Path(__file__).resolve().parent.parent
    results: list[dict[str, object]] = []
    try:
        with __import__("psycopg").connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for n in (int(x) for x in args.rows.split(",")):
            table = f"mem_{n}"
            t = time.perf_counter()
            load(url, table, n)
            print(f"loaded {n:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for mode in ("streamed", "whole"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", url, table, mode, str(args.queries)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=root,
                    env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{n:>9,} rows {mode:>8}: peak {r['peak_mb']:8.1f} MB "
                    f"(after imports {r['base_mb']:.1f}), {r['seconds']:.1f} s",
                    file=sys.stderr,
                )
                results.append({"n": n, **r})
    finally:
        stop_embedded_database(home)
    by = {(r["n"], r["mode"]): r for r in results}
    sizes = sorted({int(r["n"]) for r in results})  # type: ignore[call-overload]
    print("\nfigures (peak RSS of the process, MB; work = peak - after imports)")
    for n in sizes:
        s, w = by[(n, "streamed")], by[(n, "whole")]
        same = s["first_query_top10"] == w["first_query_top10"]
        print(
            f"  {n:>9,} rows: streamed {s['peak_mb']:.0f} MB ({s['seconds']:.1f} s), "
            f"whole-column {w['peak_mb']:.0f} MB ({w['seconds']:.1f} s); streamed/whole "
            f"{float(s['peak_mb']) / float(w['peak_mb']):.2f}; same top-10: {same}"
        )
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for mode in ("streamed", "whole"):
            a, b = by[(lo, mode)], by[(hi, mode)]
            work_a = float(a["peak_mb"]) - float(a["base_mb"])
            work_b = float(b["peak_mb"]) - float(b["base_mb"])
            print(
                f"  {mode}: peak {hi:,}/{lo:,} = {float(b['peak_mb']) / float(a['peak_mb']):.2f} "
                f"(work {work_b / max(work_a, 1):.2f}); time {hi:,}/{lo:,} = "
                f"{float(b['seconds']) / float(a['seconds']):.2f}"
            )


if __name__ == "__main__":
    main()
