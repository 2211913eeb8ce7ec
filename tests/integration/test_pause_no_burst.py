"""A pause (a 429's Retry-After) ends with empty buckets, not a burst: against a real Redis."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from migrator.backfill.ratelimit import BURST, RedisLimiter

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def test_pause_ends_with_an_empty_bucket() -> None:
    client = redis.Redis.from_url(REDIS)
    key = f"migrator:ratelimit:test-{uuid.uuid4().hex[:8]}"
    rpm = 600
    cap = max(rpm * BURST, 1)  # 18 requests
    rate = (rpm - cap) / 60.0  # refill per second
    lim = RedisLimiter(client, key, rpm=rpm, tpm=None)
    try:
        lim.pause(2.0)
        assert lim.try_acquire(1, 0) > 0  # paused: nothing is granted
        # Wait for the end of the pause by Redis's own clock, without asking for anything.
        pause_ms = int(client.hget(key, "pause") or 0)
        while True:
            sec, usec = client.time()
            if sec * 1000 + usec // 1000 >= pause_ms:
                break
            time.sleep(0.02)
        ended = time.monotonic()
        granted = 0
        while lim.try_acquire(1, 0) == 0.0:
            granted += 1
            assert granted <= cap
        since_end = time.monotonic() - ended
        # Only what refilled after the pause ended (plus one) may go: a full bucket (18) would
        # be the burst the pause must not end in.
        assert granted <= 1 + rate * (since_end + 0.1) and granted < cap / 2, granted
    finally:
        client.delete(key, key + ":grants")
