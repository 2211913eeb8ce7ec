"""Bridge mode against a real PostgreSQL: fit, refusals, the guard (a bridged query never meets
new vectors), cutover retiring the bridge and rollback falling back to it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from migrator import bridging, switch
from migrator.cli import cli
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.errors import GateFailedError, PhaseError
from migrator.plan.model import Plan
from migrator.search.client import SearchClient
from migrator.verify.run import verify
from tests.switch_helpers import migrated_state, plan_file, switch_plan

pytestmark = pytest.mark.integration
QUERY = "Return the number of bytes written"


def _registry(url: str) -> tuple[str, str, int | None]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT column_name, fingerprint, bridge_id FROM migrator.active_models"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _with(plan: Plan, **bridge: object) -> Plan:
    """The same migration with other bridge tuning (tuning keys: the plan hash is unchanged)."""
    data = plan.canonical()
    data["bridge"].update(bridge)
    out = Plan.model_validate(data)
    assert out.plan_hash() == plan.plan_hash()
    return out


def test_bridge_fit_on_guard_cutover_rollback(settings: Settings, database_url: str) -> None:
    # Equal dimensions: a bridged (256-dim) query WOULD compare with the new column's vectors,
    # so only the fingerprint guard keeps it from them.
    plan = switch_plan(target__model__dimensions=256, target__model__name="local-hash-new")
    migrated_state(settings, plan, 1500)
    old_fp, new_fp = plan.source.model.fingerprint(), plan.target.model.fingerprint()

    with pytest.raises(PhaseError, match="no bridge is fitted"):
        bridging.bridge_on(settings, plan)

    fitted = bridging.fit(settings, plan)
    docs = fitted.figures["documents"]
    assert fitted.train_rows + fitted.holdout_rows == 1500 and fitted.holdout_rows > 0
    assert docs["queries"] > 0 and docs["corpus"] == fitted.holdout_rows
    assert docs["recall@10_old"] is not None and docs["recall@10_swap"] is not None
    retention = fitted.figures["retention"]
    assert retention == docs["retention"] is not None
    assert fitted.figures["recommendation"] in ("swap", "bridge", "re-embed")
    # The stored map reproduces the fit's held-out figure class: better than chance.
    assert docs["recall@10_bridge"] > docs["recall@10_swap"]

    # Refused under the plan's threshold (set just above what was measured), unless forced.
    strict = _with(plan, min_retention=min(1.0, retention + 0.01))
    if retention + 0.01 <= 1.0:
        with pytest.raises(GateFailedError, match=r"bridge\.min_retention"):
            bridging.bridge_on(settings, strict)
        assert _registry(database_url)[2] is None  # nothing changed
    on = bridging.bridge_on(settings, strict, force=True)
    assert on.bridge_id == fitted.bridge_id and on.query_model == new_fp
    assert _registry(database_url) == (plan.source.column, old_fp, fitted.bridge_id)

    with SearchClient(database_url, view="documents_search", registry_ttl=3600) as client:
        bridged = client.active_model()
        assert bridged.bridge_id == fitted.bridge_id
        res = client.search(QUERY, 5)
        assert res.bridge_id == fitted.bridge_id and res.fingerprint == old_fp
        assert len(res.hits) == 5 and res.mixed == 0
        assert {h.model for h in res.hits} == {old_fp}

        switch.cutover(settings, plan)
        assert _registry(database_url) == (plan.target.column, new_fp, None)  # retired
        # The guard: the bridged query vector has the new column's dimensions, yet it meets
        # no new vector (zero rows, no distance computed); the client re-reads and retries.
        stale = client.query(client.embed(QUERY, bridged)[0], bridged, 5)
        assert stale == []
        after = client.search(QUERY, 5)
        assert after.model_switch_retries == 1 and after.bridge_id is None
        assert after.fingerprint == new_fp and {h.model for h in after.hits} == {new_fp}

        with pytest.raises(PhaseError, match=r"bridge-on|cut_over"):
            bridging.bridge_on(settings, plan, force=True)

        back = switch.rollback(settings, plan, bridge=True)
        assert back.bridge_id == fitted.bridge_id
        assert _registry(database_url) == (plan.source.column, old_fp, fitted.bridge_id)
        through = client.search(QUERY, 5)
        assert through.bridge_id == fitted.bridge_id and through.fingerprint == old_fp
        assert through.mixed == 0 and len(through.hits) == 5

        off = bridging.bridge_off(settings, plan)
        assert off.bridge_id is None and _registry(database_url)[2] is None
        # Same column, same fingerprint: a client sees bridge off when its registry copy
        # expires (registry_ttl); until then its bridged answers are still of the old space.
        client.active_model(refresh=True)
        plain = client.search(QUERY, 5)
        assert plain.bridge_id is None and plain.fingerprint == old_fp

    # A rollback without a bridge named as the old model's stand-in uses none.
    switch.cutover(settings, plan)
    assert switch.rollback(settings, plan).bridge_id is None


def test_cli_bridge_commands_and_verify_line(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    plan = switch_plan(target__model__dimensions=256, target__model__name="local-hash-new")
    migrated_state(settings, plan, 1000)
    path = plan_file(plan, tmp_path)
    runner = CliRunner()
    db = ["--database-url", database_url]

    out = runner.invoke(cli, ["bridge", "on", path, *db])
    assert out.exit_code == 7 and "bridge fit" in out.output, out.output  # none fitted

    out = runner.invoke(cli, ["bridge", "fit", path, *db, "--json"])
    assert out.exit_code == 0, out.output
    fitted = json.loads(out.output)
    retention = fitted["figures"]["retention"]
    out = runner.invoke(cli, ["bridge", "fit", path, *db])
    assert out.exit_code == 0 and "recommendation:" in out.output, out.output

    strict = plan_file(_with(plan, min_retention=min(1.0, retention + 0.01)), tmp_path)
    if retention + 0.01 <= 1.0:
        out = runner.invoke(cli, ["bridge", "on", strict, *db])
        assert out.exit_code == 9 and "bridge.min_retention" in out.output, out.output
    out = runner.invoke(cli, ["bridge", "on", strict, *db, "--force"])
    assert out.exit_code == 0 and "through bridge" in out.output, out.output
    out = runner.invoke(cli, ["bridge", "off", path, *db])
    assert out.exit_code == 0 and "old-model queries" in out.output, out.output

    # verify reports the newest bridge on its own queries; informational, never a failure.
    outcome = verify(settings, plan)
    line = next(c for c in outcome.report.checks if c.key == "bridge")
    assert line.status.value == "skip" and line.threshold == plan.bridge.min_retention
    docs = line.detail("documents")
    assert docs["queries"] > 0 and docs["recall@10_old"] is not None
    assert line.figure == docs["retention"] and outcome.report.passed


def test_bridge_fit_refuses_too_few_paired_rows(settings: Settings, database_url: str) -> None:
    plan = switch_plan(target__model__dimensions=256, target__model__name="local-hash-new")
    migrated_state(settings, plan, 300)
    with contextlib.closing(connect(database_url)) as conn:
        conn.execute("UPDATE documents SET embedding_v2 = NULL WHERE id > 150")
        before = conn.execute("SELECT count(*) FROM migrator.bridges").fetchone()
    with pytest.raises(PhaseError, match="only 150 rows hold both vectors"):
        bridging.fit(settings, plan)
    with contextlib.closing(connect(database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM migrator.bridges").fetchone() == before
        m = state.get_migration(conn, plan.name)
    assert m is not None and m.phase.value == "verified"
