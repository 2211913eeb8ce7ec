"""Shared fixtures: an embedded PostgreSQL + pgvector per test session, a fresh database per test.

Set MIGRATOR_TEST_DATABASE_URL to run the integration tests against another server instead
(a PostgreSQL with pgvector >= 0.8 where the user may CREATE DATABASE).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from migrator.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("MIGRATOR_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    from migrator.embedded import embedded_database_url, stop_embedded_database

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
