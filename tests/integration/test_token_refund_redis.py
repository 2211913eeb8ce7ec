"""The shared token bucket takes refunds (tokens charged by estimate, not counted by the server),
never above its capacity: against a real Redis."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from migrator.backfill.ratelimit import RedisLimiter

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def test_refund_refills_the_token_bucket_up_to_its_capacity() -> None:
    client = redis.Redis.from_url(REDIS)
    key = f"migrator:ratelimit:test-refund-{uuid.uuid4().hex[:8]}"
    lim = RedisLimiter(client, key, rpm=None, tpm=6000)  # holds 3% of a minute: 180 tokens
    try:
        assert lim.try_acquire(1, 180) == 0.0
        assert lim.try_acquire(1, 100) > 0.0
        lim.refund(100)
        assert lim.try_acquire(1, 100) == 0.0
        lim.refund(10_000)  # more than the bucket holds: it is full, not overfull
        assert lim.try_acquire(1, 180) == 0.0
        assert lim.try_acquire(1, 50) > 0.0
        RedisLimiter(client, key + ":r", rpm=60, tpm=None).refund(100)  # no token budget: no-op
        assert client.exists(key + ":r") == 0
    finally:
        client.delete(key, key + ":r")


_CHILD = """
import sys, redis
from migrator.backfill.ratelimit import RedisLimiter
client = redis.Redis.from_url(sys.argv[1])
RedisLimiter(client, sys.argv[2], rpm=None, tpm=None).acquire(1, 10)
sec, usec = client.time()
print(sec * 1000 + usec // 1000)
"""


def test_a_pause_set_by_one_process_holds_every_other_process() -> None:
    # What "Retry-After pauses every worker" means, checked without any timing assumption:
    # another process's acquire returns no earlier than the pause's end on Redis's own clock.
    import subprocess
    import sys

    client = redis.Redis.from_url(REDIS)
    key = f"migrator:ratelimit:test-pause-{uuid.uuid4().hex[:8]}"
    try:
        RedisLimiter(client, key, rpm=None, tpm=None).pause(1.5)
        until = int(client.hget(key, "pause"))  # type: ignore[arg-type]
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, REDIS, key],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert int(out.stdout.strip()) >= until
    finally:
        client.delete(key)
