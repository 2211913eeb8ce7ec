"""Provider quota use: the local server enforces requests- and tokens-per-minute quotas (60-s
sliding window, 429 + Retry-After beyond them); the plan sets the same budget; 4 workers.

After a warm-up (the first minute may use the buckets' initial burst), the server's counters
are read over one full quota window: admitted requests (or tokens) as a share of the quota, and
the share of requests answered 429. The backfill keeps running past the window; the script
stops it (and the workers) afterwards.

    .venv/bin/python bench/quota.py [--scenario rpm|tpm] [--warmup 30] [--window 60]
scenario rpm: 300 requests/min (tokens unlimited), 16 inputs per request.
scenario tpm: 150,000 tokens/min as the server counts them (requests unlimited).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, bench_plan, corpus_texts, load_table, print_figures, wait_workers_ready

from migrator.backfill import monitor as backfill

SCENARIOS = {
    "rpm": {"rpm": 300, "tpm": None},
    "tpm": {"rpm": None, "tpm": 150_000},
}


def counters(base_url: str) -> dict[str, int]:
    root = base_url.rsplit("/v1", 1)[0]
    data: dict[str, Any] = httpx.get(f"{root}/control", timeout=10).json()
    return {k: int(v) for k, v in data["counters"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="rpm")
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--inputs", type=int, default=16, help="max inputs per request")
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument(
        "--budget", type=float, default=1.0, help="plan budget as a share of the server's quota"
    )
    args = ap.parse_args()
    quota = SCENARIOS[args.scenario]
    texts = corpus_texts(args.rows)
    stop = threading.Event()
    with Bench(server_controls={k: v for k, v in quota.items() if v}) as b:
        overrides: dict[str, Any] = {
            "target__model__max_inputs_per_request": args.inputs,
            "backfill__batch_size": args.inputs * 4,
        }
        if quota["rpm"]:
            overrides["backfill__requests_per_minute"] = int(quota["rpm"] * args.budget)
        if quota["tpm"]:
            overrides["backfill__tokens_per_minute"] = int(quota["tpm"] * args.budget)
        plan = bench_plan(b.base_url, name="bench-quota", **overrides)
        load_table(b.url, plan.table.name, texts)
        b.start_workers(plan.queue, args.workers)
        wait_workers_ready(b)
        result: dict[str, Any] = {}

        def run() -> None:
            result.update(
                backfill.run(
                    b.settings, plan, backfill.Options(poll_seconds=0.5, should_stop=stop.is_set)
                )
            )

        thread = threading.Thread(target=run, daemon=True)
        t0 = time.monotonic()
        thread.start()
        time.sleep(args.warmup)
        c0, t1 = counters(b.base_url), time.monotonic()
        print(f"warm-up {t1 - t0:.0f} s: {c0}", flush=True)
        time.sleep(args.window)
        c1, t2 = counters(b.base_url), time.monotonic()
        print(f"window {t2 - t1:.1f} s: {c1}", flush=True)
        stop.set()
        thread.join(60)
        b.stop_workers()
    d = {k: c1[k] - c0.get(k, 0) for k in c1}
    minutes = (t2 - t1) / 60.0
    admitted = d["requests"] - d["rate_limited"] - d.get("rejected", 0) - d.get("server_errors", 0)
    limited_share = d["rate_limited"] / d["requests"] if d["requests"] else 0.0
    rows = [("server counters over the window", str(d))]
    if quota["rpm"]:
        share = admitted / (quota["rpm"] * minutes)
        rows.append(("admitted requests/min", f"{admitted / minutes:,.1f} of {quota['rpm']:,}"))
    else:
        # Requests are of equal size (fixed inputs per request), so admitted tokens are the
        # counted tokens in proportion to admitted requests.
        tokens = d["tokens"] * admitted / d["requests"] if d["requests"] else 0
        share = tokens / (quota["tpm"] * minutes)
        rows.append(
            ("admitted tokens/min (server count)", f"{tokens / minutes:,.0f} of {quota['tpm']:,}")
        )
    rows += [
        ("rows/s over the window", f"{d['inputs'] / (t2 - t1):,.0f} (incl. 429s)"),
        ("share of quota used", f"{share:.3f}  (target >= 0.95)"),
        ("share of requests answered 429", f"{limited_share:.4f}  (target <= 0.02)"),
    ]
    print_figures(
        f"quota use, scenario {args.scenario}, {args.workers} workers, "
        f"plan budget {args.budget:.2f} x quota",
        rows,
    )


if __name__ == "__main__":
    main()
