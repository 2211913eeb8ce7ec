"""Operations commands: the Prometheus exporter of a migration's database-side figures."""

from __future__ import annotations

import click

from migrator.cli.common import (
    plan_command,
    read_plan,
    settings_from,
)


@plan_command(
    "exporter",
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", default=9465, show_default=True, type=int),
    json=False,
)
def exporter_cmd(plan_path: str, host: str, port: int, database_url: str | None) -> None:
    """Serve /metrics for PLAN from the database: phase, batches by status, dead letters,
    pending changes, rows written, queue depth and index build progress (see
    docs/operations.md for the names and alerting rules)."""
    from migrator.backfill.broker import broker_url, make_app, queue_depth
    from migrator.db.connect import resolve_url
    from migrator.ops.exporter import serve

    plan = read_plan(plan_path)
    settings = settings_from(database_url)
    url = broker_url(settings)
    app = make_app(url)
    click.echo(f"serving metrics of {plan.name} on http://{host}:{port}/metrics")
    try:
        serve(
            resolve_url(settings),
            plan,
            port,
            host,
            queue_depth=lambda: queue_depth(app, url, plan.queue),
        )
    finally:
        app.close()


def register(group: click.Group) -> None:
    group.add_command(exporter_cmd)
