"""Golden SQL: every statement of every phase of the example plans, compared exactly.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit/test_golden_sql.py`
and review the diff: it is the diff of what migrator will run on users' databases.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrator.ddl.steps import Facts, all_steps
from migrator.plan.model import load_plan

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "plans").glob("*.yaml"))


def render(path: Path, facts: Facts = Facts()) -> str:
    plan = load_plan(path)
    out: list[str] = []
    for step in all_steps(plan, facts):
        out.append(f"-- phase: {step.phase.value}")
        for st in step.forward:
            tx = "tx" if st.transactional else "no-tx"
            out.append(f"-- {st.purpose} [{tx}; {st.lock_text()}]")
            out.append(st.render() + ";")
        if step.backward:
            out.append(f"-- phase: {step.phase.value} (backward)")
            out.extend(st.render() + ";" for st in step.backward)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    expected_file = GOLDEN / f"{path.stem}.sql"
    actual = render(path)
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(actual)
    assert expected_file.exists(), f"missing {expected_file}: run with UPDATE_GOLDEN=1"
    assert actual == expected_file.read_text()


def test_live_facts_change_the_view_and_finalize() -> None:
    facts = Facts(
        view_options=(("security_barrier", "true"),),
        view_owner="app",
        view_grants=(("reader", "SELECT"),),
        source_indexes=("docs_old_idx",),
        live=True,
    )
    text = render(ROOT / "plans" / "ollama-halfvec.yaml", facts)
    assert "WITH (\"security_barrier\" = 'true')" in text
    assert 'ALTER VIEW "public"."kb_search" OWNER TO "app"' in text
    assert 'GRANT SELECT ON "public"."kb_search" TO "reader"' in text
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."docs_old_idx"' in text


def test_hostile_identifiers_never_reach_sql_unquoted() -> None:
    # Identifiers are validated, and even a valid one is always double-quoted.
    text = render(ROOT / "plans" / "local-demo.yaml")
    assert '"public"."documents"' in text
    assert " documents " not in text
