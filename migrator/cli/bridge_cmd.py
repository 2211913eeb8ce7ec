"""`migrator bridge fit|on|off PLAN`: bridge mode (docs/bridge.md). Presentation only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from migrator.cli.common import emit_json, plan_command, read_plan, settings_from

if TYPE_CHECKING:
    from migrator import bridging


@click.group("bridge")
def bridge_group() -> None:
    """Serve the old index to new-model queries through a fitted map (docs/bridge.md).

    \b
      migrator bridge fit PLAN    fit on backfilled rows; recall of old, new, bridge, swap
      migrator bridge on PLAN     queries: new model + map, against the old column
      migrator bridge off PLAN    queries: the old model again
    """


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


@plan_command(
    "fit",
    click.option(
        "--rows",
        type=click.IntRange(10),
        default=None,
        help="Paired rows to read (default: bridge.sample_rows).",
    ),
    click.option("--seed", type=int, default=None, help="Sample seed (default: verify.seed)."),
)
def fit_cmd(
    plan_path: str, rows: int | None, seed: int | None, database_url: str | None, as_json: bool
) -> None:
    """Fit a map from the new model's space into the old one on rows holding both vectors."""
    from migrator import bridging

    plan = read_plan(plan_path)
    res = bridging.fit(
        settings_from(database_url), plan, rows=rows, seed=seed, plan_dir=Path(plan_path).parent
    )
    if as_json:
        emit_json({"ok": True, **res.as_dict()})
        return
    figs, k = res.figures, plan.verify.k
    click.echo(
        f"bridge {res.bridge_id}: {res.method}, {res.train_rows:,} training rows, "
        f"{res.holdout_rows:,} held out (of {res.paired_rows:,} paired); fit "
        f"{res.fit_seconds:.2f} s (read + fit)"
    )
    for name in ("documents", "labelled"):
        d = figs.get(name)
        if not d:
            continue
        click.echo(
            f"  {name} ({d['queries']} queries, {d['corpus']} rows): recall@{k} "
            + ", ".join(
                f"{w} {_fmt(d.get(f'recall@{k}_{w}'))}" for w in ("old", "new", "bridge", "swap")
            )
            + f"; retention {_fmt(d.get('retention'))}, swap {_fmt(d.get('swap_retention'))}"
        )
    click.echo(f"  recommendation: {figs['advice']}")
    for note in res.notes:
        click.echo(f"  note: {note}")


def _print(res: bridging.BridgeSwitch, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": True, **res.as_dict()})
        return
    how = (
        f"new-model queries ({res.query_model}) through bridge {res.bridge_id}"
        if res.bridge_id
        else f"old-model queries ({res.query_model})"
    )
    click.echo(f"{res.command}: the view serves {res.column} ({res.fingerprint}) to {how}")
    if res.bridge_id and res.retention is not None:
        click.echo(f"  measured retention {res.retention:.1%} of a re-embed's recall")
    if res.forced:
        click.echo("  warning: forced past the plan's refusal", err=True)
    if res.replaces_source:
        click.echo(
            "  the old model is marked gone: catch-up of the old column and verify use the bridge"
        )


@plan_command(
    "on",
    click.option("--force", is_flag=True, help="Serve a bridge under bridge.min_retention."),
    click.option(
        "--old-model-gone",
        is_flag=True,
        help="The old model no longer answers: the bridge also stands in for it (catch-up of "
        "the old column, verify's baseline, rollback).",
    ),
)
def on_cmd(
    plan_path: str, force: bool, old_model_gone: bool, database_url: str | None, as_json: bool
) -> None:
    """Switch searches to new-model queries mapped into the old column, atomically."""
    from migrator import bridging

    plan = read_plan(plan_path)
    res = bridging.bridge_on(
        settings_from(database_url), plan, force=force, old_model_gone=old_model_gone
    )
    _print(res, as_json)


@plan_command(
    "off", click.option("--force", is_flag=True, help="Even if the old model does not answer.")
)
def off_cmd(plan_path: str, force: bool, database_url: str | None, as_json: bool) -> None:
    """Switch searches back to old-model queries, atomically."""
    from migrator import bridging

    plan = read_plan(plan_path)
    _print(bridging.bridge_off(settings_from(database_url), plan, force=force), as_json)


bridge_group.add_command(fit_cmd)
bridge_group.add_command(on_cmd)
bridge_group.add_command(off_cmd)


def register(group: click.Group) -> None:
    group.add_command(bridge_group)
