"""`migrator exporter PLAN`: Prometheus metrics read from the database on each scrape.

What no single worker knows: migration phase, ledger batches by status, rows pending, dead
letters, unprocessed changes, queue depth, and index build progress. Read-only queries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from migrator.backfill import ledger, probe
from migrator.db import state
from migrator.plan.model import Plan


class MigrationCollector(Collector):
    def __init__(self, url: str, plan: Plan, queue_depth: Any = None) -> None:
        self.url, self.plan = url, plan
        self._queue_depth = queue_depth  # callable returning int | None (broker specific)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        name = self.plan.name
        up = GaugeMetricFamily(
            "migrator_exporter_up", "1 when the database answered", labels=["migration"]
        )
        try:
            with contextlib.closing(
                psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            ) as conn:
                yield from self._from_db(conn)
            up.add_metric([name], 1)
        except psycopg.Error:
            up.add_metric([name], 0)
        if self._queue_depth is not None:
            depth = self._queue_depth()
            if depth is not None:
                g = GaugeMetricFamily(
                    "migrator_queue_depth",
                    "Messages waiting in the queue",
                    labels=["migration", "queue"],
                )
                g.add_metric([name, self.plan.queue], depth)
                yield g
        yield up

    def _from_db(self, conn: psycopg.Connection) -> Iterator[GaugeMetricFamily]:
        name = self.plan.name
        migration = state.get_migration(conn, name)
        g = GaugeMetricFamily(
            "migrator_phase", "1 for the migration's current phase", labels=["migration", "phase"]
        )
        for p in state.State:
            g.add_metric([name, p.value], 1.0 if migration and migration.phase is p else 0.0)
        yield g
        s = ledger.summary(conn, name)
        batches = GaugeMetricFamily(
            "migrator_batches", "Ledger batches by status", labels=["migration", "status"]
        )
        for status, n in s["batches"].items():
            batches.add_metric([name, status], n)
        yield batches
        for metric, help_text, value in (
            (
                "migrator_dead_letters",
                "Unresolved dead-lettered rows",
                ledger.dead_letter_count(conn, name),
            ),
            (
                "migrator_pending_changes",
                "Captured changes not yet turned into batches",
                ledger.pending_changes(conn, name),
            ),
            ("migrator_rows_written", "Rows written by finished batches", s["rows_written"]),
        ):
            m = GaugeMetricFamily(metric, help_text, labels=["migration"])
            m.add_metric([name], float(value))
            yield m
        yield from self._pacing(conn, migration)
        build = conn.execute(
            "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total "
            "FROM pg_stat_progress_create_index p JOIN pg_class i ON i.oid = p.index_relid "
            "WHERE i.relname = %s",
            (self.plan.index_name,),
        ).fetchone()
        m = GaugeMetricFamily(
            "migrator_index_build_progress",
            "Share of the index build done (1 once the index is built and valid, 0 before)",
            labels=["migration", "index"],
        )
        share = 0.0
        if build:
            done, total = (build[3], build[4]) if build[4] else (build[1], build[2])
            share = float(done) / float(total) if total else 0.0
        else:
            # No build running: a finished, valid index is all done (it read 0 before).
            valid = conn.execute(
                "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE i.relname = %s "
                "AND n.nspname = %s",
                (self.plan.index_name, self.plan.table.schema_),
            ).fetchone()
            share = 1.0 if valid and valid[0] else 0.0
        m.add_metric([name, self.plan.index_name], share)
        yield m

    def _pacing(
        self, conn: psycopg.Connection, migration: state.Migration | None
    ) -> Iterator[GaugeMetricFamily]:
        """Pacing that protects search: the pace workers keep and the latencies it follows."""
        name = self.plan.name
        stored = state.stored_plan(conn, name) if migration is not None else None
        pc = probe.status(conn, stored or self.plan)
        pace = pc["pace"]
        for metric, help_text, value in (
            (
                "migrator_pacing_pace",
                "Share of the full backfill rate workers keep (1 full, 0 paused; "
                "1 when not pacing)",
                1.0 if pace is None else pace,
            ),
            ("migrator_pacing_paused", "1 while pacing pauses the backfill", pace == 0),
            (
                "migrator_pacing_baseline_p99_seconds",
                "Search p99 through the view measured before the backfill",
                _seconds(pc["baseline_p99_ms"]),
            ),
            (
                "migrator_pacing_p99_seconds",
                "Search p99 of the latest pacing probe",
                _seconds(pc["last_p99_ms"]),
            ),
            (
                "migrator_pacing_p99_ratio",
                "Latest probe p99 / baseline p99 (the limit is backfill.pacing.max_p99_ratio)",
                pc["ratio"],
            ),
            (
                "migrator_pacing_max_p99_ratio",
                "The plan's limit on the p99 ratio",
                pc["max_p99_ratio"],
            ),
        ):
            if value is None:
                continue
            m = GaugeMetricFamily(metric, help_text, labels=["migration"])
            m.add_metric([name], float(value))
            yield m


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def serve(
    url: str, plan: Plan, port: int, host: str = "127.0.0.1", queue_depth: Any = None
) -> None:
    from wsgiref.simple_server import make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry()
    registry.register(MigrationCollector(url, plan, queue_depth))
    with make_server(host, port, make_wsgi_app(registry)) as httpd:
        httpd.serve_forever()
