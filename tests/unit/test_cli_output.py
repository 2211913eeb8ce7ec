"""CLI presentation at 80 columns and the conventions, without a database: the progress line,
the status and drill tables, the drill's action lines, confirmation without a terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from migrator import switch
from migrator.cli.backfill_cmd import progress_bar
from migrator.cli.common import confirm_or_require_yes
from migrator.cli.render import render_drill, render_status
from migrator.cli.switch_cmd import describe_action
from migrator.errors import EXIT_CODES, ConfirmationRequired, PhaseError, PlanError

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def _console(width: int = 80, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=terminal, color_system=None), buf


def _progress_line(width: int) -> str:
    console, buf = _console(width, terminal=True)
    base = {"retries": 2, "dead_letters": 1, "open_batches": 3, "pending_changes": 5}
    with progress_bar(console, True) as update:
        assert update is not None
        update({"rows_done": 0, "elapsed": 0.0, "rows_total": 100_000, **base})
        update({"rows_done": 45_678, "elapsed": 10.0, "rows_total": 100_000, **base})
    text = ANSI.sub("", buf.getvalue()).replace("\r", "\n")
    return [ln for ln in text.splitlines() if ln.strip()][-1]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_progress_keeps_counts_rate_and_eta(width: int) -> None:
    line = _progress_line(width)
    assert len(line) <= width
    # 45,678 rows in 10 s: 4,568 rows/s; 54,322 left: 11 s.
    assert "45678/100000" in line and "4,568 rows/s" in line and "ETA 0:00:11" in line, line
    assert "dead 1" in line or "dead letters 1" in line


EVENT = {
    "at": "2026-12-02T16:40:12.123456+00:00",
    "operator": "root@host",
    "command": "cutover",
    "phase_before": "verified",
    "phase_after": "cut_over",
    "result": "ok",
    "message": "view public.documents_search serves embedding_v2 (text-embedding-3-large@3072)",
}


def test_status_keeps_whole_timestamps_at_80_columns() -> None:
    console, buf = _console()
    render_status(
        console,
        {"plan": {"name": "docs-v2"}, "phase": "cut_over", "next": "x", "events": [EVENT] * 3},
    )
    out = buf.getvalue()
    assert out.count("2026-12-02T16:40:12") == 3
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_drill_headers_are_whole_at_80_columns() -> None:
    phase = {
        "phase": "rolled_back",
        "started_s": 123.4,
        "queries": 123456,
        "failed": 0,
        "cross_model_rows": 0,
        "empty": 0,
        "hit_rate": 0.987,
        "model_switch_retries": 12,
        "p50_ms": 12.34,
        "p95_ms": 33.12,
        "p99_ms": 120.71,
    }
    data = {"queries": 1, "seconds": 60.1, "qps_achieved": 83.2, "processes": 4}
    console, buf = _console()
    render_drill(console, {**data, "phases": [phase]})
    out = buf.getvalue()
    assert "…" not in out
    for word in ("phase", "queries", "failed", "cross", "empty", "hit", "retries", "p99"):
        assert word in out
    assert "rolled_back" in out and "123456" in out and "120.71" in out


def test_drill_action_lines_are_readable() -> None:
    res = switch.SwitchResult(
        "cutover", "verified", "cut_over", "embedding_v2", "fp", 1, 0.5, 2.25, 3
    )
    line = describe_action("cutover", res)
    assert line.startswith("cutover: the view now serves embedding_v2; phase verified -> cut_over")
    assert "SwitchResult(" not in line
    refused = describe_action("rollback", PhaseError("not cut over", hint="cutover first"))
    assert refused == "rollback: refused: not cut over (cutover first)"


def test_irreversible_commands_need_yes_without_a_terminal() -> None:
    # pytest's stdin is not a terminal: no question, a clear error and its own code.
    with pytest.raises(ConfirmationRequired) as err:
        confirm_or_require_yes("finalize", "Continue?", yes=False, as_json=False)
    assert err.value.exit_code == 14 and "--yes" in err.value.one_line()
    assert confirm_or_require_yes("finalize", "Continue?", yes=True, as_json=True) is True


def test_exit_codes_are_distinct_and_documented() -> None:
    assert PlanError.exit_code == 13 and ConfirmationRequired.exit_code == 14
    assert "usage" in EXIT_CODES[2] and "--debug" in EXIT_CODES[1]


def test_help_status_and_quickstart_agree_on_the_flow() -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from migrator.cli import cli
    from migrator.db.state import NEXT_STEP

    help_text = CliRunner().invoke(cli, ["--help"]).output
    flow = [
        w
        for w in ("plan", "adopt", "backfill", "verify", "cutover")
        if f"migrator {w} " in help_text
    ]
    assert flow == ["plan", "adopt", "backfill", "verify", "cutover"]
    assert help_text.index("migrator adopt") < help_text.index("migrator backfill")
    fresh = NEXT_STEP[None]
    assert fresh.index("migrator adopt") < fresh.index("migrator backfill")
    quick = (Path(__file__).resolve().parents[2] / "docs" / "quickstart.md").read_text()
    assert quick.index("migrator adopt") < quick.index("migrator backfill plans/")
    assert "starts two local" in quick


def test_django_example_answers_400_for_a_bad_k() -> None:
    """Run the docs' Django view with stand-ins for Django and the client."""
    import re as _re
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "adopting-the-view.md").read_text()
    block = _re.search(r"# search/views.py\n(.*?)```", text, flags=_re.S)
    assert block
    code = "\n".join(
        ln for ln in block.group(1).splitlines() if not ln.startswith(("from ", "import "))
    )

    class Response:
        def __init__(self, data: object, status: int = 200) -> None:
            self.data, self.status = data, status

    calls: list[int] = []
    client = types.SimpleNamespace(
        search=lambda q, k: calls.append(k) or types.SimpleNamespace(fingerprint="fp")
    )
    ns: dict[str, object] = {
        "JsonResponse": Response,
        "as_rows": lambda r: [],
        "search_client": lambda: client,
    }
    exec(code, ns)  # the documentation's own example
    view = ns["search"]

    def get(**params: str) -> Response:
        return view(types.SimpleNamespace(GET=params))  # type: ignore[operator,no-any-return]

    assert get(q="x", k="ten").status == 400
    assert get(q="x", k="0").status == 400
    assert get(q="x", k="5").status == 200 and calls == [5]
