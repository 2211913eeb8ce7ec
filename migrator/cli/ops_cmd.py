"""Operations commands: the Prometheus exporter of a migration's database-side figures."""

from __future__ import annotations

import click

from migrator.cli.common import (
    database_option,
    handle_errors,
    plan_argument,
    read_plan,
    settings_from,
)


@click.command("exporter")
@plan_argument
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9465, show_default=True, type=int)
@database_option
@handle_errors
def exporter_cmd(plan_path: str, host: str, port: int, database_url: str | None) -> None:
    """Serve /metrics for PLAN from the database: phase, batches by status, dead letters,
    pending changes, rows written, queue depth and index build progress (see
    docs/operations.md for the names and alerting rules)."""
    from migrator.backfill.broker import broker_url
    from migrator.backfill.monitor import Enqueuer
    from migrator.db.connect import resolve_url
    from migrator.ops.exporter import serve

    plan = read_plan(plan_path)
    settings = settings_from(database_url)
    enq = Enqueuer(broker_url(settings), plan, float(plan.backfill.stall_after_seconds))
    click.echo(f"serving metrics of {plan.name} on http://{host}:{port}/metrics")
    try:
        serve(resolve_url(settings), plan, port, host, queue_depth=enq.queue_depth)
    finally:
        enq.close()


def register(group: click.Group) -> None:
    group.add_command(exporter_cmd)
