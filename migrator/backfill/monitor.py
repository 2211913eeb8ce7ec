"""`migrator backfill`: expand, produce the batches, then watch the database until every
eligible row has its new vector, re-enqueueing lost work and turning changes into catch-up.

Owns the orchestration only: SQL on the ledger lives in `ledger`, the unit of work in `work`,
the broker in `broker`/`worker.app`. Completion is judged from the database, never the broker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from celery import Celery
from psycopg.types.json import Jsonb

from migrator import api
from migrator.backfill import ledger, refresh
from migrator.backfill.broker import broker_url, is_redis, redact
from migrator.config import Settings
from migrator.db import errors as dberrors
from migrator.db import state
from migrator.db.connect import connect
from migrator.db.executor import backoff
from migrator.db.state import State
from migrator.ddl import steps
from migrator.errors import BrokerError, ConcurrentRunError, ProviderError
from migrator.plan.model import Plan
from migrator.worker.celery_config import TASK_NAME, make_app

log = logging.getLogger(__name__)
ProgressFn = Callable[[dict[str, Any]], None]
PHASES_WITH_SOURCE = (State.CUT_OVER, State.ROLLED_BACK)
TRANSIENT_ATTEMPTS = 10  # passes in a row that may fail on a deadlock or lock timeout


@dataclass
class Options:
    follow: bool = False
    retry_dead_letters: bool = False
    wait: bool = True
    poll_seconds: float = 1.0
    # None: the plan's backfill.stall_after_seconds (tests lower it).
    stall_after: float | None = None
    on_progress: ProgressFn | None = None
    should_stop: Callable[[], bool] | None = None


class Enqueuer:
    """Sends (migration, batch id) tasks onto the plan's queue, then records enqueued_at."""

    def __init__(self, url: str, plan: Plan, stall_after: float) -> None:
        self.url = url
        self.app: Celery = make_app(url)
        self.plan = plan
        # Below stall_after, so a batch running longer than that is surely dead, not slow.
        self.time_limit = max(5.0, stall_after * 0.9)
        self.sent = 0

    def send(self, conn: psycopg.Connection, ids: Sequence[int]) -> None:
        if not ids:
            return
        try:
            with self.app.producer_or_acquire() as producer:
                for batch_id in ids:
                    self.app.send_task(
                        TASK_NAME,
                        args=[self.plan.name, batch_id],
                        queue=self.plan.queue,
                        producer=producer,
                        time_limit=self.time_limit,
                        soft_time_limit=self.time_limit * 0.9,
                        ignore_result=True,
                    )
        except Exception as exc:
            raise BrokerError(
                f"cannot publish to the broker {redact(self.url)}: {exc}",
                hint="start the broker or fix CELERY_BROKER_URL; rerun to resume",
            ) from exc
        ledger.mark_enqueued(conn, ids)
        self.sent += len(ids)

    def queue_depth(self) -> int | None:
        """Messages waiting in the queue (not those reserved by workers); None if unknown."""
        try:
            with self.app.connection_for_write() as c:
                ok = c.default_channel.queue_declare(queue=self.plan.queue, passive=True)
                return int(ok.message_count)
        except Exception:
            # Redis has no queue object: a missing list is an empty queue.
            return 0 if is_redis(self.url) else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


def run(settings: Settings, plan: Plan, opts: Options | None = None) -> dict[str, Any]:
    """Expand if needed, produce and enqueue, then (unless `wait=False`) monitor to the end."""
    try:
        return _run(settings, plan, opts or Options())
    except psycopg.Error as exc:
        # The ledger keeps the work and the operator lock dies with the session, so a rerun
        # resumes safely whatever happened: a restart or failover, a statement timeout, a cancel.
        raise dberrors.describe(
            exc,
            "the backfill",
            resume="rerun `migrator backfill` (once the database is back): it resumes where "
            "it stopped",
        ) from exc


def _run(settings: Settings, plan: Plan, opts: Options) -> dict[str, Any]:
    stall = float(opts.stall_after or plan.backfill.stall_after_seconds)
    enq = Enqueuer(broker_url(settings), plan, stall)
    t0 = time.monotonic()
    try:
        with api.migration_context(settings, plan, "backfill") as ctx:
            start = _prepare(ctx, enq, opts)
            if not opts.wait:
                return {
                    **_summary(ctx.conn, plan, start, t0),
                    "complete": False,
                    "phase": _phase(ctx.conn, plan).value,
                }
            if not opts.follow:
                mon = Monitor(ctx.conn, plan, enq, stall, opts, start, t0)
                return mon.loop(lambda: _mark_complete(ctx.conn, plan, ctx.event))
        # --follow: keep catching up without holding the operator lock, so verify, cutover
        # and rollback can run meanwhile.
        conn = connect(ctx.url, application_name="migrator-follow")
        try:
            with _monitor_lock(conn, plan.name):
                mon = Monitor(conn, plan, enq, stall, opts, start, t0)
                return mon.loop(lambda: _try_mark_complete(conn, plan, settings.operator))
        finally:
            conn.close()
    finally:
        enq.close()


