"""Prometheus endpoint of a Celery worker: set MIGRATOR_METRICS_PORT to expose /metrics.

Prefork children each hold their own counters, so the worker runs prometheus-client in
multiprocess mode: children write to PROMETHEUS_MULTIPROC_DIR and the main process serves
the sum. Connected to Celery's `worker_init` signal (main process, before the pool forks).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from celery import signals

log = logging.getLogger(__name__)


def start_metrics_server(port: int) -> str:
    """Serve the workers' metrics on `port`; returns the multiprocess directory used."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="migrator-metrics-")
        # Set before prometheus_client is first imported, so forked children inherit the
        # multiprocess value class.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    return directory


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(**_: Any) -> None:
    port = os.environ.get("MIGRATOR_METRICS_PORT")
    if not port:
        return
    try:
        directory = start_metrics_server(int(port))
        log.info("metrics on :%s (multiprocess dir %s)", port, directory)
    except (OSError, ValueError) as exc:  # a busy port must not stop the worker
        log.warning("cannot serve metrics on %r: %s", port, exc)


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
