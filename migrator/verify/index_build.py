"""Build the plan's index on the target column with CREATE INDEX CONCURRENTLY, and keep it valid.

Runs the index step's statements through the Executor on one session: VACUUM first, then the
SET statements (session settings sized to the rows indexed) and the build; polls
pg_stat_progress_create_index from a second connection for progress and an ETA, and replaces an
INVALID index left by a failed or cancelled build. Never reports success unless
pg_index.indisvalid is true. A valid index makes the whole step a no-op (no VACUUM either).
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
from psycopg import sql

from migrator.db.catalog import index_info
from migrator.db.connect import connect
from migrator.db.executor import Executor, LockPolicy
from migrator.db.server import rows_to_index, server_memory_bytes
from migrator.ddl import steps
from migrator.errors import ConcurrentRunError, DatabaseError, PreflightError
from migrator.plan.index_memory import BuildSizing
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
    # Seconds since this phase was first seen: the rate the ETA extrapolates is the phase's own.
    phase_seconds: float = 0.0

    @property
    def fraction(self) -> float | None:
        if self.tuples_total > 0:
            return min(1.0, self.tuples_done / self.tuples_total)
        if self.blocks_total > 0:
            return min(1.0, self.blocks_done / self.blocks_total)
        return None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left in this phase at its rate so far; None until there is a rate."""
        frac = self.fraction
        if frac is None or frac <= 0 or self.phase_seconds <= 0:
            return None
        return self.phase_seconds * (1.0 - frac) / frac


@dataclass(frozen=True)
class IndexResult:
    action: str  # "exists" (no-op) | "built" | "rebuilt" (an INVALID index was dropped first)
    invalid_dropped: int
    seconds: float
    size_bytes: int
    progress_samples: int
    sizing: BuildSizing | None = None  # what the build was given (None: no build)
    # Read back with SHOW on the build's own session, just before CREATE INDEX.
    session_settings: tuple[tuple[str, str], ...] = ()
    # pgvector's "hnsw graph no longer fits into maintenance_work_mem" notice was raised.
    spilled: bool = False
    vacuum_seconds: float | None = None  # None: no VACUUM ran

    def as_details(self) -> tuple[tuple[str, Any], ...]:
        out: list[tuple[str, Any]] = [
            ("action", self.action),
            ("invalid_dropped", self.invalid_dropped),
            ("seconds", round(self.seconds, 2)),
            ("size_bytes", self.size_bytes),
        ]
        if self.sizing is not None:
            out += [
                ("rows", self.sizing.rows),
                ("graph_estimate_bytes", self.sizing.graph_bytes),
                *self.session_settings,
                ("graph_spilled_to_disk", self.spilled),
            ]
        if self.vacuum_seconds is not None:
            out.append(("vacuum_seconds", round(self.vacuum_seconds, 2)))
        return tuple(out)


OnProgress = Callable[[BuildProgress], None]


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
        self._t0 = self._phase_t0 = time.perf_counter()
        self._phase = ""

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
                now = time.perf_counter()
                phase = str(row[0])
                if phase != self._phase:
                    self._phase, self._phase_t0 = phase, now
                if self.on_progress is not None:
                    self.on_progress(
                        BuildProgress(
                            phase,
                            int(row[1] or 0),
                            int(row[2] or 0),
                            int(row[3] or 0),
                            int(row[4] or 0),
                            now - self._t0,
                            now - self._phase_t0,
                        )
                    )


_SPILL_NOTICE = "no longer fits into maintenance_work_mem"
_SHOWN = ("maintenance_work_mem", "max_parallel_maintenance_workers")


def _sized_step(
    conn: psycopg.Connection, plan: Plan, *, fresh_stats: bool
) -> tuple[steps.Step, BuildSizing]:
    facts = steps.Facts(
        index_rows=rows_to_index(conn, plan, fresh_stats=fresh_stats),
        server_memory_bytes=server_memory_bytes(conn),
    )
    return steps.index(plan, facts), steps.build_sizing(plan, facts)


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
    """Make the plan's index exist and be valid: no-op, build, or drop an INVALID one, rebuild.

    Before the first build: VACUUM the table (index.vacuum_before_build), then size the
    build's maintenance_work_mem to the rows it will index (plan/index_memory.py).
    """
    conn = executor.conn
    assert conn is not None, "ensure_index needs a live executor"
    t0 = time.perf_counter()
    dropped = builds = samples = 0
    pid = conn.info.backend_pid
    sizing: BuildSizing | None = None
    shown: tuple[tuple[str, str], ...] = ()
    vacuum_seconds: float | None = None
    notices: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

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
            executor.run(steps.index(plan).backward, policy)
            dropped += 1
        if vacuum_seconds is None and plan.index.vacuum_before_build:
            # VACUUM cannot run in a transaction block: the executor runs it alone (autocommit).
            t_vac = time.perf_counter()
            executor.run((steps.vacuum(plan),), policy)
            vacuum_seconds = time.perf_counter() - t_vac
        step, sizing = _sized_step(conn, plan, fresh_stats=vacuum_seconds is not None)
        # CREATE INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, which never blocks the
        # application's reads and writes; a lock_timeout would instead abort its waits for
        # older transactions and abandon a finished build as INVALID. So it runs without one.
        forward = tuple(
            dataclasses.replace(st, ddl=False) for st in step.forward if st != steps.vacuum(plan)
        )
        conn.add_notice_handler(on_notice)
        try:
            executor.run(forward[:-1], policy)
            shown = tuple((name, _show(conn, name)) for name in _SHOWN)
            with _Watcher(url, pid, on_progress, poll_interval) as watcher:
                executor.run(forward[-1:], policy)
            samples += watcher.samples
        finally:
            conn.remove_notice_handler(on_notice)
            with contextlib.suppress(psycopg.Error):
                conn.execute("RESET maintenance_work_mem")
                conn.execute("RESET max_parallel_maintenance_workers")
        builds += 1
    row = conn.execute("SELECT pg_relation_size(%s::oid)", (info.oid,)).fetchone()
    size = int(row[0]) if row else 0
    action = "exists" if builds == 0 else ("rebuilt" if dropped else "built")
    return IndexResult(
        action,
        dropped,
        time.perf_counter() - t0,
        size,
        samples,
        sizing=sizing,
        session_settings=shown,
        spilled=any(_SPILL_NOTICE in n for n in notices),
        vacuum_seconds=vacuum_seconds,
    )


def _show(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
    return str(row[0]) if row else ""
