"""The backfill's time from the source index's write cost, and the column mode's disk growth."""

from __future__ import annotations

import pytest

from migrator.plan.estimate import (
    ASSUMED_ROWS_PER_SECOND,
    DEFAULT_WORKERS,
    HNSW_REINSERT_SECONDS,
    IndexSize,
    TableStorage,
    disk_growth,
    estimate,
    hnsw_index_bytes,
    vector_bytes,
)
from tests.helpers import demo_plan

ROWS = 100_000


def _storage(*indexes: IndexSize, room: int | None = None) -> TableStorage:
    return TableStorage(ROWS, 150 * 1024 * 1024, 0, indexes, 400 * 1024 * 1024, room, "test")


PK = IndexSize("documents_pkey", "btree", 2_260_000)
SRC = IndexSize("documents_embedding_idx", "hnsw", 200_000_000, 256, 64)


def test_time_grows_with_the_source_hnsw_index() -> None:
    plan = demo_plan(target__storage="column")
    bare = estimate(plan, ROWS, [50] * 10, _storage(PK))
    indexed = estimate(plan, ROWS, [50] * 10, _storage(PK, SRC))
    assert bare.seconds == pytest.approx(ROWS / ASSUMED_ROWS_PER_SECOND, rel=0.01)
    # Each worker's write pays the index; the workers write side by side.
    added = ROWS * HNSW_REINSERT_SECONDS / DEFAULT_WORKERS
    assert indexed.seconds == pytest.approx(bare.seconds + added, rel=0.01)
    assert "HNSW" in indexed.bound_by and indexed.index_write_seconds_per_row > 0
    wide = IndexSize("e", "hnsw", 1, 1024, 128)
    wider = estimate(plan, ROWS, [50] * 10, _storage(PK, wide))
    assert wider.index_write_seconds_per_row == pytest.approx(
        8 * indexed.index_write_seconds_per_row
    )


def test_a_rate_limit_below_the_write_rate_still_binds() -> None:
    plan = demo_plan(backfill__requests_per_minute=1)
    est = estimate(plan, ROWS, [50] * 10, _storage(PK, SRC))
    assert est.bound_by == "requests per minute"


def test_column_mode_growth_counts_row_versions_index_entries_and_the_new_index() -> None:
    plan = demo_plan(target__storage="column")
    dims = plan.target.model.dimensions
    g = disk_growth(plan, _storage(PK, SRC), ROWS)
    per_row = 150 * 1024 * 1024 / ROWS
    assert g.heap_bytes == pytest.approx(ROWS * (per_row + vector_bytes(dims, False) + 4), 1e-6)
    assert g.index_entries_bytes == PK.bytes  # the HNSW source index adds the TID in place
    assert g.new_index_bytes == hnsw_index_bytes(ROWS, dims, False, plan.index.m)
    assert g.total_bytes == g.heap_bytes + g.index_entries_bytes + g.new_index_bytes
    assert g.fits is None  # room unknown
    half = disk_growth(plan, _storage(PK, SRC), ROWS // 2)
    assert half.heap_bytes == pytest.approx(g.heap_bytes / 2, rel=1e-3)


def test_fits_compares_with_the_room() -> None:
    plan = demo_plan(target__storage="column")
    need = disk_growth(plan, _storage(PK), ROWS).total_bytes
    assert disk_growth(plan, _storage(PK, room=need), ROWS).fits is True
    assert disk_growth(plan, _storage(PK, room=need - 1), ROWS).fits is False


def test_hnsw_index_size_is_about_the_vectors_plus_the_neighbor_lists() -> None:
    size = hnsw_index_bytes(1_000_000, 256, False, 16)
    assert 1_000_000 * (1032 + 6 * 32) < size < 1_000_000 * (1032 + 6 * 32) * 1.25
    assert hnsw_index_bytes(1_000_000, 256, True, 16) < size
