"""The verification report: a frozen model and its renderings (JSON, rich table, Markdown, HTML).

Pure presentation: no database, no network. Reports hold statistics only, never vectors or
row texts, so a rendered file can be attached to a change ticket as it is.
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

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.key for c in self.checks if not c.passed]

    def check(self, key: str) -> Check:
        return next(c for c in self.checks if c.key == key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
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
        }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _threshold(c: Check) -> str:
    return "-" if c.threshold is None else f"{c.comparison} {fmt(c.threshold)}"


_STYLE = {Status.PASS: "bold green", Status.FAIL: "bold red", Status.SKIP: "dim"}


def render_table(console: Console, report: Report, *, details: bool = True) -> None:
    """The report as a terminal table (the console is injected: tests render into a buffer)."""
    t = Table(title=f"verify {report.migration}: {report.source} -> {report.target}")
    for col in ("gate", "figure", "threshold", "result", "summary"):
        t.add_column(col, justify="right" if col == "figure" else "left")
    for c in report.checks:
        t.add_row(
            c.title,
            fmt(c.figure),
            _threshold(c),
            f"[{_STYLE[c.status]}]{c.status.value}[/]",
            c.summary,
        )
    console.print(t)
    if details:
        for c in report.checks:
            if c.details:
                console.print(
                    f"  [bold]{c.key}[/]: " + ", ".join(f"{k} {fmt(v)}" for k, v in c.details)
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
            f"| {cell(c.title)} | {fmt(c.figure)} | {cell(_threshold(c))} | "
            f"**{c.status.value}** | {cell(c.summary)} |"
        )
    out += ["", "## Details", ""]
    for c in report.checks:
        out.append(f"### {cell(c.title)}")
        out += [f"- {cell(k)}: {cell(fmt(v))}" for k, v in c.details]
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
        f"<tr class='{c.status.value}'><td>{e(c.title)}</td><td class='num'>{e(fmt(c.figure))}</td>"
        f"<td>{e(_threshold(c))}</td><td><b>{e(c.status.value)}</b></td><td>{e(c.summary)}</td></tr>"
        for c in report.checks
    )
    head = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _header_lines(report))
    details = "".join(
        f"<h3>{e(c.title)}</h3><ul>"
        + "".join(f"<li>{e(k)}: {e(fmt(v))}</li>" for k, v in c.details)
        + f"<li>seconds: {c.seconds:.2f}</li></ul>"
        for c in report.checks
    )
    build = "".join(f"<li>{e(k)}: {e(fmt(v))}</li>" for k, v in report.index_build)
    notes = "".join(f"<p class='note'>{e(n)}</p>" for n in report.notes)
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.num{text-align:right}"
        "tr.pass td:nth-child(4){color:#070}tr.fail td:nth-child(4){color:#b00}"
        "tr.skip{color:#888}.note{color:#555}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>verify "
        f"{e(report.migration)}</title><style>{style}</style></head><body>"
        f"<h1>Verification report: {e(report.migration)}</h1><table>{head}</table>"
        f"<h2>Gates</h2><table><tr><th>gate</th><th>figure</th><th>threshold</th><th>result"
        f"</th><th>summary</th></tr>{rows}</table><h2>Details</h2>{details}"
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
