"""A gate measured over nothing never passes: zero rows, zero vectors, zero queries, or a
baseline of zero (the old model found none of its own rows) fail with a message saying so."""

from __future__ import annotations

import numpy as np

from migrator.verify.checks import freshness, health, parity
from migrator.verify.labelled import labelled
from migrator.verify.report import Status, gate
from migrator.verify.streaming import RunningHealth
from tests.helpers import demo_plan

PLAN = demo_plan()


def test_gate_over_zero_items_fails_whatever_its_figure() -> None:
    assert gate("x", "x", 1.0, 0.9, ">=", "s", {}, over=10).status is Status.PASS
    empty = gate("x", "x", 1.0, 0.9, ">=", "s", {}, over=0)
    assert empty.status is Status.FAIL and "nothing" in empty.summary


def test_parity_without_any_query_fails() -> None:
    check = parity(PLAN, [], [], [], 10, not_embedded=200, seconds=0.0)
    assert check.status is Status.FAIL, check


def test_parity_with_an_old_recall_of_zero_fails() -> None:
    own = ["1", "2", "3"]
    nowhere = [["9"], ["9"], ["9"]]
    found = [["1"], ["2"], ["3"]]
    both_zero = parity(PLAN, own, nowhere, nowhere, 10, 0, 0.0)
    assert both_zero.status is Status.FAIL, both_zero
    no_baseline = parity(PLAN, own, nowhere, found, 10, 0, 0.0)
    assert no_baseline.status is Status.FAIL and "old" in no_baseline.summary, no_baseline
    assert parity(PLAN, own, found, found, 10, 0, 0.0).status is Status.PASS


def test_labelled_without_queries_or_baseline_fails() -> None:
    assert labelled(PLAN, [], [], [], 10, 0.0).status is Status.FAIL
    rel = [["1"], ["2"]]
    zero_old = labelled(PLAN, rel, [["9"], ["9"]], [["1"], ["2"]], 10, 0.0)
    assert zero_old.status is Status.FAIL, zero_old
    assert labelled(PLAN, rel, [["1"], ["2"]], [["1"], ["2"]], 10, 0.0).status is Status.PASS


def test_health_and_freshness_over_no_vector_fail() -> None:
    dims = PLAN.target.model.dimensions
    empty = RunningHealth(dims, normalized=True, norm_tol=1e-3)
    empty.add(0, np.zeros((0, dims), dtype=np.float32))
    assert health(empty.result(), PLAN).status is Status.FAIL
    none = np.zeros((0, dims), dtype=np.float32)
    assert freshness(PLAN, [], none, none, [], 0.0).status is Status.FAIL
    some = np.ones((2, dims), dtype=np.float32)
    all_failed = freshness(PLAN, ["1", "2"], some, some, [0, 1], 0.0)
    assert all_failed.status is Status.FAIL  # nothing compared
