"""`migrator verify`: presentation of the verification gate (progress, table, JSON, report file)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from migrator.cli.common import (
    emit_json,
    make_console,
    plan_command,
    read_plan,
    settings_from,
)

if TYPE_CHECKING:  # imported inside the command: `migrator --help` stays fast
    from rich.console import Console

    from migrator.verify.index_build import BuildProgress, OnProgress
    from migrator.verify.run import Stage

# migrator.verify.run.QUERY_MODES (a unit test keeps the two equal).
QUERY_MODES = ("span", "text")


@contextlib.contextmanager
def progress_display(console: Console) -> Iterator[tuple[Stage, OnProgress]]:
    """A spinner on a terminal, plain lines otherwise; index progress from pg_stat_progress."""
    if not console.is_terminal:
        last = {"phase": "", "decile": ""}

        def line_stage(name: str) -> None:
            console.print(f"verify: {name}")

        def line_index(p: BuildProgress) -> None:
            # One line per build phase, and one per 10% of it with the ETA, keeps logs short.
            frac = p.fraction
            decile = str(int(frac * 10)) if frac is not None else ""
            if (p.phase, decile) == (last["phase"], last["decile"]):
                return
            last["phase"], last["decile"] = p.phase, decile
            if p.eta_seconds is None or frac is None:
                console.print(f"verify: index build: {p.phase}")
            else:
                console.print(
                    f"verify: index build: {p.phase} {frac:.0%}, {p.seconds:.0f} s, "
                    f"about {p.eta_seconds:.0f} s left"
                )

        yield line_stage, line_index
        return
    with console.status("verify: starting") as status:

        def on_stage(name: str) -> None:
            status.update(f"verify: {name}")

        def on_index(p: BuildProgress) -> None:
            frac = p.fraction
            pct = f" {frac:.0%}" if frac is not None else ""
            done = f" ({p.tuples_done:,}/{p.tuples_total:,} rows)" if p.tuples_total else ""
            eta = f", about {p.eta_seconds:.0f} s left" if p.eta_seconds is not None else ""
            status.update(f"verify: index build: {p.phase}{pct}{done}, {p.seconds:.0f} s{eta}")

        yield on_stage, on_index


@plan_command(
    "verify",
    click.option(
        "--report-file",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="PATH",
        help="Also write the report to PATH (.md, .html or .json): statistics only.",
    ),
    click.option(
        "--skip-index",
        is_flag=True,
        help="Do not build the index (its recall is still measured: a missing one fails).",
    ),
    click.option(
        "--sample",
        type=click.IntRange(1, 100_000),
        default=None,
        help="Rows sampled for freshness, parity and index recall (default: the plan's).",
    ),
    click.option("--seed", type=int, default=None, help="Sampling seed (default: the plan's)."),
    click.option(
        "--queries",
        "queries_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        metavar="FILE",
        help="Real past queries, one per line: overlap@k and rank-biased overlap of the two "
        "models, and the queries they disagree on most side by side in the report.",
    ),
    click.option(
        "--queries-column",
        default=None,
        metavar="[SCHEMA.]TABLE.COLUMN",
        help="Like --queries, from a column of a query log table (distinct values, sampled).",
    ),
    click.option(
        "--query-mode",
        type=click.Choice(QUERY_MODES),
        default="span",
        show_default=True,
        help="span: 8-15 consecutive words of each sampled row; text: the whole text.",
    ),
)
def verify_cmd(
    plan_path: str,
    database_url: str | None,
    as_json: bool,
    report_file: str | None,
    skip_index: bool,
    sample: int | None,
    seed: int | None,
    queries_file: str | None,
    queries_column: str | None,
    query_mode: str,
) -> None:
    """Build the new index, then check coverage, vector health, freshness, index recall
    (against the production index, with a recall/latency ladder over ef_search or probes) and
    model parity (labelled queries when the plan names them, real queries with --queries);
    store the report.

    \b
    Exit 0 when every gate passes, 9 when one fails (the report is stored either way:
    cutover refuses unless the latest report passed and is still current), 7 before the
    backfill is complete (nothing built, nothing measured).
    """
    from migrator.verify.report import render_table, write_report_file
    from migrator.verify.run import VerifyFailed, VerifyOptions, verify

    plan = read_plan(plan_path)
    options = VerifyOptions(
        build_index=not skip_index,
        sample=sample,
        seed=seed,
        query_mode=query_mode,
        plan_dir=Path(plan_path).resolve().parent,
        queries_file=Path(queries_file) if queries_file else None,
        queries_column=queries_column,
    )
    failure: VerifyFailed | None = None
    with progress_display(make_console(stderr=True)) as (on_stage, on_index):
        try:
            outcome = verify(
                settings_from(database_url),
                plan,
                options,
                on_stage=on_stage,
                on_index_progress=on_index,
            )
        except VerifyFailed as exc:
            failure, outcome = exc, exc.outcome
    if as_json:
        emit_json(
            {
                "ok": outcome.report.passed,
                "report_id": outcome.report_id,
                "phase": outcome.phase,
                **outcome.report.as_dict(),
            }
        )
    else:
        render_table(make_console(), outcome.report)
    if report_file:
        written = write_report_file(outcome.report, report_file)
        click.echo(f"report written to {written}", err=True)
    if failure is not None:
        # Rendered above already: exit with the gate's code without a second JSON document.
        click.echo(f"error: {failure.one_line()}", err=True)
        sys.exit(failure.exit_code)


def register(group: click.Group) -> None:
    group.add_command(verify_cmd)
