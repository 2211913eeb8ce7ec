"""Cost of change capture per row, on one table, same run, embedded PostgreSQL:
  workers' vector writes (the trigger fires on the new column and returns at once on the
      `migrator.writer` mark) against the same UPDATE with the trigger disabled;
  application text updates without a new old vector (the new function clears the new vector,
      queues the row and records the stale old vector) against the previous function (commit
      be952d0: clear and queue only) and against no trigger.
Each figure is the median of 3 runs of one UPDATE over every row, rolled back each time, after
one untimed pass of each.

    .venv/bin/python bench/capture_cost.py [--rows 20000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrator import steps  # noqa: E402
from migrator.db.connect import connect, ensure_schema  # noqa: E402
from migrator.db.embedded import embedded_database_url, stop_embedded_database  # noqa: E402
from migrator.db.executor import Executor, LockPolicy  # noqa: E402
from migrator.ddl import statements as q  # noqa: E402
from tests.backfill_helpers import make_documents  # noqa: E402
from tests.conftest import with_database  # noqa: E402
from tests.helpers import demo_plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    n = ap.parse_args().rows
    home = Path(tempfile.mkdtemp(prefix="capture-cost-"))
    try:
        run(embedded_database_url(home), n)
    finally:
        stop_embedded_database(home)


def run(base: str, n: int) -> None:
    with psycopg.connect(base, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS capture_cost WITH (FORCE)")
        c.execute("CREATE DATABASE capture_cost")
    url = with_database(base, "capture_cost")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
    make_documents(url, n)
    plan = demo_plan(source__model__provider="local", target__model__provider="local")
    ensure_schema(url)
    conn = connect(url)
    Executor(conn).run(steps.expand(plan).forward, LockPolicy())

    def per_row(stmt: str, setup: Any = None) -> float:
        runs = []
        for _ in range(3):
            with conn.transaction(force_rollback=True):
                if setup is not None:
                    conn.execute(setup)
                t = time.perf_counter()
                conn.execute(stmt)  # type: ignore[call-overload]
                runs.append(time.perf_counter() - t)
        return statistics.median(runs) * 1e6 / n

    fill = "UPDATE documents SET embedding_v2 = array_fill(0.05::real, ARRAY[384])::vector(384)"
    edit = "UPDATE documents SET body = body || ' edited'"
    trg = q.sql.Identifier(plan.trigger_name).as_string(conn)
    per_row(fill, q.mark_writer(plan)), per_row(edit)  # warm up: the first pass reads from disk
    w_mark = per_row(fill, q.mark_writer(plan))
    t_new = per_row(edit)
    conn.execute(f"ALTER TABLE documents DISABLE TRIGGER {trg}")  # type: ignore[call-overload]
    w_none, t_none = per_row(fill), per_row(edit)
    conn.execute(f"ALTER TABLE documents ENABLE TRIGGER {trg}")  # type: ignore[call-overload]
    old = subprocess.run(
        ["git", "-C", str(ROOT), "show", "be952d0:migrator/sql.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ns: dict[str, Any] = {}
    exec(compile(old, "sql.py@be952d0", "exec"), ns)
    conn.execute(ns["capture_function"](plan, (plan.target.column,)))
    t_old = per_row(edit)
    conn.close()
    print(f"{n:,} rows, microseconds per row (median of 3)")
    print(f"workers' vector write: no trigger {w_none:.1f}, trigger + writer mark {w_mark:.1f}")
    print(
        f"text update, old vector not rewritten: no trigger {t_none:.1f}, "
        f"previous function {t_old:.1f}, new function {t_new:.1f}"
    )


if __name__ == "__main__":
    main()
