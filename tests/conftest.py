"""Shared fixtures: an embedded PostgreSQL + pgvector per test session, a fresh database per test.

Set MIGRATOR_TEST_DATABASE_URL to run the integration tests against another server instead
(a PostgreSQL with pgvector >= 0.8.4 where the user may CREATE DATABASE).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from migrator.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
_PRIVATE_BASETEMP = "_migrator_private_basetemp"


def pytest_configure(config: pytest.Config) -> None:
    """Give each run a temporary folder of its own unless --basetemp names one.

    pytest's default (/tmp/pytest-of-USER/pytest-N) is shared by every run of one user, and each
    run prunes the older numbered folders: a second run at the same time removed the data
    folder of the first run's embedded PostgreSQL (59 errors). A private folder cannot be
    pruned by anyone else; it is removed when the run ends.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    path = tempfile.mkdtemp(prefix="migrator-tests-")
    # The embedded PostgreSQL runs as its own system user when tests run as root: it must be
    # able to reach its data folder below this one.
    os.chmod(path, 0o755)
    config.option.basetemp = path
    setattr(config, _PRIVATE_BASETEMP, path)


def pytest_unconfigure(config: pytest.Config) -> None:
    path = getattr(config, _PRIVATE_BASETEMP, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("MIGRATOR_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    from migrator.db.embedded import embedded_database_url, stop_embedded_database

    home = tmp_path_factory.mktemp("embedded")
    url = embedded_database_url(home)
    yield url
    stop_embedded_database(home)


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh database with pgvector, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url, "MIGRATOR_HOME": str(tmp_path / "home")})
    return load_settings(env)
