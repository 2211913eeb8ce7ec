"""Pacing's controller and the worker's duty cycle (pure: a fake clock, no database)."""

from __future__ import annotations

import math

import pytest

from migrator.backfill import pacing
from migrator.backfill.pacing import Pacer, decide
from migrator.plan.model import PacingSpec

SPEC = PacingSpec(max_p99_ratio=1.5, min_pace=0.1)


def test_over_the_limit_halves_down_to_the_floor_then_pauses() -> None:
    paces, changes = [], []
    pace = 1.0
    for _ in range(6):
        d = decide(pace, 3.0, SPEC)
        pace = d.pace
        paces.append(pace)
        changes.append(d.change)
    assert paces == [0.5, 0.25, 0.125, 0.1, 0.0, 0.0]
    assert changes == ["throttled", None, None, None, "paused", None]


def test_no_pause_keeps_the_floor() -> None:
    spec = PacingSpec(min_pace=0.2, pause=False)
    d = decide(0.2, 10.0, spec)
    assert d.pace == 0.2 and d.change is None


def test_a_pause_resumes_at_the_floor_then_grows_to_full() -> None:
    d = decide(0.0, 1.0, SPEC)
    assert d.pace == SPEC.min_pace and d.change == "resumed"
    pace, paces, changes = d.pace, [], []
    for _ in range(14):
        d = decide(pace, 1.0, SPEC)
        pace = d.pace
        paces.append(pace)
        changes.append(d.change)
    assert pace == 1.0
    assert changes.count("full") == 1 and changes[-1] is None
    # By half of itself while that is under a tenth of the full rate, then by a tenth.
    assert paces[:4] == pytest.approx([0.15, 0.225, 0.325, 0.425])


def test_from_a_low_pace_the_climb_is_in_steps_of_its_own_size() -> None:
    """The rate a loaded database allows may be a few percent: growth by a fixed 0.1 from
    0.02 would jump 6x past it and halve back, never settling near it."""
    spec = PacingSpec(max_p99_ratio=1.5, min_pace=0.01)
    pace, paces = 0.02, []
    for _ in range(4):
        pace = decide(pace, 1.0, spec).pace
        paces.append(pace)
    assert paces == pytest.approx([0.03, 0.045, 0.0675, 0.10125], abs=1e-4)
    for a, b in zip([0.02, *paces], paces, strict=False):
        assert b <= 1.5 * a + 1e-4  # the pace is rounded to 4 digits


def test_near_the_limit_holds_and_nan_keeps() -> None:
    # Between 0.75 of the limit and the limit: hold (noise near the limit does not swing it).
    assert decide(0.4, 1.4, SPEC).pace == 0.4
    assert decide(0.4, 1.5, SPEC).pace == 0.4  # at the limit is not over it
    assert decide(0.4, 1.3, SPEC).pace == 0.4
    assert decide(0.4, 1.1, SPEC).pace == 0.5
    d = decide(0.4, math.nan, SPEC)
    assert d.pace == 0.4 and d.change is None
    # A paused backfill stays paused while over the limit and in the hold band.
    assert decide(0.0, 1.45, SPEC).pace == 0.0


@pytest.mark.parametrize(
    ("pace", "ratio"), [(p / 20, r / 4) for p in range(0, 21, 3) for r in range(1, 20, 3)]
)
def test_the_pace_stays_within_0_and_1_and_above_the_floor_unless_paused(
    pace: float, ratio: float
) -> None:
    d = decide(pace, ratio, SPEC)
    assert 0.0 <= d.pace <= 1.0
    assert d.pace == 0.0 or d.pace >= SPEC.min_pace or d.pace == pace
    if ratio > SPEC.max_p99_ratio:
        assert d.pace <= pace
    else:
        assert d.pace >= pace


def test_p99_and_median() -> None:
    assert pacing.p99(list(range(1, 101))) == pytest.approx(99.01)
    assert math.isnan(pacing.p99([]))
    assert pacing.median([3.0, 1.0, math.nan, 2.0]) == 2.0
    assert pacing.label(None) == "off" and pacing.label(0.0) == "paused"
    assert pacing.label(0.3) == "throttled" and pacing.label(1.0) == "full"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _pacer(clock: Clock, paces: list[float | None]) -> Pacer:
    """A pacer that reads `paces[0]` (the test changes it)."""
    return Pacer(lambda: paces[0], sleep=clock.sleep, clock=clock, poll=1.0)


def test_duty_cycle_idles_busy_times_one_over_pace_minus_one() -> None:
    clock, paces = Clock(), [0.25]
    p = _pacer(clock, paces)
    assert p.wait(60) and clock.now == 100.0  # nothing ran yet: no debt
    clock.now += 2.0  # a 2 s batch
    p.done(2.0)
    t0 = clock.now
    assert p.wait(60)
    assert clock.now - t0 == pytest.approx(6.0)  # 2 * (1/0.25 - 1): busy 25% of the time
    paces[0] = None  # not pacing: no wait at all
    p.done(2.0)
    t0 = clock.now
    assert p.wait(60) and clock.now == t0


def test_a_raised_pace_shortens_the_wait() -> None:
    clock, paces = Clock(), [0.1]
    p = _pacer(clock, paces)
    p.done(3.0)  # at 0.1: 27 s of idle due

    def raise_after_two_naps(s: float) -> None:
        clock.now += s
        if clock.now - 100.0 >= 2.0:
            paces[0] = 1.0

    p._sleep = raise_after_two_naps
    assert p.wait(60)
    assert clock.now - 100.0 == pytest.approx(2.0)


