"""The index build sized to fit: VACUUM first, maintenance_work_mem sized to the graph and read
back on the build's own session, the estimate checked against pgvector's own spill notice, and
the build's settings changeable mid-migration (tuning, not in the plan hash)."""

from __future__ import annotations

# ruff: noqa: F811  (the fixtures are imported from tests.verify_helpers)
import contextlib
import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migrator.config import load_settings
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.db.server import rows_to_index
from migrator.plan.index_memory import MB, format_setting
from migrator.verify.index_build import ensure_index
from migrator.verify.run import VerifyOptions, verify
from tests.verify_helpers import (  # noqa: F401  (fixtures)
    local_plan,
    register,
    verify_db,
    verify_template,
)

# Slow: a 30k-row build at several settings (`pytest -m slow`); the sizing itself is unit-tested
# in tests/unit/test_index_memory.py.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
INDEX = "documents_embedding_v2_hnsw_idx"


def _prepare(url: str) -> None:
    """Drop the template's index; give the database a default no build could fit in, so a
    setting the build reads back can only be the one migrator set."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {INDEX}")
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET maintenance_work_mem = '1MB'").format(
                sql.Identifier(db[0])
            )
        )


def _vacuums(url: str) -> tuple[int, object]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT vacuum_count, last_vacuum FROM pg_stat_user_tables WHERE relname = 'documents'"
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def test_auto_build_vacuums_then_uses_the_sized_setting_and_fits(verify_db: str) -> None:
    plan = local_plan(index__maintenance_work_mem="auto", index__max_maintenance_work_mem="1GB")
    _prepare(verify_db)
    before, _ = _vacuums(verify_db)
    with contextlib.closing(connect(verify_db)) as conn:
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("1MB",)
        res = ensure_index(Executor(conn), verify_db, plan, LockPolicy())
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("1MB",)  # reset
        rows = rows_to_index(conn, plan)
    assert res.action == "built" and res.sizing is not None
    assert res.sizing.rows == rows > 19_000
    settings = dict(res.session_settings)
    assert settings["maintenance_work_mem"] == res.sizing.setting != "1MB"
    assert settings["max_parallel_maintenance_workers"] == "1"
    assert res.sizing.fits and not res.spilled
    after, last = _vacuums(verify_db)
    assert after == before + 1 and last is not None and res.vacuum_seconds is not None
    details = dict(res.as_details())
    assert details["maintenance_work_mem"] == res.sizing.setting
    assert details["graph_spilled_to_disk"] is False
    # A valid index: no VACUUM, no build.
    with contextlib.closing(connect(verify_db)) as conn:
        again = ensure_index(Executor(conn), verify_db, plan, LockPolicy())
    assert again.action == "exists" and again.vacuum_seconds is None
    assert _vacuums(verify_db)[0] == after


def test_the_estimate_brackets_what_pgvector_really_needs(verify_db: str) -> None:
    """10% less than the estimate spills (pgvector's notice); the estimate plus the margin
    the allocator's blocks need does not."""
    _prepare(verify_db)
    probe = local_plan(index__vacuum_before_build=False)
    with contextlib.closing(connect(verify_db)) as conn:
        from migrator.ddl import steps

        graph = steps.build_sizing(
            probe, steps.Facts(index_rows=rows_to_index(conn, probe))
        ).graph_bytes
    results = {}
    for label, nbytes in (("low", int(graph * 0.9)), ("enough", graph + 16 * MB)):
        plan = local_plan(
            index__maintenance_work_mem=format_setting(nbytes), index__vacuum_before_build=False
        )
        with contextlib.closing(connect(verify_db)) as conn:
            res = ensure_index(Executor(conn), verify_db, plan, LockPolicy())
            results[label] = res
            assert dict(res.session_settings)["maintenance_work_mem"] == format_setting(nbytes)
            conn.execute(f"DROP INDEX {INDEX}")
    assert results["low"].spilled and results["low"].sizing is not None
    assert not results["low"].sizing.fits  # the plan said so before the build
    assert not results["enough"].spilled and results["enough"].vacuum_seconds is None


def test_changing_the_build_memory_mid_migration_is_accepted(
    verify_db: str, tmp_path: Path
) -> None:
    started = local_plan(index__maintenance_work_mem="auto")
    register(verify_db, started)
    _prepare(verify_db)
    changed = local_plan(
        index__maintenance_work_mem="96MB", index__max_parallel_maintenance_workers=0
    )
    assert changed.plan_hash() == started.plan_hash()
    env = {**os.environ, "DATABASE_URL": verify_db, "MIGRATOR_HOME": str(tmp_path / "home")}
    out = verify(load_settings(env), changed, VerifyOptions(sample=50))
    assert out.report.passed and out.index is not None and out.index.action == "built"
    shown = dict(out.index.session_settings)
    assert shown == {"maintenance_work_mem": "96MB", "max_parallel_maintenance_workers": "0"}
    assert dict(out.report.index_build)["maintenance_work_mem"] == "96MB"
