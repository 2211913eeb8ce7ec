"""The batch ledger in migrator.batches: what work exists, who holds it, what is done.

Owns every statement on migrator.batches, migrator.changes (catch-up) and the dead-letter
replays. The ledger, never the broker, is the truth about completion. Must not call the
provider or the broker: callers enqueue the ids these functions return.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrator.ddl import statements as q
from migrator.plan.model import Plan, Role

OPEN = ("pending", "running")


@dataclass(frozen=True)
class Batch:
    id: int
    role: Role
    kind: str
    key_lo: str | None
    key_hi: str | None
    ids: tuple[str, ...] | None
    attempts: int
    lease_token: str | None = None


def _insert(
    conn: psycopg.Connection,
    name: str,
    role: Role,
    kind: str,
    *,
    lo: str | None = None,
    hi: str | None = None,
    ids: Sequence[str] | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO migrator.batches (migration, role, kind, key_lo, key_hi, ids) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (name, role, kind, lo, hi, list(ids) if ids is not None else None),
    ).fetchone()
    assert row is not None
    return int(row[0])


# ---- the producer: key ranges by keyset, streaming --------------------------------------------


def producer_position(conn: psycopg.Connection, name: str) -> tuple[bool, str | None]:
    """(finished, last upper bound) of the range batches made so far."""
    row = conn.execute(
        "SELECT key_hi FROM migrator.batches WHERE migration = %s AND kind = 'range' "
        "ORDER BY id DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is None:
        return False, None
    return row[0] is None, row[0]


def _next_bound(conn: psycopg.Connection, plan: Plan, lo: str | None) -> str | None:
    """The key closing a batch of batch_size keys after `lo`; None when fewer remain."""
    # Qualified as t.pk: a bare ORDER BY pk would sort by the output column pk::text.
    pk = sql.Identifier("t", plan.table.primary_key)
    where = sql.SQL("WHERE {} > %(lo)s").format(pk) if lo is not None else sql.SQL("")
    query = sql.SQL(
        "SELECT {pk}::text FROM {tbl} AS t {where} ORDER BY {pk} OFFSET %(n)s LIMIT 1"
    ).format(pk=pk, tbl=q.table_ident(plan), where=where)
    row = conn.execute(query, {"lo": lo, "n": plan.backfill.batch_size - 1}).fetchone()
    return None if row is None else str(row[0])


def create_range_batches(
    conn: psycopg.Connection, plan: Plan, *, chunk: int = 50
) -> Iterator[list[int]]:
    """Walk the table by key and record range batches, `chunk` per transaction; yields the ids
    of each committed chunk. Resumes after the last recorded range; the last range is open
    above (key_hi NULL), so rows inserted later with higher keys belong to it."""
    done, lo = producer_position(conn, plan.name)
    while not done:
        ids: list[int] = []
        with conn.transaction():
            for _ in range(chunk):
                hi = _next_bound(conn, plan, lo)
                ids.append(_insert(conn, plan.name, Role.TARGET, "range", lo=lo, hi=hi))
                lo = hi
                if hi is None:
                    done = True
                    break
        yield ids


# ---- claim, finish, release, fail (the worker's side) -----------------------------------------


def claim(
    conn: psycopg.Connection,
    name: str,
    batch_id: int,
    worker: str,
    lease_s: float,
    *,
    plan_version: str | None = None,
) -> Batch | None:
    """Take the batch with a fresh lease of `lease_s` (autocommit, short). None when it is
    done, failed or gone (a redelivered message of a finished batch does nothing) and when a
    live worker holds its lease: a slow batch is never taken from a worker that renews it. A
    running batch whose lease expired is taken: its holder is dead or cut off, and the lease
    token makes that holder's late commit a no-op."""
    row = conn.execute(
        "UPDATE migrator.batches SET status = 'running', attempts = attempts + 1, "
        "claimed_at = now(), claimed_by = %(w)s, lease_token = gen_random_uuid()::text, "
        "lease_until = now() + make_interval(secs => %(l)s), plan_version = %(v)s "
        "WHERE id = %(id)s AND migration = %(m)s AND (status = 'pending' OR "
        "(status = 'running' AND (lease_until IS NULL OR lease_until < now()))) "
        "RETURNING id, role, kind, key_lo, key_hi, ids, attempts, lease_token",
        {"w": worker, "l": lease_s, "id": batch_id, "m": name, "v": plan_version},
    ).fetchone()
    if row is None:
        return None
    return Batch(
        int(row[0]),
        Role(row[1]),
        row[2],
        row[3],
        row[4],
        tuple(row[5]) if row[5] is not None else None,
        int(row[6]),
        str(row[7]),
    )


