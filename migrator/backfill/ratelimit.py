"""The request and token budget shared by every worker, as token buckets in Redis (one Lua
script, Redis's own clock), plus the shared pause a 429's Retry-After sets.

Owns rate limiting only: it never calls the provider. `NoLimiter` stands in when the plan sets
no limits and no Redis is at hand.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from migrator.embedding.errors import RetryableError

# A bucket holds BURST of a minute's budget and refills at the rest, so that no 60-second
# window (what providers count) ever sees more than the budget: burst + refill = 1 minute.
# The refill is the steady rate, so BURST is what a long run leaves unused: 10% measured
# 0.895 of a server's quota (bench/quota.py); 3% keeps room for a few requests in flight.
BURST = 0.03

# KEYS[1]: the bucket hash, KEYS[2]: grants by limits. ARGV: rpm, tpm (0 = unlimited),
# requests, tokens, burst.
# Returns milliseconds to wait (0 = granted and charged).
_ACQUIRE = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('HGET', key, 'pause') or '0')
if now < pause then return pause - now end
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local burst = tonumber(ARGV[5])
local names = {'r', 't'}
local levels = {}
local wait = 0
for i = 1, 2 do
  local limit = limits[i]
  if limit > 0 then
    local cap = math.max(limit * burst, 1)
    local rate = (limit - cap) / 60000.0
    if rate <= 0 then rate = limit / 60000.0 end
    local level = tonumber(redis.call('HGET', key, names[i]) or tostring(cap))
    local ts = tonumber(redis.call('HGET', key, names[i] .. 'ts') or tostring(now))
    level = math.min(cap, level + (now - ts) * rate)
    levels[i] = level
    -- A request bigger than the bucket goes when the bucket is full and leaves a debt.
    local need = math.min(costs[i], cap)
    if level < need then wait = math.max(wait, math.ceil((need - level) / rate)) end
  end
end
for i = 1, 2 do
  if limits[i] > 0 then
    local level = levels[i]
    if wait == 0 then level = level - costs[i] end
    redis.call('HSET', key, names[i], tostring(level), names[i] .. 'ts', tostring(now))
  end
end
redis.call('PEXPIRE', key, 600000)
if wait == 0 then
  -- Grants by the limits they were charged under: shows that every worker follows the plan.
  redis.call('HINCRBY', KEYS[2], ARGV[1] .. '/' .. ARGV[2], 1)
  redis.call('PEXPIRE', KEYS[2], 600000)
end
return wait
"""

