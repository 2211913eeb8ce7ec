"""Which broker and which Redis: CELERY_BROKER_URL, else the embedded Redis; the rate limiter's
Redis is MIGRATOR_REDIS_URL, else the broker when it is Redis, else the embedded Redis.

Resolves URLs from `Settings` only (no environment reads); starts the embedded Redis on demand.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from migrator.config import Settings
from migrator.db.embedded import embedded_redis_url

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
