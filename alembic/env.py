"""Alembic environment for migrator's own schema (`migrator`), never the user's tables.

Used both by `alembic upgrade head` with the shipped alembic.ini and by migrator itself, which
passes its open connection in `config.attributes["connection"]`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, pool, text

from alembic import context
from migrator.db.schema import SCHEMA, metadata

config = context.config


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # Compare only migrator's schema: the user's tables are not ours to manage.
    if type_ == "schema":
        return name == SCHEMA
    return True


def _configure_and_run(connection: Any) -> None:
    # Serialise concurrent upgrades (several workers starting at once) on an advisory lock.
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('migrator:schema'))"))
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=_include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from migrator.config import load_settings
    from migrator.db.connect import resolve_url, sqlalchemy_url

    return sqlalchemy_url(resolve_url(load_settings()))


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.begin() as conn:
        _configure_and_run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
