"""Build the plan's index on the target column with CREATE INDEX CONCURRENTLY, and keep it valid.

Runs the index step's statements through the Executor on one session (the SET statements are
session settings for the build), polls pg_stat_progress_create_index from a second connection,
and replaces an INVALID index left by a failed or cancelled build. Never reports success unless
pg_index.indisvalid is true. A valid index makes the whole step a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.ddl import steps
from migrator.errors import ConcurrentRunError, DatabaseError, PreflightError
from migrator.plan.model import Plan


@dataclass(frozen=True)
class BuildProgress:
    """One sample of pg_stat_progress_create_index for our build."""

    phase: str
    tuples_done: int
    tuples_total: int
    blocks_done: int
    blocks_total: int
    seconds: float

    @property
    def fraction(self) -> float | None:
        if self.tuples_total > 0:
            return min(1.0, self.tuples_done / self.tuples_total)
        if self.blocks_total > 0:
            return min(1.0, self.blocks_done / self.blocks_total)
        return None


@dataclass(frozen=True)
class IndexResult:
    action: str  # "exists" (no-op) | "built" | "rebuilt" (an INVALID index was dropped first)
    invalid_dropped: int
    seconds: float
    size_bytes: int
    progress_samples: int

    def as_details(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("action", self.action),
            ("invalid_dropped", self.invalid_dropped),
            ("seconds", round(self.seconds, 2)),
            ("size_bytes", self.size_bytes),
        )


OnProgress = Callable[[BuildProgress], None]


@dataclass(frozen=True)
class IndexInfo:
    state: str  # "absent" | "valid" | "invalid" | "other" (the name is taken elsewhere)
    oid: int | None = None
    definition: str = ""


def index_info(conn: psycopg.Connection, plan: Plan) -> IndexInfo:
    """The state of the plan's index, found by name in the table's schema."""
    row = conn.execute(
        "SELECT i.oid, x.indisvalid AND x.indisready, t.relname, a.attname, "
        "pg_get_indexdef(i.oid) FROM pg_class i "
        "JOIN pg_namespace n ON n.oid = i.relnamespace JOIN pg_index x ON x.indexrelid = i.oid "
        "JOIN pg_class t ON t.oid = x.indrelid "
        "LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
        "WHERE n.nspname = %s AND i.relname = %s",
        (plan.table.schema_, plan.index_name),
    ).fetchone()
    if row is None:
        return IndexInfo("absent")
    if row[2] != plan.table.name or row[3] != plan.target.column:
        return IndexInfo("other", int(row[0]), str(row[4]))
    return IndexInfo("valid" if row[1] else "invalid", int(row[0]), str(row[4]))


def _other_build(conn: psycopg.Connection, oid: int, own_pid: int) -> int | None:
    """pid of another session still building this index (its INVALID entry is work in progress)."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_progress_create_index WHERE index_relid = %s AND pid <> %s",
        (oid, own_pid),
    ).fetchone()
    return int(row[0]) if row else None


class _Watcher:
    """Polls the build's progress on its own connection until stopped."""

    def __init__(self, url: str, pid: int, on_progress: OnProgress | None, interval: float) -> None:
        self.url, self.pid, self.on_progress, self.interval = url, pid, on_progress, interval
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="index-progress")
        self._t0 = time.perf_counter()

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with (
            contextlib.suppress(psycopg.Error, DatabaseError),
            contextlib.closing(
                connect(self.url, vector=False, application_name="migrator-index-progress")
            ) as conn,
        ):
            while not self._stop.wait(self.interval):
                row = conn.execute(
                    "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                    "FROM pg_stat_progress_create_index WHERE pid = %s",
                    (self.pid,),
                ).fetchone()
                if row is None:
                    continue
                self.samples += 1
                if self.on_progress is not None:
                    self.on_progress(
                        BuildProgress(
                            str(row[0]),
                            int(row[1] or 0),
                            int(row[2] or 0),
                            int(row[3] or 0),
                            int(row[4] or 0),
                            time.perf_counter() - self._t0,
                        )
                    )


def ensure_index(
    executor: Executor,
    url: str,
    plan: Plan,
    policy: LockPolicy,
    *,
    on_progress: OnProgress | None = None,
    poll_interval: float = 0.5,
    max_builds: int = 3,
) -> IndexResult:
    """Make the plan's index exist and be valid: no-op, build, or drop an INVALID one, rebuild."""
    conn = executor.conn
    assert conn is not None, "ensure_index needs a live executor"
    step = steps.index(plan)
    # CREATE INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, which never blocks the
    # application's reads and writes; a lock_timeout would instead abort its waits for older
    # transactions and abandon a finished build as INVALID. So the build runs without one.
    forward = tuple(dataclasses.replace(st, ddl=False) for st in step.forward)
    t0 = time.perf_counter()
    dropped = builds = samples = 0
    pid = conn.info.backend_pid
    while True:
        info = index_info(conn, plan)
        if info.state == "other":
            raise PreflightError(
                f"index name {plan.index_name} is taken by another index ({info.definition})",
                hint="set index.name in the plan",
            )
        if info.state == "valid":
            break
        if builds == max_builds:
            raise DatabaseError(
                f"index {plan.index_name} is still invalid after {builds} builds",
                hint="look for errors in the PostgreSQL log, then rerun",
            )
        if info.state == "invalid":
            assert info.oid is not None
            other = _other_build(conn, info.oid, pid)
            if other is not None:
                raise ConcurrentRunError(
                    f"index {plan.index_name} is being built by pid {other}",
                    hint="wait for that build to finish, then rerun",
                )
            executor.run(step.backward, policy)
            dropped += 1
        try:
            with _Watcher(url, pid, on_progress, poll_interval) as watcher:
                executor.run(forward, policy)
            samples += watcher.samples
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("RESET maintenance_work_mem")
                conn.execute("RESET max_parallel_maintenance_workers")
        builds += 1
    row = conn.execute("SELECT pg_relation_size(%s::oid)", (info.oid,)).fetchone()
    size = int(row[0]) if row else 0
    action = "exists" if builds == 0 else ("rebuilt" if dropped else "built")
    return IndexResult(action, dropped, time.perf_counter() - t0, size, samples)
