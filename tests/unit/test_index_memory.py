"""The HNSW build's memory estimate and the settings chosen from it (pure)."""

from __future__ import annotations

import pytest

from migrator.ddl import steps
from migrator.plan.index_memory import (
    MB,
    BuildSizing,
    format_setting,
    hnsw_bytes_per_row,
    hnsw_graph_bytes,
    parse_size,
    size_build,
)
from migrator.plan.vocab import IndexMethod, VectorType
from migrator.verify.index_build import BuildProgress
from tests.helpers import demo_plan

# Bytes per tuple pgvector 0.8.6 reported on PostgreSQL 18.6 here: maintenance_work_mem 8MB
# divided by N of its notice "hnsw graph no longer fits into maintenance_work_mem after N
# tuples" (serial builds; parallel ones were within 0.2%). tests/integration/test_index_sizing.py
# checks the same thing against the live server.
MEASURED = [
    (VectorType.VECTOR, 256, 16, 1737.9),
    (VectorType.VECTOR, 256, 8, 1486.6),
    (VectorType.VECTOR, 64, 16, 972.4),
    (VectorType.VECTOR, 64, 8, 719.2),
    (VectorType.HALFVEC, 256, 16, 1226.0),
    (VectorType.HALFVEC, 256, 8, 973.2),
    (VectorType.VECTOR, 1024, 16, 4812.7),
    (VectorType.VECTOR, 1024, 8, 4561.5),
]


@pytest.mark.parametrize(("vtype", "dims", "m", "measured"), MEASURED)
def test_estimate_matches_pgvector_within_one_percent(
    vtype: VectorType, dims: int, m: int, measured: float
) -> None:
    assert hnsw_bytes_per_row(dims, vtype, m) == pytest.approx(measured, rel=0.01)


def test_graph_grows_linearly_in_rows_and_halfvec_halves_the_values() -> None:
    one = hnsw_graph_bytes(100_000, 256, VectorType.VECTOR, 16)
    assert hnsw_graph_bytes(1_000_000, 256, VectorType.VECTOR, 16) == pytest.approx(10 * one, 1e-6)
    half = hnsw_graph_bytes(100_000, 256, VectorType.HALFVEC, 16)
    assert one - half == pytest.approx(100_000 * 256 * 2, rel=1e-6)
    # The observation: 256MB held the graph of ~165-200k rows at 256 dims, m 16.
    assert 140_000 < 256 * MB / hnsw_bytes_per_row(256, VectorType.VECTOR, 16) < 200_000


def _size(rows: int, setting: str = "auto", cap: str = "4GB", **kw: object) -> BuildSizing:
    args: dict[str, object] = {
        "rows": rows,
        "dimensions": 256,
        "vector_type": VectorType.VECTOR,
        "method": IndexMethod.HNSW,
        "m": 16,
        "setting": setting,
        "cap": cap,
        "workers": 1,
    }
    args.update(kw)
    return size_build(**args)  # type: ignore[arg-type]


def test_auto_gives_the_graph_plus_headroom_within_the_cap() -> None:
    s = _size(1_000_000)
    assert s.fits and s.warning() is None
    assert s.graph_bytes < s.setting_bytes <= s.graph_bytes * 1.05 + 17 * MB
    assert s.setting == format_setting(s.setting_bytes)
    small = _size(1_000)
    assert small.setting == "64MB" and small.fits  # never below PostgreSQL's default


def test_auto_capped_by_the_plan_warns_with_the_figures() -> None:
    s = _size(10_000_000, cap="2GB")
    assert s.setting == "2048MB" and not s.fits
    warning = s.warning()
    assert warning is not None
    assert "10,000,000 rows" in warning and "16.2 GB" in warning and "2048MB" in warning


def test_server_memory_caps_at_half_when_known() -> None:
    s = _size(10_000_000, cap="64GB", server_memory_bytes=8 * 1024 * MB)
    assert s.setting == "4096MB" and not s.fits and "server" in s.capped_by
    roomy = _size(1_000_000, cap="64GB", server_memory_bytes=64 * 1024 * MB)
    assert roomy.fits


def test_an_explicit_setting_is_used_as_given_and_judged() -> None:
    s = _size(1_000_000, setting="256MB")
    assert s.setting == "256MB" and not s.fits and "index.maintenance_work_mem" in s.capped_by
    assert _size(100_000, setting="256MB").fits


def test_ivfflat_is_not_estimated() -> None:
    s = _size(1_000_000, method=IndexMethod.IVFFLAT)
    assert s.graph_bytes == 0 and s.fits


def test_parse_size_units_and_errors() -> None:
    assert parse_size("512kB") == 512 * 1024
    assert parse_size("2GB") == 2048 * MB
    assert parse_size("1TB") == 1024 * 1024 * MB
    with pytest.raises(ValueError, match="kB, MB, GB, TB"):
        parse_size("2 GB")


def test_build_settings_are_tuning_and_the_graph_is_structural() -> None:
    base = demo_plan()
    for key, value in [
        ("index__maintenance_work_mem", "3GB"),
        ("index__max_maintenance_work_mem", "32GB"),
        ("index__max_parallel_maintenance_workers", 4),
        ("index__vacuum_before_build", False),
    ]:
        assert demo_plan(**{key: value}).plan_hash() == base.plan_hash(), key
    assert demo_plan(index__m=32).plan_hash() != base.plan_hash()
    assert demo_plan(index__ef_construction=128).plan_hash() != base.plan_hash()


def test_index_step_renders_the_sized_setting_and_vacuums_first() -> None:
    plan = demo_plan(index__max_maintenance_work_mem="64GB")
    offline = steps.index(plan)
    assert offline.forward[0].render().startswith("VACUUM (ANALYZE) ")
    assert "FULL" not in offline.forward[0].render()
    assert "SET maintenance_work_mem = '64GB'" in offline.forward[1].render()
    live = steps.index(plan, steps.Facts(index_rows=1_000_000))
    sized = steps.build_sizing(plan, steps.Facts(index_rows=1_000_000))
    assert f"SET maintenance_work_mem = '{sized.setting}'" == live.forward[1].render()
    assert sized.fits and not any("Warning" in n for n in live.notes)
    tight = demo_plan(index__max_maintenance_work_mem="100MB")
    notes = steps.index(tight, steps.Facts(index_rows=1_000_000)).notes
    assert any(n.startswith("Warning: the HNSW graph") for n in notes)
    no_vacuum = demo_plan(index__vacuum_before_build=False)
    assert not any(s.render().startswith("VACUUM") for s in steps.index(no_vacuum).forward)


def test_eta_extrapolates_the_phase_rate() -> None:
    p = BuildProgress("building index: loading tuples", 0, 0, 250, 1000, 40.0, 30.0)
    assert p.eta_seconds == pytest.approx(90.0)
    assert BuildProgress("initializing", 0, 0, 0, 0, 1.0, 1.0).eta_seconds is None
    assert BuildProgress("x", 0, 0, 0, 1000, 5.0, 5.0).eta_seconds is None
