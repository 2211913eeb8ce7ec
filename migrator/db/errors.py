"""What a database error means for the operator, by SQLSTATE: a lost connection, a statement
timeout, a cancelled statement, a deadlock, a lock timeout, or a statement the server refused.

Pure: reads the exception (psycopg's class per SQLSTATE and its diagnostics), never the
connection. The executor and the backfill decide what to retry; this module names things.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerr

from migrator.errors import DatabaseError, LockTimeoutError

# Worth running the same transaction again: PostgreSQL rolled it back because of another
# transaction, not because of the statements (lock_timeout, a deadlock victim, serialisation).
TRANSIENT: tuple[type[psycopg.Error], ...] = (
    pgerr.LockNotAvailable,
    pgerr.DeadlockDetected,
    pgerr.SerializationFailure,
)

# The server ended the session (administrator, crash, shutdown): SQLSTATE class 08 and 57P0x.
_SESSION_ENDED = ("57P01", "57P02", "57P03")


def primary(exc: BaseException) -> str:
    """The server's one-line message (without DETAIL/HINT/CONTEXT), else the exception's text."""
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def connection_lost(exc: BaseException) -> bool:
    """True when the session is gone (not when a statement of a live session failed)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    if state is None:  # raised by the client: connection closed, broken, unreachable
        return True
    return str(state).startswith("08") or state in _SESSION_ENDED


def describe(exc: psycopg.Error, during: str, *, resume: str) -> DatabaseError:
    """The MigratorError to raise for `exc` raised while doing `during`.

    `resume` says what the operator does next (e.g. "rerun `migrator backfill`: it resumes").
    """
    text = primary(exc)
    if isinstance(exc, pgerr.QueryCanceled):
        if "statement timeout" in text:
            return DatabaseError(
                f"{during} ran longer than statement_timeout and was cancelled",
                hint="raise ddl.statement_timeout_ms in the plan (0: no limit) or the role's "
                f"statement_timeout, or run it when the table is quieter; {resume}",
            )
        return DatabaseError(
            f"{during} was cancelled ({text}): pg_cancel_backend or a client's cancel",
            hint=resume,
        )
    if isinstance(exc, pgerr.DeadlockDetected):
        return LockTimeoutError(
            f"{during} was chosen as a deadlock victim every time it was tried",
            hint=f"another transaction locks the same rows in another order; {resume}",
        )
    if isinstance(exc, pgerr.LockNotAvailable):
        return LockTimeoutError(
            f"{during} could not get its lock within lock_timeout",
            hint=f"a long transaction holds a conflicting lock (see pg_stat_activity); {resume}",
        )
    if connection_lost(exc):
        return DatabaseError(f"lost the database connection during {during}: {text}", hint=resume)
    return DatabaseError(f"{during} failed: {text}", hint=resume)
