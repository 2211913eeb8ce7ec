"""The heartbeat of a worker process: it keeps the lease of the batch being run alive, and says
the process is alive (migrator.workers), while the process lives.

A thread renews every lease/4 seconds on a connection of its own (the batch's own connection is
busy in the provider call or the write). A batch whose worker died is re-enqueued once its lease
runs out, and so is a retry that worker was holding (a Celery countdown lives in the worker's
memory) once the worker is no longer seen; a slow but alive batch is never taken away. SQL
lives in `ledger`; this module owns the thread only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import psycopg

from migrator.backfill import ledger

log = logging.getLogger(__name__)


class LeaseLostError(Exception):
    """Another worker took the batch over (our lease expired): our results are not committed."""


class Heartbeat:
    """One per worker process; renews the lease of the one batch it runs at a time."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection], lease_s: float, worker: str
    ) -> None:
        self._connect = connect
        self.lease_s = lease_s
        self.worker = worker
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._held: tuple[int, str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.renewals = 0
        self.lost = False

    def _beat(self) -> None:
        """Say we are alive and renew the held lease; a database away is tried again later."""
        with self._lock:
            held = self._held
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            ledger.worker_seen(self._conn, self.worker)
            if held is not None:
                if ledger.renew(self._conn, held[0], held[1], self.lease_s):
                    self.renewals += 1
                else:
                    with self._lock:
                        if self._held == held:
                            self.lost = True
                            self._held = None
                    log.warning("batch %s: its lease was taken over by another worker", held[0])
        except psycopg.Error as exc:
            log.warning("heartbeat: %s", exc)
            with contextlib.suppress(Exception):
                if self._conn is not None:
                    self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self._beat()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._beat()
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def hold(self, batch: ledger.Batch) -> Iterator[Heartbeat]:
        """Renew `batch`'s lease until the block ends (the caller commits inside it)."""
        self.start()
        if batch.lease_token is None:
            yield self
            return
        with self._lock:
            self._held = (batch.id, batch.lease_token)
            self.lost = False
        try:
            yield self
        finally:
            with self._lock:
                self._held = None

    def close(self) -> None:
        self._stop.set()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
