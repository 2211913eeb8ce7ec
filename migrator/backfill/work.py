"""The unit of work of the backfill: claim a batch, read its rows' current text, embed, check,
write with compare-and-set, dead-letter the bad rows and mark the batch done.

A plain function on a connection, testable without Celery. No transaction is open while the
provider is called; the writes and the ledger update commit together. Retrying is the caller's
decision (`retry_delay`); a duplicate execution writes nothing (CAS on text hash and NULL).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from pgvector import HalfVector
from psycopg import sql

from migrator.backfill import ledger, refresh
from migrator.backfill.lease import LeaseLostError
from migrator.backfill.ratelimit import Limiter
from migrator.db.executor import backoff
from migrator.ddl import statements as q
from migrator.embedding import Provider, RetryableError, embed_texts
from migrator.embedding.base import Matrix
from migrator.embedding.errors import BadResponseError, EmbeddingError
from migrator.plan.model import Metric, ModelSpec, Plan, RetrySpec, Role, VectorType

IN_REQUEST_ATTEMPTS = 3


@dataclass(frozen=True)
class RoleSpec:
    """Which column a batch fills and with which model: target, or source after cutover."""

    role: Role
    column: str
    model: ModelSpec
    vtype: VectorType


def role_spec(plan: Plan, role: Role | str) -> RoleSpec:
    try:
        role = Role(role)
    except ValueError:
        raise ValueError(f"unknown batch role {role!r}") from None
    side = plan.target if role is Role.TARGET else plan.source
    return RoleSpec(role, side.column, side.model, side.type)


@dataclass
class Stats:
    """Counters a worker process exposes (and metrics mirror); thread-safe increments."""

    retries: int = 0
    rate_limited: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass
class BatchOutcome:
    batch_id: int
    status: str  # done | duplicate | not-open
    role: Role = Role.TARGET
    total: int = 0
    written: int = 0
    stale: int = 0
    skipped: int = 0
    dead: int = 0
    tokens: int = 0
    requests: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0


class RetryingProvider(Provider):
    """Retries one request a few times in place: a 429 pauses the shared budget for its
    Retry-After (every worker waits), other retryable errors back off with jitter. After
    IN_REQUEST_ATTEMPTS the error goes up and the whole task is retried later."""

    def __init__(
        self,
        inner: Provider,
        limiter: Limiter,
        retry: RetrySpec,
        stats: Stats,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.dimensions = inner.dimensions
        self.limits = inner.limits
        self.limiter = limiter
        self.retry = retry
        self.stats = stats
        self._sleep = sleep

    def embed(self, texts: Sequence[str]) -> Matrix:
        attempts = min(IN_REQUEST_ATTEMPTS, self.retry.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                matrix = self.inner.embed(texts)
                self._refund(texts)
                return matrix
            except RetryableError as exc:
                delay = backoff(
                    attempt, self.retry.backoff_base_seconds, self.retry.backoff_max_seconds
                )
                if exc.status == 429:
                    # Every 429 pauses every worker, the last in-place attempt's too: its retry
                    # goes back as a task, but the other workers must still wait (the slow
                    # 429-storm test saw them send inside that pause).
                    self.stats.add("rate_limited")
                    self.limiter.pause(exc.retry_after if exc.retry_after is not None else delay)
                if attempt == attempts:
                    raise
                self.stats.add("retries")
                if exc.status != 429:
                    self._sleep(max(delay, exc.retry_after or 0.0))
                self.limiter.acquire(1, sum(self.inner.count_tokens(texts)))
        raise AssertionError("unreachable")

    def _refund(self, texts: Sequence[str]) -> None:
        """The budget was charged the offline estimate: give back what the server did not
        count, so a tokens-per-minute budget is spent on real tokens."""
        usage = getattr(self.inner, "last_usage", None)
        used = usage() if callable(usage) else None
        if isinstance(used, int):
            over = sum(self.inner.count_tokens(texts)) - used
            if over > 0:
                self.limiter.refund(over)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate(text, max_tokens)


def retry_delay(
    exc: BaseException, retries_done: int, retry: RetrySpec, rng: random.Random | None = None
) -> float | None:
    """Seconds before the task's next attempt, or None to give up (fail the batch).

    Retryable errors and whole-answer failures (BadResponseError says nothing about any row)
    retry with exponential backoff and full jitter, never sooner than the server's Retry-After,
    up to `max_attempts` in all; other errors (auth, unknown model) fail at once.
    """
    if not isinstance(exc, RetryableError | BadResponseError | psycopg.OperationalError):
        return None
    if retries_done + 1 >= retry.max_attempts:
        return None
    delay = backoff(retries_done + 1, retry.backoff_base_seconds, retry.backoff_max_seconds, rng)
    after = exc.retry_after if isinstance(exc, RetryableError) else None
    return max(delay, after or 0.0, 0.05)


# ---- the batch --------------------------------------------------------------------------------


def _execute(
    conn: psycopg.Connection, query: sql.Composable, params: dict[str, Any] | None = None
) -> psycopg.Cursor[Any]:
    # The builders return Composable; psycopg's stubs want Composed (what they really are).
    return conn.execute(cast(sql.Composed, query), params)


@dataclass(frozen=True)
class KeyInfo:
    oid: int
    type: str


_keys: dict[tuple[int, str, str], KeyInfo] = {}
_stages: set[tuple[int, str]] = set()


def key_info(conn: psycopg.Connection, plan: Plan) -> KeyInfo:
    cache = (id(conn), plan.table.schema_ + "." + plan.table.name, plan.table.primary_key)
    found = _keys.get(cache)
    if found is None:
        row = conn.execute(
            "SELECT a.atttypid::int, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped",
            (q.table_ident(plan).as_string(conn), plan.table.primary_key),
        ).fetchone()
        if row is None:
            raise psycopg.ProgrammingError(f"no key column {plan.table.primary_key}")
        found = _keys[cache] = KeyInfo(int(row[0]), str(row[1]))
    return found


def _ensure_stage(conn: psycopg.Connection, plan: Plan, key: KeyInfo, rs: RoleSpec) -> None:
    dims = rs.model.dimensions
    tag = (id(conn), q.stage_ident(key.type, rs.vtype, dims).as_string(conn))
    if tag not in _stages:
        _execute(conn, q.create_stage(plan, key.type, rs.vtype, dims))
        _stages.add(tag)


def _read(
    conn: psycopg.Connection, plan: Plan, batch: ledger.Batch, rs: RoleSpec, key: KeyInfo
) -> list[tuple[Any, str, str | None, str | None]]:
    if batch.kind == "range":
        query = q.read_range(
            plan, rs.column, lo=batch.key_lo is not None, hi=batch.key_hi is not None
        )
        params: dict[str, Any] = {"lo": batch.key_lo, "hi": batch.key_hi}
    else:
        # Source-role batches also read rows whose old vector was recorded stale (not NULL).
        query = q.read_ids(plan, key.type, rs.column, stale=rs.role is Role.SOURCE)
        params = {"ids": list(batch.ids or ())}
    return [(r[0], str(r[1]), r[2], r[3]) for r in _execute(conn, query, params).fetchall()]


def run_batch(
    conn: psycopg.Connection,
    plan: Plan,
    batch_id: int,
    *,
    provider: Callable[[RoleSpec], Provider],
    limiter: Callable[[RoleSpec], Limiter],
    worker: str = "local",
    keep_lease: Callable[[ledger.Batch], AbstractContextManager[Any]] | None = None,
    plan_version: str | None = None,
) -> BatchOutcome:
    """Run one batch to the end, or raise (EmbeddingError, psycopg.Error) leaving it running:
    the caller releases it for a retry or fails it. `conn` must be in autocommit mode.
    `keep_lease(batch)` renews the batch's lease while the batch runs (the worker's
    heartbeat); status "held" when a live worker holds it, "lease-lost" when another worker
    took it over before this one committed (nothing of this run is committed then)."""
    t0 = time.perf_counter()
    batch = ledger.claim(
        conn, plan.name, batch_id, worker, plan.backfill.lease_seconds, plan_version=plan_version
    )
    if batch is None:
        status = "held" if ledger.held_by(conn, batch_id) else "not-open"
        return BatchOutcome(batch_id, status)
    with keep_lease(batch) if keep_lease is not None else contextlib.nullcontext():
        try:
            out = _run_claimed(conn, plan, batch, provider=provider, limiter=limiter)
        except LeaseLostError:
            return BatchOutcome(batch_id, "lease-lost")
    out.seconds = time.perf_counter() - t0
    return out


def _run_claimed(
    conn: psycopg.Connection,
    plan: Plan,
    batch: ledger.Batch,
    *,
    provider: Callable[[RoleSpec], Provider],
    limiter: Callable[[RoleSpec], Limiter],
) -> BatchOutcome:
    batch_id = batch.id
    rs = role_spec(plan, batch.role)
    key = key_info(conn, plan)
    rows = _read(conn, plan, batch, rs, key)
    out = BatchOutcome(batch_id, "done", role=rs.role, total=len(rows))

    t1 = time.perf_counter()
    emb = embed_texts(
        provider(rs),
        [r[2] for r in rows],
        overlong=rs.model.overlong,
        forbid_zero=plan.index.metric is Metric.COSINE,
        normalize=rs.model.normalize,
        concurrency=plan.backfill.concurrency,
        before_request=limiter(rs).acquire,
    )
    out.embed_seconds = time.perf_counter() - t1
    out.tokens, out.requests = emb.tokens, emb.requests

    dead = [(rows[i][1], rows[i][3], reason) for i, reason in sorted(emb.failed.items())]
    cleared: list[int] = []  # source role: an old vector over text that became blank
    for i in emb.skipped_empty:
        text = rows[i][2]
        # The pipeline skips anything Python calls blank; the database's eligibility test only
        # trims ASCII whitespace. Rows in between would stay NULL forever: dead-letter them.
        if text is not None and text.strip(" \t\r\n"):
            dead.append((rows[i][1], rows[i][3], "text is only whitespace"))
        else:
            out.skipped += 1
            if rs.role is Role.SOURCE:
                cleared.append(i)
    out.dead = len(dead)

    _ensure_stage(conn, plan, key, rs)
    stage = q.stage_ident(key.type, rs.vtype, rs.model.dimensions)
    with conn.transaction():
        # Change capture lets through only writes marked as migrator's (SET LOCAL): any other
        # write of a vector column without its text is an ORM saving back an old vector.
        _execute(conn, q.mark_writer(plan))
        if emb.vectors or cleared:
            # The temp stage has no statistics and the new column's `IS NULL` is estimated at
            # 0.5% of the table, so the planner hashes the whole table for every batch: a
            # sequential scan each time, quadratic in the table (185 ms per 500-row batch at
            # 100k rows, bench/backfill_throughput.py). The stage holds one batch: probing the
            # primary key once per staged row is always the right plan. SET LOCAL ends with
            # this transaction.
            conn.execute("SET LOCAL enable_hashjoin = off")
            conn.execute("SET LOCAL enable_mergejoin = off")
            copy_sql = sql.SQL("COPY {} (pk, text_hash, v) FROM STDIN (FORMAT BINARY)").format(
                stage
            )
            # pgvector-python dumps halfvec only from HalfVector objects (0.5 refuses arrays).
            wrap = HalfVector if rs.vtype is VectorType.HALFVEC else _as_is
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.set_types([key.oid, "text", rs.vtype.value])
                for i, vec in emb.vectors.items():
                    copy.write_row((rows[i][0], rows[i][3], wrap(vec)))
                for i in cleared:
                    copy.write_row((rows[i][0], rows[i][3], None))
            cas = q.cas_update(
                plan,
                rs.column,
                key.type,
                rs.vtype,
                rs.model.dimensions,
                stale=rs.role is Role.SOURCE,
            )
            written = [str(r[0]) for r in _execute(conn, cas).fetchall()]
        else:
            written = []
        out.written = len(written)
        out.stale = max(0, len(emb.vectors) + len(cleared) - len(written))
        if rs.role is Role.SOURCE:
            done = set(written)
            others = [pk for pk in batch.ids or () if pk not in done]
            refresh.resolve(conn, plan, key.type, written, others)
        ledger.dead_letter(conn, plan.name, rs.role, dead)
        ledger.resolve_dead_letters(conn, plan.name, rs.role, written)
        executions = ledger.finish(
            conn,
            batch.id,
            total=out.total,
            written=out.written,
            skipped=out.skipped,
            stale=out.stale,
            dead=out.dead,
            tokens=out.tokens,
            lease_token=batch.lease_token,
        )
        if executions == 0:
            # Our lease expired and another worker holds the batch: roll back our writes
            # (compare-and-set made them harmless anyway) and leave the batch to it.
            raise LeaseLostError(f"batch {batch_id}: lease taken over")
    if executions > 1:
        out.status = "duplicate"
    return out


def batch_rows(conn: psycopg.Connection, plan: Plan, batch: ledger.Batch) -> list[tuple[str, str]]:
    """(pk, text hash) of the rows a batch would still embed now (to dead-letter them)."""
    rs = role_spec(plan, batch.role)
    return [(r[1], r[3] or "") for r in _read(conn, plan, batch, rs, key_info(conn, plan))]


def _as_is(vec: Any) -> Any:
    return vec


def give_up(
    conn: psycopg.Connection, batch_id: int, exc: BaseException, *, worker: str | None = None
) -> None:
    msg = exc.one_line() if isinstance(exc, EmbeddingError) else f"{type(exc).__name__}: {exc}"
    ledger.fail(conn, batch_id, msg, worker=worker)


def forget_connection(conn: psycopg.Connection) -> None:
    """Drop per-connection caches (temp stage tables die with their session)."""
    for k in [k for k in _keys if k[0] == id(conn)]:
        del _keys[k]
    for s in [s for s in _stages if s[0] == id(conn)]:
        _stages.discard(s)
