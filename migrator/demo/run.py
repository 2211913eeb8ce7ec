"""`migrator demo`: the whole story on one machine, offline, in a few minutes.

Starts the embedded PostgreSQL and Redis, the local embeddings server, Celery workers, the
search service and a search load; loads the stdlib docstrings embedded with a local "old"
model; runs plan -> backfill -> verify -> cutover -> rollback -> cutover; prints a summary.
It works in its own schema (`migrator_demo`) and resets only that and its own records.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from rich.console import Console

from migrator import api, switch
from migrator.backfill import monitor as backfill
from migrator.config import Settings
from migrator.db.connect import ensure_schema, resolve_url
from migrator.demo.corpus import load_corpus
from migrator.embedding.local import HashEmbedder
from migrator.embedding.server import start_server_process
from migrator.plan.model import Plan, load_plan, parse_plan
from migrator.search.drill import Drill
from migrator.shipped import plans_dir
from migrator.verify.report import render_table
from migrator.verify.run import VerifyOptions, verify
from migrator.worker.launch import start_workers, stop_workers

DEMO_SCHEMA = "migrator_demo"


@dataclass(frozen=True)
class DemoOptions:
    rows: int = 12_000
    workers: int = 2
    qps: float = 20.0
    search_processes: int = 2
    plan_path: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_plan(base_url: str, plan_path: str | None = None) -> Plan:
    """The packaged demo plan in the demo schema, pointed at this run's embeddings server."""
    path = plan_path or str(plans_dir() / "local-demo.yaml")
    data = load_plan(path).model_dump(mode="json", by_alias=True)
    data["table"]["schema"] = DEMO_SCHEMA
    data["view"]["schema"] = DEMO_SCHEMA
    for role in ("source", "target"):
        data[role]["model"]["base_url"] = base_url
    return parse_plan(data, path=path)


def reset(url: str, plan: Plan) -> None:
    """Drop the demo schema and the demo migration's records (and nothing else)."""
    ensure_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(DEMO_SCHEMA))
        )
        for table in ("events", "changes"):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE migration = %s").format(
                    sql.Identifier("migrator", table)
                ),
                (plan.name,),
            )
        conn.execute("DELETE FROM migrator.active_models WHERE migration = %s", (plan.name,))
        conn.execute("DELETE FROM migrator.migrations WHERE name = %s", (plan.name,))
        conn.execute(
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                sql.Identifier("migrator", plan.capture.function)
            )
        )


def load_table(url: str, plan: Plan, rows: int) -> int:
    """The corpus as `migrator_demo.documents`, embedded with the old model, indexed (HNSW)."""
    docs = load_corpus(rows)
    src = plan.source.model
    vectors = HashEmbedder(src.name, src.dimensions).encode([d.body for d in docs])
    tbl = sql.Identifier(DEMO_SCHEMA, plan.table.name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(DEMO_SCHEMA)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text, "
                "embedding vector({}))"
            ).format(tbl, sql.Literal(src.dimensions))
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
            for i, (doc, vec) in enumerate(zip(docs, vectors, strict=True), start=1):
                cp.write_row((i, doc.title, doc.body, vec))
        conn.execute(
            sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops)").format(tbl)
        )
        conn.execute(sql.SQL("ANALYZE {}").format(tbl))
    return len(docs)


@contextlib.contextmanager
def search_service(settings: Settings, plan: Plan, port: int) -> Iterator[str]:
    view = f"{plan.view_schema}.{plan.view.name}"
    env = {**settings.environ, "DATABASE_URL": resolve_url(settings)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator", "serve-search", "--view", view, "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"serve-search exited: {err.strip()[-300:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve-search did not become healthy")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


ProgressFactory = Callable[[], AbstractContextManager[backfill.ProgressFn | None]]


