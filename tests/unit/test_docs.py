"""Docs that are generated or checked against the code."""

from __future__ import annotations

from pathlib import Path

from migrator.errors import EXIT_CODES
from migrator.plan import reference as plan_reference

ROOT = Path(__file__).resolve().parents[2]


def test_plan_reference_is_current() -> None:
    committed = (ROOT / "docs" / "plan-reference.md").read_text()
    assert committed == plan_reference.render(), (
        "docs/plan-reference.md is stale: python -m migrator.plan.reference > docs/plan-reference.md"
    )


def test_every_plan_key_has_a_description() -> None:
    missing = [
        line
        for line in plan_reference.render().splitlines()
        if line.startswith("| `") and line.rstrip().endswith("|  |")
    ]
    assert not missing, missing


def test_exit_codes_documented() -> None:
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in text, f"exit code {code} missing from docs/exit-codes.md"


def test_each_test_run_has_a_private_temporary_folder(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    # Two runs at once shared /tmp/pytest-of-USER and one pruned the other's embedded database.
    import getpass
    import tempfile

    base = tmp_path_factory.getbasetemp().resolve()
    shared = (Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}").resolve()
    assert shared not in base.parents and base != shared
