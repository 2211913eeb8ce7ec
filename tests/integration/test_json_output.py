"""Every command with --json, as a script runs it: a subprocess with no terminal (stdin
/dev/null, stdout a pipe), stdout parsed as exactly one JSON document.

The backfill runs with the embedded broker, so it starts its two local Celery workers itself:
their banners and shutdown lines must not reach stdout (before, `json.loads` failed at line 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from migrator.cli import cli
from tests.helpers import create_documents
from tests.switch_helpers import plan_file, switch_plan

pytestmark = pytest.mark.integration

# Every command that has --json must be exercised below (a new one fails this test until it is).
COVERED = {
    "plan",
    "status",
    "adopt",
    "backfill",
    "verify",
    "cutover",
    "rollback",
    "drill",
    "finalize",
    "abort",
    "demo",
    "bridge fit",
    "bridge on",
    "bridge off",
}


def _json_commands(group: click.Group, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found |= _json_commands(cmd, f"{prefix}{name} ")
        elif any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option)):
            found.add(prefix + name)
    return found


def _env(home: Path, database_url: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "MIGRATOR_REDIS_URL")
    }
    env["MIGRATOR_HOME"] = str(home)
    env["COLUMNS"] = "80"
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def run_json(
    args: list[str], env: dict[str, str], cwd: Path, *, codes: tuple[int, ...] = (0,)
) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in codes, (args, proc.returncode, proc.stderr[-3000:])
    try:
        doc = json.loads(proc.stdout)  # exactly one document: trailing text fails here
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{args}: stdout is not one JSON document ({exc}):\n{proc.stdout[:2000]}"
        ) from None
    assert isinstance(doc, dict), args
    return doc


def test_every_json_command_is_covered() -> None:
    assert _json_commands(cli) == COVERED


def test_every_command_prints_one_json_document(database_url: str, tmp_path: Path) -> None:
    plan = switch_plan(verify__sample_size=100, verify__min_index_recall=0.7)
    create_documents(
        database_url, 2000, model=plan.source.model.name, dims=plan.source.model.dimensions
    )
    path = plan_file(plan, tmp_path)
    env = _env(tmp_path / "home", database_url)
    seen: set[str] = set()

    def run(name: str, *args: str, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        seen.add(name)
        return run_json([name, path, *args, "--json"], env, tmp_path, codes=codes)

    assert run("plan", "--offline")["ok"] is True
    assert run("plan")["ok"] is True
    assert run("adopt")["ok"] is True
    assert run("status")["phase"] is not None
    summary = run("backfill")
    assert summary["complete"] is True and summary["rows_done"] == 2000
    log = Path(summary["worker_log"])
    assert log.parent == tmp_path / "home" / "logs"
    assert "celery" in log.read_text().lower()  # the banners went to the log instead
    report = run("verify", codes=(0, 9))
    assert report["ok"] is True, [
        (c["key"], c["status"], c["figure"], c["summary"])
        for c in report["checks"]
        if c["status"] != "pass"
    ]
    for sub, args in (("fit", ()), ("on", ("--force",)), ("off", ())):
        seen.add(f"bridge {sub}")
        doc = run_json(["bridge", sub, path, *args, "--json"], env, tmp_path)
        assert doc["ok"] is True, doc
    assert run("cutover")["phase_after"] == "cut_over"
    assert run("rollback")["phase_after"] == "rolled_back"
    drill = run("drill", "--qps", "5", "--duration", "2", "--processes", "1", "--run", "cutover")
    assert drill["queries"] > 0
    assert run("finalize", "--yes", "--force")["ok"] is True
    # An error is one JSON document too (finalize again: the phase forbids it).
    err = run("finalize", "--yes", "--force", codes=(7,))
    assert err["ok"] is False and err["exit_code"] == 7

    other = switch_plan(name="docs-abort", table__name="documents2", view__name="documents2_search")
    create_documents(
        database_url,
        50,
        table="documents2",
        model=other.source.model.name,
        dims=other.source.model.dimensions,
    )
    other_path = plan_file(other, tmp_path)
    assert run_json(["adopt", other_path, "--json"], env, tmp_path)["ok"] is True
    seen.add("abort")
    aborted = run_json(["abort", other_path, "--yes", "--json"], env, tmp_path)
    assert aborted["ok"] is True
    assert seen | {"demo"} == COVERED


def test_plan_error_is_one_json_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = switch_plan().canonical()
    data["tabel"] = data.pop("table")
    import yaml

    bad.write_text(yaml.safe_dump(data))
    doc = run_json(
        ["plan", str(bad), "--offline", "--json"], _env(tmp_path, None), tmp_path, codes=(13,)
    )
    assert doc["ok"] is False and doc["exit_code"] == 13
    assert "did you mean `table`" in json.dumps(doc)


@pytest.mark.slow  # the demo itself runs in the CI subset (test_demo.py)
def test_demo_prints_one_json_document(tmp_path: Path) -> None:
    """The full demo with its summary is tests/integration/test_demo.py (1,500 rows); at 200
    rows the planner may skip the new index and verify fail (exit 9): stdout must be one JSON
    document either way, and the servers' and workers' output must be in the log file."""
    doc = run_json(
        ["demo", "--rows", "200", "--qps", "5", "--workers", "1", "--json"],
        _env(tmp_path / "home", None),
        tmp_path,
        codes=(0, 9),
    )
    assert doc.get("rows") == 200 or doc["exit_code"] == 9
    log = (tmp_path / "home" / "logs" / "demo.log").read_text()
    assert "celery" in log.lower()
