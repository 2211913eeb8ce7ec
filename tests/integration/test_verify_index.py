"""The concurrent index build: progress is reported, a cancelled build leaves an INVALID index
that verify refuses to measure, then detects, drops and rebuilds; a valid index is left alone."""

from __future__ import annotations

# ruff: noqa: F811  (the fixtures are imported from tests.verify_helpers)
import contextlib
import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from migrator.config import load_settings
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.errors import DatabaseError
from migrator.verify.index_build import BuildProgress, ensure_index, index_info
from migrator.verify.run import VerifyFailed, VerifyOptions, verify
from tests.verify_helpers import (  # noqa: F401  (fixtures)
    local_plan,
    register,
    verify_db,
    verify_template,
)

pytestmark = pytest.mark.integration
INDEX = "documents_embedding_v2_hnsw_idx"


def test_cancelled_build_is_detected_dropped_and_rebuilt(verify_db: str, tmp_path: Path) -> None:
    plan = local_plan()
    register(verify_db, plan)
    with psycopg.connect(verify_db, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {INDEX}")
    seen: list[BuildProgress] = []
    errors: list[BaseException] = []
    with contextlib.closing(connect(verify_db)) as build_conn:
        pid = build_conn.info.backend_pid

        def build() -> None:
            try:
                ensure_index(
                    Executor(build_conn),
                    verify_db,
                    plan,
                    LockPolicy(),
                    on_progress=seen.append,
                    poll_interval=0.05,
                )
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        thread = threading.Thread(target=build)
        thread.start()
        deadline = time.monotonic() + 30
        while not any(p.tuples_done > 0 for p in seen):  # midway: rows are being loaded
            assert time.monotonic() < deadline and thread.is_alive(), (seen, errors)
            time.sleep(0.02)
        with psycopg.connect(verify_db, autocommit=True) as conn:
            assert conn.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone() == (True,)
        thread.join(30)
        assert len(errors) == 1 and isinstance(errors[0], DatabaseError)
        assert "cancel" in str(errors[0])
        assert index_info(build_conn, plan).state == "invalid"
    # pgvector reports HNSW progress as heap blocks scanned (tuples_total stays 0).
    last = seen[-1]
    assert last.phase == "building index: loading tuples" and last.blocks_total > 0
    assert last.fraction is not None and 0 < last.fraction < 1

    env = {**os.environ, "DATABASE_URL": verify_db, "MIGRATOR_HOME": str(tmp_path / "home")}
    settings = load_settings(env)
    # Never a pass over an INVALID index.
    with pytest.raises(VerifyFailed) as err:
        verify(settings, plan, VerifyOptions(build_index=False, sample=50))
    assert err.value.outcome.report.failed == ["index"]
    assert err.value.outcome.report.check("index").detail("state") == "invalid"

    phases: list[str] = []
    out = verify(
        settings, plan, VerifyOptions(sample=50), on_index_progress=lambda p: phases.append(p.phase)
    )
    assert out.index is not None and out.index.action == "rebuilt"
    assert out.index.invalid_dropped == 1
    assert out.report.passed and phases
    with contextlib.closing(connect(verify_db)) as conn:
        assert index_info(conn, plan).state == "valid"
        # Rerunning is a no-op when the valid index exists.
        oid = index_info(conn, plan).oid
        res = ensure_index(Executor(conn), verify_db, plan, LockPolicy())
        assert res.action == "exists" and index_info(conn, plan).oid == oid
        # The session settings of the build did not leak into the connection.
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("64MB",)
