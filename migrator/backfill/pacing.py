"""Pacing that protects search, the pure part: the controller that turns a probe's latency into a
pace (a share of the full backfill rate, 0 = paused), and the duty cycle a worker keeps at a pace.

Pure: no database, no broker, no clock of its own (callers pass `sleep` and `clock`). The probe
and the stored pace live in `backfill.probe`; the worker calls `Pacer` before every batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migrator.plan.model import PacingSpec

# Over the limit the pace halves (down to min_pace, then a pause); under it the pace grows by
# half of itself per probe, at most a tenth of the full rate: from a low pace (the rate a
# loaded database allows may be a few percent) it climbs in steps its own size, not in jumps of
# 0.1 that would overshoot it tenfold. Only below HOLD_BAND of the limit does it grow: a p99
# under the limit but above the band holds the pace, so noise near the limit does not make it
# swing. The pace then settles where the probes read 0.75-1.0 of the limit, a margin for the
# p99 over the whole backfill: with a band at 0.9 that sat at ~1.06x the limit (300k rows,
# docs/benchmarks.md 7d), the probes' excursions over it before each halving included.
DECREASE = 0.5
INCREASE = 0.1
GROWTH = 0.5
HOLD_BAND = 0.75
# The p99 a decision reads is over the probes since the pace last changed, the last WINDOW of
# them: the p99 of one 50-query probe is its slowest query or nearly, so one slow query would
# throttle. Slowing down reads the newest probe at once; speeding up waits for GROW_AFTER
# probes at the pace (quick to protect search, slow to load it again).
WINDOW = 3
GROW_AFTER = 2

FULL, THROTTLED, PAUSED, OFF = "full", "throttled", "paused", "off"


def label(pace: float | None) -> str:
    if pace is None:
        return OFF
    if pace <= 0:
        return PAUSED
    return FULL if pace >= 1 else THROTTLED


def p99(latencies_ms: Sequence[float]) -> float:
    """The 99th percentile (linear interpolation, as numpy's default) of one probe."""
    if not latencies_ms:
        return math.nan
    xs = sorted(latencies_ms)
    pos = 0.99 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


@dataclass(frozen=True)
class Decision:
    pace: float
    ratio: float
    # The change of label this decision makes ("throttled", "paused", "resumed", "full"; the
    # Controller's "futile": resumed because pausing did not help), None when the label stays (the pace may still move within "throttled").
    change: str | None


def decide(pace: float, ratio: float, spec: PacingSpec, *, settled: bool = True) -> Decision:
    """The next pace from the current one and the probe's p99 / baseline p99. `settled`:
    enough probes at this pace to speed up on (unsettled, a ratio under the limit holds).

    A NaN ratio (no sample) keeps the pace. Over the limit: halve, not below `min_pace`; at
    `min_pace` already, pause (unless `spec.pause` is false). Under HOLD_BAND of the limit:
    a paused backfill resumes at `min_pace` (never at the pace it had: no burst after a
    pause), a throttled one grows by GROWTH of itself (at most INCREASE) up to the full rate.
    """
    pace = min(max(pace, 0.0), 1.0)
    if math.isnan(ratio):
        return Decision(pace, ratio, None)
    if ratio > spec.max_p99_ratio:
        if pace > spec.min_pace:
            new = max(spec.min_pace, pace * DECREASE)
        elif spec.pause:
            new = 0.0
        else:
            new = spec.min_pace
    elif ratio <= spec.max_p99_ratio * HOLD_BAND and settled:
        new = spec.min_pace if pace <= 0 else min(1.0, pace + min(INCREASE, pace * GROWTH))
    else:
        new = pace
    new = round(new, 4)
    before, after = label(pace), label(new)
    if before == after:
        change = None
    elif before == PAUSED:
        change = "resumed"
    else:
        change = after
    return Decision(new, ratio, change)


class Window:
    """The latencies of the last `WINDOW` probes at the current pace; `reset` when it changes
    (what was measured at another pace says nothing about this one)."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.probes: list[list[float]] = []

    def add(self, latencies_ms: Sequence[float]) -> None:
        self.probes = [*self.probes, list(latencies_ms)][-self.size :]

    def p99(self) -> float:
        return p99([x for probe in self.probes for x in probe])

    @property
    def settled(self) -> bool:
        return len(self.probes) >= GROW_AFTER

    def reset(self) -> None:
        self.probes = []


class Controller:
    """`decide` with a memory: how long the backfill has been paused. Paused for
    `max_pause_seconds` with search still over the limit, pausing does not help (nothing of
    the backfill runs: the slowness is someone else's), so it goes on at `min_pace` without
    pausing ("futile") until a probe is back under the hold band."""

    def __init__(self, spec: PacingSpec, pace: float = 1.0) -> None:
        self.spec, self.pace = spec, pace
        self.paused_since: float | None = None
        self.futile = False

    def update(self, ratio: float, now: float, *, settled: bool = True) -> Decision:
        if self.pace <= 0 and self.paused_since is None:
            self.paused_since = now  # paused before this controller (a restarted coordinator)
        spec = self.spec.model_copy(update={"pause": False}) if self.futile else self.spec
        d = decide(self.pace, ratio, spec, settled=settled)
        over = not math.isnan(ratio) and ratio > self.spec.max_p99_ratio
        if (
            self.pace <= 0
            and over
            and self.paused_since is not None
            and now - self.paused_since >= self.spec.max_pause_seconds
        ):
            self.futile = True
            d = Decision(self.spec.min_pace, ratio, "futile")
        elif not math.isnan(ratio) and ratio <= self.spec.max_p99_ratio * HOLD_BAND:
            self.futile = False
        if d.pace <= 0 and self.pace > 0:
            self.paused_since = now
        elif d.pace > 0:
            self.paused_since = None
        self.pace = d.pace
        return d


class Pacer:
    """A worker process's duty cycle at the shared pace: before a batch it waits so that its
    busy share is the pace (a batch that took B seconds is followed by B * (1/pace - 1) idle),
    and while paused it waits for the pause to end. Every process on every machine does the
    same, so the whole backfill runs at `pace` of its full rate, whatever the worker count.

    `read()` returns the pace now (None: not pacing). After a pause the idle time counts from
    the pause's end, so a resumed backfill starts at its (low) pace, not with a burst.
    """

    def __init__(
        self,
        read: Callable[[], float | None],
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        poll: float = 1.0,
    ) -> None:
        self.read, self._sleep, self._clock, self.poll = read, sleep, clock, poll
        self.last_busy = 0.0  # seconds the previous batch took
        self.last_end: float | None = None  # when it ended
        self.waited = 0.0  # seconds spent waiting, in all

    def wait(self, max_wait: float) -> bool:
        """Wait until this process may start its next batch; False when still paused after
        `max_wait` seconds (the caller hands the batch back). The idle wait is re-read every
        `poll` seconds: a raised pace shortens it, a pause extends it."""
        t0 = self._clock()
        paused_seen = False
        while True:
            pace = self.read()
            now = self._clock()
            if pace is None or pace >= 1:
                return True
            if pace <= 0:
                paused_seen = True
                if now - t0 >= max_wait:
                    return False
                self._nap(min(self.poll, max_wait - (now - t0)))
                continue
            if paused_seen:
                self.last_end, paused_seen = now, False  # the idle time counts from the end
            start = self.last_end if self.last_end is not None else now
            due = start + self.last_busy * (1.0 / pace - 1.0)
            if now >= due or now - t0 >= max_wait:
                return True
            self._nap(min(self.poll, due - now, max_wait - (now - t0)))

    def _nap(self, seconds: float) -> None:
        seconds = max(seconds, 0.001)
        self.waited += seconds
        self._sleep(seconds)

    def done(self, busy_seconds: float) -> None:
        """Record the batch just finished (its wall time), at its end."""
        self.last_busy = max(0.0, busy_seconds)
        self.last_end = self._clock()
