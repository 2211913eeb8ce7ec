"""Rich rendering of reports, with an injected Console (tests render into a string buffer).

Presentation only: takes plain dicts produced by the API; no database, no network.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def render_plan(console: Console, report: dict[str, Any], *, show_backward: bool = True) -> None:
    """The findings first (live facts, estimate, warnings, errors), then every phase's SQL.

    SQL is never wrapped into the width when the output is not a terminal (a pipe, a file):
    each statement stays on its own lines as rendered. `plan --sql` is the runnable script.
    """
    p = report["plan"]
    console.print(
        f"[bold]Migration {p['name']}[/]  ({report['mode']})  table {p['table']}  "
        f"view {p['view']}\n  {p['source']['column']} [dim]{p['source']['fingerprint']}[/] -> "
        f"{p['target']['column']} [dim]{p['target']['fingerprint']}[/]\n"
        f"  queue {p['queue']}  index {p['index']}  plan hash {p['plan_hash'][:12]}"
    )
    _live_findings(console, report)
    for phase in report["phases"]:
        console.rule(f"[bold]{phase['phase']}[/]")
        console.print(f"  {phase['summary']}")
        _statements(console, phase["statements"])
        for note in phase["notes"]:
            console.print(f"  [dim]note:[/] {note}")
        if show_backward and phase["backward"]:
            console.print("  [dim]undone by:[/]")
            _statements(console, phase["backward"], indent="    ")
    ok = report["ok"]
    verdict = "[bold green]plan is valid[/]" if ok else "[bold red]plan has errors[/]"
    if report.get("findings"):
        verdict += " (findings above the statements)"
    console.print(verdict)


def _live_findings(console: Console, report: dict[str, Any]) -> None:
    live = report.get("live")
    if live:
        console.rule("[bold]live database[/]")
        console.print(
            f"  PostgreSQL {live['server_version']}, pgvector {live['pgvector_version']}, "
            f"rows {live['rows'] if live['rows'] is not None else '?'}"
            f"{'' if live['rows_exact'] else ' (estimate)'}, index {live['index_state']}"
        )
        if live.get("view_definition"):
            console.print(f"  current view: [dim]{' '.join(live['view_definition'].split())}[/]")
    est = report.get("estimate")
    if est:
        cost = (
            "unknown (set usd_per_million_tokens)"
            if est["cost_usd"] is None
            else f"${est['cost_usd']:,.2f}"
        )
        console.print(
            f"  estimate: {est['rows']:,} rows, {est['tokens']:,} tokens "
            f"(avg {est['avg_tokens']}/row), {est['requests']:,} requests, cost {cost}, "
            f"time {_duration(est['seconds'])} (bound by {est['bound_by']})"
        )
        cal = est.get("calibration")
        if cal:
            together = (
                f", {cal['concurrent_requests']} at once {cal['concurrent_seconds']:.3f} s "
                f"(parallelism {cal['parallelism']:.2f})"
                if cal.get("concurrent_requests")
                else ""
            )
            console.print(
                f"  calibration: {cal['requests']} requests of {cal['rows_per_request']:,} "
                f"rows, median {cal['median_seconds']:.3f} s{together}; {est['workers']} "
                "workers assumed"
            )
        disk = est.get("disk")
        if disk:
            room = (
                "room not checked"
                if disk["fits"] is None
                else f"{_mb(disk['room_bytes'])} MB left ({disk['room_source']})"
            )
            side = est.get("storage") == "side_table"
            heap, entries = ("side table", "its key") if side else ("row versions", "index entries")
            console.print(
                f"  disk: +{_mb(disk['total_bytes'])} MB ({heap} {_mb(disk['heap_bytes'])}, "
                f"{entries} {_mb(disk['index_entries_bytes'])}, new index "
                f"{_mb(disk['new_index_bytes'])}); {room}"
            )
        modes = est.get("modes") or {}
        if len(modes) > 1:
            parts = [
                f"{name}{' (this plan)' if name == est.get('storage') else ''} "
                f"{_duration(m['seconds'])}"
                + (f", +{_mb(m['disk_bytes'])} MB" if m["disk_bytes"] is not None else "")
                for name, m in modes.items()
            ]
            console.print(f"  storage: {'; '.join(parts)} (target.storage, docs/storage.md)")
    render_findings(console, report.get("findings", []))


def _statements(console: Console, stmts: list[dict[str, Any]], indent: str = "  ") -> None:
    for st in stmts:
        tx = "in transaction" if st["transactional"] else "outside a transaction"
        if st.get("new_transaction"):
            tx = "in a new transaction (what came before is committed)"
        lt = f", lock_timeout {st['lock_timeout_ms']} ms + retries" if st["lock_timeout_ms"] else ""
        comment = f"{indent}-- {st['purpose']} ({tx}; {st['lock']}{lt})"
        if console.is_terminal:
            console.print(f"[dim]{escape(comment)}[/]")
            console.print(
                Syntax(st["sql"] + ";", "sql", word_wrap=True, background_color="default"),
                style=None,
            )
        else:  # a pipe or a file: lines as they are, never cut or wrapped to a width
            console.print(comment, markup=False, highlight=False, soft_wrap=True)
            console.print(st["sql"] + ";", markup=False, highlight=False, soft_wrap=True)


def render_findings(console: Console, findings: list[dict[str, str]]) -> None:
    for f in findings:
        style = LEVEL_STYLE.get(f["level"], "")
        console.print(f"  [{style}]{f['level']}[/]: {f['message']}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_status(console: Console, st: dict[str, Any]) -> None:
    p = st["plan"]
    phase = st["phase"] or "not started"
    console.print(Panel.fit(f"[bold]{p['name']}[/]  phase: [bold]{phase}[/]\nnext: {st['next']}"))
    prog = st.get("progress")
    if prog:
        b = prog["batches"]
        console.print(
            f"  batches: {prog['batches_total']} ({', '.join(f'{k} {v}' for k, v in sorted(b.items()))})"
            f"  rows written: {prog['rows_written']:,}  dead letters: {prog['dead_letters']}"
            f"  pending changes: {prog['pending_changes']}"
            f"  duplicate executions: {prog['duplicate_executions']}"
        )
        for k in ("rows_eligible", "rows_done", "rows_pending", "rows_empty"):
            if k in prog:
                console.print(f"  {k.replace('_', ' ')}: {prog[k]:,}")
        if prog.get("stale_sources"):
            action = (
                "refreshed by the backfill (backfill.refresh_source)"
                if prog.get("refresh_source")
                else "NOT refreshed (backfill.refresh_source is false): a rollback serves them"
            )
            console.print(
                f"  stale old vectors: {prog['stale_sources']:,} rows hold an old vector of text "
                f"they no longer have; {action}"
            )
    pc = st.get("pacing")
    if pc and (pc.get("baseline_p99_ms") is not None or not pc.get("enabled")):
        console.print("  " + pacing_line(pc))
    if st.get("dead_letters"):
        t = Table(title="dead letters", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
        t.add_column("pk", overflow="fold")
        t.add_column("reason", overflow="fold", ratio=1)
        t.add_column("attempts", justify="right", no_wrap=True)
        for d in st["dead_letters"]:
            t.add_row(str(d["pk"]), str(d["reason"]), str(d["attempts"]))
        console.print(t)
    if st["events"]:
        # At 80 columns the timestamp stays whole (it never wraps); the other columns wrap.
        t = Table(title="event log", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
        t.add_column("at (UTC)", no_wrap=True, min_width=19)
        for name in ("operator", "command", "phase", "result"):
            t.add_column(name, overflow="fold")
        t.add_column("message", overflow="fold")
        for e in st["events"]:
            ph = f"{e['phase_before'] or ''} -> {e['phase_after']}" if e["phase_after"] else ""
            t.add_row(e["at"][:19], e["operator"], e["command"], ph, e["result"], e["message"])
        console.print(t)


def pacing_line(pc: dict[str, Any]) -> str:
    """`pacing: throttled 25% (search p99 4.1 ms = 1.62x the baseline 2.5 ms; limit 1.5x)`."""
    if not pc.get("enabled"):
        return "pacing: disabled (backfill.pacing.enabled is false)"
    state = pc["state"]
    what = {"full": "full rate", "paused": "PAUSED", "off": "not pacing (no backfill running)"}
    head = what.get(state) or f"throttled to {float(pc['pace'] or 0):.0%}"
    if pc.get("stale"):
        head += " (the backfill coordinator stopped probing: workers keep min_pace)"
    figures = f"baseline p99 {pc['baseline_p99_ms']} ms"
    if pc.get("last_p99_ms") is not None:
        figures = (
            f"search p99 {pc['last_p99_ms']} ms = {pc['ratio']}x the {figures}; "
            f"limit {pc['max_p99_ratio']}x"
        )
    return f"pacing: {head} ({figures})"


DRILL_COLUMNS = (
    # (key, header, no_wrap): two-line headers keep 11 columns readable at 80 columns.
    ("phase", "phase", True),
    ("started_s", "from\ns", True),
    ("queries", "queries", True),
    ("failed", "failed", True),
    ("cross_model_rows", "cross\nmodel", True),
    ("empty", "empty", True),
    ("hit_rate", "hit\nrate", True),
    ("model_switch_retries", "model\nretries", True),
    ("p50_ms", "p50\nms", True),
    ("p95_ms", "p95\nms", True),
    ("p99_ms", "p99\nms", True),
)


def render_drill(console: Console, data: dict[str, Any]) -> None:
    t = Table(
        title=(
            f"drill: {data['queries']} queries in {data['seconds']} s "
            f"({data['qps_achieved']}/s, {data['processes']} processes)"
        ),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=0,
        show_edge=False,
    )
    for key, header, no_wrap in DRILL_COLUMNS:
        t.add_column(header, justify="left" if key == "phase" else "right", no_wrap=no_wrap)
    for p in data["phases"]:
        t.add_row(*(str(p[key]) for key, _, _ in DRILL_COLUMNS))
    console.print(t)


def _mb(nbytes: int | None) -> str:
    return f"{(nbytes or 0) / 1048576:,.0f}"
