"""The backfill's time from a calibration of the provider (plan live times a few requests)."""

from __future__ import annotations

import pytest

from migrator.plan.estimate import (
    ASSUMED_ROWS_PER_SECOND,
    BACKFILL_FIXED_SECONDS,
    DB_SECONDS_PER_ROW_COLUMN,
    DB_SECONDS_PER_ROW_SIDE,
    Calibration,
    IndexSize,
    TableStorage,
    estimate,
)
from tests.helpers import demo_plan

ROWS = 100_000


def test_a_slow_provider_bounds_the_time_by_its_measured_rate() -> None:
    plan = demo_plan(backfill__concurrency=4, target__storage="column")
    cal = Calibration(256, (0.9, 1.0, 5.0))  # a slow outlier: the median is read
    est = estimate(plan, ROWS, [50] * 10, calibration=cal, workers=2)
    # A 500-row batch is 2 requests of 256 rows, both in flight: 2 x 256 rows a second in a
    # worker; then the worker writes its batch; 2 workers side by side, after the fixed part.
    embed = 1 / (2 * 256 / 1.0)
    per_row = (embed + DB_SECONDS_PER_ROW_COLUMN) / 2
    assert est.seconds == pytest.approx(BACKFILL_FIXED_SECONDS + ROWS * per_row, rel=0.01)
    assert est.bound_by == "the measured provider rate"
    assert est.as_dict()["calibration"] == {
        "requests": 3,
        "rows_per_request": 256,
        "median_seconds": 1.0,
        "concurrent_requests": None,
        "concurrent_seconds": None,
        "parallelism": 1.0,
    }
    # Half the workers, twice the time (the fixed part aside); uncalibrated, the assumed rate.
    one = estimate(plan, ROWS, [50] * 10, calibration=cal, workers=1).seconds
    assert one - BACKFILL_FIXED_SECONDS == pytest.approx(
        (est.seconds - BACKFILL_FIXED_SECONDS) * 2, rel=0.01
    )
    assert estimate(plan, ROWS, [50] * 10).seconds == pytest.approx(
        ROWS / ASSUMED_ROWS_PER_SECOND, rel=0.01
    )


def test_a_provider_that_serves_one_request_at_a_time_gains_nothing_from_concurrency() -> None:
    plan = demo_plan(backfill__concurrency=4)
    serial = Calibration(256, (1.0,) * 3, concurrent=(4, 4.0))  # 4 at once took 4x one
    parallel = Calibration(256, (1.0,) * 3, concurrent=(4, 1.0))
    half = Calibration(256, (1.0,) * 3, concurrent=(4, 2.0))  # twice as fast as in a row
    assert serial.parallelism == 0.0 and parallel.parallelism == 1.0
    assert half.parallelism == pytest.approx(1 / 3)
    assert serial.rows_per_second(8) == pytest.approx(256)
    assert parallel.rows_per_second(8) == pytest.approx(8 * 256)
    # Within a worker the batch's 2 requests share the process as the calibration's did.
    slow = estimate(plan, ROWS, [50] * 10, calibration=serial, workers=2).seconds
    fast = estimate(plan, ROWS, [50] * 10, calibration=parallel, workers=2).seconds
    per_row = (1 / 256 + DB_SECONDS_PER_ROW_COLUMN) / 2
    assert slow == pytest.approx(BACKFILL_FIXED_SECONDS + ROWS * per_row, rel=0.01)
    assert fast < slow * 0.6


def test_a_fast_provider_leaves_the_database_as_the_bound() -> None:
    plan = demo_plan(target__storage="column")
    cal = Calibration(256, (0.001,) * 3)
    est = estimate(plan, ROWS, [50] * 10, calibration=cal, workers=8)
    embed = 1 / cal.rows_per_second(2)  # a worker's 2 requests at once
    fixed = BACKFILL_FIXED_SECONDS
    per_row = (embed + DB_SECONDS_PER_ROW_COLUMN) / 8
    assert est.seconds == pytest.approx(fixed + ROWS * per_row, rel=0.01)
    assert est.bound_by == "the database's writes"
    side = estimate(
        demo_plan(target__storage="side_table"), ROWS, [50] * 10, calibration=cal, workers=8
    )
    per_row = (embed + DB_SECONDS_PER_ROW_SIDE) / 8
    assert side.seconds == pytest.approx(fixed + ROWS * per_row, rel=0.01)
    # The source's HNSW index adds its writes per row on top (column storage only).
    storage = TableStorage(ROWS, 1, 0, (IndexSize("e", "hnsw", 1, 256, 64),), 1, None, "")
    indexed = estimate(plan, ROWS, [50] * 10, storage, calibration=cal, workers=8)
    assert indexed.seconds > est.seconds and "HNSW" in indexed.bound_by


def test_a_rate_limit_still_bounds_a_calibrated_estimate() -> None:
    plan = demo_plan(backfill__requests_per_minute=60, backfill__batch_size=100)
    est = estimate(plan, ROWS, [50] * 10, calibration=Calibration(100, (0.01,) * 3))
    assert est.bound_by == "requests per minute"
    assert est.seconds == pytest.approx(ROWS / 100, rel=0.01)  # 1,000 requests at 1/s