def held_by(conn: psycopg.Connection, batch_id: int) -> str | None:
    """The worker holding a live lease on the batch, if any (why a claim was refused)."""
    row = conn.execute(
        "SELECT claimed_by FROM migrator.batches WHERE id = %s AND status = 'running' "
        "AND lease_until >= now()",
        (batch_id,),
    ).fetchone()
    return None if row is None else str(row[0])


def worker_seen(conn: psycopg.Connection, worker: str) -> None:
    """The worker process is alive (its heartbeat, every lease/4 seconds)."""
    conn.execute(
        "INSERT INTO migrator.workers (id, seen_at) VALUES (%s, now()) "
        "ON CONFLICT (id) DO UPDATE SET seen_at = now()",
        (worker,),
    )


def renew(conn: psycopg.Connection, batch_id: int, token: str, lease_s: float) -> bool:
    """Extend the lease if it is still ours; False when another claim took the batch."""
    cur = conn.execute(
        "UPDATE migrator.batches SET lease_until = now() + make_interval(secs => %s) "
        "WHERE id = %s AND status = 'running' AND lease_token = %s",
        (lease_s, batch_id, token),
    )
    return cur.rowcount == 1


def finish(
    conn: psycopg.Connection,
    batch_id: int,
    *,
    total: int,
    written: int,
    skipped: int,
    stale: int,
    dead: int,
    tokens: int,
    lease_token: str | None = None,
) -> int:
    """Mark done (inside the caller's write transaction); returns how many executions finished
    this batch (more than one: a duplicate delivery ran it again), 0 when `lease_token` is no
    longer the batch's lease: another worker took it over, and the caller must roll back."""
    row = conn.execute(
        "UPDATE migrator.batches SET status = 'done', finished_at = now(), "
        "executions = executions + 1, rows_total = %s, rows_written = rows_written + %s, "
        "rows_skipped = %s, rows_stale = %s, rows_dead = %s, tokens = tokens + %s, error = NULL, "
        "lease_until = NULL WHERE id = %s AND (%s::text IS NULL OR lease_token = %s) "
        "RETURNING executions",
        (total, written, skipped, stale, dead, tokens, batch_id, lease_token, lease_token),
    ).fetchone()
    return int(row[0]) if row else 0


def release(
    conn: psycopg.Connection,
    batch_id: int,
    error: str,
    delay_s: float,
    *,
    worker: str | None = None,
    grace_s: float = 40.0,
) -> None:
    """Back to pending for a retry in `delay_s`; not 'lost' before then. With `worker`, only
    while that worker still holds the batch (nobody took it over meanwhile). The retry's
    message (a Celery countdown) lives in that worker until it is due, so the batch keeps a
    lease until `delay_s + grace_s`: if the worker dies meanwhile, `expire_leases` sends it
    again instead of waiting for the stall time."""
    conn.execute(
        "UPDATE migrator.batches SET status = 'pending', error = %s, lease_token = NULL, "
        "lease_until = now() + make_interval(secs => %s), "
        "enqueued_at = now() + make_interval(secs => %s) WHERE id = %s AND status = 'running' "
        "AND (%s::text IS NULL OR claimed_by = %s)",
        (error[:2000], delay_s + grace_s, delay_s, batch_id, worker, worker),
    )


def fail(conn: psycopg.Connection, batch_id: int, error: str, *, worker: str | None = None) -> None:
    conn.execute(
        "UPDATE migrator.batches SET status = 'failed', error = %s, finished_at = now(), "
        "lease_until = NULL WHERE id = %s AND status <> 'done' "
        "AND (%s::text IS NULL OR claimed_by = %s)",
        (error[:2000], batch_id, worker, worker),
    )


