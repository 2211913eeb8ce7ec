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
from pathlib import Path

from migrator.backfill import preflight
from migrator.bridge import store as bridge_store
from migrator.bridge.provider import bridged
from migrator.config import Settings
from migrator.db import state
from migrator.db.catalog import index_info
from migrator.db.context import Context
from migrator.embedding import Provider, provider_for
from migrator.errors import ConfigError, GateFailedError
from migrator.plan.model import Plan
from migrator.verify import bridge_check, checks, data, gate
from migrator.verify import labelled as verify_labelled
from migrator.verify.index_build import IndexResult, OnProgress, ensure_index
from migrator.verify.report import Check, Report

# Phases a passing report may move to verified (cut_over stays cut_over: the switch is done).
_TO_VERIFIED = frozenset(
    {state.State.EXPANDED, state.State.BACKFILLED, state.State.VERIFIED, state.State.ROLLED_BACK}
)
QUERY_MODES = ("span", "text")
_QUERY_TEXT = {"span": "8-15 consecutive words of", "text": "the whole text of"}


@dataclass(frozen=True)
class VerifyOptions:
    build_index: bool = True
    sample: int | None = None  # default: plan.verify.sample_size
    seed: int | None = None  # default: plan.verify.seed
    query_mode: str = "span"  # "span": 8-15 words of the row's text; "text": the whole text
    plan_dir: Path | None = None  # where a relative labelled_queries path is looked up first


@dataclass(frozen=True)
class VerifyOutcome:
    report: Report
    report_id: int
    index: IndexResult | None
    phase: str


class VerifyFailed(GateFailedError):
    """A gate failed; the report was stored. Carries the report for rendering."""

    def __init__(self, outcome: VerifyOutcome) -> None:
        failed = ", ".join(outcome.report.failed)
        super().__init__(
            f"verification failed: {failed} (report {outcome.report_id})",
            hint="see the report; fix what failed, then `migrator verify PLAN` again",
        )
        self.outcome = outcome


Stage = Callable[[str], None]


def verify(
    settings: Settings,
    plan: Plan,
    options: VerifyOptions = VerifyOptions(),
    *,
    on_stage: Stage | None = None,
    on_index_progress: OnProgress | None = None,
) -> VerifyOutcome:
    """Run the gate; return the outcome on a pass, raise VerifyFailed (stored) on a failure."""
    if options.query_mode not in QUERY_MODES:
        raise ConfigError(f"unknown query mode {options.query_mode!r}", hint="use span or text")
    with preflight.context(settings, plan, "verify") as ctx:
        outcome = _verify(ctx, options, on_stage or (lambda _s: None), on_index_progress)
    if not outcome.report.passed:
        raise VerifyFailed(outcome)
    return outcome


class _Timer:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.stage(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0


def _verify(
    ctx: Context, opts: VerifyOptions, stage: Stage, on_index: OnProgress | None
) -> VerifyOutcome:
    plan, conn = ctx.plan, ctx.conn
    t0 = time.perf_counter()
    timer = _Timer(stage)
    # Read before any check: changes captured while verify runs count against this report.
    watermark = gate.changes_watermark(conn, plan.name)
    build: IndexResult | None = None
    if opts.build_index:
        with timer.part("index build"):
            build = ensure_index(
                ctx.executor(), ctx.url, plan, ctx.ddl_policy(), on_progress=on_index
            )
    index_state = index_info(conn, plan).state
    with timer.part("coverage"):
        cov, rows = checks.coverage(conn, plan)
        old = checks.old_vectors(conn, plan, rows)
    with timer.part("read target vectors"):
        target = data.load_column(conn, plan, plan.target.column, plan.target.model.dimensions)
    with timer.part("read source vectors"):
        source = data.load_column(conn, plan, plan.source.column, plan.source.model.dimensions)
    with timer.part("vector health"):
        health = checks.health(target, plan)
    with _providers(ctx) as (old_p, new_p):
        found = _run_samples(ctx, opts, timer, index_state, source, target, old_p, new_p)
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
        checks=(cov, health, old, *found),
        index_build=build.as_details() if build else (),
        seconds=time.perf_counter() - t0,
        timings=tuple(timer.parts.items()),
        notes=(
            f"queries: {_QUERY_TEXT[opts.query_mode]} each sampled row; exact search is "
            "numpy brute force over every vector of the column",
        ),
    )
    return _record(ctx, report, rows, watermark, build)


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


