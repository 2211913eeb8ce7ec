"""The verification report: a frozen model and its renderings (JSON, rich table, Markdown, HTML).

Pure presentation: no database, no network. Reports hold statistics, never vectors; the only
row text is in the optional disagreement examples of `verify --queries` (titles or the first
words of the top results), which a reviewer asked for. Sections (`Section`: paragraphs and
tables) are how a check adds more than a line, e.g. the index ladder: render any new one here
for free.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrator.errors import ConfigError


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # not applicable (e.g. no labelled queries in the plan): never fails the gate
    INFO = "info"  # measured and reported, not gated (e.g. real-query agreement without a floor)


@dataclass(frozen=True)
class Check:
    """One gate: its figure, the plan's threshold, and the verdict."""

    key: str
    title: str
    figure: float | None
    threshold: float | None
    comparison: str  # ">=" or "<=": how figure must relate to threshold to pass
    status: Status
    summary: str
    details: tuple[tuple[str, Any], ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status is not Status.FAIL

    def detail(self, name: str) -> Any:
        return dict(self.details).get(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "figure": self.figure,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "status": self.status.value,
            "summary": self.summary,
            "details": dict(self.details),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Block:
    """A table in a section: a title, column names, rows of already formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
        }


@dataclass(frozen=True)
class Section:
    """More than a gate line: paragraphs and tables, rendered after the gates."""

    key: str
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Block, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "paragraphs": list(self.paragraphs),
            "tables": [t.as_dict() for t in self.tables],
        }


def fmt_figure(value: float | None, threshold: float | None = None) -> str:
    """A figure with the precision that decides: at least 3 decimals, more while rounding would
    show a value it is not (0.99998 is not "1", 0.00002 not "0") or would flip its verdict
    against `threshold`."""
    if value is None:
        return "-"
    marks = {0.0, 1.0} | ({threshold} if threshold is not None else set())
    text = f"{value:.3f}"
    for d in range(3, 12):
        text = f"{value:.{d}f}"
        r = float(text)
        hides = any(r == m != value for m in marks)
        flips = threshold is not None and (
            (r >= threshold) != (value >= threshold) or (r <= threshold) != (value <= threshold)
        )
        if not hides and not flips:
            break
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac or '0'}"


def gate(
    key: str,
    title: str,
    figure: float | None,
    threshold: float,
    comparison: str,
    summary: str,
    details: dict[str, Any],
    seconds: float = 0.0,
    *,
    over: int,
) -> Check:
    """A check whose verdict follows from figure vs threshold, measured `over` that many rows,
    vectors or queries. A missing figure fails; so does a gate over nothing (0 of 0 is not a
    pass: an empty table, every query failing to embed, or no vector read measures nothing)."""
    if over <= 0:
        ok = False
        summary = f"nothing to measure: {summary}"
    elif figure is None:
        ok = False
    elif comparison == ">=":
        ok = figure >= threshold
    elif comparison == "<=":
        ok = figure <= threshold
    else:
        raise ValueError(f"unknown comparison {comparison!r}")
    return Check(
        key,
        title,
        figure,
        threshold,
        comparison,
        Status.PASS if ok else Status.FAIL,
        summary,
        tuple(details.items()),
        seconds,
    )


# What to do when a gate fails: the next command first (docs/operations.md has the long form).
ADVICE = {
    "coverage": "let the backfill and its catch-up finish (`migrator status PLAN`; resolve dead "
    "letters with `migrator backfill PLAN`), then `migrator verify PLAN`",
    "health": "re-embed the bad vectors: `migrator backfill PLAN` refills cleared rows; check the "
    "provider's dimensions and normalisation, then `migrator verify PLAN`",
    "freshness": "rows hold vectors of other text: `migrator backfill PLAN` (the catch-up "
    "re-embeds changed rows), then `migrator verify PLAN`",
    "old_vectors": "`migrator backfill PLAN` refreshes the old vectors (backfill.refresh_source), "
    "then `migrator verify PLAN`",
    "index": "set index.ef_search (or probes) to the ladder's recommendation in the plan (a "
    "tuning key: allowed mid-migration), then `migrator verify PLAN`; if no value reaches it, "
    "check the vectors or start a new migration with a larger index.m / ef_construction",
    "parity": "the new model finds its own rows worse than the old one: compare on real "
    "queries (`migrator verify PLAN --queries FILE`); lower verify.min_recall_ratio only if "
    "that is expected, then `migrator verify PLAN`",
    "labelled": "the new model scores worse on your labelled queries: look at the report's "
    "examples; lower verify.min_recall_ratio only if that is expected",
    "queries": "the models disagree on your real queries more than verify.min_query_overlap "
    "allows: read the examples in the report (--report-file report.html)",
}


def failure_text(c: Check) -> str:
    """'index recall 0.742 (needs >= 0.764)': a failed gate with the figures that decided."""
    if c.figure is None:
        return f"{c.title} (not measured: {c.summary})"
    need = f" (needs {_threshold(c)})" if c.threshold is not None else ""
    return f"{c.title} {_figure(c)}{need}"


@dataclass(frozen=True)
class Report:
    migration: str
    plan_hash: str
    table: str
    source: str  # fingerprints of the two models
    target: str
    created_at: str
    k: int
    sample: int
    seed: int
    checks: tuple[Check, ...]
    index_build: tuple[tuple[str, Any], ...] = ()
    seconds: float = 0.0
    timings: tuple[tuple[str, float], ...] = ()  # seconds per part of the run
    notes: tuple[str, ...] = field(default_factory=tuple)
    sections: tuple[Section, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.key for c in self.checks if not c.passed]

    def check(self, key: str) -> Check:
        return next(c for c in self.checks if c.key == key)

    @property
    def failure(self) -> str:
        """The failed gates with their figures, for messages ('' when it passed)."""
        return "; ".join(failure_text(c) for c in self.checks if not c.passed)

    @property
    def next_step(self) -> str:
        """What to do next: the advice of the first failed gate, or the cutover."""
        failed = self.failed
        if not failed:
            return "run `migrator cutover PLAN`"
        advice = ADVICE.get(failed[0], "fix what failed, then `migrator verify PLAN`")
        rec = dict(self.check("index").details).get("recommendation") if "index" in failed else None
        return f"{advice} ({rec})" if rec else advice

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "failure": self.failure,
            "next": self.next_step,
            "migration": self.migration,
            "plan_hash": self.plan_hash,
            "table": self.table,
            "source": self.source,
            "target": self.target,
            "created_at": self.created_at,
            "k": self.k,
            "sample": self.sample,
            "seed": self.seed,
            "checks": [c.as_dict() for c in self.checks],
            "index_build": dict(self.index_build),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings},
            "notes": list(self.notes),
            "sections": [x.as_dict() for x in self.sections],
        }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and abs(value) <= 1.0:
        return fmt_figure(value)
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _threshold(c: Check) -> str:
    if c.threshold is None:
        return "-"
    if c.comparison == "<=" and float(c.threshold).is_integer():
        return f"{c.comparison} {fmt(int(c.threshold))}"
    return f"{c.comparison} {fmt_figure(c.threshold)}"


def _flat(c: Check) -> list[tuple[str, Any]]:
    """Details as lines: structured ones (the ladder's points) are rendered in sections."""
    return [(k, v) for k, v in c.details if not isinstance(v, (list, dict, tuple))]


def _figure(c: Check) -> str:
    if c.figure is None:
        return "-"
    if c.comparison == "<=" and float(c.figure).is_integer():
        return fmt(int(c.figure))  # counts (bad vectors, mismatches) stay counts
    return fmt_figure(c.figure, c.threshold)


_STYLE = {
    Status.PASS: "bold green",
    Status.FAIL: "bold red",
    Status.SKIP: "dim",
    Status.INFO: "bold blue",
}


def render_table(console: Console, report: Report, *, details: bool = True) -> None:
    """The report as a terminal table (the console is injected: tests render into a buffer)."""
    t = Table(title=f"verify {report.migration}: {report.source} -> {report.target}")
    for col in ("gate", "figure", "threshold", "result", "summary"):
        t.add_column(col, justify="right" if col == "figure" else "left")
    for c in report.checks:
        t.add_row(
            c.title,
            _figure(c),
            _threshold(c),
            f"[{_STYLE[c.status]}]{c.status.value}[/]",
            c.summary,
        )
    console.print(t)
    for sec in report.sections:
        _render_section(console, sec)
    if details:
        for c in report.checks:
            if c.details:
                console.print(
                    f"  [bold]{c.key}[/]: " + ", ".join(f"{k} {fmt(v)}" for k, v in _flat(c))
                )
    if report.index_build:
        console.print("  index build: " + ", ".join(f"{k} {fmt(v)}" for k, v in report.index_build))
    for note in report.notes:
        console.print(f"  [dim]note:[/] {note}")
    verdict = (
        "[bold green]PASSED[/]"
        if report.passed
        else (f"[bold red]FAILED[/]: {', '.join(report.failed)}")
    )
    console.print(
        f"{verdict}  (k={report.k}, sample {report.sample}, seed {report.seed}, "
        f"{report.seconds:.1f} s)"
    )


def _render_section(console: Console, sec: Section) -> None:
    console.print(f"[bold]{sec.title}[/]")
    for para in sec.paragraphs:
        console.print(f"  {para}", markup=False)
    for block in sec.tables:
        t = Table(title=block.title)
        for col in block.columns:
            t.add_column(col)
        for row in block.rows:
            t.add_row(*row)
        console.print(t)


def _md_section(sec: Section, cell: Any) -> list[str]:
    out = [f"## {cell(sec.title)}", ""]
    for para in sec.paragraphs:
        out += [cell(para), ""]
    for block in sec.tables:
        out += [f"**{cell(block.title)}**", ""]
        out.append("| " + " | ".join(cell(c) for c in block.columns) + " |")
        out.append("|" + "---|" * len(block.columns))
        out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in block.rows]
        out.append("")
    return out


def _html_section(sec: Section) -> str:
    e = html.escape
    parts = [f"<section id='{e(sec.key)}'><h2>{e(sec.title)}</h2>"]
    parts += [f"<p>{e(p)}</p>" for p in sec.paragraphs]
    for block in sec.tables:
        head = "".join(f"<th>{e(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in block.rows
        )
        parts.append(
            f"<table class='block'><caption>{e(block.title)}</caption><tr>{head}</tr>{body}</table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _header_lines(report: Report) -> list[tuple[str, str]]:
    return [
        ("migration", report.migration),
        ("table", report.table),
        ("source model", report.source),
        ("target model", report.target),
        ("plan hash", report.plan_hash[:12]),
        ("created", report.created_at),
        ("k / sample / seed", f"{report.k} / {report.sample} / {report.seed}"),
        ("result", "PASSED" if report.passed else "FAILED: " + ", ".join(report.failed)),
    ]


def to_markdown(report: Report) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = [f"# Verification report: {cell(report.migration)}", ""]
    out += [f"- **{k}**: {cell(v)}" for k, v in _header_lines(report)]
    out += ["", "| gate | figure | threshold | result | summary |", "|---|---:|---|---|---|"]
    for c in report.checks:
        out.append(
            f"| {cell(c.title)} | {_figure(c)} | {cell(_threshold(c))} | "
            f"**{c.status.value}** | {cell(c.summary)} |"
        )
    for sec in report.sections:
        out += ["", *_md_section(sec, cell)]
    out += ["", "## Details", ""]
    for c in report.checks:
        out.append(f"### {cell(c.title)}")
        out += [f"- {cell(k)}: {cell(fmt(v))}" for k, v in _flat(c)]
        out.append(f"- seconds: {c.seconds:.2f}")
        out.append("")
    if report.index_build:
        out += ["## Index build", ""] + [f"- {k}: {cell(fmt(v))}" for k, v in report.index_build]
        out.append("")
    out += [f"> {cell(n)}" for n in report.notes]
    return "\n".join(out).rstrip() + "\n"


def to_html(report: Report) -> str:
    e = html.escape
    rows = "".join(
        f"<tr class='{c.status.value}'><td>{e(c.title)}</td><td class='num'>{e(_figure(c))}</td>"
        f"<td>{e(_threshold(c))}</td><td><b>{e(c.status.value)}</b></td><td>{e(c.summary)}</td></tr>"
        for c in report.checks
    )
    head = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _header_lines(report))
    details = "".join(
        f"<h3>{e(c.title)}</h3><ul>"
        + "".join(f"<li>{e(k)}: {e(fmt(v))}</li>" for k, v in _flat(c))
        + f"<li>seconds: {c.seconds:.2f}</li></ul>"
        for c in report.checks
    )
    build = "".join(f"<li>{e(k)}: {e(fmt(v))}</li>" for k, v in report.index_build)
    notes = "".join(f"<p class='note'>{e(n)}</p>" for n in report.notes)
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.num{text-align:right}"
        "tr.pass td:nth-child(4){color:#070}tr.fail td:nth-child(4){color:#b00}"
        "tr.skip{color:#888}.note{color:#555}table.block{margin:.6em 0 1.2em}"
        "caption{text-align:left;font-weight:bold;padding:.3em 0}section td{vertical-align:top}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>verify "
        f"{e(report.migration)}</title><style>{style}</style></head><body>"
        f"<h1>Verification report: {e(report.migration)}</h1><table>{head}</table>"
        f"<h2>Gates</h2><table><tr><th>gate</th><th>figure</th><th>threshold</th><th>result"
        f"</th><th>summary</th></tr>{rows}</table>"
        + "".join(_html_section(x) for x in report.sections)
        + f"<h2>Details</h2>{details}"
        + (f"<h2>Index build</h2><ul>{build}</ul>" if build else "")
        + f"{notes}</body></html>\n"
    )


def write_report_file(report: Report, path: str | Path) -> Path:
    """Write the report as Markdown (.md) or HTML (.html/.htm), chosen by the file's suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".md":
        text = to_markdown(report)
    elif suffix in (".html", ".htm"):
        text = to_html(report)
    elif suffix == ".json":
        text = json.dumps(report.as_dict(), indent=2, default=str) + "\n"
    else:
        raise ConfigError(
            f"report file {p}: unknown format {suffix or '(no suffix)'}",
            hint="use a .md, .html or .json file name",
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p
