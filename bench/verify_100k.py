"""Time of `migrator verify` with a 500-query sample on 100k rows, and of each of its parts.

Builds `documents` (100k real docstrings: the stdlib's, then those of installed packages, then
single sentences of them to make up the count) in an embedded PostgreSQL, fills the old column
with local-hash-old (256 dims) and the new one with local-hash-new (384 dims) directly, then
runs verify twice: the first run builds the HNSW index, the second finds it and only measures.

    .venv/bin/python bench/verify_100k.py [--rows 100000] [--sample 500] [--home /tmp/mbench]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sysconfig
import time
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector

from migrator.config import load_settings
from migrator.db import state
from migrator.db.connect import connect, ensure_schema
from migrator.db.embedded import embedded_database_url
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.demo.corpus import load_docstrings
from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan, load_plan, parse_plan
from migrator.verify.run import VerifyFailed, VerifyOptions, verify

ROOT = Path(__file__).resolve().parent.parent
ROOTS = (None, sysconfig.get_paths()["purelib"], "/usr/lib/python3/dist-packages")


def corpus(n: int, cache: Path) -> list[str]:
    if cache.exists():
        texts: list[str] = [t for t in json.loads(cache.read_text()) if "\x00" not in t]
        if len(texts) >= n:
            return texts[:n]
    seen: dict[str, None] = {}
    for root in ROOTS:
        if root is None or Path(root).is_dir():
            for d in load_docstrings(stdlib=root):
                if "\x00" not in d.body:  # PostgreSQL text cannot hold NUL
                    seen.setdefault(d.body, None)
    for body in list(seen):  # sentences of longer documents make up the count
        if len(seen) >= n:
            break
        for s in re.split(r"(?<=[.!?])\s+", body)[1:]:
            if len(s) >= 60:
                seen.setdefault(s, None)
    texts = list(seen)
    cache.write_text(json.dumps(texts))
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} distinct texts found")
    return texts[:n]


def bench_plan() -> Plan:
    data = load_plan(ROOT / "plans" / "local-demo.yaml").model_dump(mode="json", by_alias=True)
    data["source"]["model"]["provider"] = data["target"]["model"]["provider"] = "local"
    data["name"] = "bench-verify"
    return parse_plan(data)


def build(url: str, plan: Plan, texts: list[str]) -> None:
    t0 = time.perf_counter()
    old = HashEmbedder("local-hash-old", 256).encode(texts)
    new = HashEmbedder("local-hash-new", 384).encode(texts)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, "
            "category text, embedding vector(256))"
        )
        with (
            conn.cursor() as cur,
            cur.copy("COPY documents (id, body, embedding) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "text", "vector"])
            for i, t in enumerate(texts):
                copy.write_row((i + 1, t, old[i]))
    ensure_schema(url)
    with contextlib.closing(connect(url)) as conn:
        Executor(conn).run(steps.expand(plan).forward, LockPolicy())
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE stage (id bigint, v vector(384)) ON COMMIT DROP")
            with conn.cursor() as cur, cur.copy("COPY stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "vector"])
                for i in range(len(texts)):
                    copy.write_row((i + 1, new[i]))
            conn.execute("UPDATE documents d SET embedding_v2 = s.v FROM stage s WHERE d.id = s.id")
        conn.execute("VACUUM ANALYZE documents")
        state.register(conn, plan, state.State.BACKFILLED)
    print(f"built {len(texts):,} rows with both columns in {time.perf_counter() - t0:.1f} s")


def run(url: str, home: Path, plan: Plan, sample: int) -> None:
    settings = load_settings({"DATABASE_URL": url, "MIGRATOR_HOME": str(home)})
    t0 = time.perf_counter()
    try:
        report = verify(settings, plan, VerifyOptions(sample=sample)).report
    except VerifyFailed as exc:
        report = exc.outcome.report
    total = time.perf_counter() - t0
    build = dict(report.index_build)
    print(f"verify: {total:.2f} s, passed={report.passed}, index {build.get('action')}")
    for part, secs in report.timings:
        print(f"  {part:<22} {secs:7.2f} s")
    for c in report.checks:
        print(f"  gate {c.key:<10} {c.status.value:<4} {c.summary}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=500)
    ap.add_argument("--home", type=Path, default=Path("/tmp/migrator-bench-verify"))
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    server = embedded_database_url(args.home)
    db = f"verify_bench_{args.rows}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    url = server.replace("/postgres?", f"/{db}?", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    t0 = time.perf_counter()
    texts = corpus(args.rows, args.home / "corpus.json")
    print(f"corpus: {len(texts):,} texts in {time.perf_counter() - t0:.1f} s")
    plan = bench_plan()
    build(url, plan, texts)
    print("first run (builds the index):")
    run(url, args.home, plan, args.sample)
    print("second run (index exists):")
    run(url, args.home, plan, args.sample)


if __name__ == "__main__":
    main()
