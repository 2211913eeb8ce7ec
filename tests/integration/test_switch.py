"""cutover / rollback / finalize against a real PostgreSQL: catalog exactness, gates, finalize."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from migrator import switch
from migrator.cli import cli
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.embedding.local import HashEmbedder
from migrator.errors import PhaseError
from migrator.plan.model import Plan
from migrator.search.client import SearchClient
from tests.switch_helpers import (
    explain_view,
    mark_verified,
    migrated_state,
    plan_file,
    source_index,
    switch_plan,
    view_catalog,
)

pytestmark = pytest.mark.integration


def _registry(url: str) -> tuple[str, str]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT column_name, fingerprint FROM migrator.active_models").fetchone()
    assert row is not None
    return row[0], row[1]


def _phase(url: str, plan: Plan) -> str:
    with contextlib.closing(connect(url)) as conn:
        m = state.get_migration(conn, plan.name)
    assert m is not None
    return m.phase.value


def _secured_view(plan: Plan, owner: str, reader: str, option: str = "security_barrier"):  # type: ignore[no-untyped-def]
    """The service's view as it existed before migrator: options, another owner, a grant.

    Note: PostgreSQL does not flatten a security_barrier view into the query, so ORDER BY
    through it cannot use the HNSW index (checked with EXPLAIN); security_invoker keeps it.
    """

    def make(conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT ON documents TO {}").format(sql.Identifier(owner)))
        conn.execute(
            sql.SQL(
                "CREATE VIEW documents_search WITH ({} = true) AS SELECT id, title, "
                "body, embedding::vector AS embedding, {}::text AS embedding_model FROM documents"
            ).format(sql.Identifier(option), sql.Literal(plan.source.model.fingerprint()))
        )
        conn.execute(
            sql.SQL("ALTER VIEW documents_search OWNER TO {}").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON documents_search TO {}").format(sql.Identifier(reader))
        )

    return make


def test_rollback_restores_the_view_exactly_and_finalize_is_guarded(
    settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> None:
    plan = switch_plan(cutover__rollback_window_hours=24)
    tag = uuid.uuid4().hex[:8]
    owner, reader = f"search_owner_{tag}", f"search_reader_{tag}"
    snapshots: dict[str, dict[str, object]] = {}

    def before_adopt(conn: psycopg.Connection) -> None:
        _secured_view(plan, owner, reader)(conn)
        snapshots["before"] = view_catalog(database_url, plan)

    migrated_state(settings, plan, 1500, before_adopt=before_adopt)
    before = snapshots["before"]
    assert before["reloptions"] == ["security_barrier=true"] and before["owner"] == owner
    assert view_catalog(database_url, plan) == before  # adopt confirmed the view, changed nothing

    cut = switch.cutover(settings, plan)
    assert cut.phase_after == "cut_over" and cut.attempts == 1 and cut.hold_ms > 0
    after_cut = view_catalog(database_url, plan)
    assert after_cut["definition"] != before["definition"]
    assert {k: after_cut[k] for k in ("reloptions", "owner", "acl", "column_types")} == {
        k: before[k] for k in ("reloptions", "owner", "acl", "column_types")
    }
    assert _registry(database_url) == (plan.target.column, plan.target.model.fingerprint())

    back = switch.rollback(settings, plan)
    assert back.view_matches_snapshot is True
    assert view_catalog(database_url, plan) == before  # definition, owner, grants, options
    assert _registry(database_url) == (plan.source.column, plan.source.model.fingerprint())

    # The reader role can still search through the view after the round trip.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
        assert conn.execute("SELECT count(*) FROM documents_search").fetchone() == (1500,)

    switch.cutover(settings, plan)
    with pytest.raises(PhaseError, match="rollback window is still open"):
        switch.finalize(settings, plan, yes=True)
    with pytest.raises(PhaseError, match="irreversible"):
        switch.finalize(settings, plan, yes=False, force=True)
    runner = CliRunner()
    path = plan_file(plan, tmp_path)
    # The checks come before the question: inside the window it refuses without asking.
    out = runner.invoke(cli, ["finalize", "--database-url", database_url, path], input="y\n")
    assert out.exit_code == 7 and "rollback window is still open" in out.output
    assert "Continue?" not in out.output
    # With no terminal to ask on, --yes is required: exit 14, not click's "Aborted!" (1).
    out = runner.invoke(cli, ["finalize", "--database-url", database_url, path, "--force"])
    assert out.exit_code == 14 and "--yes" in out.output and "Aborted" not in out.output
    # On a terminal it asks, once the checks passed; "n" changes nothing.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("migrator.cli.common.stdin_is_terminal", lambda: True)
        out = runner.invoke(
            cli, ["finalize", "--database-url", database_url, path, "--force"], input="n\n"
        )
    assert "Continue?" in out.output and "nothing was changed" in out.output
    assert _phase(database_url, plan) == "cut_over"

    res = switch.finalize(settings, plan, yes=True, force=True)
    assert res.dropped_indexes == (source_index(plan),)
    with psycopg.connect(database_url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'documents'::regclass "
                "AND attnum > 0 AND NOT attisdropped"
            ).fetchall()
        ]
        assert plan.source.column not in cols and plan.target.column in cols
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = "
            "'documents'::regclass AND NOT tgisinternal"
        ).fetchone() == (0,)
        assert conn.execute("SELECT to_regclass(%s)", (source_index(plan),)).fetchone() == (None,)
    assert _phase(database_url, plan) == "finalized"
    final = view_catalog(database_url, plan)
    assert {k: final[k] for k in ("reloptions", "owner", "acl")} == {
        k: before[k] for k in ("reloptions", "owner", "acl")
    }
    with SearchClient(database_url, view="documents_search") as client:
        hits = client.search("Return the number of bytes written", 5)
    assert hits.hits and hits.fingerprint == plan.target.model.fingerprint() and not hits.mixed
    with pytest.raises(PhaseError, match="finalized"):
        switch.rollback(settings, plan)

    with contextlib.closing(connect(database_url)) as conn:
        evs = [e for e in state.events(conn, plan.name, 100) if e["result"] == "ok"]
    cutovers = [e for e in evs if e["command"] == "cutover"]
    assert len(cutovers) == 2
    assert {"lock_wait_ms", "hold_ms", "attempts"} <= set(cutovers[0]["details"])


def test_cutover_needs_a_current_passing_verification(
    settings: Settings,
    database_url: str,
) -> None:
    plan = switch_plan()
    migrated_state(settings, plan, 1500)
    view0 = view_catalog(database_url, plan)

    def refused(match: str) -> None:
        with pytest.raises(PhaseError, match=match):
            switch.cutover(settings, plan)
        assert view_catalog(database_url, plan) == view0  # nothing applied
        assert _registry(database_url)[0] == plan.source.column

    with contextlib.closing(connect(database_url)) as conn:
        state.set_phase(conn, plan.name, state.State.EXPANDED)
    refused("cannot cutover: the migration is expanded")
    with contextlib.closing(connect(database_url)) as conn:
        state.set_phase(conn, plan.name, state.State.VERIFIED)
        from migrator.verify import gate

        gate.record_report(
            conn,
            plan,
            passed=False,
            report={},
            rows=1500,
            watermark=gate.changes_watermark(conn, plan.name),
        )
    refused("latest verification .* failed")

    with contextlib.closing(connect(database_url)) as conn:
        mark_verified(conn, plan, 1500)
        # 3% of the rows change after the report (the plan tolerates 1%): stale.
        conn.execute("UPDATE documents SET body = body || ' (edited)' WHERE id % 33 = 0")
    refused("stale: 45 rows changed")
    assert _phase(database_url, plan) == "verified"

    with contextlib.closing(connect(database_url)) as conn:
        mark_verified(conn, plan, 1500)
    # The edited rows still hold old vectors of their old text (nothing refreshed them): with
    # backfill.refresh_source a rollback must not serve them, so cutover refuses...
    refused("45 rows still hold an old vector")
    # ...unless the plan accepts them (a tuning key: same migration); the count is reported.
    res = switch.cutover(settings, switch_plan(backfill__refresh_source=False))
    assert res.stale_sources == 45
    assert res.report_id is not None and _phase(database_url, plan) == "cut_over"
    with pytest.raises(PhaseError, match="cannot cutover: the migration is cut_over"):
        switch.cutover(settings, plan)


def test_halfvec_target_changes_the_view_type_and_keeps_owner_and_grants(
    settings: Settings,
    database_url: str,
) -> None:
    """vector(256) -> halfvec(384): the view is dropped and re-created in one transaction."""
    plan = switch_plan(target__type="halfvec")
    tag = uuid.uuid4().hex[:8]
    owner, reader = f"hv_owner_{tag}", f"hv_reader_{tag}"
    migrated_state(
        settings, plan, 1500, before_adopt=_secured_view(plan, owner, reader, "security_invoker")
    )
    before = view_catalog(database_url, plan)
    assert before["reloptions"] == ["security_invoker=true"]
    query = "Return the number of bytes written"
    with SearchClient(database_url, view="documents_search", registry_ttl=60) as client:
        first = client.search(query, 5)
        assert first.hits and first.fingerprint == plan.source.model.fingerprint()
        switch.cutover(settings, plan)
        cut = view_catalog(database_url, plan)
        assert cut["column_types"][3] == "halfvec"
        assert {k: cut[k] for k in ("reloptions", "owner", "acl")} == {
            k: before[k] for k in ("reloptions", "owner", "acl")
        }
        vec = HashEmbedder(plan.target.model.name, 384).encode([query])[0]
        assert "documents_embedding_v2_hnsw_idx" in explain_view(
            database_url, plan, vec, plan.target.model.fingerprint(), "halfvec"
        )
        # The client's cached model is stale (ttl 60 s): it must notice and retry, not fail.
        second = client.search(query, 5)
        assert second.hits and second.fingerprint == plan.target.model.fingerprint()
        assert second.model_switch_retries == 1 and not second.mixed
        switch.rollback(settings, plan)
        third = client.search(query, 5)
        assert third.fingerprint == plan.source.model.fingerprint() and third.hits
    assert view_catalog(database_url, plan) == before
