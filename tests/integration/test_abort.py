"""`migrator abort`: a migration abandoned before cutover (or after a rollback) leaves the
catalog exactly as it was before adopt, keeps its history, and can start again.

Before, there was no way back: embedding_v2, its index, the trigger, the function, queued
changes and ledger rows stayed on the production table.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from migrator import api, switch
from migrator.cli import cli
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect, ensure_schema
from migrator.errors import PhaseError
from migrator.plan.model import Plan
from migrator.switch import abort
from tests.catalog_helpers import capture_objects, catalog_snapshot, diff, view_rows
from tests.switch_helpers import migrated_state, plan_file, switch_plan

pytestmark = pytest.mark.integration
VIEW = sql.Identifier("public", "documents_search")


def _migrator_rows(url: str, plan: Plan) -> dict[str, int]:
    out = {}
    with psycopg.connect(url) as conn:
        for table in ("changes", "batches", "dead_letters", "reports", "active_models", "pacing"):
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE migration = %s").format(
                    sql.Identifier("migrator", table)
                ),
                (plan.name,),
            ).fetchone()
            out[table] = int(row[0]) if row else 0
    return out


def _registry(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT view_schema, view_name, migration, column_name, fingerprint, "
                "model::text, vector_type, dimensions, switched_at FROM migrator.active_models"
            ).fetchall()
        ]


def _phase(url: str, plan: Plan) -> str:
    with contextlib.closing(connect(url)) as conn:
        m = state.get_migration(conn, plan.name)
    assert m is not None
    return m.phase.value


def test_abort_after_a_rollback_restores_the_users_view_table_and_registry(
    settings: Settings, database_url: str
) -> None:
    """The user's filtered view and a registry entry left by an earlier, finished migration."""
    plan = switch_plan()
    snaps: dict[str, object] = {}

    def before_adopt(conn: psycopg.Connection) -> None:
        conn.execute("ALTER TABLE documents ADD COLUMN deleted boolean NOT NULL DEFAULT false")
        conn.execute("UPDATE documents SET deleted = id % 7 = 0")
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search AS SELECT id, title, body, embedding::vector AS "
                "embedding, {}::text AS embedding_model FROM documents WHERE NOT deleted"
            ).format(sql.Literal(plan.source.model.fingerprint()))
        )
        ensure_schema(database_url)
        conn.execute(
            "INSERT INTO migrator.active_models (view_schema, view_name, migration, "
            "column_name, fingerprint, model, vector_type, dimensions, switched_at) VALUES "
            "('public', 'documents_search', 'an-earlier-one', 'embedding', %s, '{}', "
            "'vector', 256, '2026-01-02T03:04:05Z')",
            (plan.source.model.fingerprint(),),
        )
        snaps["catalog"] = catalog_snapshot(database_url)
        snaps["registry"] = _registry(database_url)
        snaps["rows"] = view_rows(database_url, VIEW)

    migrated_state(settings, plan, 700, before_adopt=before_adopt)
    switch.cutover(settings, plan)
    with pytest.raises(PhaseError, match="cannot abort: the migration is cut_over") as err:
        abort(settings, plan, yes=True)
    assert "rollback" in err.value.one_line()
    assert _phase(database_url, plan) == "cut_over"
    switch.rollback(settings, plan)
    with psycopg.connect(database_url, autocommit=True) as conn:  # queue a change
        conn.execute("UPDATE documents SET body = body || ' (edited)' WHERE id = 2")
    assert _migrator_rows(database_url, plan)["changes"] >= 1

    res = abort(settings, plan, yes=True)
    assert res.phase_before == "rolled_back" and res.dropped_column == "embedding_v2"
    assert not res.dropped_view and res.registry == "restored to an-earlier-one"
    assert res.view_matches_snapshot is True
    assert diff(snaps["catalog"], catalog_snapshot(database_url)) == {}  # type: ignore[arg-type]
    assert _registry(database_url) == snaps["registry"]
    assert view_rows(database_url, VIEW) == snaps["rows"]
    assert capture_objects(database_url) == {"triggers": [], "functions": []}
    rows = _migrator_rows(database_url, plan)
    assert rows == dict.fromkeys(rows, 0)
    assert _phase(database_url, plan) == "aborted"
    with contextlib.closing(connect(database_url)) as conn:
        evs = state.events(conn, plan.name, 100)
    assert evs[-1]["command"] == "abort" and evs[-1]["phase_after"] == "aborted"
    assert any(e["command"] == "cutover" for e in evs)  # the history stays
    for later in (switch.cutover, switch.rollback):
        with pytest.raises(PhaseError, match="aborted"):
            later(settings, plan)


def test_abort_drops_the_view_adopt_created_and_the_migration_can_start_again(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    plan = switch_plan()
    snaps: dict[str, object] = {}

    def before_adopt(conn: psycopg.Connection) -> None:
        snaps["catalog"] = catalog_snapshot(database_url)

    migrated_state(settings, plan, 500, before_adopt=before_adopt)
    path = plan_file(plan, tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli, ["abort", "--database-url", database_url, path])  # no terminal
    assert out.exit_code == 14 and "--yes" in out.output
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("migrator.cli.common.stdin_is_terminal", lambda: True)
        out = runner.invoke(cli, ["abort", "--database-url", database_url, path], input="n\n")
    assert "nothing was changed" in out.output and _phase(database_url, plan) == "verified"
    out = runner.invoke(cli, ["abort", "--database-url", database_url, path, "--yes", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["dropped_view"] is True and data["registry"] == "removed"
    assert diff(snaps["catalog"], catalog_snapshot(database_url)) == {}  # type: ignore[arg-type]
    assert _registry(database_url) == []
    # Rerun: only migrator's own rows are deleted again (nothing left to drop).
    again = abort(settings, plan, yes=True)
    assert again.phase_before == "aborted" and again.dropped_column is None
    # Same name, same plan: it starts again from the beginning.
    api.adopt(settings, plan)
    assert _phase(database_url, plan) == "planned"
    assert view_rows(database_url, VIEW) == set(range(1, 501))


def test_the_dry_run_shows_the_abort_sql(tmp_path: Path) -> None:
    path = plan_file(switch_plan(), tmp_path)
    out = CliRunner().invoke(cli, ["plan", "--offline", "--json", path])
    assert out.exit_code == 0, out.output
    phases = {p["phase"]: p for p in json.loads(out.output)["phases"]}
    sqls = [s["sql"] for s in phases["abort"]["statements"]]
    assert any(s.startswith("DROP TRIGGER IF EXISTS") for s in sqls)
    assert 'ALTER TABLE "public"."documents" DROP COLUMN IF EXISTS "embedding_v2"' in sqls
    assert any(s.startswith('DELETE FROM "migrator"."changes"') for s in sqls)