def dead_letter(
    conn: psycopg.Connection, name: str, role: Role, rows: Sequence[tuple[str, str | None, str]]
) -> None:
    """Record (pk, text_hash, reason); a row dead again counts one more attempt."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO migrator.dead_letters (migration, role, pk, text_hash, reason) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (migration, role, pk) DO UPDATE SET "
            "text_hash = EXCLUDED.text_hash, reason = EXCLUDED.reason, resolved_at = NULL, "
            "attempts = migrator.dead_letters.attempts + 1",
            [(name, role, pk, h, reason[:2000]) for pk, h, reason in rows],
        )


def resolve_dead_letters(
    conn: psycopg.Connection, name: str, role: Role, pks: Sequence[str]
) -> None:
    if pks:
        conn.execute(
            "UPDATE migrator.dead_letters SET resolved_at = now() WHERE migration = %s "
            "AND role = %s AND pk = ANY(%s) AND resolved_at IS NULL",
            (name, role, list(pks)),
        )


# ---- the monitor's side: enqueue, stalls, catch-up, sweep, replays ----------------------------


def mark_enqueued(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(
            "UPDATE migrator.batches SET enqueued_at = now() WHERE id = ANY(%s)", (list(ids),)
        )


@dataclass(frozen=True)
class Expired:
    """A running batch whose lease ran out, put back to pending (once: the update is a CAS)."""

    id: int
    worker: str | None
    seconds_late: float


def expire_leases(
    conn: psycopg.Connection, name: str, stall_after: float, lease_s: float = 20.0
) -> list[Expired]:
    """Running batches whose lease expired (their worker died) back to pending, message to be
    sent again; likewise pending batches whose retry was not claimed by its due time plus
    the grace (`release`) while the worker holding it is no longer seen alive (no heartbeat
    for `lease_s`): a busy worker's late retry is not taken from it. Batches claimed before leases
    existed (NULL) fall back to `stall_after`."""
    rows = conn.execute(
        "WITH old AS (SELECT id, claimed_by, coalesce(lease_until, claimed_at) AS since "
        "FROM migrator.batches WHERE migration = %(m)s AND ((status = 'running' "
        "AND (lease_until < now() OR (lease_until IS NULL "
        "AND claimed_at < now() - make_interval(secs => %(s)s)))) "
        "OR (status = 'pending' AND lease_until < now() AND NOT EXISTS (SELECT 1 FROM "
        "migrator.workers w WHERE w.id = claimed_by "
        "AND w.seen_at > now() - make_interval(secs => %(l)s)))) FOR UPDATE SKIP LOCKED) "
        "UPDATE migrator.batches b SET status = 'pending', enqueued_at = NULL, "
        "lease_token = NULL, lease_until = NULL, "
        "error = coalesce(b.error, 'worker lost (lease expired)') FROM old "
        "WHERE b.id = old.id AND b.status IN ('running', 'pending') "
        "RETURNING b.id, old.claimed_by, extract(epoch FROM now() - old.since)::float8",
        {"m": name, "s": stall_after, "l": lease_s},
    ).fetchall()
    return [Expired(int(r[0]), r[1], float(r[2])) for r in sorted(rows)]


def to_enqueue(
    conn: psycopg.Connection, name: str, stall_after: float, *, queue_empty: bool
) -> list[int]:
    """Pending batches whose message is missing: never enqueued (or put back by
    `expire_leases`); or pending past `stall_after` while the queue is empty (message lost)."""
    rows = conn.execute(
        "SELECT id FROM migrator.batches WHERE migration = %(m)s AND status = 'pending' AND ("
        " enqueued_at IS NULL OR (%(empty)s"
        "     AND enqueued_at < now() - make_interval(secs => %(s)s))) ORDER BY id",
        {"m": name, "s": stall_after, "empty": queue_empty},
    ).fetchall()
    return [int(r[0]) for r in rows]


def give_up_exhausted(
    conn: psycopg.Connection, name: str, ids: Sequence[int], max_attempts: int
) -> list[int]:
    """Fail the batches among `ids` already tried `max_attempts` times; return the others."""
    if not ids:
        return []
    conn.execute(
        "UPDATE migrator.batches SET status = 'failed', finished_at = now(), "
        "error = coalesce(error, 'worker lost') || ' (gave up after ' || attempts || ' attempts)' "
        "WHERE migration = %s AND id = ANY(%s) AND attempts >= %s",
        (name, list(ids), max_attempts),
    )
    rows = conn.execute(
        "SELECT id FROM migrator.batches WHERE id = ANY(%s) AND status IN ('pending', 'running')",
        (list(ids),),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def id_batches(conn: psycopg.Connection, plan: Plan, role: Role, pks: Sequence[str]) -> list[int]:
    """Id batches of at most batch_size keys for `role` (in the caller's transaction)."""
    return [
        _insert(conn, plan.name, role, "ids", ids=chunk)
        for chunk in _chunks(list(pks), plan.backfill.batch_size)
    ]


def batches_from_changes(
    conn: psycopg.Connection, plan: Plan, roles: Sequence[Role], *, limit: int = 10_000
) -> list[int]:
    """Turn unprocessed change records into id batches (one per role), marking them processed
    in the same transaction: a crash leaves either both or neither."""
    out: list[int] = []
    with conn.transaction():
        rows = conn.execute(
            "WITH c AS (SELECT id FROM migrator.changes WHERE migration = %s "
            "AND processed_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE migrator.changes ch SET processed_at = now() FROM c WHERE ch.id = c.id "
            "RETURNING ch.id, ch.pk",
            (plan.name, limit),
        ).fetchall()
        pks = list(dict.fromkeys(r[1] for r in sorted(rows)))
        for role in roles:
            for chunk in _chunks(pks, plan.backfill.batch_size):
                out.append(_insert(conn, plan.name, role, "ids", ids=chunk))
    return out


def sweep(
    conn: psycopg.Connection,
    plan: Plan,
    role: Role,
    column: str,
    *,
    skip_open_of_type: str | None = None,
) -> list[int]:
    """Batches for eligible rows still NULL in `column` and not dead-lettered, by keyset: the
    database's own word on what is missing. With `skip_open_of_type` (the key's SQL type) the
    rows an open or failed batch of the role covers are left to it, so the sweep can run on a
    schedule while batches are open."""
    pk = sql.Identifier("t", plan.table.primary_key)
    skip: sql.Composable = sql.SQL("")
    if skip_open_of_type is not None:
        pkt = q.pk_type_sql(skip_open_of_type)
        skip = sql.SQL(
            "AND NOT EXISTS (SELECT 1 FROM migrator.batches b WHERE b.migration = %(m)s "
            "AND b.role = %(r)s AND b.status IN ('pending', 'running', 'failed') AND ("
            "(b.kind = 'ids' AND {pk}::text = ANY(b.ids)) OR (b.kind = 'range' "
            "AND (b.key_lo IS NULL OR {pk} > b.key_lo::{pkt}) "
            "AND (b.key_hi IS NULL OR {pk} <= b.key_hi::{pkt})))) "
            # A row with a change not yet batched gets its catch-up batch on the next pass.
            "AND NOT EXISTS (SELECT 1 FROM migrator.changes c WHERE c.migration = %(m)s "
            "AND c.processed_at IS NULL AND c.pk = {pk}::text) "
        ).format(pk=pk, pkt=pkt)
    query = sql.SQL(
        "SELECT {pk}::text FROM {tbl} AS t WHERE {missing} AND {eligible} "
        "AND ({pk} > %(after)s OR %(after)s::text IS NULL) AND NOT EXISTS (SELECT 1 FROM "
        "migrator.dead_letters d WHERE d.migration = %(m)s AND d.role = %(r)s "
        "AND d.pk = {pk}::text AND d.resolved_at IS NULL) {skip}ORDER BY {pk} LIMIT %(n)s"
    ).format(
        pk=pk,
        tbl=q.table_ident(plan),
        missing=q.missing_vector(plan, column, sql.Identifier("t")),
        eligible=q.eligible_predicate(plan, "t"),
        skip=skip,
    )
    out: list[int] = []
    after: str | None = None
    while True:
        keys = [
            str(r[0])
            for r in conn.execute(
                query, {"after": after, "m": plan.name, "r": role, "n": plan.backfill.batch_size}
            ).fetchall()
        ]
        if not keys:
            return out
        out.append(_insert(conn, plan.name, role, "ids", ids=keys))
        after = keys[-1]


def ranges_open(conn: psycopg.Connection, name: str) -> bool:
    """Whether the initial backfill still has range batches to run (or the producer is not
    done): the scheduled sweep waits for it."""
    done, _ = producer_position(conn, name)
    return not done or _any_batch(conn, name, "kind = 'range' AND status IN ('pending', 'running')")


def running_leased(conn: psycopg.Connection, name: str) -> bool:
    """Whether a batch is running under a live lease (a worker is writing right now)."""
    return _any_batch(
        conn, name, "status = 'running' AND (lease_until IS NULL OR lease_until > now())"
    )


def _any_batch(conn: psycopg.Connection, name: str, condition: str) -> bool:
    """Whether a batch of the migration meets `condition` (a constant SQL fragment)."""
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM migrator.batches WHERE migration = %s AND {})"
        ).format(sql.SQL(condition)),
        (name,),
    ).fetchone()
    return bool(row and row[0])