def _prepare(ctx: api.Context, enq: Enqueuer, opts: Options) -> dict[str, Any]:
    plan = ctx.plan
    if ctx.migration is None:
        api._adopt(ctx)
    assert ctx.migration is not None
    if ctx.migration.phase is State.PLANNED:
        before = ctx.migration.phase.value
        res = ctx.executor().run(steps.expand(plan, ctx.facts()).forward, ctx.ddl_policy())
        state.set_phase(ctx.conn, plan.name, State.EXPANDED)
        ctx.refresh()
        ctx.event(
            "ok",
            f"added {plan.target.column} and change capture",
            before=before,
            after=State.EXPANDED.value,
            attempts=res.attempts,
            hold_ms=round(res.hold_ms, 1),
        )
    # Tuning keys (limits, batch size, concurrency) may change between runs: workers read the
    # plan from the database, so store the current one (its structural hash is unchanged).
    ctx.conn.execute(
        "UPDATE migrator.migrations SET plan = %s WHERE name = %s AND plan_hash = %s",
        (Jsonb(plan.canonical()), plan.name, plan.plan_hash()),
    )
    reset = ledger.reset_failed(ctx.conn, plan.name)
    start = {
        **ledger.row_counts(ctx.conn, plan, plan.target.column),
        "written": ledger.summary(ctx.conn, plan.name)["rows_written"],
    }
    ctx.event(
        "ok",
        "backfill started",
        queue=plan.queue,
        reset_failed=reset,
        rows_pending=start["rows_pending"],
    )
    if opts.retry_dead_letters:
        enq.send(ctx.conn, ledger.replay_dead_letters(ctx.conn, plan))
    enq.send(ctx.conn, ledger.to_enqueue(ctx.conn, plan.name, 1e9, queue_empty=False))
    for ids in ledger.create_range_batches(ctx.conn, plan):
        enq.send(ctx.conn, ids)
    return start


def _phase(conn: psycopg.Connection, plan: Plan) -> State:
    m = state.get_migration(conn, plan.name)
    return m.phase if m else State.PLANNED


def _mark_complete(conn: psycopg.Connection, plan: Plan, event: Callable[..., None]) -> None:
    phase = _phase(conn, plan)
    # Never move the phase backwards: only planned/expanded become backfilled.
    if phase in (State.PLANNED, State.EXPANDED):
        state.set_phase(conn, plan.name, State.BACKFILLED)
        event("ok", "backfill complete", before=phase.value, after=State.BACKFILLED.value)


def _try_mark_complete(conn: psycopg.Connection, plan: Plan, operator: str) -> None:
    def event(result: str, message: str, **kw: Any) -> None:
        state.log_event(
            conn,
            plan.name,
            operator=operator,
            command="backfill",
            result=result,
            message=message,
            phase_before=kw.get("before"),
            phase_after=kw.get("after"),
        )

    try:
        with state.operator_lock(conn, plan.name):
            _mark_complete(conn, plan, event)
    except ConcurrentRunError:
        log.info("another command holds the migration; the phase is updated on a later pass")


@contextlib.contextmanager
def _monitor_lock(conn: psycopg.Connection, name: str) -> Any:
    key = f"migrator-follow:{name}"
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not row or not row[0]:
        raise ConcurrentRunError(
            f"another `migrator backfill --follow` watches {name!r}",
            hint="one follower per migration is enough",
        )
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _summary(
    conn: psycopg.Connection, plan: Plan, start: dict[str, Any], t0: float
) -> dict[str, Any]:
    s = ledger.summary(conn, plan.name)
    counts = ledger.row_counts(conn, plan, plan.target.column)
    seconds = time.monotonic() - t0
    written = s["rows_written"] - start["written"]
    dup = conn.execute(
        "SELECT coalesce(sum(executions - 1) FILTER (WHERE executions > 1), 0) "
        "FROM migrator.batches WHERE migration = %s",
        (plan.name,),
    ).fetchone()
    return {
        **counts,
        "batches": s["batches"],
        "rows_written": s["rows_written"],
        "rows_written_this_run": written,
        "retries": s["retries"],
        "dead_letters": ledger.dead_letter_count(conn, plan.name),
        "duplicate_executions": int(dup[0]) if dup else 0,
        "pending_changes": ledger.pending_changes(conn, plan.name),
        "stale_sources": refresh.stale_count(conn, plan.name),
        "seconds": round(seconds, 2),
        "rows_per_second": round(written / seconds, 1) if seconds > 0 else None,
        "queue": plan.queue,
    }


