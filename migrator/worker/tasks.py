"""Thin Celery tasks: take (migration, batch id), call `work.run_batch`, map errors to retries.

Like web views: no logic beyond loading the plan from migrator.migrations (workers need only
DATABASE_URL and the broker), per-process resources created lazily after fork, and the retry
decision of `work.retry_delay`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import psycopg
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from migrator.backfill import budget, ledger, probe, work
from migrator.backfill.lease import Heartbeat
from migrator.backfill.pacing import Pacer
from migrator.backfill.ratelimit import Limiter
from migrator.bridge import store
from migrator.bridge.provider import bridged
from migrator.config import Settings, load_settings
from migrator.db import state
from migrator.db.connect import connect, resolve_url
from migrator.embedding import Provider, RetryableError, provider_for
from migrator.errors import BudgetError
from migrator.plan.model import Plan, Role
from migrator.worker.app import TASK_NAME, app

log = logging.getLogger(__name__)
NO_BUDGET_RETRY_S = 30.0
# A task paused by pacing longer than this hands its batch back (a fresh message), so no task
# waits near its time limit while search is protected.
PAUSED_HAND_BACK_S = 60.0


@dataclass
class Runtime:
    """What one worker process holds: created on first use in that process, after fork."""

    pid: int
    settings: Settings
    conn: psycopg.Connection | None = None
    plans: dict[str, tuple[str, Plan]] = field(default_factory=dict)
    providers: dict[tuple[str, str, int | None], tuple[Any, Provider]] = field(default_factory=dict)
    limiters: dict[tuple[str, str], tuple[Any, Limiter]] = field(default_factory=dict)
    stats: work.Stats = field(default_factory=work.Stats)
    heartbeats: dict[float, Heartbeat] = field(default_factory=dict)
    pacers: dict[str, Pacer] = field(default_factory=dict)

    def connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                work.forget_connection(self.conn)
            self.conn = connect(resolve_url(self.settings), application_name="migrator-worker")
        return self.conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            work.forget_connection(self.conn)
            try:
                self.conn.close()
            finally:
                self.conn = None

    def heartbeat(self, plan: Plan) -> Heartbeat:
        """The lease keeper of this process (its own connection), for the plan's lease."""
        lease = plan.backfill.lease_seconds
        found = self.heartbeats.get(lease)
        if found is None:
            url = resolve_url(self.settings)
            found = self.heartbeats[lease] = Heartbeat(
                lambda: connect(url, application_name="migrator-heartbeat"), lease, _worker_id()
            )
        return found

    def plan(self, name: str) -> Plan:
        """The stored plan, reloaded whenever its version changed: an operator may change
        tuning keys (limits, retry policy, lease) mid-run, and every worker follows from its
        next batch. One short query per batch compares the version."""
        conn = self.connection()
        cached = self.plans.get(name)
        version = state.plan_version(conn, name)
        if version is None:
            raise LookupError(f"migration {name!r} is not registered in this database")
        if cached is not None and cached[0] == version:
            return cached[1]
        found = state.stored_plan_versioned(conn, name)
        if found is None:
            raise LookupError(f"migration {name!r} is not registered in this database")
        plan, version = found
        if cached is not None:
            log.warning(
                "%s: the stored plan changed (version %s): limits rpm=%s tpm=%s, retry %s",
                name,
                version[:8],
                plan.backfill.requests_per_minute,
                plan.backfill.tokens_per_minute,
                plan.backfill.retry.max_attempts,
            )
        self.plans[name] = (version, plan)
        return plan

    def pacer(self, name: str) -> Pacer:
        """This process's duty cycle at the migration's shared pace (read from the database
        with the current stored plan: `backfill.pacing` changes live)."""
        found = self.pacers.get(name)
        if found is None:
            found = self.pacers[name] = Pacer(
                lambda: probe.worker_pace(self.connection(), self.plans[name][1])
            )
        return found

    def version(self, name: str) -> str | None:
        cached = self.plans.get(name)
        return cached[0] if cached else None

    def provider(self, plan: Plan, rs: work.RoleSpec) -> Provider:
        """The model's client behind retries and the shared budget, rebuilt when the model,
        the limits or the retry policy of the stored plan changed. When the old model retired
        (`bridge on --old-model-gone`), its bridge stands in for it."""
        stand_in = (
            store.replacing_source(self.connection(), plan) if rs.role is Role.SOURCE else None
        )
        key = (plan.name, rs.role, stand_in.id if stand_in else None)
        tuning = (rs.model.fingerprint(), _tuning(plan))
        found = self.providers.get(key)
        if found is None or found[0] != tuning:
            inner = (
                bridged(stand_in, rs.model, self.settings.environ)
                if stand_in
                else provider_for(rs.model, self.settings.environ)
            )
            retrying = work.RetryingProvider(
                inner, self.limiter(plan, rs), plan.backfill.retry, self.stats
            )
            found = self.providers[key] = (tuning, retrying)
        return found[1]

    def limiter(self, plan: Plan, rs: work.RoleSpec) -> Limiter:
        """The shared budget with the stored plan's limits (rebuilt when they change), so
        every worker draws on one bucket with one cap, whatever it was started with."""
        key = (plan.name, rs.role)
        tuning = _tuning(plan)
        found = self.limiters.get(key)
        if found is None or found[0] != tuning:
            found = self.limiters[key] = (tuning, self._make_limiter(plan, rs))
        return found[1]

    def _make_limiter(self, plan: Plan, rs: work.RoleSpec) -> Limiter:
        # BudgetError when the limits cannot be one shared budget: the task waits, never
        # runs unlimited (see _failed).
        return budget.limiter_for(self.settings, plan, rs.role)


