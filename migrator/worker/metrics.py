"""Prometheus metrics of the backfill workers, all prefixed `migrator_`.

Owns the metric objects only (created on first use, never at import). Values live in each
worker process: expose them with `serve(port)` from a threads-pool worker, or use
prometheus-client's multiprocess mode for prefork.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_seen: dict[str, int] = {"retries": 0, "rate_limited": 0}


def _get() -> dict[str, Any]:
    with _lock:
        if not _metrics:
            from prometheus_client import Counter, Histogram

            _metrics.update(
                rows=Counter(
                    "migrator_rows_embedded_total", "Rows written by the backfill", ["role"]
                ),
                dead=Counter(
                    "migrator_dead_letters_total", "Rows sent to the dead-letter table", ["role"]
                ),
                batches=Counter(
                    "migrator_batches_total", "Batches finished, by outcome", ["status"]
                ),
                seconds=Histogram("migrator_batch_seconds", "Wall time of one batch"),
                embed=Histogram(
                    "migrator_provider_seconds", "Time spent embedding one batch (all its requests)"
                ),
                retries=Counter("migrator_retries_total", "Embedding requests retried"),
                limited=Counter("migrator_rate_limited_total", "HTTP 429 answers received"),
                paced=Counter(
                    "migrator_pacing_wait_seconds_total",
                    "Seconds workers waited to keep the pace that protects search",
                ),
            )
        return _metrics


def batch_finished(out: Any, stats: Any) -> None:
    m = _get()
    m["batches"].labels(out.status).inc()
    m["rows"].labels(out.role).inc(out.written)
    m["dead"].labels(out.role).inc(out.dead)
    m["seconds"].observe(out.seconds)
    m["embed"].observe(out.embed_seconds)
    with _lock:
        for name, key in (("retries", "retries"), ("rate_limited", "limited")):
            now = int(getattr(stats, name))
            m[key].inc(max(0, now - _seen[name]))
            _seen[name] = now


def paced(seconds: float) -> None:
    if seconds > 0:
        _get()["paced"].inc(seconds)


def batch_retried() -> None:
    _get()["batches"].labels("retry").inc()


def batch_failed() -> None:
    _get()["batches"].labels("failed").inc()


def serve(port: int) -> None:
    from prometheus_client import start_http_server

    start_http_server(port)
