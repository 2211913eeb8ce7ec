"""Celery configuration shared by the workers' app and the producer: no app is created here.

Pure configuration: importing this module starts nothing and reads no environment.
"""

from __future__ import annotations

from celery import Celery

from migrator.backfill.broker import is_redis

TASK_NAME = "migrator.embed_batch"
# Redis redelivers an unacked message after this long even while it runs: keep it far above
# any task's time limit (which stays below the plan's stall_after_seconds).
VISIBILITY_TIMEOUT_S = 4 * 3600


def make_app(url: str) -> Celery:
    app = Celery("migrator", broker=url, include=["migrator.worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue="migrator.default",
        # Defaults for tasks sent without limits; the producer sends each batch with limits
        # derived from the plan's stall_after_seconds.
        task_soft_time_limit=540,
        task_time_limit=570,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=(
            {"visibility_timeout": VISIBILITY_TIMEOUT_S} if is_redis(url) else {}
        ),
    )
    return app
