"""One budget: limits with no Redis every worker shares are refused (exit 15), and the only
local fallback (MIGRATOR_LOCAL_BUDGET=1) is a real token bucket."""

from __future__ import annotations

import pytest

from migrator.backfill import budget, work
from migrator.backfill.ratelimit import BURST, LocalLimiter
from migrator.config import load_settings
from migrator.errors import EXIT_CODES, BudgetError
from migrator.plan.model import Role
from migrator.worker.tasks import Runtime
from tests.backfill_helpers import unique_plan

RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
DEAD_REDIS = "redis://127.0.0.1:1/0"


def _plan(**kw: object):  # type: ignore[no-untyped-def]
    return unique_plan("http://127.0.0.1:9/v1", backfill__requests_per_minute=600, **kw)


def test_non_redis_broker_without_redis_url_is_refused_everywhere(tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = load_settings({"MIGRATOR_HOME": str(tmp_path), "CELERY_BROKER_URL": RABBIT})
    plan = _plan()
    with pytest.raises(BudgetError) as err:
        budget.require(st, plan)
    assert "MIGRATOR_REDIS_URL" in err.value.one_line() and err.value.exit_code == 15
    assert 15 in EXIT_CODES
    # A worker never falls back to "no limit": it refuses to build a limiter.
    rt = Runtime(0, st)
    with pytest.raises(BudgetError):
        rt.limiter(plan, work.role_spec(plan, Role.TARGET))


def test_unreachable_budget_redis_is_refused_unless_local_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"MIGRATOR_HOME": str(tmp_path), "CELERY_BROKER_URL": RABBIT}
    plan = _plan()
    st = load_settings({**env, "MIGRATOR_REDIS_URL": DEAD_REDIS})
    with pytest.raises(BudgetError, match="does not answer"):
        budget.require(st, plan)
    local = load_settings({**env, "MIGRATOR_REDIS_URL": DEAD_REDIS, "MIGRATOR_LOCAL_BUDGET": "1"})
    budget.require(local, plan)
    limiter = Runtime(0, local).limiter(plan, work.role_spec(plan, Role.TARGET))
    assert isinstance(limiter, LocalLimiter) and limiter.limits == (600, 0)


def test_local_bucket_is_a_real_bucket() -> None:
    now = [100.0]
    slept: list[float] = []
    lim = LocalLimiter(rpm=600, tpm=None, clock=lambda: now[0], sleep=slept.append)
    cap = max(600 * BURST, 1)
    granted = 0
    while lim.try_acquire(1, 0) == 0.0:
        granted += 1
        assert granted <= cap + 1
    assert granted == int(cap)
    wait = lim.try_acquire(1, 0)
    assert wait > 0
    now[0] += wait
    assert lim.try_acquire(1, 0) == 0.0
    # A pause ends with an empty bucket, not a burst.
    lim.pause(10)
    assert lim.try_acquire(1, 0) == pytest.approx(10)
    now[0] += 10
    assert lim.try_acquire(1, 0) > 0
