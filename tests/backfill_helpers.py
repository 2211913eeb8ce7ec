"""Helpers of the backfill tests: fast synthetic documents, real worker processes, checks that
every row holds exactly the vector the new model gives for its current text."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from migrator.embedding.local import HashEmbedder
from migrator.plan.model import Plan
from migrator.worker.launch import worker_command
from tests.helpers import demo_plan

ROOT = Path(__file__).resolve().parent.parent
NEW = HashEmbedder("local-hash-new", 384)
OLD = HashEmbedder("local-hash-old", 256)
POISON = "<<poison>>"


def unique_plan(base_url: str, **overrides: object) -> Plan:
    """The demo plan with a unique name and queue, so tests never share a queue or a budget."""
    tag = uuid.uuid4().hex[:8]
    overrides.setdefault("name", f"bf-{tag}")
    overrides.setdefault("backfill__queue", f"migrator.test-{tag}.embedding_v2")
    return demo_plan(base_url, **overrides)


def _vocabulary(size: int = 4000) -> list[str]:
    """Pronounceable pseudo-words: independent of any corpus, identical on every machine."""
    rng = random.Random(1)
    onset, vowel = "bcdfghjklmnprstvwz", "aeiou"
    words = {
        "".join(rng.choice(onset) + rng.choice(vowel) for _ in range(rng.randint(1, 4)))
        for _ in range(size)
    }
    return sorted(words)


_VOCAB: list[str] = []


def random_text(rng: random.Random, lo: int = 8, hi: int = 40) -> str:
    if not _VOCAB:
        _VOCAB.extend(_vocabulary())
    return " ".join(rng.choices(_VOCAB, k=rng.randint(lo, hi)))


def make_documents(
    url: str,
    n: int,
    *,
    seed: int = 7,
    empty_every: int = 0,
    poison_ids: tuple[int, ...] = (),
    old_vectors: bool = False,
) -> dict[int, str]:
    """documents(id bigint pk, title, body, category, embedding vector(256)) with n rows of
    synthetic text; every `empty_every`-th body is empty or blank. Returns id -> body.

    The old vectors are synthetic (64 random vectors) unless `old_vectors`: then the old
    model's embedding of each body (what verify's parity needs as a baseline)."""
    rng = random.Random(seed)
    bodies: dict[int, str] = {}
    for i in range(1, n + 1):
        body = random_text(rng)
        if empty_every and i % empty_every == 0:
            body = "" if i % 2 else "  \t "
        if i in poison_ids:
            body = f"{body} {POISON}"
        bodies[i] = body
    old = np.random.default_rng(seed).standard_normal((64, 256)).astype(np.float32)
    real = OLD.encode([b if b.strip() else "x" for b in bodies.values()]) if old_vectors else None
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, "
            "category text, embedding vector(256))"
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY documents (id, title, body, category, embedding) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "text", "text", "text", "vector"])
            for j, (i, body) in enumerate(bodies.items()):
                vec = old[i % 64] if real is None else real[j]
                copy.write_row((i, f"doc {i}", body, f"c{i % 7}", vec))
        conn.execute("ANALYZE documents")
    return bodies


def start_workers(
    database_url: str,
    broker: str,
    queue: str,
    *,
    n: int = 1,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    app: str = "migrator.worker.app",
    loglevel: str = "warning",
    tag: str = "w",
) -> list[subprocess.Popen[bytes]]:
    """Real worker processes (the command `migrator worker` runs) on `queue`."""
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker, "PYTHONPATH": str(ROOT)})
    env.pop("MIGRATOR_REDIS_URL", None)
    env.update(extra_env or {})
    procs = []
    for i in range(n):
        cmd = worker_command(
            queue,
            concurrency=concurrency,
            loglevel=loglevel,
            hostname=f"{tag}{i}-{uuid.uuid4().hex[:6]}@%h",
            app=app,
        )
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True))
    return procs


def kill_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(Exception):
            p.wait(10)


@contextlib.contextmanager
def workers(
    database_url: str, broker: str, queue: str, **kw: object
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = start_workers(database_url, broker, queue, **kw)  # type: ignore[arg-type]
    try:
        yield procs
    finally:
        kill_workers(procs)


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def current_rows(
    url: str, side: str | None = None
) -> dict[int, tuple[str | None, np.ndarray | None]]:
    """id -> (body, new vector); `side`: the vectors are in that side table (storage
    side_table), not in documents.embedding_v2."""
    query = (
        "SELECT id, body, embedding_v2 FROM documents"
        if side is None
        else f'SELECT d.id, d.body, s.embedding_v2 FROM documents d LEFT JOIN "{side}" s USING (id)'
    )
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(query).fetchall()
    return {int(r[0]): (r[1], _array(r[2])) for r in rows}


def _array(v: object) -> np.ndarray | None:
    if v is None:
        return None
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def assert_all_fresh(
    url: str,
    *,
    dead: set[int] = frozenset(),  # type: ignore[assignment]
    side: str | None = None,
) -> dict[str, int]:
    """Every eligible row holds exactly the new model's vector of its current text; blank
    rows and dead-lettered rows hold NULL (or no side row). Returns counts."""
    rows = current_rows(url, side)
    eligible = {
        i: body
        for i, (body, _) in rows.items()
        if body is not None and body.strip(" \t\r\n") and i not in dead
    }
    ids = sorted(eligible)
    expected = NEW.encode([eligible[i] for i in ids]) if ids else np.empty((0, 384))
    wrong = []
    for i, exp in zip(ids, expected, strict=True):
        got = rows[i][1]
        if got is None or not np.allclose(got, exp, atol=1e-5):
            wrong.append(i)
    assert not wrong, f"{len(wrong)} rows stale or NULL, e.g. {wrong[:10]}"
    not_null_blank = [
        i
        for i, (body, v) in rows.items()
        if v is not None and (i in dead or not (body or "").strip(" \t\r\n"))
    ]
    assert not not_null_blank, f"rows that must stay NULL hold vectors: {not_null_blank[:10]}"
    return {"rows": len(rows), "eligible": len(ids)}


def assert_old_fresh(url: str, ids: set[int]) -> int:
    """Rows `ids` (those still present) hold the OLD model's vector of their current text:
    what a rollback serves. Returns how many were checked."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            "SELECT id, body, embedding FROM documents WHERE id = ANY(%s) ORDER BY id",
            (sorted(ids),),
        ).fetchall()
    wrong = []
    expected = OLD.encode([r[1] for r in rows]) if rows else []
    for (pk, _, got), exp in zip(rows, expected, strict=True):
        if got is None or not np.allclose(_array(got), exp, atol=1e-5):
            wrong.append(pk)
    assert not wrong, f"{len(wrong)} rows keep an old vector of old text, e.g. {wrong[:10]}"
    return len(rows)


def wait_for(predicate: object, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False