def test_paused_waits_then_hands_back_and_resumes_without_a_burst() -> None:
    clock, paces = Clock(), [0.0]
    p = _pacer(clock, paces)
    p.done(2.0)
    assert not p.wait(10)  # still paused after 10 s: the caller hands the batch back
    assert clock.now - 100.0 == pytest.approx(10.0)

    def resume_after_5(s: float) -> None:
        clock.now += s
        if clock.now - t0 >= 5.0:
            paces[0] = 0.1

    t0 = clock.now
    p._sleep = resume_after_5
    assert p.wait(120)
    # Paused 5 s, then the full idle of the floor pace counted from the resume (2 * 9 = 18 s),
    # not from the previous batch (that debt was paid during the pause: a burst).
    assert clock.now - t0 == pytest.approx(5.0 + 18.0)


def test_the_idle_wait_is_capped() -> None:
    clock, paces = Clock(), [0.1]
    p = _pacer(clock, paces)
    p.done(100.0)  # 900 s due at 0.1
    assert p.wait(30)
    assert clock.now - 100.0 == pytest.approx(30.0)


def test_the_probe_is_the_services_query_through_the_view() -> None:
    from migrator.ddl import statements as q
    from migrator.plan.model import VectorType
    from tests.helpers import demo_plan

    plan = demo_plan()
    text = q.probe_query(plan, VectorType.VECTOR).as_string(None)
    view = f'"{plan.view_schema}"."{plan.view.name}"'
    assert text == (
        f'SELECT "embedding" <=> %(q)s::vector AS distance FROM {view} '
        """WHERE "embedding_model" = %(fp)s AND "embedding" IS NOT NULL """
        'ORDER BY "embedding" <=> %(q)s::vector LIMIT %(k)s'
    )


def test_status_line() -> None:
    from migrator.cli.render import pacing_line

    pc = {
        "enabled": True,
        "state": "throttled",
        "pace": 0.25,
        "baseline_p99_ms": 2.5,
        "last_p99_ms": 4.05,
        "ratio": 1.62,
        "max_p99_ratio": 1.5,
        "stale": False,
    }
    assert pacing_line(pc) == (
        "pacing: throttled to 25% (search p99 4.05 ms = 1.62x the baseline p99 2.5 ms; limit 1.5x)"
    )
    assert pacing_line({**pc, "state": "paused", "pace": 0.0}).startswith("pacing: PAUSED (")
    assert "stopped probing" in pacing_line({**pc, "stale": True})
    assert pacing_line({**pc, "enabled": False}).startswith("pacing: disabled")


def test_a_pause_that_does_not_help_goes_on_at_the_floor_until_search_recovers() -> None:
    spec = PacingSpec(max_p99_ratio=1.5, min_pace=0.1, max_pause_seconds=60)
    ctl = pacing.Controller(spec, 0.1)
    d = ctl.update(3.0, now=0.0)
    assert d.pace == 0.0 and d.change == "paused"
    assert ctl.update(3.0, now=59.0).pace == 0.0  # not yet
    d = ctl.update(3.0, now=60.0)  # paused 60 s and search is still slow: not our doing
    assert d.pace == 0.1 and d.change == "futile" and ctl.futile
    for t in (65.0, 70.0, 75.0):  # still over: the floor, no pause
        assert ctl.update(3.0, now=t).pace == 0.1
    assert ctl.update(1.0, now=80.0).pace == pytest.approx(0.15)  # under: normal again
    assert not ctl.futile
    ctl.update(3.0, now=85.0)
    assert ctl.update(3.0, now=90.0).pace == 0.0  # pauses again once over at the floor


def test_a_controller_started_paused_counts_the_pause_from_its_first_probe() -> None:
    ctl = pacing.Controller(PacingSpec(max_pause_seconds=10), 0.0)
    assert ctl.update(5.0, now=100.0).pace == 0.0
    assert ctl.update(5.0, now=110.0).change == "futile"


def test_speeding_up_waits_for_two_probes_at_the_pace_slowing_down_does_not() -> None:
    assert decide(0.2, 1.0, SPEC, settled=False).pace == 0.2  # under, one probe: hold
    assert decide(0.2, 1.0, SPEC, settled=True).pace == pytest.approx(0.3)
    assert decide(0.2, 3.0, SPEC, settled=False).pace == 0.1  # over: at once
    assert decide(0.0, 1.0, SPEC, settled=False).pace == 0.0  # a pause ends settled too


def test_the_window_reads_p99_over_the_probes_since_the_pace_changed() -> None:
    w = pacing.Window()
    assert math.isnan(w.p99()) and not w.settled
    probe = [2.0] * 49 + [9.0]  # one slow query in 50: the probe's own p99 is 5.6 ms
    assert pacing.p99(probe) > 5.0
    w.add(probe)
    assert not w.settled
    w.add([2.0] * 50)
    w.add([2.0] * 50)
    # Over 150 queries one slow one is under the 99th percentile.
    assert w.settled and w.p99() == pytest.approx(2.0)
    w.add([3.0] * 50)  # the oldest probe leaves
    assert len(w.probes) == 3 and w.p99() == pytest.approx(3.0)
    w.reset()
    assert not w.settled and math.isnan(w.p99())
