"""The `migrator` command line: presentation only. Each sub-module registers its commands.

Commands parse options, call the API, render results and map MigratorError to exit codes.
"""

from __future__ import annotations

import importlib

import click

from migrator import __version__
from migrator.cli.common import configure_output

# Each module exposes `register(group: click.Group) -> None`.
_COMMAND_MODULES = (
    "migrator.cli.basic",
    "migrator.cli.serve_embeddings",
    "migrator.cli.backfill_cmd",
    "migrator.cli.switch_cmd",
    "migrator.cli.verify_cmd",
    "migrator.cli.demo_cmd",
    "migrator.cli.ops_cmd",
    "migrator.cli.bridge_cmd",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="migrator")
@click.option("--debug", is_flag=True, help="Print tracebacks of errors (for bug reports).")
@click.option(
    "-v", "--verbose", count=True, help="More detail on stderr (local workers' logs too)."
)
@click.option("-q", "--quiet", is_flag=True, help="Only the output and errors (no progress).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Move a PostgreSQL + pgvector search table to a new embedding model without downtime.

    \b
    Typical flow:
      migrator plan PLAN.yaml            validate and show every statement (dry run)
      migrator adopt PLAN.yaml           create the search view; point the service at it
      migrator backfill PLAN.yaml        add the new column and fill it (with no broker URL it
                                         starts two local workers on an embedded Redis)
      migrator verify PLAN.yaml          build the index, check coverage, health and recall
      migrator cutover PLAN.yaml         switch the search view to the new column, atomically
      migrator rollback PLAN.yaml        switch back (while the old column is kept)
      migrator finalize PLAN.yaml        drop the old column once you are sure
      migrator abort PLAN.yaml           or abandon it: table and view as before adopt

    With no DATABASE_URL, an embedded PostgreSQL + pgvector is started under ./.migrator
    (MIGRATOR_HOME). Exit codes are listed in docs/exit-codes.md.
    """
    ctx.obj = configure_output(debug, verbose, quiet)


for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(_name).register(cli)
    except ModuleNotFoundError as exc:  # a module not written yet must not break the others
        if exc.name != _name:
            raise


def main() -> None:
    cli(prog_name="migrator")