def prune_changes(
    conn: psycopg.Connection, name: str, retention_s: float, *, limit: int = 10_000
) -> int:
    """Delete processed change records older than `retention_s`, except those the latest
    verification report could not see: "changed since the report" (the cutover's staleness
    check) counts exactly those, so pruning never changes its answer."""
    cur = conn.execute(
        "DELETE FROM migrator.changes WHERE id IN (SELECT c.id FROM migrator.changes c "
        "WHERE c.migration = %(m)s AND c.processed_at < now() - make_interval(secs => %(r)s) "
        "AND NOT EXISTS (SELECT 1 FROM (SELECT changes_watermark AS mark, changes_snapshot "
        "AS snap FROM migrator.reports WHERE migration = %(m)s ORDER BY id DESC LIMIT 1) rep "
        "WHERE (c.txid IS NOT NULL AND rep.snap IS NOT NULL "
        "AND NOT pg_visible_in_snapshot(c.txid::text::xid8, rep.snap::pg_snapshot)) "
        "OR ((c.txid IS NULL OR rep.snap IS NULL) AND c.id > rep.mark)) "
        "ORDER BY c.id LIMIT %(n)s)",
        {"m": name, "r": retention_s, "n": limit},
    )
    return cur.rowcount


def replay_dead_letters(conn: psycopg.Connection, plan: Plan) -> list[int]:
    """Id batches for every unresolved dead letter; they are marked resolved now and become
    unresolved again if they fail again."""
    out: list[int] = []
    with conn.transaction():
        rows = conn.execute(
            "UPDATE migrator.dead_letters SET resolved_at = now() WHERE migration = %s "
            "AND resolved_at IS NULL RETURNING role, pk",
            (plan.name,),
        ).fetchall()
        by_role: dict[Role, list[str]] = {}
        for role, pk in rows:
            by_role.setdefault(Role(role), []).append(pk)
        for role, pks in sorted(by_role.items()):
            for chunk in _chunks(sorted(pks), plan.backfill.batch_size):
                out.append(_insert(conn, plan.name, role, "ids", ids=chunk))
    return out


