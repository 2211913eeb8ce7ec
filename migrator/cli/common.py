"""Shared CLI plumbing: settings from options, plan loading, JSON output, error -> exit code."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from migrator.config import Settings, load_settings
from migrator.errors import MigratorError
from migrator.plan.model import Plan, load_plan

F = TypeVar("F", bound=Callable[..., Any])


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


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
    return load_settings(database_url=database_url, broker_url=broker_url)


def read_plan(path: str) -> Plan:
    return load_plan(path)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handle_errors(f: F) -> F:
    """Map MigratorError to its one-line message and exit code; Ctrl-C to 130."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        try:
            return f(*args, **kwargs)
        except MigratorError as exc:
            if debug:
                raise
            as_json = kwargs.get("as_json")
            if as_json:
                emit_json(
                    {
                        "ok": False,
                        "error": type(exc).__name__,
                        "message": exc.message,
                        "hint": exc.hint,
                        "more": list(exc.more),
                        "exit_code": exc.exit_code,
                    }
                )
            click.echo(f"error: {exc.one_line()}", err=True)
            for line in exc.more:  # further problems of the same pre-flight, one line each
                click.echo(f"error: {' '.join(line.split())}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
