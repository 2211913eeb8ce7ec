"""The pre-flight's pure rules: which models a command calls, which privileges it needs, the
pgvector version floor, and how several problems become one error with one exit code."""

from __future__ import annotations

import pytest

from migrator.backfill import preflight
from migrator.db import privileges
from migrator.db.catalog import MIN_PGVECTOR, version_tuple
from migrator.db.state import State
from migrator.errors import ConfigError, PreflightError, ProviderError
from tests.helpers import demo_plan


def _roles(command: str, phase: State | None, **kw: object) -> list[str]:
    return [r for r, _ in preflight.models_called(demo_plan(**kw), command, phase)]


def test_models_each_command_calls() -> None:
    assert _roles("plan", None) == ["target", "source"]
    assert _roles("verify", State.BACKFILLED) == ["target", "source"]
    assert _roles("backfill", None) == ["target", "source"]  # refresh_source is on by default
    assert _roles("backfill", State.EXPANDED, backfill__refresh_source=False) == ["target"]
    assert _roles("backfill", State.CUT_OVER, backfill__refresh_source=False) == [
        "target",
        "source",
    ]  # catch-up re-embeds the old column after cutover
    for command in ("adopt", "cutover", "rollback", "finalize"):
        assert _roles(command, State.VERIFIED) == []


def test_privileges_each_command_needs() -> None:
    assert preflight.needs("backfill", None).own_table
    assert preflight.needs("backfill", State.PLANNED).trigger
    later = preflight.needs("backfill", State.BACKFILLED)
    assert later.write_table and not later.own_table and not later.trigger
    assert preflight.needs("verify", State.BACKFILLED).own_table  # CREATE INDEX
    assert preflight.needs("cutover", State.VERIFIED).view
    assert preflight.needs("plan", None) == privileges.ALL


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("0.7.4", False),
        ("0.8.0", False),
        ("0.8.3", False),
        ("0.8.4", True),
        ("0.8.6", True),
        ("0.9.0-dev", True),
        ("1.0", True),
    ],
)
def test_pgvector_floor(version: str, ok: bool) -> None:
    assert (version_tuple(version) >= MIN_PGVECTOR) is ok


def test_several_problems_raise_the_first_with_the_others_as_lines() -> None:
    res = preflight.Result(
        [
            preflight.Problem(ConfigError, "no API key for model 'x'", "set X_KEY"),
            preflight.Problem(PreflightError, "table t does not exist", "create it"),
            preflight.Problem(ProviderError, "model y answered 255 dimensions", "fix it"),
        ]
    )
    with pytest.raises(ConfigError) as err:
        res.raise_first()
    assert err.value.exit_code == 3
    assert err.value.one_line() == "no API key for model 'x' (set X_KEY)"
    assert err.value.more == (
        "table t does not exist (create it)",
        "model y answered 255 dimensions (fix it)",
    )
    preflight.Result().raise_first()  # nothing to raise
