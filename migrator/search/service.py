"""`migrator serve-search`: a small HTTP search service on migrator.search (the demo's service).

GET /search?q=...&k=..., GET /healthz, GET /metrics (Prometheus, names prefixed migrator_search_).
Each app owns its metrics registry and its SearchClient; nothing is created at import time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from migrator.errors import MigratorError
from migrator.search.client import SearchClient, as_rows

log = logging.getLogger(__name__)
MAX_K = 100


@dataclass
class Metrics:
    registry: CollectorRegistry
    latency: Histogram
    searches: Counter
    failed: Counter
    switch_retries: Counter
    mixed: Counter
    active: Gauge

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            latency=Histogram(
                "migrator_search_latency_seconds",
                "Search latency, end to end",
                registry=r,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            searches=Counter("migrator_search_searches_total", "Searches served", registry=r),
            failed=Counter("migrator_search_failed_total", "Searches that failed", registry=r),
            switch_retries=Counter(
                "migrator_search_model_switch_retries_total",
                "Searches re-embedded after a model switch",
                registry=r,
            ),
            mixed=Counter(
                "migrator_search_mixed_rows_total",
                "Result rows from another model than the query's (must stay 0)",
                registry=r,
            ),
            active=Gauge(
                "migrator_search_active_model",
                "1 for the model the view serves",
                ["fingerprint"],
                registry=r,
            ),
        )


def create_app(client: SearchClient, *, max_k: int = MAX_K) -> Starlette:
    """The HTTP app around `client`. Endpoints are sync: Starlette runs them in its threadpool."""
    metrics = Metrics.create()
    last_fp: list[str] = []

    def search(request: Request) -> Response:
        q = request.query_params.get("q", "")
        try:
            k = int(request.query_params.get("k", "10"))
        except ValueError:
            return JSONResponse({"error": "k must be an integer"}, status_code=400)
        if not q.strip():
            return JSONResponse({"error": "q is required"}, status_code=400)
        if not 1 <= k <= max_k:
            return JSONResponse({"error": f"k must be between 1 and {max_k}"}, status_code=400)
        t0 = time.perf_counter()
        metrics.searches.inc()
        try:
            result = client.search(q, k)
        except Exception as exc:  # every failure is counted and answered, never a crash
            metrics.failed.inc()
            log.warning("search failed: %s", exc)
            message = exc.one_line() if isinstance(exc, MigratorError) else str(exc)
            return JSONResponse({"error": message}, status_code=503)
        finally:
            metrics.latency.observe(time.perf_counter() - t0)
        metrics.switch_retries.inc(result.model_switch_retries)
        metrics.mixed.inc(result.mixed)
        _set_active(metrics, last_fp, result.fingerprint)
        return JSONResponse(
            {
                "model": result.fingerprint,
                "k": k,
                "retries": result.model_switch_retries,
                "bridge": result.bridge_id,  # new-model query mapped into the old column
                "elapsed_ms": round(result.elapsed_ms, 3),
                "results": _jsonable(as_rows(result)),
            }
        )

    def healthz(request: Request) -> Response:
        try:
            model = client.active_model(refresh=True)
        except Exception as exc:
            message = exc.one_line() if isinstance(exc, MigratorError) else str(exc)
            return JSONResponse({"ok": False, "error": message}, status_code=503)
        _set_active(metrics, last_fp, model.fingerprint)
        return JSONResponse(
            {
                "ok": True,
                "view": f"{model.view_schema}.{model.view_name}",
                "model": model.fingerprint,
                "column": model.column_name,
                "bridge": model.bridge_id,
            }
        )

    def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/search", search),
            Route("/healthz", healthz),
            Route("/metrics", metrics_endpoint),
        ]
    )
    app.state.client = client
    app.state.metrics = metrics
    return app


def _set_active(metrics: Metrics, last: list[str], fingerprint: str) -> None:
    if last and last[0] == fingerprint:
        return
    if last:
        metrics.active.labels(fingerprint=last[0]).set(0)
        last[0] = fingerprint
    else:
        last.append(fingerprint)
    metrics.active.labels(fingerprint=fingerprint).set(1)


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in row.items()
        }
        for row in rows
    ]


def serve(
    conninfo: str,
    view: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8766,
    environ: dict[str, str] | None = None,
    pool_size: int = 8,
) -> None:
    """Run the service in the foreground until interrupted."""
    client = SearchClient(conninfo, view=view, environ=environ, pool_size=pool_size)
    try:
        uvicorn.run(
            create_app(client),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    finally:
        client.close()
