"""Commands of the foundation: plan, status, adopt, db url / db stop, exit-codes."""

from __future__ import annotations

import click

from migrator.cli.common import (
    database_option,
    emit_json,
    handle_errors,
    make_console,
    plan_command,
    read_plan,
    settings_from,
)
from migrator.errors import EXIT_CODES

# The API, the renderers and the statement builders are imported inside the commands:
# `migrator --help` and `--version` must not pay for them (bench/startup.py).


@plan_command(
    "plan",
    click.option(
        "--offline",
        is_flag=True,
        help="Do not connect: validate and print every statement (the CI dry run).",
    ),
    click.option(
        "--sql",
        "as_sql",
        is_flag=True,
        help="Write exactly the statements, as a psql script (psql -v ON_ERROR_STOP=1 -f).",
    ),
    click.option(
        "--calibrate/--no-calibrate",
        default=True,
        show_default=True,
        help="Live: time 3 requests of one batch to the target model for the time estimate.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(1, 10_000),
        default=2,
        show_default=True,
        help="Live: worker processes the time estimate assumes.",
    ),
)
def plan_cmd(
    plan_path: str,
    offline: bool,
    as_sql: bool,
    calibrate: bool,
    workers: int,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Validate PLAN and show every statement each phase will run.

    \b
    Offline (--offline): no database; exit 0 if the plan is valid, 13 if not.
    --sql: only the statements, as a runnable psql script: a comment per phase and step,
    BEGIN/COMMIT around transactional ones, CREATE INDEX CONCURRENTLY outside (findings of a
    live plan go to stderr).
    Live (default): the pre-flight every command runs, for the whole migration, read-only:
    columns, types, key, view, index names, pgvector >= 0.8.4, the database user's
    privileges, API keys, a test embedding from each model, the shared Redis; row count and
    estimate of tokens, cost and duration (the duration from 3 timed requests to the target
    model with --calibrate, the default, and --workers worker processes). Exits with the first problem's code (3
    configuration, 6 database, 10 provider, 11 Redis).
    """
    if as_sql and as_json:
        raise click.UsageError("--sql and --json are two outputs: choose one")
    from migrator import api
    from migrator.cli.render import render_findings, render_plan
    from migrator.ddl.script import render_script

    plan = read_plan(plan_path)
    report = (
        api.plan_offline(plan)
        if offline
        else api.plan_live(plan, settings_from(database_url), calibrate=calibrate, workers=workers)
    )
    data = report.as_dict()
    if as_sql:
        render_findings(make_console(stderr=True), data["findings"])
        click.echo(render_script(plan, report.steps, plan_path), nl=False)
    elif as_json:
        emit_json(data)
    else:
        render_plan(make_console(), data)
    # The same problems, messages and exit codes as the pre-flight of the commands that change
    # things (3 configuration, 6 database, 10 provider, 11 Redis): see docs/exit-codes.md.
    report.raise_if_not_ok()


@plan_command(
    "status",
    click.option(
        "--events",
        "events_limit",
        default=20,
        show_default=True,
        help="How many recent events to show.",
    ),
)
def status_cmd(plan_path: str, database_url: str | None, as_json: bool, events_limit: int) -> None:
    """Show the migration's phase, progress, dead letters and event log."""
    from migrator import api
    from migrator.cli.render import render_status

    plan = read_plan(plan_path)
    data = api.status(settings_from(database_url), plan, events_limit=events_limit)
    if as_json:
        emit_json(data)
    else:
        render_status(make_console(), data)


@plan_command("adopt")
def adopt_cmd(plan_path: str, database_url: str | None, as_json: bool) -> None:
    """Create (or confirm) the search view on the current column and register the migration.

    Run it before moving the search service from the table to the view; `backfill` runs it
    too when needed. Changes nothing else.
    """
    from migrator import api

    plan = read_plan(plan_path)
    res = api.adopt(settings_from(database_url), plan)
    if as_json:
        emit_json({"ok": True, "attempts": res.attempts, "hold_ms": round(res.hold_ms, 2)})
    else:
        click.echo(
            f"view {plan.view_schema}.{plan.view.name} serves {plan.source.column} "
            f"({plan.source.model.fingerprint()})"
        )


@click.group("db")
def db_group() -> None:
    """The embedded PostgreSQL (used when DATABASE_URL is not set)."""


@db_group.command("url")
@database_option
@handle_errors
def db_url_cmd(database_url: str | None) -> None:
    """Print the database URL (starting the embedded PostgreSQL if needed)."""
    from migrator import api

    click.echo(api.db_url(settings_from(database_url)))


@db_group.command("stop")
@handle_errors
def db_stop_cmd() -> None:
    """Stop the embedded PostgreSQL and the embedded Redis."""
    from migrator import api

    res = api.db_stop(settings_from())
    for name, stopped in res.items():
        click.echo(f"{name}: {'stopped' if stopped else 'not running'}")


@plan_command(
    "runbook",
    click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write the Markdown here instead of standard output.",
    ),
    click.option("--offline", is_flag=True, help="Do not connect (no duration or cost estimate)."),
    json=False,
)
def runbook_cmd(
    plan_path: str, output: str | None, offline: bool, database_url: str | None
) -> None:
    """Write a Markdown runbook for PLAN: each step's command, what it changes, expected
    duration, what to watch, how to check it worked and how to roll back from there."""
    from migrator import api
    from migrator.ddl.runbook import render_runbook
    from migrator.ddl.steps import Facts

    plan = read_plan(plan_path)
    estimate = None
    facts = Facts()
    if not offline:
        report = api.plan_live(plan, settings_from(database_url))
        # A runbook for a plan the database cannot run would be wrong: the same problems and
        # exit codes as `migrator plan`.
        report.raise_if_not_ok()
        estimate = report.estimate
        if report.inspection is not None:
            facts = report.inspection.facts
    text = render_runbook(plan, plan_path, estimate, facts)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"runbook written to {output}")
    else:
        click.echo(text)


@click.command("exit-codes")
def exit_codes_cmd() -> None:
    """List the exit codes every command uses."""
    for code, meaning in EXIT_CODES.items():
        click.echo(f"{code:>4}  {meaning}")


def register(group: click.Group) -> None:
    for cmd in (plan_cmd, status_cmd, adopt_cmd, runbook_cmd, db_group, exit_codes_cmd):
        group.add_command(cmd)