class Monitor:
    """One pass a poll: catch-up batches from changes, lost work enqueued again, progress, and
    when nothing is open the sweep over NULL vectors that decides completion."""

    def __init__(
        self,
        conn: psycopg.Connection,
        plan: Plan,
        enq: Enqueuer,
        stall: float,
        opts: Options,
        start: dict[str, Any],
        t0: float,
    ) -> None:
        self.conn, self.plan, self.enq, self.stall, self.opts = conn, plan, enq, stall, opts
        self.start, self.t0 = start, t0
        self.complete = False

    def roles(self, phase: State) -> list[str]:
        return ["target", "source"] if phase in PHASES_WITH_SOURCE else ["target"]

    def loop(self, mark_complete: Callable[[], None]) -> dict[str, Any]:
        transient = 0
        while True:
            phase = _phase(self.conn, self.plan)
            if phase is State.FINALIZED:
                break
            try:
                done = self.tick(phase)
                transient = 0
            except dberrors.TRANSIENT as exc:
                # A deadlock with the application or a lock timeout rolled back one ledger
                # statement; every statement of a pass is idempotent, so run the pass again.
                transient += 1
                if transient >= TRANSIENT_ATTEMPTS:
                    raise
                log.warning("%s; the pass runs again", dberrors.primary(exc))
                time.sleep(backoff(transient, 0.1, 5.0))
                continue
            if done:
                if not self.complete:
                    mark_complete()
                    self.complete = True
                if not self.opts.follow:
                    break
            if self.opts.should_stop is not None and self.opts.should_stop():
                break
            time.sleep(self.opts.poll_seconds)
        out = _summary(self.conn, self.plan, self.start, self.t0)
        out.update(complete=self.complete, phase=_phase(self.conn, self.plan).value)
        return out

    def tick(self, phase: State) -> bool:
        """One pass; True when the database says the backfill is complete."""
        roles = self.roles(phase)
        refresh_source = self.plan.backfill.refresh_source
        try:
            self.enq.send(self.conn, ledger.batches_from_changes(self.conn, self.plan, roles))
            if refresh_source:
                self.enq.send(self.conn, refresh.batches_from_stale(self.conn, self.plan))
            depth = self.enq.queue_depth()
            lost = ledger.to_enqueue(self.conn, self.plan.name, self.stall, queue_empty=depth == 0)
            lost = ledger.give_up_exhausted(
                self.conn, self.plan.name, lost, self.plan.backfill.retry.max_attempts
            )
            if lost:
                log.warning("re-enqueueing %d lost or stalled batches", len(lost))
            self.enq.send(self.conn, lost)
        except BrokerError as exc:
            # The ledger keeps the work; the next pass (or the stall check) sends it again.
            log.warning("%s", exc.one_line())
        s = ledger.summary(self.conn, self.plan.name)
        changes = ledger.pending_changes(self.conn, self.plan.name)
        self.report(s, changes)
        if s["open"] or changes:
            return False
        if s["failed"]:
            raise ProviderError(
                f"{s['failed']} batches failed: {ledger.first_error(self.conn, self.plan.name)}",
                hint="fix the cause (see `migrator status PLAN`), then rerun `migrator backfill`",
            )
        swept: list[int] = []
        for role in roles:
            column = self.plan.target.column if role == "target" else self.plan.source.column
            swept += ledger.sweep(self.conn, self.plan, role, column)
        if refresh_source:
            swept += refresh.sweep_stale(self.conn, self.plan)
        if swept:
            log.info("sweep found NULL vectors outside any batch: %d new batches", len(swept))
            with contextlib.suppress(BrokerError):
                self.enq.send(self.conn, swept)
            return False
        return True

    def report(self, s: dict[str, Any], changes: int) -> None:
        if self.opts.on_progress is None:
            return
        total = self.start["rows_eligible"]
        done = self.start["rows_done"] + s["rows_written"] - self.start["written"]
        self.opts.on_progress(
            {
                "rows_total": total,
                "rows_done": min(done, total),
                "rows_written": s["rows_written"],
                "retries": s["retries"],
                "dead_letters": s["rows_dead"],
                "open_batches": s["open"],
                "batches": s["batches"],
                "pending_changes": changes,
                "elapsed": time.monotonic() - self.t0,
            }
        )
