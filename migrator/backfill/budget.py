"""One rate budget for all workers, or a refusal: where the shared token buckets live when the
plan sets limits, and the limiter a worker uses.

With `requests_per_minute` / `tokens_per_minute` set, the buckets live in MIGRATOR_REDIS_URL,
else the broker when it is Redis, else the embedded Redis when it is the broker too (one
machine). A non-Redis broker without MIGRATOR_REDIS_URL, or a Redis that does not answer, is a
`BudgetError` (exit 15) unless MIGRATOR_LOCAL_BUDGET=1 says this is one machine on purpose:
then the embedded Redis, or failing that an in-process bucket, is the budget.
"""

from __future__ import annotations

import logging

from migrator.backfill.broker import is_redis, limiter_redis_url, redact, to_redis_py
from migrator.backfill.ratelimit import Limiter, LocalLimiter, NoLimiter, make_limiter
from migrator.config import Settings
from migrator.db.embedded import embedded_redis_url
from migrator.errors import BudgetError
from migrator.plan.model import Plan

log = logging.getLogger(__name__)
HINT = (
    "set MIGRATOR_REDIS_URL to a Redis every worker reaches (or use a Redis broker); "
    "MIGRATOR_LOCAL_BUDGET=1 if all workers run on this one machine"
)


def limited(plan: Plan) -> bool:
    bf = plan.backfill
    return bf.requests_per_minute is not None or bf.tokens_per_minute is not None


def budget_url(settings: Settings, plan: Plan) -> str | None:
    """The redis-py URL of the shared budget of a plan with limits; BudgetError when there is
    no Redis all workers share. None only for a plan without limits and no Redis at hand."""
    if not limited(plan):
        return limiter_redis_url(settings, start_embedded=False)
    if settings.redis_url:
        return to_redis_py(settings.redis_url)
    if settings.broker_url and is_redis(settings.broker_url):
        return to_redis_py(settings.broker_url)
    if settings.broker_url is None or settings.local_budget:
        # The embedded Redis: the broker itself (one machine by construction), or local mode.
        return to_redis_py(embedded_redis_url(settings.home))
    raise BudgetError(
        f"rate limits are set but the broker {redact(settings.broker_url)} is not Redis and "
        "MIGRATOR_REDIS_URL is unset: each worker machine would get the whole budget",
        hint=HINT,
    )


def ping(url: str) -> str | None:
    """None when the Redis answers, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    finally:
        client.close()


def require(settings: Settings, plan: Plan) -> None:
    """Refuse (BudgetError) unless the plan's limits can be one budget that answers."""
    if not limited(plan):
        return
    try:
        url = budget_url(settings, plan)
    except BudgetError:
        raise
    except Exception as exc:  # the embedded Redis did not start
        if settings.local_budget:
            return  # local mode: an in-process bucket stands in
        raise BudgetError(f"the embedded Redis for the rate budget: {exc}", hint=HINT) from exc
    assert url is not None
    why = ping(url)
    if why is not None and not settings.local_budget:
        raise BudgetError(
            f"the Redis that holds the shared rate budget ({redact(url)}) does not answer: {why}",
            hint="start it, or fix MIGRATOR_REDIS_URL (else CELERY_BROKER_URL)",
        )


def limiter_for(settings: Settings, plan: Plan, role: str) -> Limiter:
    """The limiter of a worker: the shared buckets with the plan's limits; in local mode a
    real in-process bucket when no Redis answers; NoLimiter only for a plan without limits."""
    bf = plan.backfill
    rpm, tpm = bf.requests_per_minute, bf.tokens_per_minute
    url: str | None = None
    if not limited(plan):
        try:
            url = budget_url(settings, plan)
        except Exception as exc:  # pauses stay per process: nothing to enforce
            log.info("no Redis to share 429 pauses (%s)", exc)
        return make_limiter(url, plan.name, role, rpm=None, tpm=None) if url else NoLimiter()
    why: str | None = "no Redis"
    try:
        require(settings, plan)
        url = budget_url(settings, plan)
    except BudgetError:
        raise
    except Exception as exc:
        why = str(exc)
    else:
        why = ping(url) if url else "no Redis"
    if why is None and url is not None:
        return make_limiter(url, plan.name, role, rpm=rpm, tpm=tpm)
    # Only reached in local mode (require refused otherwise).
    log.warning("rate budget: no Redis answers (%s): an in-process bucket enforces it", why)
    return LocalLimiter(rpm=rpm, tpm=tpm)
