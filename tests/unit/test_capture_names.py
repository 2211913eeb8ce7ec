"""Names derived from a plan are unique per migration and fit PostgreSQL's 63 bytes.

"docs-v2" and "docs_v2" used to get the same trigger function: the second expand rewrote the
first migration's function.
"""

from __future__ import annotations

import itertools

from migrator.plan.model import MAX_IDENTIFIER_BYTES, capture_names, legacy_capture_names
from tests.helpers import demo_plan


def test_names_differ_for_names_that_read_alike() -> None:
    names = ["docs-v2", "docs_v2", "docs-v2-", "a" * 40, "a" * 39 + "b", "a" * 39 + "-"]
    derived = [capture_names(n) for n in names]
    for a, b in itertools.combinations(derived, 2):
        assert a.trigger != b.trigger and a.function != b.function
    for d in derived:
        assert len(d.trigger.encode()) <= MAX_IDENTIFIER_BYTES
        assert len(d.function.encode()) <= MAX_IDENTIFIER_BYTES
    # What the old derivation gave, kept for migrations registered with it.
    assert legacy_capture_names("docs-v2") == legacy_capture_names("docs_v2")


def test_plan_names_are_deterministic() -> None:
    plan = demo_plan(name="docs-v2")
    assert plan.trigger_name == capture_names("docs-v2").trigger
    assert demo_plan(name="docs-v2").function_name == plan.function_name
    assert plan.trigger_name.startswith("migrator_docs_v2_")
