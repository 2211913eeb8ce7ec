"""`migrator backfill` (with its progress bar) and `migrator worker` (a thin celery wrapper).

Presentation only: options are parsed here, the work is `migrator.backfill.monitor.run`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from migrator.cli.common import (
    child_log,
    emit_json,
    make_console,
    note,
    output,
    plan_command,
    read_plan,
    settings_from,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import ProgressColumn

    from migrator.backfill.monitor import ProgressFn


def broker_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--broker-url",
        envvar="CELERY_BROKER_URL",
        default=None,
        metavar="URL",
        help="Celery broker, Redis or RabbitMQ (default: $CELERY_BROKER_URL, else an "
        "embedded Redis).",
    )(f)


def progress_columns(width: int) -> tuple[ProgressColumn, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    """Rows done/total, rate and ETA always fit (80 columns is every pipe's width): the bar
    takes what is left, and the retry and ledger counters show only on wide terminals (they
    are in the summary and in `migrator status` either way)."""
    counts: tuple[ProgressColumn, ...] = (
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    if width >= 130:
        extra = TextColumn(
            "retries {task.fields[retries]}  dead letters {task.fields[dead]}  "
            "open batches {task.fields[open]}  changes {task.fields[changes]}"
        )
        return (TextColumn("[bold]backfill[/]"), BarColumn(), *counts, TimeElapsedColumn(), extra)
    return (
        TextColumn("[bold]backfill[/]"),
        BarColumn(bar_width=None),
        *counts,
        TextColumn("dead {task.fields[dead]}"),
    )


def _eta(rows_left: int | None, rate: float) -> str:
    """h:mm:ss from the rate measured by this run (rich's own guess needs many samples)."""
    if rows_left is None or rate <= 0:
        return "-"
    seconds = int(max(rows_left, 0) / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def progress_bar(console: Console, enabled: bool) -> Iterator[ProgressFn | None]:
    from rich.progress import Progress

    if not enabled:
        yield None
        return
    columns = progress_columns(console.width)
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(
            "rows", total=None, rate="-", eta="-", retries=0, dead=0, open=0, changes=0
        )
        first: dict[str, float] = {}

        def update(p: dict[str, Any]) -> None:
            first.setdefault("done", p["rows_done"])
            first.setdefault("t", p["elapsed"])
            dt = p["elapsed"] - first["t"]
            rate = (p["rows_done"] - first["done"]) / dt if dt > 0.5 else 0.0
            bar.update(
                task,
                total=p["rows_total"],
                completed=p["rows_done"],
                rate=f"{rate:,.0f}",
                eta=_eta(
                    None if p["rows_total"] is None else p["rows_total"] - p["rows_done"], rate
                ),
                retries=p["retries"],
                dead=p["dead_letters"],
                open=p["open_batches"],
                changes=p["pending_changes"],
            )

        yield update


@plan_command(
    "backfill",
    click.option(
        "--follow",
        is_flag=True,
        help="Keep catching up on changed rows after the backfill completes (until "
        "Ctrl-C or finalize); does not hold the migration lock meanwhile.",
    ),
    click.option(
        "--retry-dead-letters",
        is_flag=True,
        help="Replay the dead-lettered rows (after fixing their cause).",
    ),
    click.option(
        "--workers",
        "n_workers",
        type=int,
        default=None,
        metavar="N",
        help="Also run N local worker processes for this run (default: 0 when a broker "
        "URL is set, 2 with the embedded broker).",
    ),
    click.option(
        "--no-wait",
        is_flag=True,
        help="Expand, record and enqueue the batches, then return; `migrator status` "
        "and another `backfill` run follow up.",
    ),
    broker_option,
)
def backfill_cmd(
    plan_path: str,
    follow: bool,
    retry_dead_letters: bool,
    n_workers: int | None,
    no_wait: bool,
    database_url: str | None,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Add the new column and fill it through the migration's versioned Celery queue.

    \b
    Resumable: Ctrl-C, a crash or a rerun continues where it stopped. Workers run anywhere
    with DATABASE_URL and CELERY_BROKER_URL: `migrator worker PLAN`, or
    `celery -A migrator.worker.app worker -Q <queue>` (the queue is in `migrator plan`).
    """
    from migrator.backfill import monitor as backfill
    from migrator.worker import launch

    plan = read_plan(plan_path)
    settings = settings_from(database_url, broker_url)
    n = n_workers if n_workers is not None else (0 if settings.broker_url or no_wait else 2)
    console = make_console(stderr=True)
    with contextlib.ExitStack() as stack:
        log_path: Path | None = None
        procs: list[subprocess.Popen[bytes]] = []
        if n > 0:
            log, log_path = stack.enter_context(child_log(settings.home, f"workers-{plan.name}"))
            note(f"{n} local workers on queue {plan.queue}; their log: {log_path or 'stderr'}")
            procs = launch.start_workers(settings, plan.queue, n, log=log)
        try:
            show = not as_json and not no_wait and not output().quiet
            with progress_bar(console, enabled=show) as on_progress:
                summary = backfill.run(
                    settings,
                    plan,
                    backfill.Options(
                        follow=follow,
                        retry_dead_letters=retry_dead_letters,
                        wait=not no_wait,
                        on_progress=on_progress,
                    ),
                )
        finally:
            launch.stop_workers(procs)
    if log_path is not None:
        summary["worker_log"] = str(log_path)
    if as_json:
        emit_json({"ok": True, **summary})
        return
    state = "complete" if summary["complete"] else "in progress"
    click.echo(
        f"backfill {state}: {summary['rows_done']:,}/{summary['rows_eligible']:,} rows have "
        f"{plan.target.column}; {summary['rows_written_this_run']:,} written this run in "
        f"{summary['seconds']} s ({summary['rows_per_second'] or 0:,} rows/s); dead letters "
        f"{summary['dead_letters']}; queue {summary['queue']}; phase {summary['phase']}"
    )
    if summary.get("stale_sources"):
        click.echo(
            f"stale old vectors: {summary['stale_sources']:,} rows hold a {plan.source.column} "
            "of text they no longer have"
            + ("" if plan.backfill.refresh_source else " (backfill.refresh_source is false)")
        )


@plan_command(
    "worker",
    click.option(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="Worker processes (prefork) or threads (default: CPU count).",
    ),
    click.option(
        "--pool",
        type=click.Choice(["prefork", "threads", "solo"]),
        default="prefork",
        show_default=True,
    ),
    click.option("--loglevel", "-l", default="info", show_default=True),
    broker_option,
    json=False,
)
def worker_cmd(
    plan_path: str,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    database_url: str | None,
    broker_url: str | None,
) -> None:
    """Run a Celery worker for PLAN's queue (a thin wrapper over `celery worker`).

    Equivalent to `celery -A migrator.worker.app worker -Q <queue>` with DATABASE_URL and
    CELERY_BROKER_URL set; the plan itself is read from the database by the tasks.
    """
    from migrator.backfill import budget
    from migrator.worker import launch

    plan = read_plan(plan_path)
    settings = settings_from(database_url, broker_url)
    budget.require(settings, plan)  # limits are one shared budget, or exit 15 now
    cmd = launch.worker_command(
        plan.queue, concurrency=concurrency or (os.cpu_count() or 1), pool=pool, loglevel=loglevel
    )
    os.execvpe(cmd[0], cmd, launch.worker_env(settings))


def register(group: click.Group) -> None:
    group.add_command(backfill_cmd)
    group.add_command(worker_cmd)
