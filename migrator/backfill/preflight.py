"""Pre-flight: what a command needs that can be checked read-only, checked before its first
change. `check` owns the list; commands open `context` (db.context.migration_context runs `require` after the phase
guard, before it upgrades migrator's schema); `plan` and `runbook` (live) show the same problems and exit with
the same codes.

In order: the table, view and index fit the plan and pgvector is at least 0.8.4 (inspect); the
database user holds the privileges the command's steps use (privileges); an API key for every
model the command will call; a test embedding of the declared dimension from each of them; the
shared Redis when the plan sets rate limits. Read-only: catalog SELECTs, one embedding request
per model, one PING. Each problem is one line with what to do and its documented exit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from migrator.backfill import budget
from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import privileges
from migrator.db.context import Context, migration_context
from migrator.db.server import rows_left_to_fill, table_storage
from migrator.db.state import State
from migrator.embedding.errors import EmbeddingError, RetryableError
from migrator.errors import (
    BudgetError,
    ConfigError,
    DiskSpaceError,
    MigratorError,
    PreflightError,
    ProviderError,
)
from migrator.plan.estimate import Calibration, DiskGrowth, TableStorage, disk_growth
from migrator.plan.index_memory import human
from migrator.plan.model import ModelSpec, Plan

log = logging.getLogger(__name__)
PROBE_TEXT = "migrator pre-flight check: does this model answer?"
PROBE_ATTEMPTS = 3
_FIX_CATALOG = "fix the plan or the database, then check with `migrator plan PLAN`"
# Phases after which the old model is called again by catch-up (rollback stays possible).
_SOURCE_PHASES = (State.CUT_OVER, State.ROLLED_BACK)


@dataclass(frozen=True)
class Problem:
    """One blocking problem: what is wrong, what to do, and the error (exit code) it maps to."""

    error: type[MigratorError]
    what: str
    hint: str

    @property
    def exit_code(self) -> int:
        return self.error.exit_code

    def line(self) -> str:
        return f"{self.what} ({self.hint})"


@dataclass
class Result:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    inspection: insp.Inspection | None = None
    # The disk check's inputs and estimate (plan and backfill before the column is filled).
    storage: TableStorage | None = None
    growth: DiskGrowth | None = None

    def raise_first(self) -> None:
        """Raise the first problem's error (its exit code); the others ride along as lines."""
        if self.problems:
            first = self.problems[0]
            raise first.error(
                first.what, hint=first.hint, more=tuple(p.line() for p in self.problems[1:])
            )


def models_called(plan: Plan, command: str, phase: State | None) -> list[tuple[str, ModelSpec]]:
    """(role, model) of every model `command` will call from `phase`."""
    target, source = ("target", plan.target.model), ("source", plan.source.model)
    if command in ("plan", "verify"):
        return [target, source]
    if command == "backfill":
        # The old model embeds catch-up after cutover, and refreshes stale old vectors before.
        old_needed = phase in _SOURCE_PHASES or plan.backfill.refresh_source
        return [target, source] if old_needed else [target]
    return []


def retired_source(conn: psycopg.Connection, plan: Plan) -> bool:
    """`bridge on --old-model-gone` named a bridge to stand in for the old model."""
    from migrator.bridge import store  # numpy: only with a database at hand

    return store.replacing_source(conn, plan) is not None


def needs(command: str, phase: State | None) -> privileges.Needs:
    if command == "backfill" and phase not in (None, State.PLANNED):
        return privileges.Needs(write_table=True)  # expand is done: only the workers' writes
    return privileges.BY_COMMAND.get(command, privileges.Needs())


def check(
    conn: psycopg.Connection,
    settings: Settings,
    plan: Plan,
    command: str,
    phase: State | None,
    *,
    sample: int = 0,
) -> Result:
    res = Result()
    ins = res.inspection = insp.inspect(conn, plan, sample=sample)
    res.problems += [Problem(PreflightError, f.what, _FIX_CATALOG) for f in ins.errors]
    res.problems += [
        Problem(PreflightError, what, hint)
        for what, hint in privileges.problems(conn, plan, needs(command, phase))
    ]
    for role, spec in models_called(plan, command, phase):
        if role == "source" and retired_source(conn, plan):
            continue  # a bridge stands in for the old model (bridge.provider); not called
        found = probe(role, spec, settings)
        if found is not None:
            res.problems.append(found)
    if command in ("plan", "backfill"):
        _check_redis(plan, settings, res)
    if command in ("plan", "backfill") and phase in _FILL_PHASES and not ins.errors:
        _check_disk(conn, plan, ins, res)
    return res


# Phases from which a backfill still has rows to fill in the column (expanded: resumed).
_FILL_PHASES = (None, State.PLANNED, State.EXPANDED, State.ABORTED)


def _check_disk(conn: psycopg.Connection, plan: Plan, ins: insp.Inspection, res: Result) -> None:
    """Refuse a backfill whose estimated growth does not fit (read-only: catalog sizes)."""
    storage = res.storage = table_storage(conn, plan)
    left = rows_left_to_fill(conn, plan, storage.rows, ins.target_exists)
    growth = res.growth = disk_growth(plan, storage, left)
    if growth.fits is None:
        res.warnings.append(
            f"disk room not checked: {storage.room_source}; the backfill and index build "
            f"add about {human(growth.total_bytes)} (set backfill.max_database_size to check)"
        )
    elif not growth.fits:
        room = max(0, growth.room_bytes or 0)
        res.problems.append(
            Problem(
                DiskSpaceError,
                f"the backfill and index build would add about {human(growth.total_bytes)} "
                f"to the database ({human(growth.heap_bytes)} of "
                f"{'side table' if plan.side else 'new row versions'}, "
                f"{human(growth.index_entries_bytes)} of index entries, "
                f"{human(growth.new_index_bytes)} of new index) but only {human(room)} is "
                f"left ({growth.room_source})",
                "free disk space or raise backfill.max_database_size; a full disk stops PostgreSQL",
            )
        )