class Demo:
    """The story; `progress` opens the backfill's progress display (the CLI passes its bar)."""

    def __init__(
        self,
        settings: Settings,
        opts: DemoOptions,
        console: Console,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.settings, self.opts, self.console = settings, opts, console
        self.progress: ProgressFactory = progress or (lambda: contextlib.nullcontext(None))
        self.summary: dict[str, Any] = {}

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    def run(self) -> dict[str, Any]:
        t_start = time.monotonic()
        url = resolve_url(self.settings)
        self.step("1. embedded services")
        # Children never write to stdout: it carries the summary (one JSON document with
        # --json). Their output goes to one log file under MIGRATOR_HOME.
        log_path = self.settings.home / "logs" / "demo.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        log = stack.enter_context(open(log_path, "wb"))  # noqa: SIM115 - closed by the stack
        self.console.print(f"log of the servers and workers: {log_path}")
        proc, base_url = start_server_process(port=free_port(), log_to=log)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            plan = demo_plan(base_url, self.opts.plan_path)
            self.console.print(f"PostgreSQL + pgvector: {url}\nembeddings server: {base_url}")
            self.step(f"2. load {self.opts.rows:,} stdlib docstrings with {plan.source.model.name}")
            reset(url, plan)
            t0 = time.monotonic()
            self.summary["rows"] = load_table(url, plan, self.opts.rows)
            self.console.print(
                f"loaded {self.summary['rows']:,} rows in {time.monotonic() - t0:.1f} s"
            )
            api.adopt(self.settings, plan)
            with search_service(self.settings, plan, free_port()) as search_url:
                self.console.print(f"search service: {search_url}/search?q=...")
                workers = start_workers(self.settings, plan.queue, self.opts.workers, log=log)
                self.console.print(
                    f"{self.opts.workers} Celery workers on queue {plan.queue} (log: {log_path})"
                )
                drill = Drill(
                    url,
                    plan,
                    qps=self.opts.qps,
                    processes=self.opts.search_processes,
                    environ=dict(self.settings.environ),
                )
                drill.start()
                try:
                    self._phases(plan, search_url)
                finally:
                    report = drill.stop()
                self.summary["search"] = report.as_dict()
        finally:
            stop_workers(workers)
            stack.close()
            proc.terminate()
            proc.wait(10)
        self.summary["seconds"] = round(time.monotonic() - t_start, 1)
        return self.summary

    def _phases(self, plan: Plan, search_url: str) -> None:
        self.step("3. plan (live)")
        est = api.plan_live(plan, self.settings).estimate or {}
        self.console.print(
            f"estimate: {est.get('rows', 0):,} rows, {est.get('tokens', 0):,} "
            f"tokens, cost ${est.get('cost_usd') or 0:.2f}"
        )
        self.step(
            f"4. backfill {plan.target.column} with {plan.target.model.name} "
            f"({self.opts.workers} workers)"
        )
        with self.progress() as on_progress:
            res = backfill.run(
                self.settings, plan, backfill.Options(on_progress=on_progress, poll_seconds=0.5)
            )
        self.summary["backfill"] = res
        self.step("5. verify: index build, coverage, health, recall")
        out = verify(self.settings, plan, VerifyOptions())
        render_table(self.console, out.report, details=False)
        self.summary["verify"] = out.report.as_dict()
        parity = out.report.check("parity")
        k = out.report.k
        self.summary["recall"] = {
            "k": k,
            "old": parity.detail(f"recall@{k}_old"),
            "new": parity.detail(f"recall@{k}_new"),
            "index": out.report.check("index").figure,
        }
        switches = []
        for label, action in (
            ("6. cutover", switch.cutover),
            ("7. rollback", switch.rollback),
            ("8. cutover again", switch.cutover),
        ):
            self.step(label)
            r = action(self.settings, plan)
            switches.append(r.as_dict())
            self.console.print(
                f"view serves {r.column}: lock wait {r.lock_wait_ms:.1f} ms, "
                f"hold {r.hold_ms:.1f} ms, attempts {r.attempts}"
            )
            time.sleep(1.0)  # let the search load run on each side of the switch
        self.summary["switches"] = switches
        hits = httpx.get(
            f"{search_url}/search", params={"q": "parse a JSON document", "k": 3}, timeout=10
        ).json()
        self.summary["sample_search"] = hits
