"""Two migrations whose names read alike ("docs-v2", "docs_v2") keep their own change capture,
and a migration registered with the old derivation keeps the names it was created with.

Before, the second expand ran CREATE OR REPLACE FUNCTION on the first one's function: text
changes on the first table were checked against the second plan's text column and queued
nothing (or failed, when that column did not exist there).
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest
from sqlalchemy import create_engine, pool

from alembic import command
from migrator import api
from migrator.config import Settings
from migrator.db.connect import alembic_config, connect, sqlalchemy_url
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.plan.model import Plan, legacy_capture_names
from tests.helpers import create_documents
from tests.switch_helpers import switch_plan

pytestmark = pytest.mark.integration


def _expand(settings: Settings, plan: Plan) -> None:
    api.adopt(settings, plan)
    url = settings.database_url
    assert url
    with contextlib.closing(connect(url)) as conn:
        Executor(conn).run(steps.expand(plan, api.live_facts(conn, plan)).forward, LockPolicy())


def _changes(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT migration, pk FROM migrator.changes ORDER BY id").fetchall()
    return [(r[0], r[1]) for r in rows]


def test_docs_v2_and_docs_underscore_v2_keep_their_own_capture(
    settings: Settings, database_url: str
) -> None:
    create_documents(database_url, 30)
    create_documents(database_url, 30, table="articles")
    first = switch_plan(name="docs-v2")
    second = switch_plan(
        name="docs_v2",
        table__name="articles",
        text__column="title",
        view__name="articles_search",
    )
    assert first.function_name != second.function_name
    _expand(settings, first)
    _expand(settings, second)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE documents SET body = body || ' (edited)' WHERE id = 3")
        conn.execute("UPDATE articles SET title = title || ' (edited)' WHERE id = 4")
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgfoid::regproc::text FROM pg_trigger "
            "WHERE NOT tgisinternal ORDER BY 1"
        ).fetchall()
    assert _changes(database_url) == [("docs-v2", "3"), ("docs_v2", "4")]
    assert [t[0] for t in triggers] == ["articles", "documents"]
    assert triggers[0][1] != triggers[1][1]


def test_a_migration_registered_before_keeps_its_names(database_url: str) -> None:
    """Schema 0001 had no names column: the upgrade fills in the names that migration's
    trigger was created with, so finalize and abort drop the right objects."""
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    cfg = alembic_config(database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.upgrade(cfg, "0001")  # type: ignore[arg-type]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO migrator.migrations (name, plan_hash, plan, phase, source_fingerprint, "
            "target_fingerprint) VALUES ('old-one', 'h', '{}', 'expanded', 'a', 'b')"
        )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.upgrade(cfg, "head")  # type: ignore[arg-type]
    engine.dispose()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT trigger_name, function_name FROM migrator.migrations WHERE name = 'old-one'"
        ).fetchone()
    assert row == tuple(legacy_capture_names("old-one"))
