"""The backfill refuses to start when the database's disk lacks the room for its growth
(exit 16, read-only: nothing changed), with the figure; `plan` shows the same estimate."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from migrator import api
from migrator.config import Settings
from migrator.errors import DiskSpaceError
from migrator.plan.model import Plan
from tests.backfill_helpers import make_documents, unique_plan
from tests.integration.test_preflight import _cli, _refused, _settings, catalog
from tests.switch_helpers import plan_file

pytestmark = pytest.mark.integration


def _plan(limit: str | None) -> Plan:
    return unique_plan(
        "",
        source__model__provider="local",
        target__model__provider="local",
        backfill__max_database_size=limit,
    )


def test_backfill_without_room_is_refused_with_the_figure(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    make_documents(database_url, 2_000)
    st = _settings(settings)
    roomy = api.plan_live(_plan("1TB"), st)
    disk = roomy.estimate["disk"] if roomy.estimate else None
    assert disk is not None and disk["fits"] is True
    # One new row version per row at least: the heap's size again, plus the new vectors.
    assert disk["heap_bytes"] > 2_000 * (8 + 4 * 384) and disk["new_index_bytes"] > 0
    assert disk["index_entries_bytes"] > 0  # the primary key gets an entry per version
    # A limit just above today's size leaves less room than the growth.
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    size = int(row[0])
    limit = f"{size // 1024 + disk['total_bytes'] // 2048}kB"
    plan = _plan(limit)
    err = _refused(st, plan, database_url, DiskSpaceError)
    assert err.exit_code == 16
    msg = err.one_line()
    assert "would add about" in msg and f"backfill.max_database_size {limit}" in msg, msg
    before = catalog(database_url)
    res = _cli(["backfill", plan_file(plan, tmp_path), "--database-url", database_url], st)
    assert res.exit_code == 16 and "would add about" in res.output, res.output
    res = _cli(["plan", plan_file(plan, tmp_path), "--database-url", database_url], st)
    assert res.exit_code == 16, res.output
    assert catalog(database_url) == before


@pytest.mark.skipif(
    bool(os.environ.get("MIGRATOR_TEST_DATABASE_URL")), reason="the embedded server is local"
)
def test_free_space_of_a_local_server_is_detected(database_url: str, settings: Settings) -> None:
    make_documents(database_url, 200)
    report = api.plan_live(_plan(None), _settings(settings))
    assert report.estimate is not None
    disk = report.estimate["disk"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    st = os.statvfs(row[0])
    assert disk["room_source"] == f"free space on {row[0]}"
    assert disk["room_bytes"] == pytest.approx(st.f_bavail * st.f_frsize, rel=0.05)
    assert disk["fits"] is True
