"""The one place migration statements run, and its dry-run twin.

Transactional statements of a step run together in one transaction under `lock_timeout`;
a lock timeout (SQLSTATE 55P03) rolls the whole transaction back and retries it with backoff
and jitter, so a long transaction elsewhere delays the step but never queues the application's
queries behind it for long. Statements PostgreSQL refuses in a transaction (CONCURRENTLY) run
alone in autocommit.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from migrator.db import errors as dberrors
from migrator.ddl.statements import Statement
from migrator.errors import LockTimeoutError, MigratorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockPolicy:
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 0
    attempts: int = 30
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0


@dataclass(frozen=True)
class RunResult:
    attempts: int
    lock_wait_ms: float
    hold_ms: float
    total_ms: float
    statements: int


def _groups(stmts: Sequence[Statement]) -> Iterator[list[Statement]]:
    """Consecutive transactional statements form one group (a statement marked
    `new_transaction` starts the next one); others stand alone."""
    group: list[Statement] = []
    for st in stmts:
        if st.transactional:
            if st.new_transaction and group:
                yield group
                group = []
            group.append(st)
            continue
        if group:
            yield group
            group = []
        yield [st]
    if group:
        yield group


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    r = rng or random
    return r.uniform(0, min(cap, base * (2**attempt)))


def _nothing_applied(group: list[Statement]) -> str:
    if group[0].transactional:
        return "nothing of this step was applied: its transaction was rolled back"
    return (
        "nothing else of this step was applied; an interrupted CONCURRENTLY statement can "
        "leave an INVALID index, which a rerun drops or rebuilds"
    )


def _rerun(group: list[Statement]) -> str:
    return f"rerun the command ({_nothing_applied(group)})"


def partial_hint(done: list[list[Statement]], failed: list[Statement]) -> str:
    """What a step with several transactions had committed when a later one failed."""
    applied = "; ".join(", ".join(st.purpose for st in g) for g in done)
    return (
        f"part of this step was applied and stays: {applied}. "
        f"Not applied: {failed[0].purpose}. Rerun the same command: it resumes from there"
    )


class Executor:
    """Runs statements on one autocommit connection; `dry_run=True` only records them."""

    def __init__(
        self,
        conn: psycopg.Connection | None,
        *,
        dry_run: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if conn is None and not dry_run:
            raise ValueError("a connection is required unless dry_run")
        self.conn = conn
        self.dry_run = dry_run
        self.rendered: list[str] = []
        self._sleep = sleep

    def run(
        self,
        stmts: Sequence[Statement],
        policy: LockPolicy,
        *,
        on_retry: Callable[[int, float], None] | None = None,
    ) -> RunResult:
        t_start = time.perf_counter()
        attempts = 0
        wait = hold = 0.0
        done: list[list[Statement]] = []
        for group in _groups(stmts):
            try:
                res = self._run_group(group, policy, on_retry)
            except MigratorError as exc:
                if done:
                    # Earlier parts committed: "all-or-nothing" would be false here.
                    exc.hint = partial_hint(done, group)
                raise
            done.append(group)
            attempts = max(attempts, res.attempts)
            wait += res.lock_wait_ms
            hold += res.hold_ms
        total = (time.perf_counter() - t_start) * 1000
        return RunResult(attempts, wait, hold, total, len(stmts))

    def _run_group(
        self,
        group: list[Statement],
        policy: LockPolicy,
        on_retry: Callable[[int, float], None] | None,
    ) -> RunResult:
        if self.dry_run:
            self.rendered.extend(st.render() for st in group)
            return RunResult(1, 0.0, 0.0, 0.0, len(group))
        assert self.conn is not None
        in_tx = group[0].transactional
        needs_lock = any(st.ddl for st in group)
        for attempt in range(1, policy.attempts + 1):
            t0 = time.perf_counter()
            t_locked = t0
            try:
                if in_tx:
                    with self.conn.transaction():
                        self._set_timeouts(policy, local=True, ddl=needs_lock)
                        for i, st in enumerate(group):
                            self._execute(st)
                            if i == 0:
                                t_locked = time.perf_counter()
                else:
                    self._set_timeouts(policy, local=False, ddl=needs_lock)
                    try:
                        self._execute(group[0])
                    finally:
                        self._reset_timeouts()
                    t_locked = time.perf_counter()
                t_end = time.perf_counter()
                return RunResult(
                    attempt,
                    (t_locked - t0) * 1000,
                    (t_end - t_locked) * 1000,
                    (t_end - t0) * 1000,
                    len(group),
                )
            except dberrors.TRANSIENT as exc:
                # A lock timeout, a deadlock victim or a serialisation failure: PostgreSQL
                # rolled the transaction back because of another one, so running it again
                # later is safe and usually succeeds.
                if attempt == policy.attempts:
                    if isinstance(exc, pgerr.LockNotAvailable):
                        raise LockTimeoutError(
                            f"could not lock for {group[0].purpose!r} after {attempt} attempts "
                            f"of {policy.lock_timeout_ms} ms",
                            hint="a long transaction holds a conflicting lock; find it in "
                            f"pg_stat_activity, or rerun later ({_nothing_applied(group)})",
                        ) from None
                    raise dberrors.describe(
                        exc, repr(group[0].purpose), resume=_rerun(group)
                    ) from exc
                delay = backoff(attempt, policy.backoff_base_s, policy.backoff_max_s)
                log.info(
                    "%s on %r, attempt %d; retrying in %.2fs",
                    type(exc).__name__,
                    group[0].purpose,
                    attempt,
                    delay,
                )
                if on_retry:
                    on_retry(attempt, delay)
                self._sleep(delay)
            except psycopg.Error as exc:
                # A statement timeout or a cancel is not a lost connection: say which it was.
                raise dberrors.describe(exc, repr(group[0].purpose), resume=_rerun(group)) from exc
        raise AssertionError("unreachable")

    def _execute(self, st: Statement) -> None:
        assert self.conn is not None
        log.debug("executing: %s", st.render())
        self.conn.execute(st.query)  # type: ignore[call-overload]  # Composable is accepted

    def _set_timeouts(self, policy: LockPolicy, *, local: bool, ddl: bool) -> None:
        assert self.conn is not None
        scope = sql.SQL("LOCAL " if local else "")
        lock_ms = policy.lock_timeout_ms if ddl else 0
        self.conn.execute(sql.SQL("SET {}lock_timeout = {}").format(scope, sql.Literal(lock_ms)))
        self.conn.execute(
            sql.SQL("SET {}statement_timeout = {}").format(
                scope, sql.Literal(policy.statement_timeout_ms)
            )
        )

    def _reset_timeouts(self) -> None:
        assert self.conn is not None
        self.conn.execute("RESET lock_timeout")
        self.conn.execute("RESET statement_timeout")
