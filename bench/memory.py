"""Peak resident memory of the producer (`migrator backfill PLAN --workers 0`, its own process)
and of the worker processes (Celery main + pool children), at 20k and at 200k rows.

Each size gets a fresh table, plan and workers in the same embedded services; RSS is sampled
every 0.1 s with psutil. Memory should not grow with the table: the ratio 200k/20k is the figure.

    .venv/bin/python bench/memory.py [--rows 20000,200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bench,
    RssSampler,
    bench_plan,
    corpus_texts,
    load_table,
    print_figures,
    wait_workers_ready,
)

from migrator.worker.launch import worker_env

MB = 1024 * 1024


def measure(b: Bench, n: int, texts: list[str]) -> dict[str, float]:
    table = f"docs_{n}"
    plan = bench_plan(b.base_url, name=f"bench-mem-{n}", table=table)
    path = b.home / f"plan-{n}.json"  # JSON is YAML: the CLI reads it as a plan file
    path.write_text(json.dumps(plan.model_dump(mode="json", by_alias=True)))
    load_table(b.url, table, texts)
    b.start_workers(plan.queue, 2)
    wait_workers_ready(b)
    sampler = RssSampler()
    for i, w in enumerate(b.workers):
        sampler.watch(f"worker{i}", w.pid)
    log = open(b.home / f"producer-{n}.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    producer = subprocess.Popen(
        [sys.executable, "-m", "migrator", "backfill", str(path), "--workers", "0", "--json"],
        env=worker_env(b.settings),
        stdout=log,
        stderr=log,
    )
    sampler.watch("producer", producer.pid)
    sampler.start()
    rc = producer.wait()
    peak = sampler.stop()
    log.close()
    b.stop_workers()
    if rc != 0:
        tail = (b.home / f"producer-{n}.log").read_text(errors="replace")[-600:]
        raise SystemExit(f"backfill exited {rc}: {tail}")
    seconds = time.monotonic() - t0
    out = {
        "producer": peak.get("producer", 0) / MB,
        "worker main": max(peak.get(f"worker{i}", 0) for i in range(2)) / MB,
        "worker child": max(peak.get(f"worker{i}/child", 0) for i in range(2)) / MB,
        "seconds": seconds,
    }
    print(
        f"{n:,} rows in {seconds:.1f} s: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in out.items() if k != "seconds"),
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="20000,200000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    results = {}
    with Bench() as b:
        for n in sizes:
            print(f"loading {n:,} rows...", flush=True)
            results[n] = measure(b, n, corpus_texts(n))
    lo, hi = results[sizes[0]], results[sizes[-1]]
    rows = []
    for k in ("producer", "worker main", "worker child"):
        rows.append(
            (
                f"peak RSS {k} (MB)",
                " / ".join(f"{results[n][k]:.0f}" for n in sizes)
                + f"  at {' / '.join(f'{n:,}' for n in sizes)} rows; ratio "
                f"{hi[k] / lo[k]:.2f}",
            )
        )
    rows.append(("target", "flat (ratio ~1.0)"))
    print_figures("memory of the backfill", rows)


if __name__ == "__main__":
    main()