def _run_samples(
    ctx: Context,
    opts: VerifyOptions,
    timer: _Timer,
    index_state: str,
    source: data.Column,
    target: data.Column,
    old_p: Provider,
    new_p: Provider,
) -> list[Check]:
    plan, conn = ctx.plan, ctx.conn
    n = opts.sample or plan.verify.sample_size
    seed = plan.verify.seed if opts.seed is None else opts.seed
    k = plan.verify.k
    with timer.part("freshness sample"):
        t0 = time.perf_counter()
        ids, texts, stored = data.sample_with_vectors(conn, plan, plan.target.column, n, seed)
        emb, failed = data.embed_all(new_p, plan.target.model, texts)
        fresh = checks.freshness(plan, ids, stored, emb, failed, time.perf_counter() - t0)
    with timer.part("parity sample"):
        t0 = time.perf_counter()
        rows = data.sample_rows(
            conn, plan, n, seed, "parity", require=(plan.source.column, plan.target.column)
        )
        queries = data.queries_for([t for _, t in rows], seed, opts.query_mode)
    with timer.part("parity embed"):
        q_old, f_old = data.embed_all(old_p, plan.source.model, queries)
        q_new, f_new = data.embed_all(new_p, plan.target.model, queries)
    with timer.part("parity search"):
        keep = [i for i in range(len(rows)) if i not in set(f_old) | set(f_new)]
        own = [rows[i][0] for i in keep]
        old_top = checks.topk(source, q_old[keep], k, plan)
        new_top = checks.topk(target, q_new[keep], k, plan)
        par = checks.parity(
            plan, own, old_top.ids, new_top.ids, k, len(rows) - len(keep), time.perf_counter() - t0
        )
    with timer.part("index recall"):
        # The same queries, the same exact answers: only the index path is new work.
        idx = checks.index_recall(conn, plan, index_state, target, q_new[keep], k, new_top)
    with timer.part("labelled queries"):
        lab = _labelled(plan, opts, source, target, old_p, new_p)
    with timer.part("bridge"):
        bridge = bridge_check.verify_hook(conn, plan, own, q_old[keep], q_new[keep], source, target)
    return [fresh, idx, par, lab, bridge]


def _labelled(
    plan: Plan,
    opts: VerifyOptions,
    source: data.Column,
    target: data.Column,
    old_p: Provider,
    new_p: Provider,
) -> Check:
    name = plan.verify.labelled_queries
    if not name:
        return checks.skipped("labelled", "labelled queries", "no labelled_queries in the plan")
    t0 = time.perf_counter()
    path = resolve_labelled(name, opts.plan_dir)
    items = verify_labelled.load_labelled(path)
    q_old, f_old = data.embed_all(old_p, plan.source.model, [q for q, _ in items])
    q_new, f_new = data.embed_all(new_p, plan.target.model, [q for q, _ in items])
    keep = [i for i in range(len(items)) if i not in set(f_old) | set(f_new)]
    k = plan.verify.k
    return verify_labelled.labelled(
        plan,
        [items[i][1] for i in keep],
        checks.topk(source, q_old[keep], k, plan).ids,
        checks.topk(target, q_new[keep], k, plan).ids,
        k,
        time.perf_counter() - t0,
    )


def resolve_labelled(name: str, plan_dir: Path | None) -> Path:
    """An absolute path as is; a relative one next to the plan file first, then from the cwd."""
    p = Path(name)
    if p.is_absolute():
        return p
    if plan_dir is not None and (plan_dir / p).exists():
        return plan_dir / p
    return Path.cwd() / p


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
