"""The verification report: verdicts, JSON, the rich table, Markdown and HTML files, and the
labelled-queries file format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from migrator.errors import ConfigError
from migrator.verify.labelled import load_labelled
from migrator.verify.report import (
    Check,
    Report,
    Status,
    gate,
    render_table,
    to_html,
    to_markdown,
    write_report_file,
)
from migrator.verify.run import resolve_labelled


def sample_report(fail: bool = False) -> Report:
    checks = (
        gate("coverage", "coverage", 1.0, 1.0, ">=", "100 of 100 rows", {"done": 100}, over=100),
        gate(
            "health",
            "vector health",
            3.0 if fail else 0.0,
            0.0,
            "<=",
            "bad | <rows>",
            {"zero": 3 if fail else 0},
            over=100,
        ),
        Check("labelled", "labelled queries", None, None, "", Status.SKIP, "none"),
    )
    return Report(
        migration="demo",
        plan_hash="ab" * 32,
        table="public.docs",
        source="old@256:x",
        target="new@384:y",
        created_at="2026-11-21T00:00:00+00:00",
        k=10,
        sample=100,
        seed=42,
        checks=checks,
        index_build=(("action", "exists"),),
        seconds=1.5,
        timings=(("coverage", 0.1),),
    )


def test_gate_verdicts() -> None:
    assert gate("x", "x", 0.95, 0.9, ">=", "", {}, over=1).status is Status.PASS
    assert gate("x", "x", 0.85, 0.9, ">=", "", {}, over=1).status is Status.FAIL
    assert gate("x", "x", 0.0, 0.0, "<=", "", {}, over=1).status is Status.PASS
    assert (
        gate("x", "x", None, 0.0, "<=", "", {}, over=1).status is Status.FAIL
    )  # no figure, no pass
    with pytest.raises(ValueError):
        gate("x", "x", 1.0, 1.0, "==", "", {}, over=1)


def test_passed_and_failed_lists() -> None:
    assert sample_report().passed and sample_report().failed == []
    bad = sample_report(fail=True)
    assert not bad.passed and bad.failed == ["health"]  # a skipped check never fails
    data = bad.as_dict()
    assert json.loads(json.dumps(data))["checks"][1]["details"] == {"zero": 3}
    assert data["passed"] is False and data["timings"] == {"coverage": 0.1}


def test_rich_table_into_a_buffer() -> None:
    buf = io.StringIO()
    render_table(Console(file=buf, width=160, color_system=None), sample_report(fail=True))
    out = buf.getvalue()
    assert "vector health" in out and "fail" in out and "<= 0" in out
    assert "FAILED: health" in out


def test_markdown_escapes_and_html_is_self_contained(tmp_path: Path) -> None:
    rep = sample_report(fail=True)
    md = to_markdown(rep)
    assert "| vector health | 3 | <= 0 | **fail** | bad \\| <rows> |" in md
    html = to_html(rep)
    assert html.startswith("<!DOCTYPE html>") and "bad | &lt;rows&gt;" in html
    assert "<script" not in html and "http" not in html  # no external resources
    for name in ("r.md", "r.html", "r.json"):
        assert write_report_file(rep, tmp_path / name).stat().st_size > 200
    assert json.loads((tmp_path / "r.json").read_text())["failed"] == ["health"]
    with pytest.raises(ConfigError, match=r"unknown format \.txt"):
        write_report_file(rep, tmp_path / "r.txt")


def test_labelled_queries_file(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text(
        '{"query": "open a socket", "relevant": [3, "7"]}\n\n{"query": "x", "relevant": []}\n'
    )
    assert load_labelled(p) == [("open a socket", ["3", "7"]), ("x", [])]
    p.write_text('{"query": "", "relevant": [1]}\n')
    with pytest.raises(ConfigError, match=r"q.jsonl:1: expected"):
        load_labelled(p)
    with pytest.raises(ConfigError, match="labelled queries"):
        load_labelled(tmp_path / "missing.jsonl")


def test_labelled_path_next_to_the_plan_first(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text("")
    assert resolve_labelled("q.jsonl", tmp_path) == tmp_path / "q.jsonl"
    assert resolve_labelled("/abs/q.jsonl", tmp_path) == Path("/abs/q.jsonl")
    assert resolve_labelled("other.jsonl", tmp_path) == Path.cwd() / "other.jsonl"
