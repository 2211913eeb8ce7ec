"""The worker's Celery app with a short Redis visibility timeout (seconds from
MIGRATOR_TEST_VISIBILITY_TIMEOUT), so a slow batch is redelivered while it still runs."""

from __future__ import annotations

import os

from migrator.worker.app import app

# kombu sweeps for expired messages every interval * throttle seconds (100 s by default).
app.conf.broker_transport_options = {
    "visibility_timeout": float(os.environ.get("MIGRATOR_TEST_VISIBILITY_TIMEOUT", "2")),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}

__all__ = ["app"]
