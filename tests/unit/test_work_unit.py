"""The unit of work's pure parts: retry decisions, in-request retries and the shared pause."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import psycopg
import pytest

from migrator.backfill.ratelimit import NoLimiter
from migrator.backfill.work import RetryingProvider, Stats, retry_delay, role_spec
from migrator.embedding import Limits, Provider, RetryableError
from migrator.embedding.base import Matrix
from migrator.embedding.errors import InputRejectedError, PermanentError, WrongCountError
from migrator.plan.model import RetrySpec
from tests.helpers import demo_plan

RETRY = RetrySpec(max_attempts=4, backoff_base_seconds=1.0, backoff_max_seconds=30.0)


class Flaky(Provider):
    """Fails with the given errors first, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.fingerprint = "flaky"
        self.dimensions = 3
        self.limits = Limits()
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return np.ones((len(texts), 3), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[:max_tokens]


class RecordingLimiter:
    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.acquired: list[tuple[int, int]] = []

    def acquire(self, requests: int, tokens: int) -> None:
        self.acquired.append((requests, tokens))

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_retry_delay_honours_retry_after_and_bounds_attempts() -> None:
    rng = random.Random(0)
    e429 = RetryableError("slow down", status=429, retry_after=7.5)
    delay = retry_delay(e429, 0, RETRY, rng)
    assert delay is not None and delay >= 7.5
    assert retry_delay(RetryableError("500"), 2, RETRY, rng) is not None
    assert retry_delay(RetryableError("500"), 3, RETRY, rng) is None  # 4 attempts in all
    assert retry_delay(WrongCountError("bad answer"), 0, RETRY, rng) is not None
    assert retry_delay(psycopg.OperationalError("gone"), 0, RETRY, rng) is not None
    assert retry_delay(PermanentError("401"), 0, RETRY, rng) is None
    assert retry_delay(InputRejectedError("400"), 0, RETRY, rng) is None


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    spec = RetrySpec(max_attempts=50, backoff_base_seconds=1.0, backoff_max_seconds=10.0)
    delays = [retry_delay(RetryableError("x"), i, spec, rng) for i in range(30)]
    assert all(d is not None and 0.05 <= d <= 10.0 for d in delays)
    assert max(d for d in delays if d is not None) > 5.0  # jitter spreads up to the cap


def test_a_429_pauses_the_shared_budget_then_the_request_succeeds() -> None:
    inner = Flaky([RetryableError("429", status=429, retry_after=2.0)])
    limiter = RecordingLimiter()
    stats = Stats()
    slept: list[float] = []
    p = RetryingProvider(inner, limiter, RETRY, stats, sleep=slept.append)
    out = p.embed(["ab", "cde"])
    assert out.shape == (2, 3) and inner.calls == 2
    assert limiter.pauses == [2.0] and slept == []  # the pause is shared, not a local sleep
    assert limiter.acquired == [(1, 5)]  # the retry is charged to the budget
    assert stats.retries == 1 and stats.rate_limited == 1


def test_the_last_in_place_429_still_pauses_every_worker() -> None:
    # Three 429s in a row: the task gives up in place (its retry goes back as a task), but the
    # last Retry-After is recorded in the shared budget like the others, so the other workers
    # wait it out too (before, only the first two were: the others sent inside the third).
    waits = [1.0, 1.5, 2.5]
    inner = Flaky([RetryableError("429", status=429, retry_after=w) for w in waits])
    limiter = RecordingLimiter()
    p = RetryingProvider(inner, limiter, RETRY, Stats(), sleep=lambda _s: None)
    with pytest.raises(RetryableError):
        p.embed(["x"])
    assert inner.calls == 3 and limiter.pauses == waits


def test_server_errors_back_off_locally_and_give_up_after_three() -> None:
    inner = Flaky([RetryableError("503", status=503)] * 3)
    slept: list[float] = []
    p = RetryingProvider(inner, NoLimiter(), RETRY, Stats(), sleep=slept.append)
    with pytest.raises(RetryableError):
        p.embed(["x"])
    assert inner.calls == 3 and len(slept) == 2


def test_roles_pick_column_and_model() -> None:
    plan = demo_plan()
    t, s = role_spec(plan, "target"), role_spec(plan, "source")
    assert (t.column, t.model.name) == ("embedding_v2", "local-hash-new")
    assert (s.column, s.model.name) == ("embedding", "local-hash-old")
    with pytest.raises(ValueError):
        role_spec(plan, "other")


def test_no_limiter_pause_delays_only_this_process() -> None:
    slept: list[float] = []
    lim = NoLimiter(sleep=slept.append)
    lim.acquire(1, 10)
    assert slept == []
    lim.pause(0.5)
    lim.acquire(1, 10)
    assert len(slept) == 1 and 0.4 < slept[0] <= 0.5


def test_an_unreachable_budget_redis_is_retryable_not_fatal() -> None:
    """A Redis restart while a batch waits for the shared budget: the batch is retried later
    (it failed for good with redis' ConnectionError, which no retry rule knew)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from migrator.backfill.ratelimit import RedisLimiter

    # Nothing listens on port 1; no client-side retries, so the test is quick.
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisLimiter(client, "migrator:ratelimit:test:target", rpm=60, tpm=None)
    with pytest.raises(RetryableError) as err:
        limiter.acquire(1, 10)
    assert "Redis" in err.value.one_line()
    assert retry_delay(err.value, 0, RETRY) is not None
    limiter.pause(1.0)  # best effort: a pause that cannot be shared is not an error
    limiter.refund(5)
