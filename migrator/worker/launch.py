"""Start and stop local worker processes (`celery -A migrator.worker.app worker -Q QUEUE`).

Used by `migrator worker` and by `migrator backfill --workers N`; owns process handling only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import IO

from migrator.backfill.broker import broker_url
from migrator.config import Settings
from migrator.db.connect import resolve_url


def worker_command(
    queue: str,
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    loglevel: str = "warning",
    hostname: str | None = None,
    app: str = "migrator.worker.app",
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queue,
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-l",
        loglevel,
    ]
    if hostname:
        cmd += ["-n", hostname]
    return cmd


def worker_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment workers need: the database and the broker, resolved (embedded ones
    included, so local workers join the same servers), plus the caller's variables."""
    env = dict(settings.environ)
    env["DATABASE_URL"] = resolve_url(settings)
    env["CELERY_BROKER_URL"] = broker_url(settings)
    env["MIGRATOR_HOME"] = str(settings.home)
    env.update(extra or {})
    return env


def start_workers(
    settings: Settings,
    queue: str,
    n: int,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    log: IO[bytes] | int | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start n worker processes; their output goes to `log` (a file or a descriptor) when
    given, else to this process's stdout and stderr."""
    env = worker_env(settings)
    procs = []
    for i in range(n):
        cmd = worker_command(
            queue,
            concurrency=concurrency,
            pool=pool,
            hostname=f"migrator-local-{os.getpid()}-{i}@%h",
        )
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM (warm shutdown: running tasks finish), then SIGKILL whoever is left; acks_late
    puts the messages of killed tasks back on the queue."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
