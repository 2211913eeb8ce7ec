"""`migrator demo`: the whole migration on embedded services, with a summary at the end."""

from __future__ import annotations

from typing import Any

import click

from migrator.cli.common import emit_json, handle_errors, json_option, make_console, settings_from


@click.command("demo")
@click.option(
    "--rows",
    default=12_000,
    show_default=True,
    type=click.IntRange(100, 500_000),
    help="Documents to load (stdlib docstrings, then those of the dependencies).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Celery worker processes to start.",
)
@click.option(
    "--qps",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Search load kept running through every phase.",
)
@json_option
@handle_errors
def demo_cmd(rows: int, workers: int, qps: float, as_json: bool) -> None:
    """Run the whole story offline: plan -> backfill -> verify -> cutover -> rollback -> cutover.

    Uses the embedded PostgreSQL and Redis under ./.migrator (or DATABASE_URL and
    CELERY_BROKER_URL when set), a local embeddings server, worker processes, the search
    service and a search load. It works in the `migrator_demo` schema and resets only that.
    Clean up with `migrator db stop` and `rm -rf .migrator`.
    """
    from migrator.demo.run import Demo, DemoOptions

    console = make_console(stderr=as_json)
    from migrator.cli.backfill_cmd import progress_bar

    opts = DemoOptions(rows=rows, workers=workers, qps=qps)
    summary = Demo(settings_from(), opts, console, lambda: progress_bar(console, True)).run()
    if as_json:
        emit_json(summary)
        return
    render_summary(console, summary)


def _get(d: dict[str, Any], *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def render_summary(console: Any, s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="migrator demo: summary", show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    bf = s.get("backfill", {})
    t.add_row("rows", f"{s.get('rows', 0):,}")
    t.add_row("backfill rows/s", f"{_get(bf, 'rows_per_second', default=0):,.0f}")
    k = _get(s, "recall", "k", default="k")
    for label, key in (
        (f"recall@{k} old model (own row found)", "old"),
        (f"recall@{k} new model (own row found)", "new"),
        (f"index recall@{k} vs exact", "index"),
    ):
        value = _get(s, "recall", key)
        t.add_row(label, f"{value:.3f}" if isinstance(value, int | float) else "n/a")
    for i, sw in enumerate(s.get("switches", []), start=1):
        t.add_row(
            f"switch {i} ({sw.get('command')}) lock hold / wait",
            f"{sw.get('hold_ms', 0):.1f} ms / {sw.get('lock_wait_ms', 0):.1f} ms",
        )
    search = s.get("search", {})
    t.add_row("searches served", f"{search.get('queries', 0):,}")
    t.add_row("searches failed", str(search.get("failed", "n/a")))
    t.add_row("results mixing models", str(search.get("cross_model_rows", "n/a")))
    t.add_row("total time", f"{s.get('seconds', 0):.0f} s")
    console.print(t)
    console.print(
        "The embedded services keep running: `migrator db stop` stops them, and "
        "`rm -rf .migrator` removes their data."
    )


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
