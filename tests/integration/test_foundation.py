"""Foundation against a real PostgreSQL + pgvector: schema, live plan, guards, operator lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from migrator import api
from migrator.cli import cli
from migrator.config import Settings
from migrator.db import state
from migrator.db.connect import alembic_config, connect, ensure_schema
from migrator.db.context import migration_context
from migrator.embedding.server import run_server_in_thread
from migrator.errors import ConcurrentRunError, PhaseError, PlanError, PreflightError
from tests.helpers import ROOT, create_documents, demo_plan
from tests.switch_helpers import plan_file

pytestmark = pytest.mark.integration


def _catalog(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', "
            "'pg_toast') ORDER BY 1, 2"
        ).fetchall()


def test_schema_upgrade_is_idempotent_and_has_no_drift(database_url: str) -> None:
    ensure_schema(database_url)
    ensure_schema(database_url)
    from sqlalchemy import create_engine

    from alembic import command

    cfg = alembic_config(database_url)
    engine = create_engine(cfg.get_main_option("sqlalchemy.url").replace("%%", "%"))  # type: ignore[attr-defined]
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
        command.check(cfg)  # type: ignore[arg-type]  # raises on drift
    engine.dispose()


def test_alembic_cli_with_shipped_ini(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    with psycopg.connect(database_url) as conn:
        v = conn.execute("SELECT version_num FROM migrator.alembic_version").fetchone()
    assert v == ("0006",)


def test_live_plan_reports_rows_tokens_cost_time(database_url: str, settings: Settings) -> None:
    create_documents(database_url, 500)
    server = run_server_in_thread()  # the pre-flight asks each model for a test embedding
    try:
        report = api.plan_live(demo_plan(server.url), settings)
    finally:
        server.stop()
    data = report.as_dict()
    assert report.ok, data["findings"]
    assert data["live"]["rows"] == 500 and data["live"]["rows_exact"]
    assert data["live"]["pgvector_version"].startswith("0.8")
    est = data["estimate"]
    assert est["rows"] == 500 and est["tokens"] > 500 and est["cost_usd"] == 0.0
    assert est["seconds"] > 0
    assert [p["phase"] for p in data["phases"]] == [
        "adopt",
        "expand",
        "backfill",
        "index",
        "cutover",
        "rollback",
        "finalize",
        "abort",
    ]
    # Read-only: the live plan created nothing.
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('migrator.migrations')").fetchone() == (None,)


def test_live_plan_finds_mismatches(database_url: str, settings: Settings) -> None:
    create_documents(database_url, 20)
    bad = demo_plan(source__model__dimensions=128, text__column="summary")
    report = api.plan_live(bad, settings)
    messages = " | ".join(f.what for f in report.findings if f.level == "error")
    assert "source column embedding is vector(256), the plan says vector(128)" in messages
    assert "text column summary does not exist" in messages
    assert not report.ok


def test_cli_plan_live_json_and_exit_codes(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    create_documents(database_url, 50)
    runner = CliRunner()
    server = run_server_in_thread()
    try:
        path = plan_file(demo_plan(server.url), tmp_path)
        res = runner.invoke(cli, ["plan", path, "--json", "--database-url", database_url])
    finally:
        server.stop()
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["live"]["rows"] == 50
    res = runner.invoke(
        cli,
        ["plan", str(ROOT / "plans/openai-3small-to-3large.yaml"), "--database-url", database_url],
    )
    assert res.exit_code == PreflightError.exit_code
    assert "table public.articles does not exist" in res.output


HOSTILE = [
    ("table.name", 'x"; DROP TABLE documents;--'),
    ("table.name", "d" * 64),
    ("view.name", "v'); DROP TABLE documents; --"),
    ("target.model.dimensions", 2001),
    ("index.opclass", "vector_l2_ops"),
    ("surprise", True),
]


@pytest.mark.parametrize(("path", "value"), HOSTILE)
def test_bad_plans_leave_the_database_untouched(
    database_url: str, tmp_path: Path, path: str, value: object
) -> None:
    import yaml

    create_documents(database_url, 10)
    before = _catalog(database_url)
    data = demo_plan().model_dump(mode="json", by_alias=True)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    for cmd in (["plan"], ["plan", "--offline"], ["adopt"], ["status"]):
        res = CliRunner().invoke(
            cli,
            [*cmd, str(f), "--database-url", database_url]
            if cmd != ["plan", "--offline"]
            else [*cmd, str(f)],
        )
        assert res.exit_code == PlanError.exit_code, res.output
        assert "Traceback" not in res.output
    assert _catalog(database_url) == before


def test_adopt_creates_view_and_guards_phases(database_url: str, settings: Settings) -> None:
    create_documents(database_url, 30)
    plan = demo_plan()
    api.adopt(settings, plan)
    with psycopg.connect(database_url) as conn:
        cols = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_name = 'documents_search' ORDER BY ordinal_position"
        ).fetchall()
        assert [c[0] for c in cols] == ["id", "title", "body", "embedding", "embedding_model"]
        active = conn.execute(
            "SELECT column_name, fingerprint FROM migrator.active_models"
        ).fetchone()
        assert active == ("embedding", plan.source.model.fingerprint())
    with (
        pytest.raises(PhaseError, match="cannot cutover: the migration is planned"),
        migration_context(settings, plan, "cutover"),
    ):
        pass
    st = api.status(settings, plan)
    assert st["phase"] == "planned"
    assert [e["result"] for e in st["events"]] == ["ok", "refused"]


def test_changed_plan_is_refused(database_url: str, settings: Settings) -> None:
    create_documents(database_url, 10)
    api.adopt(settings, demo_plan())
    changed = demo_plan(target__model__name="local-hash-other")
    with pytest.raises(PhaseError, match="plan file changed"):
        api.adopt(settings, changed)
    # Tuning keys may change.
    api.adopt(settings, demo_plan(backfill__batch_size=7))


def test_two_operators_exactly_one_proceeds(database_url: str, settings: Settings) -> None:
    create_documents(database_url, 10)
    # In-process models: the pre-flight's test embeddings need no server.
    plan = demo_plan(source__model__provider="local", target__model__provider="local")
    api.adopt(settings, plan)
    inside = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with migration_context(settings, plan, "backfill"):
                inside.set()
                release.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    with (
        pytest.raises(ConcurrentRunError, match="another migrator process") as busy,
        migration_context(settings, plan, "backfill"),
    ):
        pass
    # The holder is named by the migrator process (host and pid), not a backend pid.
    expected = f"(migrator process {os.getpid()} on host {socket.gethostname()} running `backfill`)"
    assert expected in busy.value.message
    release.set()
    t.join()
    assert not errors
    with migration_context(settings, plan, "backfill"):
        pass


def test_phase_state_machine_guards() -> None:
    assert state.State.VERIFIED in state.ALLOWED["cutover"]
    with pytest.raises(PhaseError, match="cannot finalize: the migration is not started"):
        state.guard("finalize", None)


def test_executor_retries_lock_timeouts_then_succeeds(database_url: str) -> None:
    from migrator.db.executor import Executor, LockPolicy
    from migrator.ddl.steps import expand

    create_documents(database_url, 10)
    ensure_schema(database_url)
    plan = demo_plan()
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE documents IN ACCESS SHARE MODE")  # a long reader holds a lock
    retries: list[int] = []
    conn = connect(database_url)

    def release_later(attempt: int, delay: float) -> None:
        retries.append(attempt)
        if attempt == 3:
            blocker.rollback()

    res = Executor(conn).run(
        expand(plan).forward, LockPolicy(lock_timeout_ms=50, attempts=20), on_retry=release_later
    )
    assert retries[:3] == [1, 2, 3]
    assert res.attempts == 4
    cols = conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = "
        "'documents' AND column_name = 'embedding_v2'"
    ).fetchone()
    assert cols == (1,)
    blocker.close()
    conn.close()


def test_executor_gives_up_cleanly(database_url: str) -> None:
    from migrator.db.executor import Executor, LockPolicy
    from migrator.ddl.steps import expand
    from migrator.errors import LockTimeoutError

    create_documents(database_url, 10)
    ensure_schema(database_url)
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE documents IN ACCESS SHARE MODE")
    conn = connect(database_url)
    with pytest.raises(LockTimeoutError, match="after 3 attempts"):
        Executor(conn, sleep=lambda s: None).run(
            expand(demo_plan()).forward, LockPolicy(lock_timeout_ms=20, attempts=3)
        )
    blocker.close()
    # All or nothing: neither the column nor the function exists.
    assert conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'embedding_v2'"
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'migrator_demo%'"
    ).fetchone() == (0,)
    conn.close()
