"""`migrator backfill`: expand, produce the batches, then watch the database until every
eligible row has its new vector, re-enqueueing lost work and turning changes into catch-up.

Owns the orchestration only: SQL on the ledger lives in `ledger`, the unit of work in `work`,
the producer side of the broker in `broker`. Completion is judged from the database, never the broker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from migrator.backfill import expand, governor, ledger, preflight, refresh, work
from migrator.backfill.broker import Enqueuer, broker_url
from migrator.config import Settings
from migrator.db import errors as dberrors
from migrator.db import state
from migrator.db.connect import connect
from migrator.db.context import Context
from migrator.db.executor import backoff
from migrator.db.state import State
from migrator.errors import BrokerError, ConcurrentRunError, ProviderError
from migrator.plan.model import Plan, Role

log = logging.getLogger(__name__)
ProgressFn = Callable[[dict[str, Any]], None]
PHASES_WITH_SOURCE = (State.CUT_OVER, State.ROLLED_BACK)
TRANSIENT_ATTEMPTS = 10  # passes in a row that may fail on a deadlock or lock timeout
LOST_MESSAGE_LEASES = 3  # an unclaimed message is lost after this many leases, queue empty


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
    gov: governor.Governor | None = None
    mon: Monitor | None = None
    try:
        with preflight.context(settings, plan, "backfill") as ctx:
            # Pacing needs a coordinator that keeps probing: not with --no-wait.
            if opts.wait:
                gov = governor.Governor(ctx.url, plan, settings.operator)
            start = _prepare(ctx, enq, opts, gov)
            if not opts.wait:
                return {
                    **_summary(ctx.conn, plan, start, t0),
                    "complete": False,
                    "phase": _phase(ctx.conn, plan).value,
                }
            if not opts.follow:
                mon = Monitor(ctx.conn, plan, enq, stall, opts, start, t0, gov)
                return mon.loop(lambda: _mark_complete(ctx.conn, plan, ctx.event))
        # --follow: keep catching up without holding the operator lock, so verify, cutover
        # and rollback can run meanwhile.
        conn = connect(ctx.url, application_name="migrator-follow")
        try:
            with _monitor_lock(conn, plan.name):
                mon = Monitor(conn, plan, enq, stall, opts, start, t0, gov)
                return mon.loop(lambda: _try_mark_complete(conn, plan, settings.operator))
        finally:
            conn.close()
    finally:
        if gov is not None:
            gov.finish(mon.complete if mon is not None else False)
        enq.close()


def _prepare(
    ctx: Context, enq: Enqueuer, opts: Options, gov: governor.Governor | None = None
) -> dict[str, Any]:
    plan = ctx.plan
    if ctx.migration is None or ctx.migration.phase is State.ABORTED:
        expand.adopt(ctx)
    assert ctx.migration is not None
    if gov is not None:
        # The baseline of search latency: before this run's own work on the database (the
        # expand's DDL, the row count's scan of the whole table, the first batch), which a
        # baseline taken after it would count as normal (1M rows: p50 7.1 ms against 2.6 ms
        # just before, so the limit was loose and the backfill ran at the full rate).
        gov.prepare()
    if ctx.migration.phase is State.PLANNED:
        expand.expand(ctx)
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


def catch_up_pass(conn: psycopg.Connection, settings: Settings, plan: Plan) -> dict[str, Any]:
    """One pass of the follower (`backfill --follow`), for a scheduler such as Celery beat:
    changes become batches, lost work is enqueued again, the phase moves to backfilled once
    the database says the backfill is complete. Skipped while a follower watches."""
    phase = _phase(conn, plan)
    if phase in (State.PLANNED, State.FINALIZED, State.ABORTED):
        return {"migration": plan.name, "skipped": f"phase {phase.value}"}
    stall = float(plan.backfill.stall_after_seconds)
    enq = Enqueuer(broker_url(settings), plan, stall)
    try:
        with _monitor_lock(conn, plan.name):
            mon = Monitor(conn, plan, enq, stall, Options(follow=True), {}, time.monotonic())
            mon.last_sweep = 0.0  # each beat pass is one scheduled sweep (and prune)
            complete = mon.tick(phase)
            if complete:
                _try_mark_complete(conn, plan, settings.operator)
    except ConcurrentRunError:
        return {"migration": plan.name, "skipped": "a follower is running"}
    finally:
        enq.close()
    return {"migration": plan.name, "complete": complete, "phase": phase.value}


def _summary(
    conn: psycopg.Connection, plan: Plan, start: dict[str, Any], t0: float
) -> dict[str, Any]:
    s = ledger.summary(conn, plan.name)
    counts = ledger.row_counts(conn, plan, plan.target.column)
    seconds = time.monotonic() - t0
    written = s["rows_written"] - start["written"]
    return {
        **counts,
        "batches": s["batches"],
        "rows_written": s["rows_written"],
        "rows_written_this_run": written,
        "retries": s["retries"],
        "dead_letters": ledger.dead_letter_count(conn, plan.name),
        "duplicate_executions": s["duplicate_executions"],
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
        gov: governor.Governor | None = None,
    ) -> None:
        self.conn, self.plan, self.enq, self.stall, self.opts = conn, plan, enq, stall, opts
        self.gov = gov  # pacing (None: beat passes and --no-wait do not pace)
        self.start, self.t0 = start, t0
        self.complete = False
        self.expired = 0  # batches re-enqueued because their lease expired
        self.retried = 0  # failed batches retried after their cool-down
        self.swept = 0  # batches made by the scheduled sweep
        self.last_sweep = time.monotonic()  # a first pass sweeps only at completion or later
        # The follower and the beat catch-up never stop on failed batches (a foreground
        # `backfill` run does: exit 10 with the first error).
        self.keep_going = opts.follow

    def roles(self, phase: State) -> list[Role]:
        return [Role.TARGET, Role.SOURCE] if phase in PHASES_WITH_SOURCE else [Role.TARGET]

    def loop(self, mark_complete: Callable[[], None]) -> dict[str, Any]:
        transient = 0
        while True:
            phase = _phase(self.conn, self.plan)
            if phase in (State.FINALIZED, State.ABORTED):
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
        if self.gov is not None:
            self.gov.tick()  # a probe when one is due: the pace every worker keeps
        try:
            self.enq.send(self.conn, ledger.batches_from_changes(self.conn, self.plan, roles))
            if refresh_source:
                self.enq.send(self.conn, refresh.batches_from_stale(self.conn, self.plan))
            self.requeue_lost()
            if self.keep_going:
                self.retry_failed()
        except BrokerError as exc:
            # The ledger keeps the work; the next pass (or the stall check) sends it again.
            log.warning("%s", exc.one_line())
        self.housekeeping(roles)
        s = ledger.summary(self.conn, self.plan.name)
        changes = ledger.pending_changes(self.conn, self.plan.name)
        self.report(s, changes)
        if s["open"] or changes:
            return False
        if s["failed"] and self.keep_going:
            return False  # cooling down: retried (or dead-lettered) by a later pass
        if s["failed"]:
            raise ProviderError(
                f"{s['failed']} batches failed: {ledger.first_error(self.conn, self.plan.name)}",
                hint="fix the cause (see `migrator status PLAN`), then rerun `migrator backfill`",
            )
        swept: list[int] = []
        for role in roles:
            column = self.plan.target.column if role is Role.TARGET else self.plan.source.column
            swept += ledger.sweep(self.conn, self.plan, role, column)
        if refresh_source:
            swept += refresh.sweep_stale(self.conn, self.plan)
        self.last_sweep = time.monotonic()
        if swept:
            log.info("sweep found NULL vectors outside any batch: %d new batches", len(swept))
            with contextlib.suppress(BrokerError):
                self.enq.send(self.conn, swept)
            return False
        return True

    def requeue_lost(self) -> None:
        """Send again the batches whose message or worker is gone, logging each batch once: a
        running batch whose lease expired goes back to pending in the same statement."""
        name = self.plan.name
        lease = self.plan.backfill.lease_seconds
        for b in ledger.expire_leases(self.conn, name, self.stall, lease):
            log.warning(
                "re-enqueueing batch %d: the lease of %s expired %.0f s ago (worker lost)",
                b.id,
                b.worker or "?",
                b.seconds_late,
            )
            self.expired += 1
        fresh = set(ledger.to_enqueue(self.conn, name, 1e9, queue_empty=False))
        depth = self.enq.queue_depth()
        # A message prefetched by a worker that died is neither queued nor claimed: with the
        # queue empty, a batch enqueued this long ago and still unclaimed lost its message.
        # A live but busy worker's prefetched message gets a duplicate: harmless (the claim).
        lost_after = min(self.stall, LOST_MESSAGE_LEASES * self.plan.backfill.lease_seconds)
        lost = ledger.to_enqueue(self.conn, name, lost_after, queue_empty=depth == 0)
        for batch_id in lost:
            if batch_id not in fresh:
                log.warning("re-enqueueing batch %d: its message is lost (queue empty)", batch_id)
        lost = ledger.give_up_exhausted(
            self.conn, name, lost, self.plan.backfill.retry.max_attempts
        )
        self.enq.send(self.conn, lost)

    def housekeeping(self, roles: list[Role]) -> None:
        """On a schedule (`sweep_every_seconds`) whatever the write rate: the repair sweep over
        NULL vectors outside any open batch (steady writes keep batches open, so the sweep at
        completion alone would starve), and pruning of processed change records."""
        bf = self.plan.backfill
        if time.monotonic() - self.last_sweep < bf.sweep_every_seconds:
            return
        self.last_sweep = time.monotonic()
        pruned = ledger.prune_changes(self.conn, self.plan.name, bf.changes_retention_seconds)
        if pruned:
            log.info("pruned %d processed change records", pruned)
        if ledger.ranges_open(self.conn, self.plan.name):
            return  # the initial backfill covers every row still
        key = work.key_info(self.conn, self.plan)
        swept: list[int] = []
        for role in roles:
            column = self.plan.target.column if role is Role.TARGET else self.plan.source.column
            with self.conn.transaction():
                swept += ledger.sweep(
                    self.conn, self.plan, role, column, skip_open_of_type=key.type
                )
        if swept:
            log.warning(
                "scheduled sweep: NULL vectors outside any batch: %d new batches", len(swept)
            )
            self.swept += len(swept)
            with contextlib.suppress(BrokerError):
                self.enq.send(self.conn, swept)

    def retry_failed(self) -> None:
        """The follower never gives up: a failed batch (a provider outage longer than the
        retry policy, a 401) is retried after a cool-down that doubles each round; after
        `dead_after_failures` rounds its rows become dead letters and the batch closes."""
        bf = self.plan.backfill
        for f in ledger.failed_due(self.conn, self.plan.name, bf.failed_cooldown_seconds):
            rounds = f.failures + 1
            if rounds < bf.dead_after_failures:
                if ledger.retry_round(self.conn, f.batch.id):
                    log.warning(
                        "retrying failed batch %d (round %d of %d): %s",
                        f.batch.id,
                        rounds + 1,
                        bf.dead_after_failures,
                        f.error,
                    )
                    self.retried += 1
                continue
            reason = f"failed {rounds} rounds: {f.error}"
            rows = work.batch_rows(self.conn, self.plan, f.batch)
            with self.conn.transaction():
                ledger.dead_letter(
                    self.conn, self.plan.name, f.batch.role, [(pk, h, reason) for pk, h in rows]
                )
                ledger.mark_dead(self.conn, f.batch.id, len(rows))
            log.error(
                "batch %d failed %d rounds: its %d rows are dead letters (%s)",
                f.batch.id,
                rounds,
                len(rows),
                f.error,
            )

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
