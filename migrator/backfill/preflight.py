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

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import psycopg

from migrator.backfill.broker import limiter_redis_url, redact
from migrator.config import Settings
from migrator.db import catalog as insp
from migrator.db import privileges
from migrator.db.context import Context, migration_context
from migrator.db.state import State
from migrator.embedding.errors import EmbeddingError, RetryableError
from migrator.errors import BrokerError, ConfigError, MigratorError, PreflightError, ProviderError
from migrator.plan.model import ModelSpec, Plan

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
        found = probe(role, spec, settings)
        if found is not None:
            res.problems.append(found)
    if command in ("plan", "backfill"):
        _check_redis(plan, settings, res)
    return res


def require(
    conn: psycopg.Connection, settings: Settings, plan: Plan, command: str, phase: State | None
) -> Result:
    """`check`, raising the first problem's error (with the others) when there is any."""
    res = check(conn, settings, plan, command, phase)
    res.raise_first()
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


def _check_redis(plan: Plan, settings: Settings, res: Result) -> None:
    bf = plan.backfill
    if bf.requests_per_minute is None and bf.tokens_per_minute is None:
        return
    if settings.redis_url is None and settings.broker_url is None:
        return  # the embedded Redis, started on demand on this machine
    url = limiter_redis_url(settings, start_embedded=False)
    if url is None:
        res.warnings.append(
            "rate limits are set but no Redis is configured for them (the broker is not "
            "Redis): each worker machine keeps its own budget; set MIGRATOR_REDIS_URL to share it"
        )
        return
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        res.problems.append(
            Problem(
                BrokerError,
                f"the Redis that holds the shared rate budget ({redact(url)}) does not "
                f"answer: {exc}",
                "start it, or fix MIGRATOR_REDIS_URL (else CELERY_BROKER_URL)",
            )
        )
    finally:
        client.close()


def context(settings: Settings, plan: Plan, command: str) -> AbstractContextManager[Context]:
    """The migration context of a command that changes things, with this pre-flight run after
    the phase guard and before the first change. Every such command opens it (a test keeps
    the others from opening db.context.migration_context directly)."""
    return migration_context(settings, plan, command, checks=require)
