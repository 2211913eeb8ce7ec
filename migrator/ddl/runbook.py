"""`migrator runbook PLAN`: a Markdown runbook for one plan, for change tickets and on-call.

Pure: renders from the plan, its steps and an optional estimate; no database, no network.
Every command it names is a real `migrator` command line (a test runs `--help` on each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrator.ddl import statements as q
from migrator.ddl.steps import Facts, Phase, Step, all_steps
from migrator.plan.model import Plan


@dataclass(frozen=True)
class RunbookStep:
    title: str
    commands: tuple[str, ...]
    changes: str
    duration: str
    watch: str
    check: str
    undo: str


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "run `migrator plan PLAN` against the database for an estimate"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def runbook_steps(plan: Plan, plan_path: str, estimate: dict[str, Any] | None) -> list[RunbookStep]:
    p = plan_path
    tbl, view = q.table_label(plan), q.view_label(plan)
    backfill_s = estimate.get("seconds") if estimate else None
    rows = f"{estimate['rows']:,} rows, ~{estimate['tokens']:,} tokens" if estimate else "all rows"
    cost = ""
    if estimate and estimate.get("cost_usd") is not None:
        cost = f", ~${estimate['cost_usd']:,.2f}"
    return [
        RunbookStep(
            "Dry run and pre-flight",
            (f"migrator plan {p} --offline", f"migrator plan {p}"),
            "Nothing: validation, every statement, and read-only checks of the live table.",
            "seconds",
            "Errors and warnings in the findings list.",
            "Exit code 0 and `plan is valid`.",
            "Nothing to undo.",
        ),
        RunbookStep(
            "Adopt the view",
            (f"migrator adopt {p}",),
            f"Creates or confirms the view {view} on {plan.source.column} and registers the "
            "migration. Deploy the search service reading the view before going on.",
            "under a second (short ACCESS EXCLUSIVE lock on the view only)",
            "Search error rate while the service moves to the view.",
            f"`migrator status {p}` shows phase planned; the service's queries hit {view}.",
            "Point the service back at the table; the view can stay.",
        ),
        RunbookStep(
            "Backfill",
            (
                f"migrator worker {p}   # on each worker machine",
                f"migrator backfill {p}",
                f"migrator status {p}",
            ),
            f"Adds {plan.target.column} to {tbl} (no rewrite) with a change-capture trigger, "
            f"then fills it with {plan.target.model.name} through queue {plan.queue} "
            f"({rows}{cost}).",
            _duration(backfill_s),
            "Progress bar / `migrator status`: rows done, rate, retries, dead letters; provider "
            "429s (metric migrator_provider_rate_limited_total); table bloat (every UPDATE "
            "writes a new row version: plan for VACUUM).",
            "`migrator status` shows every batch done, pending 0, dead letters reviewed.",
            f"Before cutover nothing reads {plan.target.column}: stop the workers; the expand "
            "step's backward statements (see `migrator plan`) drop the column and trigger.",
        ),
        RunbookStep(
            "Verify",
            (f"migrator verify {p} --report-file verify-report.md",),
            f"Builds {plan.index_name} CONCURRENTLY, then checks coverage, vector health, index "
            "recall and model parity; stores the report.",
            "index build: minutes per million rows; checks: seconds to minutes",
            "Index build progress; `pg_stat_progress_create_index`.",
            "Exit code 0; every gate `pass` in the report (attach it to the change ticket).",
            "Nothing to undo; an INVALID index from a failed build is dropped and rebuilt on rerun.",
        ),
        RunbookStep(
            "Cutover",
            (
                f"migrator drill {p} --qps 20 --duration 120   # optional, in another terminal",
                f"migrator cutover {p}",
            ),
            f"Points {view} at {plan.target.column} and the registry at "
            f"{plan.target.model.fingerprint()} in one transaction; change capture starts "
            f"keeping {plan.source.column} fresh for rollback.",
            f"milliseconds (lock_timeout {plan.cutover.lock_timeout_ms} ms, up to "
            f"{plan.cutover.attempts} attempts)",
            "Search error rate and latency; migrator_search_model_switch_retries_total.",
            "`migrator status` shows cut_over with the lock wait and hold times in the event log.",
            f"`migrator rollback {p}` (safe until finalize).",
        ),
        RunbookStep(
            "Rollback (only if needed)",
            (f"migrator rollback {p}",),
            f"Points {view} back at {plan.source.column}; definition, owner, grants and options "
            "as before the migration.",
            "milliseconds",
            "Search error rate.",
            "`migrator status` shows rolled_back.",
            f"`migrator verify {p}` then `migrator cutover {p}` again.",
        ),
        RunbookStep(
            "Finalize",
            (f"migrator finalize {p}",),
            f"Drops the trigger, the indexes of {plan.source.column} and the column itself. "
            "Irreversible.",
            "seconds (short ACCESS EXCLUSIVE lock on the table)",
            "Nothing should change for searches.",
            "`migrator status` shows finalized.",
            f"None: restore {plan.source.column} from a backup if ever needed. The rollback "
            f"window is {plan.cutover.rollback_window_hours:g} h after cutover.",
        ),
    ]


def _statements(step: Step) -> list[str]:
    return [f"    {st.render()};" for st in step.forward]


def render_runbook(
    plan: Plan, plan_path: str, estimate: dict[str, Any] | None = None, facts: Facts = Facts()
) -> str:
    steps = {s.phase: s for s in all_steps(plan, facts)}
    out = [
        f"# Runbook: {plan.name}",
        "",
        f"{plan.description}".strip() or f"Migrate {q.table_label(plan)} to a new embedding model.",
        "",
        f"- Table: `{q.table_label(plan)}` (key `{plan.table.primary_key}`)",
        f"- From: `{plan.source.column}` = {plan.source.model.name} "
        f"({plan.source.model.dimensions} dims, `{plan.source.model.fingerprint()}`)",
        f"- To: `{plan.target.column}` = {plan.target.model.name} "
        f"({plan.target.model.dimensions} dims {plan.target.type.value}, "
        f"`{plan.target.model.fingerprint()}`)",
        f"- View read by the search service: `{q.view_label(plan)}`",
        f"- Queue: `{plan.queue}`; plan hash `{plan.plan_hash()[:12]}`",
        "",
        "Exit codes: `migrator exit-codes`. Status at any time: "
        f"`migrator status {plan_path}` (add `--json` for scripts).",
        "",
    ]
    phase_for = {
        "Adopt the view": Phase.ADOPT,
        "Backfill": Phase.EXPAND,
        "Verify": Phase.INDEX,
        "Cutover": Phase.CUTOVER,
        "Rollback (only if needed)": Phase.ROLLBACK,
        "Finalize": Phase.FINALIZE,
    }
    for i, st in enumerate(runbook_steps(plan, plan_path, estimate), start=1):
        out += [
            f"## {i}. {st.title}",
            "",
            "```bash",
            *st.commands,
            "```",
            "",
            f"- **What it changes:** {st.changes}",
            f"- **Expected duration:** {st.duration}",
            f"- **What to watch:** {st.watch}",
            f"- **How to check it worked:** {st.check}",
            f"- **How to roll back from here:** {st.undo}",
            "",
        ]
        phase = phase_for.get(st.title)
        if phase is not None:
            out += [
                "<details><summary>SQL this step runs</summary>",
                "",
                "```sql",
                *_statements(steps[phase]),
                "```",
                "</details>",
                "",
            ]
    return "\n".join(out)


def commands_in(markdown: str) -> list[list[str]]:
    """The `migrator ...` command lines of a runbook's bash blocks (for tests and linting)."""
    cmds: list[list[str]] = []
    in_bash = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if in_bash and line.startswith("migrator "):
            cmds.append(line.split("#", 1)[0].split())
    return cmds
