"""Commands of the switch: cutover, rollback, finalize, abort, serve-search, drill.
Presentation only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from migrator.cli.common import (
    confirm_or_require_yes,
    database_option,
    emit_json,
    handle_errors,
    make_console,
    note,
    plan_command,
    read_plan,
    settings_from,
)
from migrator.errors import ConfigError, MigratorError

if TYPE_CHECKING:  # imported inside the commands: `migrator --help` stays fast
    from migrator import switch


def describe_action(name: str, outcome: object) -> str:
    """One readable line for a step the drill ran (a result or the error it raised)."""
    from migrator import switch

    if isinstance(outcome, switch.SwitchResult):
        return (
            f"{name}: the view now serves {outcome.column}; phase {outcome.phase_before} -> "
            f"{outcome.phase_after}; lock held {outcome.hold_ms:.1f} ms, waited "
            f"{outcome.lock_wait_ms:.1f} ms, {outcome.attempts} attempt(s)"
        )
    if isinstance(outcome, MigratorError):
        return f"{name}: refused: {outcome.one_line()}"
    if isinstance(outcome, BaseException):
        return f"{name}: failed: {type(outcome).__name__}: {outcome}"
    return f"{name}: {outcome}"


def _print_switch(res: switch.SwitchResult, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, **res.as_dict()})
        return
    click.echo(
        f"{res.command}: the view now serves {res.column} ({res.fingerprint}); phase "
        f"{res.phase_before} -> {res.phase_after}"
    )
    click.echo(
        f"  lock wait {res.lock_wait_ms:.1f} ms, lock held {res.hold_ms:.1f} ms, "
        f"{res.attempts} attempt(s), total {res.total_ms:.1f} ms"
    )
    if res.bridge_id is not None:
        click.echo(
            f"  queries: the new model through bridge {res.bridge_id}, mapped into "
            f"{res.column}; rows changed since cutover hold bridged vectors if the old model "
            "is gone (docs/bridge.md)"
        )
    if res.view_matches_snapshot is False:
        click.echo("  warning: the view differs from the snapshot taken at adopt", err=True)
    if res.stale_sources:
        click.echo(
            f"  warning: {res.stale_sources:,} rows still hold an old vector of text they no "
            "longer have: a rollback would serve them until `migrator backfill` refreshes them "
            "(backfill.refresh_source)",
            err=True,
        )


@plan_command("cutover")
def cutover_cmd(plan_path: str, database_url: str | None, as_json: bool) -> None:
    """Switch the search view to the new column, in one short transaction.

    Refused unless the latest verification passed and is still current. Lock wait and hold
    times are recorded in the event log (`migrator status PLAN`).
    """
    from migrator import switch

    plan = read_plan(plan_path)
    _print_switch(switch.cutover(settings_from(database_url), plan), as_json)


@plan_command(
    "rollback",
    click.option(
        "--bridge/--no-bridge",
        default=None,
        help="Serve the old column to new-model queries through the newest bridge (default: "
        "only when a bridge stands in for a retired old model).",
    ),
)
def rollback_cmd(
    plan_path: str, bridge: bool | None, database_url: str | None, as_json: bool
) -> None:
    """Switch the search view back to the old column (kept fresh since cutover)."""
    from migrator import switch

    plan = read_plan(plan_path)
    _print_switch(switch.rollback(settings_from(database_url), plan, bridge=bridge), as_json)


@plan_command(
    "finalize",
    click.option("--yes", is_flag=True, help="Do not ask: finalize is irreversible."),
    click.option("--force", is_flag=True, help="Finalize inside the plan's rollback window."),
)
def finalize_cmd(
    plan_path: str, yes: bool, force: bool, database_url: str | None, as_json: bool
) -> None:
    """Drop the old column, its indexes and migrator's trigger. IRREVERSIBLE.

    Allowed after the plan's cutover.rollback_window_hours (or with --force).
    """
    from migrator import switch

    plan = read_plan(plan_path)
    settings = settings_from(database_url)
    question = (
        f"finalize drops {plan.table.schema_}.{plan.table.name}.{plan.source.column} and its "
        "indexes; rollback will no longer be possible. Continue?"
    )

    # The checks: phase, rollback window, dependents.
    def check() -> None:
        switch.check_finalize(settings, plan, force=force)

    if not _asked("finalize", check, question, yes=yes, as_json=as_json):
        return
    res = switch.finalize(settings, plan, yes=True, force=force)
    if as_json:
        emit_json({"ok": True, **res.as_dict()})
    else:
        idx = ", ".join(res.dropped_indexes) or "none"
        click.echo(
            f"finalized: dropped {res.dropped_column} (indexes: {idx}) and the change "
            f"capture in {res.total_ms:.0f} ms"
        )


@plan_command(
    "abort",
    click.option(
        "--yes", is_flag=True, help="Do not ask: the new column and its vectors are dropped."
    ),
)
def abort_cmd(plan_path: str, yes: bool, database_url: str | None, as_json: bool) -> None:
    """Abandon the migration: the table, the view and the registry as before adopt.

    \b
    Drops the new column (and its index), the change-capture trigger and function, and
    migrator's queued changes, batches, dead letters and reports of this migration. A view
    adopt created is dropped; a view that existed is left exactly as it was. The migration's
    row (phase aborted) and its event log stay. Refused while cut over: roll back first.
    """
    from migrator import switch

    plan = read_plan(plan_path)
    settings = settings_from(database_url)
    what = (
        f"the side table {plan.table.schema_}.{plan.side_table}"
        if plan.side
        else f"{plan.table.schema_}.{plan.table.name}.{plan.target.column}"
    )
    question = (
        f"abort drops {what} with every new vector in it (and the view, if adopt created "
        "it). Continue?"
    )
    if not _asked(
        "abort", lambda: switch.check_abort(settings, plan), question, yes=yes, as_json=as_json
    ):
        return
    res = switch.abort(settings, plan, yes=True)
    if as_json:
        emit_json({"ok": True, **res.as_dict()})
        return
    dropped = [x for x in (res.dropped_column, "the view" if res.dropped_view else None) if x]
    click.echo(
        f"aborted ({res.phase_before} -> aborted): dropped {', '.join(dropped) or 'nothing'} "
        f"and the change capture; registry {res.registry}; {res.total_ms:.0f} ms"
    )
    if res.view_matches_snapshot is False:
        click.echo("  warning: the view differs from the snapshot taken at adopt", err=True)


@click.command("serve-search")
@click.option("--view", required=True, help="The search view, e.g. public.documents_search.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8766, show_default=True, type=int)
@click.option("--pool-size", default=8, show_default=True, type=click.IntRange(1, 100))
@database_option
@handle_errors
def serve_search_cmd(
    view: str, host: str, port: int, pool_size: int, database_url: str | None
) -> None:
    """Serve GET /search?q=...&k=..., /healthz and /metrics over a migrator view."""
    from migrator.db.connect import resolve_url
    from migrator.search.service import serve

    settings = settings_from(database_url)
    url = resolve_url(settings)
    click.echo(f"searching {view} on http://{host}:{port}/search (Ctrl-C stops)")
    serve(url, view, host=host, port=port, environ=dict(settings.environ), pool_size=pool_size)


@plan_command(
    "drill",
    click.option("--qps", type=click.FloatRange(min=0.1), required=True, help="Total searches/s."),
    click.option(
        "--duration",
        type=click.FloatRange(min=1),
        default=60,
        show_default=True,
        help="Seconds of load.",
    ),
    click.option("--processes", type=click.IntRange(1, 64), default=4, show_default=True),
    click.option(
        "--run",
        "run_phases",
        default="",
        metavar="STEPS",
        help="Run these steps itself, evenly spaced, e.g. cutover,rollback,cutover.",
    ),
)
def drill_cmd(
    plan_path: str,
    qps: float,
    duration: float,
    processes: int,
    run_phases: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Search the plan's view at a fixed rate while the phases run; report per phase.

    Counts failed queries and rows from another model than the query's, and gives latency
    percentiles per phase. Run the phases from another terminal, or with --run.
    """
    from migrator import switch
    from migrator.db.connect import resolve_url
    from migrator.search.drill import run_drill

    plan = read_plan(plan_path)
    settings = settings_from(database_url)
    calls = {
        "cutover": lambda: switch.cutover(settings, plan),
        "rollback": lambda: switch.rollback(settings, plan),
    }
    names = [s.strip() for s in run_phases.split(",") if s.strip()]
    bad = [n for n in names if n not in calls]
    if bad:
        raise ConfigError(f"--run accepts cutover and rollback, not {', '.join(bad)}")

    def on_action(name: str, outcome: object) -> None:
        note(describe_action(name, outcome))

    report = run_drill(
        resolve_url(settings),
        plan,
        qps=qps,
        duration=duration,
        processes=processes,
        environ=dict(settings.environ),
        actions=[(n, calls[n]) for n in names],
        on_action=on_action,
    )
    data = report.as_dict()
    if as_json:
        emit_json(data)
    else:
        _print_drill(data)
    if data["failed"] or data["cross_model_rows"]:
        raise SystemExit(1)


def _print_drill(data: dict[str, Any]) -> None:
    from migrator.cli.render import render_drill

    render_drill(make_console(), data)
    for err in data["errors"]:
        click.echo(f"  error: {err}", err=True)


def register(group: click.Group) -> None:
    for cmd in (cutover_cmd, rollback_cmd, finalize_cmd, abort_cmd, serve_search_cmd, drill_cmd):
        group.add_command(cmd)


def _asked(
    command: str, check: Callable[[], object], question: str, *, yes: bool, as_json: bool
) -> bool:
    """True to go on. Without --yes: the read-only checks first, then the question, so no
    question is asked whose answer would then be refused."""
    if yes:
        return True
    check()
    if confirm_or_require_yes(command, question, yes=yes, as_json=as_json):
        return True
    click.echo("nothing was changed", err=True)
    return False
