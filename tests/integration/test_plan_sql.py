"""`migrator plan PLAN --offline --sql > out.sql` is a script psql runs as is: the forward
phases (adopt, expand, index, cutover, finalize) apply to a scratch database without an error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from migrator.db.connect import ensure_schema
from tests.helpers import DEMO_PLAN, create_documents

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("psql") is None, reason="the psql client is not installed")
def test_sql_script_runs_in_psql(database_url: str, tmp_path: Path) -> None:
    create_documents(database_url, 200)
    ensure_schema(database_url)  # migrator's registry tables, which adopt and finalize write
    env = {**os.environ, "MIGRATOR_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    script = tmp_path / "out.sql"
    with script.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "migrator", "plan", str(DEMO_PLAN), "--offline", "--sql"],
            stdout=out,
            stdin=subprocess.DEVNULL,
            env=env,
            check=True,
        )
    text = script.read_text()
    assert "CREATE INDEX CONCURRENTLY" in text
    run = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), database_url],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "ERROR" not in run.stderr
    with psycopg.connect(database_url) as conn:

        def cols(table: str) -> set[str]:
            return {
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped",
                    (table,),
                )
            }

        # expand ... finalize ran: the default storage (side_table) put the new vectors in a
        # table of their own, and finalize dropped the old column.
        table, side = cols("public.documents"), cols("public.documents_embedding_v2")
        assert "embedding" not in table and "embedding_v2" not in table
        assert side == {"id", "embedding_v2"}  # (the script leaves the filling to workers)
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = "
            "'public.documents_embedding_v2_hnsw_idx'::regclass"
        ).fetchone()
        assert valid == (True,)
        view = conn.execute("SELECT pg_get_viewdef('public.documents_search')").fetchone()
        assert view is not None and "embedding_v2" in view[0]
        active = conn.execute(
            "SELECT column_name FROM migrator.active_models WHERE view_name = 'documents_search'"
        ).fetchone()
        assert active == ("embedding_v2",)
