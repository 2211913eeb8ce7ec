"""The producer's side of the broker: which broker and which Redis, the Celery configuration the
workers share, and the enqueuer that sends (migration, batch id) tasks.

CELERY_BROKER_URL, else the embedded Redis; the rate limiter's Redis is MIGRATOR_REDIS_URL, else
the broker when it is Redis, else the embedded Redis. Resolves URLs from `Settings` only (no
environment reads); starts the embedded Redis on demand. Creating an app connects to nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg

from migrator.backfill import ledger
from migrator.config import Settings
from migrator.db.embedded import embedded_redis_url
from migrator.errors import BrokerError
from migrator.plan.model import Plan

if TYPE_CHECKING:  # celery is imported when an app is made, not by every CLI command
    from celery import Celery

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def broker_url(settings: Settings) -> str:
    """The Celery broker: the configured one, else the embedded Redis (zero configuration)."""
    return settings.broker_url or embedded_redis_url(settings.home)


def limiter_redis_url(settings: Settings, *, start_embedded: bool = True) -> str | None:
    """A redis-py URL for the shared rate budget, or None when none is at hand.

    With `start_embedded=False` the embedded Redis is not started just for the limiter (the
    caller then falls back to a per-process pause).
    """
    if settings.redis_url:
        return to_redis_py(settings.redis_url)
    if settings.broker_url and is_redis(settings.broker_url):
        return to_redis_py(settings.broker_url)
    if settings.broker_url is None or start_embedded:
        return to_redis_py(embedded_redis_url(settings.home))
    return None


def to_redis_py(url: str) -> str:
    """Kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://") :]
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


TASK_NAME = "migrator.embed_batch"
# Redis redelivers an unacked message after this long even while it runs: keep it far above
# any task's time limit (which stays below the plan's stall_after_seconds).
VISIBILITY_TIMEOUT_S = 4 * 3600


def make_app(url: str) -> Celery:
    from celery import Celery

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


def queue_depth(app: Celery, url: str, queue: str) -> int | None:
    """Messages waiting in `queue` (not those reserved by workers); None if unknown."""
    try:
        with app.connection_for_write() as c:
            ok = c.default_channel.queue_declare(queue=queue, passive=True)
            return int(ok.message_count)
    except Exception:
        # Redis has no queue object: a missing list is an empty queue.
        return 0 if is_redis(url) else None


class Enqueuer:
    """Sends (migration, batch id) tasks onto the plan's queue, then records enqueued_at."""

    def __init__(self, url: str, plan: Plan, stall_after: float) -> None:
        self.url = url
        self.app: Celery = make_app(url)
        self.plan = plan
        # Below stall_after, so a batch running longer than that is surely dead, not slow.
        self.time_limit = max(5.0, stall_after * 0.9)
        self.sent = 0

    def send(self, conn: psycopg.Connection, ids: Sequence[int]) -> None:
        if not ids:
            return
        try:
            with self.app.producer_or_acquire() as producer:
                for batch_id in ids:
                    self.app.send_task(
                        TASK_NAME,
                        args=[self.plan.name, batch_id],
                        queue=self.plan.queue,
                        producer=producer,
                        time_limit=self.time_limit,
                        soft_time_limit=self.time_limit * 0.9,
                        ignore_result=True,
                    )
        except Exception as exc:
            raise BrokerError(
                f"cannot publish to the broker {redact(self.url)}: {exc}",
                hint="start the broker or fix CELERY_BROKER_URL; rerun to resume",
            ) from exc
        ledger.mark_enqueued(conn, ids)
        self.sent += len(ids)

    def queue_depth(self) -> int | None:
        """Messages waiting in the queue (not those reserved by workers); None if unknown."""
        return queue_depth(self.app, self.url, self.plan.queue)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
