"""Shared CLI plumbing: settings from options, plan loading, JSON output, error -> exit code."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from migrator.errors import ConfirmationRequired, MigratorError

if TYPE_CHECKING:  # imported where used: `migrator --help` stays fast (bench/startup.py)
    from rich.console import Console

    from migrator.config import Settings
    from migrator.plan.model import Plan

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Output:
    """The global options: --debug (tracebacks), -v (more on stderr), --quiet (less)."""

    debug: bool = False
    verbose: int = 0
    quiet: bool = False


def output() -> Output:
    """The global options of the running command (defaults outside a click context)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Output) else Output()


def configure_output(debug: bool, verbose: int, quiet: bool) -> Output:
    """Log to stderr only (stdout carries the command's output): warnings by default, info
    with -v, debug with -vv or --debug, errors only with --quiet."""
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    if debug:
        level = logging.DEBUG
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(level)
    return Output(debug=debug, verbose=verbose, quiet=quiet)


def note(message: str) -> None:
    """An informational line on stderr (never stdout), silenced by --quiet."""
    if not output().quiet:
        click.echo(message, err=True)


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def confirm_or_require_yes(command: str, question: str, *, yes: bool, as_json: bool) -> bool:
    """Ask on a terminal; without one (a script, CI, --json) an irreversible command needs
    --yes: ConfirmationRequired (exit 14) instead of click's `Aborted!` (exit 1)."""
    if yes:
        return True
    if as_json or not stdin_is_terminal():
        raise ConfirmationRequired(
            f"{command} is irreversible and there is no terminal to confirm on; its checks "
            "passed and nothing was changed",
            hint=f"rerun with --yes: `migrator {command} PLAN --yes`",
        )
    return click.confirm(question, default=False, err=True)


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


@contextlib.contextmanager
def child_log(home: Path, name: str) -> Iterator[tuple[IO[bytes] | int, Path | None]]:
    """Where processes the CLI starts (local workers, servers) write their output: a file
    under MIGRATOR_HOME/logs, or this process's stderr with -v. Never stdout, which carries
    only the command's output (one JSON document with --json)."""
    fd: int | None = None
    if output().verbose:
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no real stderr
            fd = sys.stderr.fileno()
    if fd is not None:
        yield fd, None
        return
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(path, "ab") as fh:
        yield fh, path


def database_option(f: F) -> F:
    return click.option(
        "--database-url",
        envvar="DATABASE_URL",
        default=None,
        metavar="URL",
        help="PostgreSQL with pgvector (default: $DATABASE_URL, else the embedded one).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def plan_argument(f: F) -> F:
    return click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))(f)


def plan_command(
    name: str, *options: Callable[[Any], Any], json: bool = True
) -> Callable[[Callable[..., Any]], click.Command]:
    """A command on one PLAN: the argument, the command's own `options`, --database-url,
    --json (unless json=False) and the error -> exit code mapping, in that order, defined once."""

    def wrap(f: Callable[..., Any]) -> click.Command:
        f = handle_errors(f)
        if json:
            f = json_option(f)
        f = database_option(f)
        for option in reversed(options):
            f = option(f)
        return click.command(name)(plan_argument(f))

    return wrap


def settings_from(database_url: str | None = None, broker_url: str | None = None) -> Settings:
    from migrator.config import load_settings

    return load_settings(database_url=database_url, broker_url=broker_url)


def read_plan(path: str) -> Plan:
    from migrator.plan.model import load_plan

    return load_plan(path)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _fail(
    error: str, message: str, hint: str | None, more: tuple[str, ...], code: int, as_json: bool
) -> None:
    if as_json:
        emit_json(
            {
                "ok": False,
                "error": error,
                "message": message,
                "hint": hint,
                "more": list(more),
                "exit_code": code,
            }
        )
    text = " ".join(message.split())
    click.echo(f"error: {text}" + (f" ({' '.join(hint.split())})" if hint else ""), err=True)
    for line in more:  # further problems of the same check, one line each
        click.echo(f"error: {' '.join(line.split())}", err=True)
    sys.exit(code)


def handle_errors(f: F) -> F:
    """Map MigratorError to its one-line message and exit code, anything else to 1 (a bug:
    the traceback with --debug), Ctrl-C to 130. With --json the error is also the one JSON
    document on stdout."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = output().debug
        as_json = bool(kwargs.get("as_json"))
        try:
            return f(*args, **kwargs)
        except MigratorError as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            _fail(type(exc).__name__, exc.message, exc.hint, exc.more, exc.exit_code, as_json)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            hint = (
                "a bug: please report it with the traceback above"
                if debug
                else "a bug: rerun with `migrator --debug ...` and report the traceback"
            )
            _fail(
                type(exc).__name__, f"unexpected {type(exc).__name__}: {exc}", hint, (), 1, as_json
            )

    return wrapper  # type: ignore[return-value]