@dataclass(frozen=True)
class Failed:
    """A failed batch whose cool-down is over: `failures` rounds so far, the last error."""

    batch: Batch
    failures: int
    error: str


def failed_due(conn: psycopg.Connection, name: str, cooldown_s: float) -> list[Failed]:
    """Failed batches whose cool-down (`cooldown_s` doubled per failure round, at most an
    hour) has passed since they failed: the follower retries or dead-letters them."""
    rows = conn.execute(
        "SELECT id, role, kind, key_lo, key_hi, ids, attempts, failures, coalesce(error, '') "
        "FROM migrator.batches WHERE migration = %s AND status = 'failed' AND finished_at < "
        "now() - make_interval(secs => least(%s * power(2, least(failures, 20)), 3600.0)) "
        "ORDER BY id",
        (name, cooldown_s),
    ).fetchall()
    return [
        Failed(
            Batch(
                int(r[0]),
                Role(r[1]),
                r[2],
                r[3],
                r[4],
                tuple(r[5]) if r[5] is not None else None,
                int(r[6]),
            ),
            int(r[7]),
            str(r[8]),
        )
        for r in rows
    ]


def retry_round(conn: psycopg.Connection, batch_id: int) -> bool:
    """A failed batch back to pending for one more round (attempts start over)."""
    cur = conn.execute(
        "UPDATE migrator.batches SET status = 'pending', attempts = 0, enqueued_at = NULL, "
        "finished_at = NULL, failures = failures + 1 WHERE id = %s AND status = 'failed'",
        (batch_id,),
    )
    return cur.rowcount == 1


