"""The heartbeat that keeps a running batch's lease alive while its worker works on it.

A thread renews the lease every lease/4 seconds on a connection of its own (the batch's own
connection is busy in the provider call or the write), so a batch whose worker died is
re-enqueued once the lease runs out, while a slow but alive batch is never taken away. SQL
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
    """Renews the lease of the batch being run; one per worker process, one batch at a time."""

    def __init__(self, connect: Callable[[], psycopg.Connection], lease_s: float) -> None:
        self._connect = connect
        self.lease_s = lease_s
        self._conn: psycopg.Connection | None = None
        self.renewals = 0
        self.lost = False

    def _renew(self, batch_id: int, token: str) -> bool | None:
        """True renewed, False lost, None could not ask (the database is away: try again)."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            ok = ledger.renew(self._conn, batch_id, token, self.lease_s)
        except psycopg.Error as exc:
            log.warning("batch %s: cannot renew its lease: %s", batch_id, exc)
            with contextlib.suppress(Exception):
                if self._conn is not None:
                    self._conn.close()
            self._conn = None
            return None
        self.renewals += ok
        return ok

    @contextlib.contextmanager
    def hold(self, batch: ledger.Batch) -> Iterator[Heartbeat]:
        """Renew `batch`'s lease until the block ends (the caller commits inside it)."""
        if batch.lease_token is None:
            yield self
            return
        token = batch.lease_token
        stop = threading.Event()
        self.lost = False

        def beat() -> None:
            while not stop.wait(self.lease_s / 4):
                if self._renew(batch.id, token) is False:
                    self.lost = True
                    log.warning("batch %s: its lease was taken over by another worker", batch.id)
                    return

        thread = threading.Thread(target=beat, name=f"lease-{batch.id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