def _tuning(plan: Plan) -> tuple[Any, ...]:
    bf = plan.backfill
    return (bf.requests_per_minute, bf.tokens_per_minute, bf.retry)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(os.getpid(), load_settings())
    return _runtime


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@app.task(
    bind=True,
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,  # type: ignore[untyped-decorator]
    ignore_result=True,
    max_retries=None,
)
def embed_batch(self: Task, migration: str, batch_id: int) -> dict[str, Any]:
    rt = runtime()
    try:
        plan = rt.plan(migration)
        if not _paced(self, rt, plan, batch_id):
            return {"batch": batch_id, "status": "paused"}
        conn = rt.connection()
        out = work.run_batch(
            conn,
            plan,
            batch_id,
            provider=lambda rs: rt.provider(plan, rs),
            limiter=lambda rs: rt.limiter(plan, rs),
            worker=_worker_id(),
            keep_lease=rt.heartbeat(plan).hold,
            plan_version=rt.version(migration),
        )
    except Retry:
        raise
    except Exception as exc:
        return _failed(self, rt, migration, batch_id, exc)
    if out.status in ("done", "duplicate"):
        rt.pacer(migration).done(out.seconds)
    from migrator.worker import metrics

    metrics.batch_finished(out, rt.stats)
    return {"batch": batch_id, "status": out.status, "written": out.written}


def _paced(task: Task, rt: Runtime, plan: Plan, batch_id: int) -> bool:
    """Keep the shared pace before claiming (no lease is held while waiting). False: still
    paused after PAUSED_HAND_BACK_S; the batch went back to the queue as a fresh message."""
    if not plan.backfill.pacing.enabled:
        return True
    pacer = rt.pacer(plan.name)
    waited = pacer.waited
    ok = pacer.wait(PAUSED_HAND_BACK_S)
    from migrator.worker import metrics

    metrics.paced(pacer.waited - waited)
    if ok:
        return True
    hard, soft = (*(task.request.timelimit or ()), None, None)[:2]
    task.apply_async(
        args=[plan.name, batch_id], queue=plan.queue, time_limit=hard, soft_time_limit=soft
    )
    ledger.mark_enqueued(rt.connection(), [batch_id])
    log.info("batch %s handed back: the backfill is paused to protect search", batch_id)
    return False


def _failed(
    task: Task, rt: Runtime, migration: str, batch_id: int, exc: BaseException
) -> dict[str, Any]:
    # A time limit can interrupt a query mid-protocol: that connection is unusable too.
    if isinstance(exc, psycopg.OperationalError | SoftTimeLimitExceeded):
        rt.drop_connection()
    if isinstance(exc, SoftTimeLimitExceeded):
        # Slow (long Retry-After pauses, timeouts), not broken: retry, never fail for good.
        exc = RetryableError("the batch ran past its time limit")
    retries = int(task.request.retries or 0)
    if isinstance(exc, BudgetError):
        return _no_budget(task, rt, batch_id, exc)
    try:
        plan = rt.plan(migration)
        delay = work.retry_delay(exc, retries, plan.backfill.retry)
        conn = rt.connection()
    except Exception:
        log.exception("batch %s: cannot reach the database to record a failure", batch_id)
        raise exc from None  # the message is acked; the monitor re-enqueues the stalled batch
    msg = exc.one_line() if hasattr(exc, "one_line") else f"{type(exc).__name__}: {exc}"
    from migrator.worker import metrics

    if delay is None:
        log.error("batch %s failed for good: %s", batch_id, msg)
        work.give_up(conn, batch_id, exc, worker=_worker_id())
        metrics.batch_failed()
        return {"batch": batch_id, "status": "failed", "error": msg}
    log.warning("batch %s: %s; retry %d in %.1fs", batch_id, msg, retries + 1, delay)
    grace = 2 * plan.backfill.lease_seconds
    ledger.release(conn, batch_id, msg, delay, worker=_worker_id(), grace_s=grace)
    metrics.batch_retried()
    raise task.retry(countdown=delay, exc=exc)


def _no_budget(task: Task, rt: Runtime, batch_id: int, exc: BudgetError) -> dict[str, Any]:
    """Limits without a shared budget: run nothing (never unlimited); the batch goes back to
    pending and the task retries until the operator configures the budget."""
    log.error("batch %s not run: %s", batch_id, exc.one_line())
    with contextlib.suppress(Exception):
        ledger.release(rt.connection(), batch_id, exc.one_line(), NO_BUDGET_RETRY_S)
    raise task.retry(countdown=NO_BUDGET_RETRY_S, exc=exc)
