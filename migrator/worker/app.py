"""The Celery app the workers start (`celery -A migrator.worker.app worker`).

The documented exception to "no environment reads at import": the broker comes from
CELERY_BROKER_URL, else the embedded Redis under MIGRATOR_HOME. Importing starts nothing: the
embedded Redis is started by the worker (or beat) process itself, on Celery's init signals.
The producer builds its own app with `celery_config.make_app(url)`.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from migrator.config import load_settings
from migrator.db.embedded import embedded_redis_socket_url, embedded_redis_url
from migrator.worker.celery_config import TASK_NAME, VISIBILITY_TIMEOUT_S, make_app

__all__ = ["TASK_NAME", "VISIBILITY_TIMEOUT_S", "app", "make_app"]

_settings = load_settings()
app = make_app(_settings.broker_url or embedded_redis_socket_url(_settings.home))


@signals.celeryd_init.connect  # type: ignore[untyped-decorator]
@signals.beat_init.connect  # type: ignore[untyped-decorator]
def _start_embedded_broker(**_: Any) -> None:
    """With no CELERY_BROKER_URL, this process is the one that needs the embedded Redis."""
    if _settings.broker_url is None:
        embedded_redis_url(_settings.home)


# Worker metrics endpoint (MIGRATOR_METRICS_PORT): connects to Celery signals on import.
import migrator.worker.monitoring  # noqa: E402, F401
from migrator.worker import beat  # noqa: E402

# The catch-up task, and a beat schedule when MIGRATOR_BEAT_PLANS names plan files.
beat.register(app, _settings.environ)
