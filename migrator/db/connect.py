"""Connections: resolve the database URL (explicit or embedded), connect, upgrade our schema.

Every connection carries `application_name` so operators can find migrator in pg_stat_activity.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import psycopg
from pgvector.psycopg import register_vector

from migrator.config import Settings
from migrator.db.embedded import embedded_database_url
from migrator.errors import DatabaseError
from migrator.shipped import alembic_dir

APPLICATION_NAME = "migrator"


def app_name(command: str = "") -> str:
    """`migrator:<host>:<pid>[:<command>]`: pg_stat_activity then names the migrator process
    behind a session (a busy migration lock names who holds it), within PostgreSQL's 63 bytes."""
    name = f"{APPLICATION_NAME}:{socket.gethostname()}:{os.getpid()}"
    if command:
        name += f":{command}"
    return name.encode()[:63].decode(errors="ignore")


_schema_ready: set[str] = set()
_schema_lock = threading.Lock()


def resolve_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.home)


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return (
            make_url(sqlalchemy_url(url))
            .render_as_string(hide_password=True)
            .replace("postgresql+psycopg://", "postgresql://")
        )
    except Exception:
        return "<database url>"


def connect(
    url: str,
    *,
    autocommit: bool = True,
    vector: bool = True,
    application_name: str | None = None,
) -> psycopg.Connection:
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=application_name or app_name(),
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"cannot connect to {redact(url)}: {first}",
            hint="check DATABASE_URL / --database-url, or unset it to use the embedded database",
        ) from None
    if vector:
        # Extension not installed: the live checks report it.
        with contextlib.suppress(psycopg.ProgrammingError):
            register_vector(conn)
    return conn


@contextlib.contextmanager
def connection(url: str, **kwargs: object) -> Iterator[psycopg.Connection]:
    conn = connect(url, **kwargs)  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        conn.close()


def alembic_config(url: str | None = None) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def ensure_schema(url: str) -> None:
    """Upgrade migrator's schema to head (idempotent; concurrent callers serialise)."""
    with _schema_lock:
        if url in _schema_ready:
            return
        from sqlalchemy import create_engine, pool

        from alembic import command

        cfg = alembic_config(url)
        engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn  # type: ignore[attr-defined]
                command.upgrade(cfg, "head")  # type: ignore[arg-type]
        except Exception as exc:
            raise DatabaseError(
                f"could not upgrade migrator's schema: {exc}".splitlines()[0]
            ) from exc
        finally:
            engine.dispose()
        _schema_ready.add(url)