def require(
    conn: psycopg.Connection, settings: Settings, plan: Plan, command: str, phase: State | None
) -> Result:
    """`check`, raising the first problem's error (with the others) when there is any."""
    res = check(conn, settings, plan, command, phase)
    res.raise_first()
    for warning in res.warnings:  # e.g. the disk room could not be checked: say so
        log.warning("%s: %s", command, warning)
    return res


def probe(role: str, spec: ModelSpec, settings: Settings) -> Problem | None:
    """One test embedding: the key is set, the server answers, the vector has the declared
    dimension. Retryable errors (429, 5xx, timeouts) are tried PROBE_ATTEMPTS times."""
    label = f"the {role} model {spec.name!r}"
    try:
        from migrator.embedding.factory import provider_for  # openai, httpx: when probing

        provider = provider_for(spec, settings.environ)
    except ConfigError as exc:
        return Problem(ConfigError, f"{label}: {exc.message}", exc.hint or "set the key")
    try:
        for attempt in range(1, PROBE_ATTEMPTS + 1):
            try:
                matrix = provider.embed([PROBE_TEXT])
                break
            except RetryableError as exc:
                if attempt == PROBE_ATTEMPTS:
                    raise
                time.sleep(min(5.0, exc.retry_after or 0.5 * 2**attempt))
    except EmbeddingError as exc:
        where = f" at {spec.base_url}" if spec.base_url else ""
        return Problem(
            ProviderError,
            f"{label}{where} failed a test embedding: {exc.message}",
            exc.hint or "check base_url, the API key and the model name in the plan",
        )
    finally:
        provider.close()
    if matrix.shape != (1, spec.dimensions):
        return Problem(
            ProviderError,
            f"{label} answered a vector of {matrix.shape[-1]} dimensions; the plan says "
            f"{spec.dimensions}",
            "fix the model's dimensions (or send_dimensions) in the plan",
        )
    return None


CALIBRATION_REQUESTS = 3
# Requests sent at once after the sequential ones (at most what the backfill would have in
# flight): whether the provider answers them side by side or one after another.
CALIBRATION_CONCURRENT = 4


def calibrate(
    plan: Plan,
    settings: Settings,
    texts: Sequence[str],
    *,
    requests: int = CALIBRATION_REQUESTS,
    in_flight: int = CALIBRATION_CONCURRENT,
) -> tuple[Calibration | None, str | None]:
    """Time `requests` requests of one batch of the sampled rows each to the target model, one
    after the other, after one warm-up request: the provider's latency for the estimate; then
    up to CALIBRATION_CONCURRENT such requests at once (never more than the backfill's
    workers would send, nor beyond a requests_per_minute budget): its parallelism. None and
    why when it could not be measured (the estimate then assumes a rate and says so)."""
    spec = plan.target.model
    rpm = plan.backfill.requests_per_minute
    if rpm is not None and rpm < 30:
        return None, f"calibration skipped: requests_per_minute {rpm} leaves no room for it"
    usable = [t for t in texts if t and t.strip()]
    if not usable:
        return None, "calibration skipped: no text sampled"
    try:
        from migrator.embedding.factory import provider_for

        provider = provider_for(spec, settings.environ)
    except (ConfigError, ImportError) as exc:
        return None, f"calibration skipped: {exc}"
    try:
        batch = [provider.truncate(t, spec.max_tokens_per_input) for t in usable]
        batch = batch[: max(1, min(plan.backfill.batch_size, spec.max_inputs_per_request))]
        counts = provider.count_tokens(batch)
        total, n = 0, 0
        for c in counts:  # within the request's token limit, as the batcher would cut
            if n and total + c > spec.max_tokens_per_request:
                break
            total, n = total + c, n + 1
        batch = batch[:n]
        provider.embed(batch[:1])  # warm-up: the connection, the server's first request
        seconds = []
        for _ in range(requests):
            t0 = time.perf_counter()
            provider.embed(batch)
            seconds.append(time.perf_counter() - t0)
        concurrent = _concurrent_round(plan, provider, batch, in_flight)
    except EmbeddingError as exc:
        return None, f"calibration failed ({exc.message}): the time estimate assumes a rate"
    finally:
        provider.close()
    return Calibration(len(batch), tuple(seconds), concurrent), None


def _concurrent_round(
    plan: Plan, provider: Any, batch: list[str], in_flight: int
) -> tuple[int, float] | None:
    """(requests, wall seconds) of up to CALIBRATION_CONCURRENT requests sent at once."""
    n = min(CALIBRATION_CONCURRENT, in_flight)
    rpm = plan.backfill.requests_per_minute
    if rpm is not None:
        n = min(n, rpm // 30)  # the sequential round took 4; leave the minute's budget be
    if n < 2:
        return None
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="calibrate") as pool:
        list(pool.map(lambda _i: provider.embed(batch), range(n)))
    return n, time.perf_counter() - t0


def _check_redis(plan: Plan, settings: Settings, res: Result) -> None:
    """Limits are one budget shared by every worker, or the command refuses (exit 15)."""
    try:
        budget.require(settings, plan)
    except BudgetError as exc:
        res.problems.append(Problem(BudgetError, exc.message, exc.hint or budget.HINT))


def context(settings: Settings, plan: Plan, command: str) -> AbstractContextManager[Context]:
    """The migration context of a command that changes things, with this pre-flight run after
    the phase guard and before the first change. Every such command opens it (a test keeps
    the others from opening db.context.migration_context directly)."""
    return migration_context(settings, plan, command, checks=require)
