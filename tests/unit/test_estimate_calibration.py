"""The backfill's time from a calibration of the provider (plan live times a few requests)."""

from __future__ import annotations

import pytest

from migrator.plan.estimate import (
    ASSUMED_ROWS_PER_SECOND,
    DB_SECONDS_PER_ROW,
    Calibration,
    IndexSize,
    TableStorage,
    estimate,
)
from tests.helpers import demo_plan

ROWS = 100_000


def test_a_slow_provider_bounds_the_time_by_its_measured_rate() -> None:
    plan = demo_plan(backfill__concurrency=4)
    cal = Calibration(256, (0.9, 1.0, 5.0))  # a slow outlier: the median is read
    est = estimate(plan, ROWS, [50] * 10, calibration=cal, workers=2)
    # 2 workers x 4 requests in flight x 256 rows per second.
    assert est.seconds == pytest.approx(ROWS / (2 * 4 * 256 / 1.0), rel=0.01)
    assert est.bound_by == "the measured provider rate"
    assert est.as_dict()["calibration"] == {
        "requests": 3,
        "rows_per_request": 256,
        "median_seconds": 1.0,
    }
    # Half the workers, twice the time; uncalibrated, the assumed rate.
    assert estimate(plan, ROWS, [50] * 10, calibration=cal, workers=1).seconds == pytest.approx(
        est.seconds * 2, rel=0.01
    )
    assert estimate(plan, ROWS, [50] * 10).seconds == pytest.approx(
        ROWS / ASSUMED_ROWS_PER_SECOND, rel=0.01
    )


def test_a_fast_provider_leaves_the_database_as_the_bound() -> None:
    plan = demo_plan(target__storage="column")
    est = estimate(plan, ROWS, [50] * 10, calibration=Calibration(256, (0.001,) * 3), workers=8)
    assert est.seconds == pytest.approx(ROWS * DB_SECONDS_PER_ROW, rel=0.01)
    assert est.bound_by == "the database's writes"
    # The source's HNSW index adds its writes per row on top.
    storage = TableStorage(ROWS, 1, 0, (IndexSize("e", "hnsw", 1, 256, 64),), 1, None, "")
    indexed = estimate(
        plan, ROWS, [50] * 10, storage, calibration=Calibration(256, (0.001,) * 3), workers=8
    )
    assert indexed.seconds > est.seconds and "HNSW" in indexed.bound_by


def test_a_rate_limit_still_bounds_a_calibrated_estimate() -> None:
    plan = demo_plan(backfill__requests_per_minute=60, backfill__batch_size=100)
    est = estimate(plan, ROWS, [50] * 10, calibration=Calibration(100, (0.01,) * 3))
    assert est.bound_by == "requests per minute"
    assert est.seconds == pytest.approx(ROWS / 100, rel=0.01)  # 1,000 requests at 1/s