def mark_dead(conn: psycopg.Connection, batch_id: int, rows_dead: int) -> None:
    """A batch whose rows became dead letters: closed for good (`--retry-dead-letters` makes
    new batches of them)."""
    conn.execute(
        "UPDATE migrator.batches SET status = 'dead', failures = failures + 1, rows_dead = %s, "
        "finished_at = now() WHERE id = %s AND status = 'failed'",
        (rows_dead, batch_id),
    )


def reset_failed(conn: psycopg.Connection, name: str) -> int:
    """A rerun gives failed batches a fresh start (after the operator fixed the cause)."""
    cur = conn.execute(
        "UPDATE migrator.batches SET status = 'pending', attempts = 0, enqueued_at = NULL, "
        "finished_at = NULL WHERE migration = %s AND status = 'failed'",
        (name,),
    )
    return cur.rowcount


def summary(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """Batch counts by status and row counters summed over the ledger: the one answer to "how
    far is the backfill by the ledger" (status, the backfill's summary and metrics call it)."""
    rows = conn.execute(
        "SELECT status, count(*), coalesce(sum(rows_written), 0), coalesce(sum(rows_dead), 0), "
        "coalesce(sum(rows_stale), 0), coalesce(sum(greatest(attempts - 1, 0)), 0), "
        "coalesce(sum(executions - 1) FILTER (WHERE executions > 1), 0) "
        "FROM migrator.batches WHERE migration = %s GROUP BY status",
        (name,),
    ).fetchall()
    status = {r[0]: int(r[1]) for r in rows}
    return {
        "batches": status,
        "batches_total": sum(status.values()),
        "open": sum(status.get(s, 0) for s in OPEN),
        "failed": status.get("failed", 0),
        "rows_written": sum(int(r[2]) for r in rows),
        "rows_dead": sum(int(r[3]) for r in rows),
        "rows_stale": sum(int(r[4]) for r in rows),
        "retries": sum(int(r[5]) for r in rows),
        # More than one execution finished a batch: a redelivered message ran it again.
        "duplicate_executions": sum(int(r[6]) for r in rows),
    }


def first_error(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT error FROM migrator.batches WHERE migration = %s AND status = 'failed' "
        "ORDER BY id LIMIT 1",
        (name,),
    ).fetchone()
    return None if row is None else str(row[0])


def pending_changes(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM migrator.changes WHERE migration = %s AND processed_at IS NULL",
        (name,),
    ).fetchone()
    return int(row[0]) if row else 0


def row_counts(conn: psycopg.Connection, plan: Plan, column: str) -> dict[str, int]:
    """Exact counts from the table (one scan): eligible rows, done, pending and empty."""
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE {e}), count(*) FILTER (WHERE {e} AND {c} IS NOT NULL), "
        "count(*) FILTER (WHERE NOT ({e})) FROM {t}"
    ).format(e=q.eligible_predicate(plan), c=sql.Identifier(column), t=q.vectors_from(plan, column))
    row = conn.execute(query).fetchone()
    assert row is not None
    eligible, done, empty = (int(x) for x in row)
    return {
        "rows_eligible": eligible,
        "rows_done": done,
        "rows_pending": eligible - done,
        "rows_empty": empty,
    }


def dead_letter_count(conn: psycopg.Connection, name: str, *, role: Role | None = None) -> int:
    """Unresolved dead letters of the migration (of one role when given)."""
    row = conn.execute(
        "SELECT count(*) FROM migrator.dead_letters WHERE migration = %s AND resolved_at IS NULL "
        "AND (%s::text IS NULL OR role = %s)",
        (name, role, role),
    ).fetchone()
    return int(row[0]) if row else 0


def dead_letters(conn: psycopg.Connection, name: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT pk, role, reason, attempts FROM migrator.dead_letters WHERE migration = %s "
        "AND resolved_at IS NULL ORDER BY id LIMIT %s",
        (name, limit),
    ).fetchall()
    return [{"pk": r[0], "role": r[1], "reason": r[2], "attempts": int(r[3])} for r in rows]


def open_backfill_batches(conn: psycopg.Connection, name: str) -> int:
    """Open batches of the backfill itself (key ranges, not the catch-up's id batches): while
    any is open the new column is incomplete, whatever the catch-up does."""
    row = conn.execute(
        "SELECT count(*) FROM migrator.batches WHERE migration = %s AND kind <> 'ids' "
        "AND status = ANY(%s)",
        (name, list(OPEN)),
    ).fetchone()
    return int(row[0]) if row else 0
