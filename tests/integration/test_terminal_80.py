"""At 80 columns on a real terminal (tmux): the backfill's progress line keeps rows done/total,
rate and ETA; `status` keeps whole timestamps; the `drill` table keeps readable headers; and
the local workers' banners stay out of the screen (they go to the log file).

Set MIGRATOR_SAVE_CAPTURES=DIR to keep the screen captures as text (docs/captures has them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import create_documents
from tests.switch_helpers import plan_file, switch_plan

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

DONE = "__ux_done__"


def _capture(session: str) -> str:
    out = subprocess.run(
        ["tmux", "capture-pane", "-p", "-J", "-S", "-500", "-t", session],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def _screens(text: str) -> dict[str, str]:
    parts = re.split(r"^__ux_(backfill|status|drill)__$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_backfill_status_and_drill_at_80_columns(database_url: str, tmp_path: Path) -> None:
    plan = switch_plan()
    create_documents(
        database_url, 3000, model=plan.source.model.name, dims=plan.source.model.dimensions
    )
    path = plan_file(plan, tmp_path)
    mig = f"{shlex.quote(sys.executable)} -m migrator"
    q = shlex.quote
    script = tmp_path / "run.sh"
    script.write_text(
        "\n".join(
            [
                "unset CELERY_BROKER_URL MIGRATOR_REDIS_URL COLUMNS LINES",
                f"export DATABASE_URL={q(database_url)} MIGRATOR_HOME={q(str(tmp_path / 'home'))}",
                f"cd {q(str(tmp_path))}",
                "echo __ux_backfill__",
                f"{mig} backfill {q(path)}",
                "echo __ux_status__",
                f"{mig} status {q(path)}",
                "echo __ux_drill__",
                f"{mig} drill {q(path)} --qps 5 --duration 2 --processes 1",
                f"echo {DONE}",
                "sleep 600",
            ]
        )
        + "\n"
    )
    session = f"ux80-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "50",
            f"bash {q(str(script))}",
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "TMUX"},
    )
    try:
        subprocess.run(["tmux", "set-option", "-t", session, "history-limit", "5000"], check=True)
        deadline = time.monotonic() + 400
        text = ""
        while time.monotonic() < deadline:
            text = _capture(session)
            if re.search(rf"^{DONE}$", text, flags=re.M):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the commands did not finish:\n{text[-3000:]}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    screens = _screens(text)
    keep = os.environ.get("MIGRATOR_SAVE_CAPTURES")
    if keep:
        for name, screen in screens.items():
            Path(keep, f"{name}-80.txt").write_text(screen.strip("\n") + "\n")

    backfill = screens["backfill"]
    lines = [ln for ln in backfill.splitlines() if ln.startswith("backfill ") and "━" in ln]
    assert lines, backfill
    bar = lines[-1]
    m = re.search(r"(\d+)/(\d+) ([\d,]+) rows/s ETA (\d+:\d\d:\d\d|-)", bar)
    assert m, bar
    assert m.group(1) == m.group(2) == "3000", bar
    assert len(bar) <= 80, bar
    assert "celery@" not in backfill and "Warm shutdown" not in backfill
    assert re.search(r"workers on queue .* their log: .*/home/logs/workers-", backfill)
    assert "backfill complete: 3,000/3,000 rows" in backfill

    status = screens["status"]
    stamps = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", status)
    assert len(stamps) >= 2, status  # adopt/expand/backfill events, each with a whole timestamp
    assert "…" not in status and "at (UTC)" in status

    drill = screens["drill"]
    for header in ("phase", "queries", "failed", "cross", "model", "empty", "p50", "p99"):
        assert header in drill, drill
    assert "…" not in drill
    table = drill[drill.index("phase") :].splitlines()
    assert all(len(line) <= 80 for line in table), drill
