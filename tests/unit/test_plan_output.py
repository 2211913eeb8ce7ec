"""`migrator plan` output in a pipe at 80 columns: SQL never cut or wrapped; `--sql` is exactly
the statements as a script, with CONCURRENTLY statements outside any transaction block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from migrator import api
from migrator.cli import cli
from migrator.ddl.script import FORWARD, render_script
from migrator.ddl.steps import all_steps
from migrator.plan.model import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted((ROOT / "plans").glob("*.yaml"))


def _invoke(*args: str) -> str:
    res = CliRunner(env={"COLUMNS": "80"}).invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_piped_plan_keeps_every_statement_whole(path: Path) -> None:
    out = _invoke("plan", str(path), "--offline")
    for step in api.plan_offline(load_plan(path)).steps:
        for st in (*step.forward, *step.backward):
            assert st.render() + ";" in out, st.purpose


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_sql_mode_is_exactly_the_forward_statements(path: Path) -> None:
    plan = load_plan(path)
    out = _invoke("plan", str(path), "--offline", "--sql")
    assert out == render_script(plan, all_steps(plan), str(path))
    live = [ln for ln in out.splitlines() if ln and not ln.startswith("--")]
    body = "\n".join(live)
    steps = all_steps(plan)
    forward = {st.render() for s in steps if s.phase in FORWARD for st in s.forward}
    for sql in forward:
        assert sql + ";" in body
    for step in steps:  # backfill templates, rollback and abort: commented out only
        for st in step.forward:
            if step.phase not in FORWARD and st.render() not in forward:
                assert st.render() not in body, (step.phase, st.purpose)
                assert st.render().splitlines()[0] in out


def test_concurrently_is_never_inside_a_transaction_block() -> None:
    plan = load_plan(PLANS[0])
    in_tx = False
    seen = 0
    for line in render_script(plan, all_steps(plan)).splitlines():
        if line.startswith("--"):
            continue
        if line == "BEGIN;":
            assert not in_tx
            in_tx = True
        elif line == "COMMIT;":
            assert in_tx
            in_tx = False
        elif re.search(r"\bCONCURRENTLY\b", line):
            assert not in_tx, line
            seen += 1
    assert seen == 1 and not in_tx


def test_sql_and_json_together_are_a_usage_error() -> None:
    res = CliRunner().invoke(cli, ["plan", str(PLANS[0]), "--offline", "--sql", "--json"])
    assert res.exit_code == 2
