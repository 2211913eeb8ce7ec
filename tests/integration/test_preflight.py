"""Nothing changes before what can be checked is checked: each refusal of the pre-flight names
the problem and what to do, exits with the documented code, and leaves the catalog exactly as
it was (not even migrator's own schema is created). `plan` and `runbook` (live) report the same
problems with the same exit codes."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner, Result

from migrator import api
from migrator.backfill import monitor as backfill
from migrator.cli import cli
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.errors import (
    BudgetError,
    ConfigError,
    MigratorError,
    PreflightError,
    ProviderError,
)
from migrator.plan.model import Plan
from migrator.verify.run import verify
from tests.backfill_helpers import make_documents, unique_plan
from tests.switch_helpers import fill_target, plan_file

pytestmark = pytest.mark.integration
REDIS = os.environ.get("MIGRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
NO_KEY = "MIGRATOR_TEST_KEY_THAT_IS_NOT_SET"


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a refused command must not change: schemas, relations (owner, grants, options),
    columns, triggers, functions, view definitions, extension versions."""
    user_rel = (
        "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
    )
    queries = {
        "schemas": "SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace "
        "WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
        "relations": "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), "
        "c.relacl::text, c.reloptions::text FROM pg_class c JOIN pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE {user_rel} ORDER BY 1, 2",
        "columns": "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE {user_rel} AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY 1, 2",
        "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
        "WHERE NOT tgisinternal ORDER BY 1, 2",
        "functions": "SELECT n.nspname, p.proname, md5(p.prosrc) FROM pg_proc p JOIN "
        f"pg_namespace n ON n.oid = p.pronamespace WHERE {user_rel} ORDER BY 1, 2",
        "views": "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c JOIN pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE {user_rel} AND c.relkind = 'v' ORDER BY 1",
        "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    }
    with psycopg.connect(url) as conn:
        return {k: conn.execute(q).fetchall() for k, q in queries.items()}  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle = run_server_in_thread()
    yield handle
    handle.stop()


def _settings(settings: Settings, **env: str | None) -> Settings:
    e = dict(settings.environ)
    e["CELERY_BROKER_URL"] = REDIS
    for k in ("MIGRATOR_REDIS_URL", "OPENAI_API_KEY", NO_KEY):
        e.pop(k, None)
    for k, v in env.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return load_settings(e)


def _refused(
    st: Settings, plan: Plan, url: str, error: type[MigratorError], *, command: str = "backfill"
) -> MigratorError:
    before = catalog(url)
    with pytest.raises(error) as err:
        if command == "backfill":
            backfill.run(st, plan, backfill.Options(wait=False))
        else:
            verify(st, plan)
    assert catalog(url) == before, "a refused command changed the database"
    assert err.value.exit_code == error.exit_code
    return err.value


def _cli(args: list[str], st: Settings) -> Result:
    env = {k: v for k, v in st.environ.items() if k not in ("OPENAI_API_KEY", NO_KEY)}
    return CliRunner().invoke(cli, args, env={**env, "OPENAI_API_KEY": None, NO_KEY: None})


def test_a_missing_api_key_changes_nothing_and_exits_3(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    make_documents(database_url, 30)
    plan = unique_plan(
        "https://embeddings.example.invalid/v1",
        source__model__provider="local",
        target__model__api_key_env=NO_KEY,
    )
    st = _settings(settings)
    err = _refused(st, plan, database_url, ConfigError)
    assert NO_KEY in err.one_line() and "target model" in err.one_line()
    path = plan_file(plan, tmp_path)
    before = catalog(database_url)
    res = _cli(["backfill", path, "--database-url", database_url, "--workers", "0"], st)
    assert res.exit_code == 3, res.output
    assert f"set {NO_KEY}" in res.output and "Traceback" not in res.output
    assert catalog(database_url) == before
    # The same problem, the same code, from the dry runs.
    for cmd in (["plan", path], ["runbook", path]):
        out = _cli([*cmd, "--database-url", database_url], st)
        assert out.exit_code == 3, out.output
        assert f"set {NO_KEY}" in out.output
    assert catalog(database_url) == before
    # A command that calls no model does not need the key.
    api.adopt(st, plan)


def test_a_model_answering_another_dimension_is_refused(
    database_url: str, settings: Settings, server: ServerHandle
) -> None:
    make_documents(database_url, 30)
    plan = unique_plan(server.url)
    server.set_controls(bad="wrong-dim")  # every vector one dimension short
    err = _refused(_settings(settings), plan, database_url, ProviderError)
    assert "383 dimensions" in err.one_line() or "dimension" in err.one_line(), err.one_line()


def test_the_source_model_is_checked_when_the_run_will_call_it(
    database_url: str, settings: Settings
) -> None:
    make_documents(database_url, 40)
    dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    plan = unique_plan(dead, target__model__provider="local")  # source: openai at `dead`
    st = _settings(settings)
    api.adopt(st, plan)  # calls no model
    with contextlib.closing(connect(database_url)) as conn:
        Executor(conn).run(steps.expand(plan, api.live_facts(conn, plan)).forward, LockPolicy())
        fill_target(conn, plan)
        state.set_phase(conn, plan.name, state.State.BACKFILLED)
    # verify embeds queries with both models: refused before it builds the index.
    err = _refused(st, plan, database_url, ProviderError, command="verify")
    assert "source model" in err.one_line()
    # backfill calls the old model to refresh stale old vectors (refresh_source, the default)...
    _refused(st, plan, database_url, ProviderError)
    # ...and not at all without it, before cutover.
    off = unique_plan(
        dead,
        name=plan.name,
        backfill__queue=plan.queue,
        target__model__provider="local",
        backfill__refresh_source=False,
    )
    backfill.run(st, off, backfill.Options(wait=False))


def test_rate_limits_need_the_shared_redis(database_url: str, settings: Settings) -> None:
    make_documents(database_url, 20)
    plan = unique_plan(
        "",
        source__model__provider="local",
        target__model__provider="local",
        backfill__requests_per_minute=100,
    )
    st = _settings(settings, MIGRATOR_REDIS_URL="redis://127.0.0.1:1/0")
    err = _refused(st, plan, database_url, BudgetError)
    assert "rate budget" in err.one_line() and "MIGRATOR_REDIS_URL" in err.one_line()
    assert err.exit_code == 15
    # A RabbitMQ broker and no MIGRATOR_REDIS_URL: each machine would get the whole budget.
    rabbit = _settings(settings, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    err = _refused(rabbit, plan, database_url, BudgetError)
    assert "is not Redis" in err.one_line() and "MIGRATOR_REDIS_URL" in err.one_line()
    # One machine on purpose: the embedded Redis holds the budget, the pre-flight passes.
    local = _settings(
        settings,
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
        MIGRATOR_LOCAL_BUDGET="1",
    )
    backfill.run(local, plan, backfill.Options(wait=False))


@contextlib.contextmanager
def _role(database_url: str) -> Iterator[str]:
    """A login role that is not the table's owner; the URL to connect as it."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    dbname = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'GRANT CONNECT, CREATE ON DATABASE "{dbname}" TO "{name}"')
        conn.execute(f'GRANT SELECT, UPDATE ON documents TO "{name}"')
    parts = urlsplit(database_url)
    host = parts.netloc.split("@")[-1]
    url = urlunsplit((parts.scheme, f"{name}@{host}", parts.path, parts.query, ""))
    try:
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


def test_missing_privileges_are_read_from_the_catalog(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    make_documents(database_url, 20)
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    with _role(database_url) as url:
        st = _settings(settings, DATABASE_URL=url)
        err = _refused(st, plan, database_url, PreflightError)
        msg = err.one_line() + " ".join(err.more)
        assert "does not own public.documents" in msg and "GRANT" in msg, msg
        assert "may not create triggers on public.documents" in msg, msg
        res = _cli(["plan", plan_file(plan, tmp_path), "--database-url", url], st)
        assert res.exit_code == 6 and "does not own public.documents" in res.output


def test_pgvector_older_than_0_8_4_is_refused(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    make_documents(database_url, 20)
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    with psycopg.connect(database_url, autocommit=True) as conn:
        # What the catalog of a server with pgvector 0.8.3 says (this one ships 0.8.6).
        conn.execute("UPDATE pg_extension SET extversion = '0.8.3' WHERE extname = 'vector'")
    st = _settings(settings)
    err = _refused(st, plan, database_url, PreflightError)
    assert "pgvector 0.8.3 is installed" in err.one_line() and "0.8.4" in err.one_line()
    path = plan_file(plan, tmp_path)
    for cmd in (["plan", path], ["runbook", path]):
        out = _cli([*cmd, "--database-url", database_url], st)
        assert out.exit_code == 6 and "pgvector 0.8.3 is installed" in out.output, out.output


def test_plan_and_runbook_refuse_a_missing_table_alike(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    plan = unique_plan("", source__model__provider="local", target__model__provider="local")
    path = plan_file(plan, tmp_path)
    st = _settings(settings)
    outs = [
        _cli([*cmd, "--database-url", database_url], st)
        for cmd in (["plan", path], ["runbook", path])
    ]
    for out in outs:
        assert out.exit_code == 6, out.output
        assert "table public.documents does not exist" in out.output
    before = catalog(database_url)
    with pytest.raises(PreflightError):
        api.adopt(st, plan)
    assert catalog(database_url) == before