# KEYS[1]: the bucket hash. ARGV: seconds. Everyone waits until then, and the buckets restart
# empty when the pause ends (level 0 stamped at the end, not now: stamped now, the bucket
# would refill during the pause and the pause would end in a burst of a full bucket).
_PAUSE = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + math.ceil(tonumber(ARGV[1]) * 1000)
local pause = tonumber(redis.call('HGET', key, 'pause') or '0')
if until_ms > pause then redis.call('HSET', key, 'pause', tostring(until_ms)) end
local ends = tostring(math.max(until_ms, pause))
redis.call('HSET', key, 'r', '0', 'rts', ends, 't', '0', 'tts', ends)
redis.call('PEXPIRE', key, 600000)
return math.max(until_ms, pause) - now
"""


# KEYS[1]: the bucket hash. ARGV: tpm, tokens, burst. Gives back tokens charged beyond what
# the server counted (the offline estimate is an upper bound), up to the bucket's capacity.
_REFUND = """
local key = KEYS[1]
local cap = math.max(tonumber(ARGV[1]) * tonumber(ARGV[3]), 1)
local level = tonumber(redis.call('HGET', key, 't') or tostring(cap))
redis.call('HSET', key, 't', tostring(math.min(cap, level + tonumber(ARGV[2]))))
return 0
"""


class Limiter(Protocol):
    def acquire(self, requests: int, tokens: int) -> None:
        """Block until the budget allows one request carrying `tokens`; charge it."""

    def pause(self, seconds: float) -> None:
        """Make every worker wait `seconds` (a 429's Retry-After)."""

    def refund(self, tokens: int) -> None:
        """Give back `tokens` charged but not used (the server counted fewer)."""


@dataclass
class NoLimiter:
    """No shared budget: acquire returns at once; a pause only delays this process."""

    sleep: Callable[[float], None] = time.sleep
    paused_until: float = 0.0

    def acquire(self, requests: int, tokens: int) -> None:
        wait = self.paused_until - time.monotonic()
        if wait > 0:
            self.sleep(wait)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def refund(self, tokens: int) -> None:
        return None


class LocalLimiter:
    """The same token buckets as the Redis script, in this process: a real budget (the
    fallback of MIGRATOR_LOCAL_BUDGET=1 when no Redis answers), never "no limit"."""

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self.limits = (rpm or 0, tpm or 0)
        now = clock()
        self.levels = [self._cap(lim) for lim in self.limits]
        self.ts = [now, now]
        self.paused_until = 0.0

    @staticmethod
    def _cap(limit: int) -> float:
        return max(limit * BURST, 1.0)

    def _rate(self, limit: int) -> float:
        rate = (limit - self._cap(limit)) / 60.0
        return rate if rate > 0 else limit / 60.0

    def try_acquire(self, requests: int, tokens: int) -> float:
        """Seconds to wait (0.0: granted and charged)."""
        with self._lock:
            now = self._clock()
            if now < self.paused_until:
                return self.paused_until - now
            costs = (max(requests, 1), max(tokens, 0))
            wait = 0.0
            for i, limit in enumerate(self.limits):
                if limit > 0:
                    cap, rate = self._cap(limit), self._rate(limit)
                    self.levels[i] = min(cap, self.levels[i] + (now - self.ts[i]) * rate)
                    self.ts[i] = now
                    need = min(costs[i], cap)
                    if self.levels[i] < need:
                        wait = max(wait, (need - self.levels[i]) / rate)
            if wait == 0.0:
                for i, limit in enumerate(self.limits):
                    if limit > 0:
                        self.levels[i] -= costs[i]
            return wait

    def acquire(self, requests: int, tokens: int) -> None:
        while True:
            wait = self.try_acquire(requests, tokens)
            if wait <= 0:
                return
            self._sleep(max(wait, 0.01))

    def pause(self, seconds: float) -> None:
        with self._lock:
            until = self._clock() + seconds
            self.paused_until = max(self.paused_until, until)
            # Empty when the pause ends: no burst afterwards.
            self.levels = [0.0, 0.0]
            self.ts = [self.paused_until, self.paused_until]

    def refund(self, tokens: int) -> None:
        with self._lock:
            if self.limits[1]:
                self.levels[1] = min(self._cap(self.limits[1]), self.levels[1] + tokens)


class RedisLimiter:
    """Token buckets for requests and tokens per minute under one Redis key.

    `rpm`/`tpm` None means unlimited on that axis (the pause still applies). `acquire`
    raises RetryableError after `max_wait` seconds so a starved task goes back to the queue.
    """

    def __init__(
        self,
        client: Any,
        key: str,
        *,
        rpm: int | None,
        tpm: int | None,
        max_wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.key = key
        self.rpm = rpm or 0
        self.tpm = tpm or 0
        self.max_wait = max_wait
        self._sleep = sleep
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._refund = client.register_script(_REFUND)
        self.waited = 0.0

    def try_acquire(self, requests: int, tokens: int) -> float:
        """Seconds to wait (0.0: granted and charged). A Redis that does not answer (a restart)
        is a RetryableError: the batch goes back to the queue, it is not failed for good."""
        import redis

        try:
            ms = self._acquire(
                keys=[self.key, self.key + ":grants"],
                args=[
                    self.rpm,
                    self.tpm,
                    max(requests, 1) if self.rpm else 0,
                    max(tokens, 0) if self.tpm else 0,
                    BURST,
                ],
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RetryableError(
                f"the Redis of the shared rate budget does not answer: {exc}", retry_after=2.0
            ) from exc
        return float(ms) / 1000.0

    def acquire(self, requests: int, tokens: int) -> None:
        deadline = time.monotonic() + self.max_wait
        while True:
            wait = self.try_acquire(1 if requests else 0, tokens)
            if wait <= 0:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RetryableError(
                    f"the shared rate budget had no room for {self.max_wait:.0f} s",
                    retry_after=min(wait, 60.0),
                )
            # A floor on the step keeps waiting workers from spinning on Redis.
            step = min(max(wait, 0.01), left)
            self.waited += step
            self._sleep(step)

    def pause(self, seconds: float) -> None:
        import redis

        if seconds > 0 and math.isfinite(seconds):
            # Best effort: without Redis the pause is not shared, and the next acquire says so.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self._pause(keys=[self.key], args=[seconds])

    def refund(self, tokens: int) -> None:
        import redis

        # Without it a tokens-per-minute budget is spent on the estimate (~2-3x the real count
        # for English text): 0.31 of a server's quota measured (bench/quota.py --scenario tpm).
        if self.tpm and tokens > 0:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self._refund(keys=[self.key], args=[self.tpm, int(tokens), BURST])


def bucket_key(migration: str, role: str) -> str:
    return f"migrator:ratelimit:{migration}:{role}"


def make_limiter(
    redis_url: str | None, migration: str, role: str, *, rpm: int | None, tpm: int | None
) -> Limiter:
    """The shared limiter when a Redis is at hand, else `NoLimiter` (the pause stays local)."""
    if redis_url is None:
        return NoLimiter()
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    return RedisLimiter(client, bucket_key(migration, role), rpm=rpm, tpm=tpm)
