"""`verify`: the gate before the switch. Builds the index, runs every check, stores the report.

Owns the order of the work and what happens after: the report is stored in migrator.reports
(with the change watermark read before any check), the phase moves to verified on a pass,
and a failed gate raises `VerifyFailed` (exit 9) once the failed report is stored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from migrator.backfill import ledger, preflight
from migrator.bridge import store as bridge_store
from migrator.bridge.provider import bridged
from migrator.config import Settings
from migrator.db import state
from migrator.db.catalog import index_info
from migrator.db.context import Context
from migrator.embedding import Provider, provider_for
from migrator.errors import ConfigError, GateFailedError, PhaseError
from migrator.plan.model import Plan
from migrator.verify import checks, gate, samples
from migrator.verify.index_build import IndexResult, OnProgress, ensure_index
from migrator.verify.report import Report
from migrator.verify.samples import QUERY_MODES, Stage, Timer, VerifyOptions, resolve_labelled

# Phases a passing report may move to verified (cut_over stays cut_over: the switch is done).
_TO_VERIFIED = frozenset(
    {state.State.EXPANDED, state.State.BACKFILLED, state.State.VERIFIED, state.State.ROLLED_BACK}
)
_QUERY_TEXT = {"span": "8-15 consecutive words of", "text": "the whole text of"}
__all__ = ["QUERY_MODES", "Stage", "VerifyFailed", "VerifyOptions", "resolve_labelled", "verify"]


@dataclass(frozen=True)
class VerifyOutcome:
    report: Report
    report_id: int
    index: IndexResult | None
    phase: str


class VerifyFailed(GateFailedError):
    """A gate failed; the report was stored. Carries the report for rendering."""

    def __init__(self, outcome: VerifyOutcome) -> None:
        super().__init__(
            f"verification failed (report {outcome.report_id}): {outcome.report.failure}",
            hint=outcome.report.next_step,
        )
        self.outcome = outcome


def verify(
    settings: Settings,
    plan: Plan,
    options: VerifyOptions | None = None,
    *,
    on_stage: Stage | None = None,
    on_index_progress: OnProgress | None = None,
) -> VerifyOutcome:
    """Run the gate; return the outcome on a pass, raise VerifyFailed (stored) on a failure."""
    options = options or VerifyOptions()
    if options.query_mode not in QUERY_MODES:
        raise ConfigError(f"unknown query mode {options.query_mode!r}", hint="use span or text")
    with preflight.context(settings, plan, "verify") as ctx:
        outcome = _verify(ctx, options, on_stage or (lambda _s: None), on_index_progress)
    if not outcome.report.passed:
        raise VerifyFailed(outcome)
    return outcome


def _verify(
    ctx: Context, opts: VerifyOptions, stage: Stage, on_index: OnProgress | None
) -> VerifyOutcome:
    plan, conn = ctx.plan, ctx.conn
    t0 = time.perf_counter()
    timer = Timer(stage)
    # Read before any check: changes captured while verify runs count against this report.
    watermark = gate.changes_watermark(conn, plan.name)
    with timer.part("coverage (waiting for the catch-up)"):
        counts, waited = wait_for_catch_up(conn, plan)
        cov, rows = checks.coverage(conn, plan, counts, waited)
    # Before the index build: an index built on a mostly empty column stays for the rest of
    # the backfill, and every gate below would measure a fraction of the table.
    require_backfilled(ctx, counts)
    build: IndexResult | None = None
    if opts.build_index:
        with timer.part("index build"):
            build = ensure_index(
                ctx.executor(), ctx.url, plan, ctx.ddl_policy(), on_progress=on_index
            )
    index_state = index_info(conn, plan).state
    old = checks.old_vectors(conn, plan, rows)
    with _providers(ctx) as (old_p, new_p):
        found, sections = samples.run(ctx, opts, timer, index_state, old_p, new_p)
    report = Report(
        migration=plan.name,
        plan_hash=plan.plan_hash(),
        table=f"{plan.table.schema_}.{plan.table.name}",
        source=plan.source.model.fingerprint(),
        target=plan.target.model.fingerprint(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        k=plan.verify.k,
        sample=opts.sample or plan.verify.sample_size,
        seed=plan.verify.seed if opts.seed is None else opts.seed,
        checks=(cov, *found[:1], old, *found[1:]),
        index_build=build.as_details() if build else (),
        seconds=time.perf_counter() - t0,
        timings=tuple(timer.parts.items()),
        notes=(
            f"queries: {_QUERY_TEXT[opts.query_mode]} each sampled row; exact search is "
            "numpy brute force over every vector of the column, streamed in chunks; index "
            "recall and latency are measured in the database with the service's query shape "
            "(ORDER BY distance LIMIT k) on the base table, EXPLAIN-checked",
        ),
        sections=tuple(sections),
    )
    return _record(ctx, report, rows, watermark, build)


def wait_for_catch_up(
    conn: psycopg.Connection,
    plan: Plan,
    *,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[checks.Counts, float]:
    """Wait (up to verify.catch_up_wait_seconds) until the catch-up's lag is within what the
    gate accepts (verify.max_stale_fraction of the eligible rows); returns the last counts."""
    t0 = time.monotonic()
    while True:
        counts = checks.count_rows(conn, plan)
        waited = time.monotonic() - t0
        allowed = plan.verify.max_stale_fraction * counts.eligible
        if counts.lag <= allowed or waited >= plan.verify.catch_up_wait_seconds:
            return counts, waited
        sleep(poll)


def require_backfilled(ctx: Context, counts: checks.Counts) -> None:
    """Refuse (exit 7) while the backfill is not complete: open backfill batches, or a
    migration still expanded with eligible rows that nothing has filled."""
    open_batches = ledger.open_backfill_batches(ctx.conn, ctx.plan.name)
    phase = ctx.migration.phase if ctx.migration else None
    if open_batches or (phase is state.State.EXPANDED and counts.missing > 0):
        missing = counts.eligible - counts.done
        raise PhaseError(
            f"cannot verify: the backfill is not complete: {missing:,} of {counts.eligible:,} "
            f"eligible rows have no vector yet ({open_batches:,} backfill batches open); no "
            "index was built",
            hint="let `migrator backfill PLAN` finish (`migrator status PLAN` shows its "
            "progress), then run `migrator verify PLAN`",
        )


@contextlib.contextmanager
def _providers(ctx: Context) -> Iterator[tuple[Provider, Provider]]:
    plan, settings = ctx.plan, ctx.settings
    # A retired old model (`bridge on --old-model-gone`): the bridge it is served through
    # is the baseline.
    stand_in = bridge_store.replacing_source(ctx.conn, plan)
    old = (
        bridged(stand_in, plan.source.model, settings.environ)
        if stand_in
        else provider_for(plan.source.model, settings.environ)
    )
    try:
        new = provider_for(plan.target.model, settings.environ)
        try:
            yield old, new
        finally:
            new.close()
    finally:
        old.close()


def _record(
    ctx: Context,
    report: Report,
    rows: int,
    watermark: gate.Watermark,
    build: IndexResult | None,
) -> VerifyOutcome:
    plan, conn = ctx.plan, ctx.conn
    report_id = gate.record_report(
        conn, plan, passed=report.passed, report=report.as_dict(), rows=rows, watermark=watermark
    )
    before = ctx.migration.phase if ctx.migration else None
    after = before
    if report.passed and before in _TO_VERIFIED:
        state.set_phase(conn, plan.name, state.State.VERIFIED)
        after = state.State.VERIFIED
    figures = {c.key: c.figure for c in report.checks}
    message = "all gates passed" if report.passed else f"failed: {', '.join(report.failed)}"
    ctx.event(
        "passed" if report.passed else "failed",
        f"{message} (report {report_id})",
        before=before.value if before else None,
        after=after.value if after else None,
        report_id=report_id,
        figures=figures,
        index=dict(build.as_details()) if build else None,
    )
    return VerifyOutcome(report, report_id, build, after.value if after else "")
