"""split_requests: every split respects all limits and keeps order (property tests)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.embedding.base import Limits
from migrator.embedding.batching import split_requests


@st.composite
def limits_and_counts(draw: st.DrawFn) -> tuple[Limits, list[int]]:
    limits = Limits(
        max_inputs_per_request=draw(st.integers(1, 50)),
        max_tokens_per_request=draw(st.integers(1, 500)),
        max_tokens_per_input=draw(st.integers(1, 600)),
    )
    counts = draw(st.lists(st.integers(0, limits.input_token_cap), max_size=300))
    return limits, counts


@settings(max_examples=400, deadline=None)
@given(limits_and_counts())
def test_splits_respect_limits_and_keep_order(case: tuple[Limits, list[int]]) -> None:
    limits, counts = case
    ranges = split_requests(counts, limits)
    flat = [i for r in ranges for i in r]
    assert flat == list(range(len(counts)))  # every input once, in order, contiguous
    for r in ranges:
        assert len(r) >= 1
        assert len(r) <= limits.max_inputs_per_request
        assert sum(counts[i] for i in r) <= limits.max_tokens_per_request


@settings(max_examples=200, deadline=None)
@given(limits_and_counts())
def test_greedy_split_never_leaves_room_for_the_next_input(case: tuple[Limits, list[int]]) -> None:
    limits, counts = case
    ranges = split_requests(counts, limits)
    for r, nxt in itertools.pairwise(ranges):
        tokens = sum(counts[i] for i in r) + counts[nxt.start]
        assert len(r) == limits.max_inputs_per_request or tokens > limits.max_tokens_per_request


@pytest.mark.parametrize(
    ("counts", "limits", "expected"),
    [
        ([], Limits(2, 10, 10), []),
        ([1, 1, 1, 1, 1], Limits(2, 100, 100), [range(0, 2), range(2, 4), range(4, 5)]),
        ([6, 5, 5, 1], Limits(10, 10, 10), [range(0, 1), range(1, 3), range(3, 4)]),
        ([10, 10], Limits(10, 10, 10), [range(0, 1), range(1, 2)]),
        ([0, 0, 0], Limits(5, 1, 1), [range(0, 3)]),
    ],
)
def test_table(counts: list[int], limits: Limits, expected: list[range]) -> None:
    assert split_requests(counts, limits) == expected


def test_an_input_over_the_per_input_limit_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="per-input limit"):
        split_requests([3, 11], Limits(10, 100, 10))
    with pytest.raises(ValueError, match="per-input limit"):  # per-request cap is lower
        split_requests([60], Limits(10, 50, 100))


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        Limits(0, 10, 10)
