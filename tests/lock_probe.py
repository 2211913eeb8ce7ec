"""How long searches wait on locks, measured by PostgreSQL itself, not by a client's stopwatch.

A sampler reads pg_stat_activity for the search backends waiting on a lock and keeps the longest
wait it saw: `statement_timestamp()` of the sampling statement (taken before the activity
snapshot) minus the waiting statement's `query_start`. Each reading is a lower bound of a real
wait, so a slow or descheduled sampler can only miss a wait, never invent or stretch one: an
upper-bound assertion on it holds on a loaded machine, unlike a latency measured by the client
(which includes embedding, pooling and scheduling).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

_SAMPLE = (
    "SELECT coalesce(max(extract(epoch FROM statement_timestamp() - query_start)), 0), count(*) "
    "FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
    "AND wait_event_type = 'Lock'"
)


class LockWaits:
    def __init__(self) -> None:
        self.max_seconds = 0.0
        self.samples_waiting = 0
        self.samples = 0


@contextmanager
def lock_waits(url: str, application_name: str = "migrator-search") -> Iterator[LockWaits]:
    out = LockWaits()
    stop = threading.Event()

    def run() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(_SAMPLE, (application_name,)).fetchone()
                assert row is not None
                out.samples += 1
                if row[1]:
                    out.samples_waiting += 1
                    out.max_seconds = max(out.max_seconds, float(row[0]))
                stop.wait(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(10)
