"""The exception tree and the exit codes it maps to.

MigratorError
 ├── PlanError            exit 13  the plan file is malformed or invalid (2 is click's usage error)
 ├── ConfigError          exit 3   settings / environment are wrong
 ├── DatabaseError        exit 4   the database is unreachable or refused a statement
 │    └── LockTimeoutError exit 5  DDL could not get its lock (or deadlocked) within the attempts
 ├── PreflightError       exit 6   pre-flight: the database does not fit the plan (any command)
 ├── PhaseError           exit 7   the state machine forbids this step now (guards)
 ├── ConcurrentRunError   exit 8   another operator holds this migration's lock
 ├── GateFailedError      exit 9   verification ran but a gate failed
 ├── ProviderError        exit 10  the embedding provider failed (see embedding.errors)
 ├── BrokerError          exit 11  the Celery broker is unreachable
 ├── NotImplementedYet    exit 12  a command of a later phase not built yet
 ├── ConfirmationRequired exit 14  an irreversible command without a terminal to ask and no --yes
 ├── BudgetError          exit 15  rate limits are set but cannot be one shared budget
 └── DiskSpaceError       exit 16  pre-flight: the backfill's estimated growth exceeds the room
Pure: imports nothing from the rest of the package.
"""

from __future__ import annotations

from typing import ClassVar


class MigratorError(Exception):
    """Base of every error migrator raises on purpose; carries an exit code and a hint."""

    exit_code: ClassVar[int] = 1

    def __init__(
        self, message: str, *, hint: str | None = None, more: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Further problems found by the same check, one line each (the CLI prints them all).
        self.more = more

    def one_line(self) -> str:
        """The message as one line, with the hint after it when there is one."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class PlanError(MigratorError):
    # Not 2: click exits 2 on usage errors (unknown option, missing argument), and a script
    # must tell a wrong command line from a wrong plan file.
    exit_code = 13

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        field: str = "",
        hint: str | None = None,
        more: tuple[str, ...] = (),
    ):
        where = ":".join(p for p in (path, field) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint, more=more)
        self.path = path
        self.field = field


class ConfigError(MigratorError):
    exit_code = 3


class DatabaseError(MigratorError):
    exit_code = 4


class LockTimeoutError(DatabaseError):
    exit_code = 5


class PreflightError(MigratorError):
    exit_code = 6


class PhaseError(MigratorError):
    exit_code = 7


class ConcurrentRunError(MigratorError):
    exit_code = 8


class GateFailedError(MigratorError):
    exit_code = 9


class ProviderError(MigratorError):
    exit_code = 10


class BrokerError(MigratorError):
    exit_code = 11


class NotImplementedYet(MigratorError):
    exit_code = 12


class ConfirmationRequired(MigratorError):
    exit_code = 14


class BudgetError(MigratorError):
    """Rate limits are set but the budget would not be one budget: no Redis every worker
    shares (a non-Redis broker without MIGRATOR_REDIS_URL), or that Redis does not answer."""

    exit_code = 15


class DiskSpaceError(MigratorError):
    """Pre-flight: the backfill's estimated disk growth exceeds the room the database has."""

    exit_code = 16


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug: rerun with `migrator --debug ...` and report the traceback)",
    2: "usage error: unknown option, missing argument (click)",
    3: "invalid configuration or environment",
    4: "database unreachable or a statement failed",
    5: "could not acquire a lock within the configured attempts (lock timeout or deadlock)",
    6: "pre-flight checks found errors in the database (nothing was changed)",
    7: "the migration is not in a phase that allows this command",
    8: "another migrator process holds this migration's lock",
    9: "verification gate failed",
    10: "embedding provider error",
    11: "broker unreachable",
    12: "command not implemented yet",
    13: "invalid plan file",
    14: "confirmation required: no terminal to ask on and no --yes (nothing was changed)",
    15: "rate limits are set but no shared budget is reachable (set MIGRATOR_REDIS_URL)",
    16: "the database's disk lacks the room the backfill needs (pre-flight; nothing was changed)",
    130: "interrupted (Ctrl-C); rerun the same command to resume",
}
