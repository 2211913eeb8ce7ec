"""embed_texts with a scripted in-memory provider: skip, truncate, split, bisect, keep good rows."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from migrator.embedding.base import Limits, Matrix, Provider
from migrator.embedding.errors import PermanentError, RetryableError, WrongCountError
from migrator.embedding.local import HashEmbedder, count_tokens, truncate
from migrator.embedding.pipeline import embed_texts
from migrator.plan.model import OverlongPolicy


class FakeProvider(Provider):
    """HashEmbedder vectors; refuses inputs containing "POISON"; "NAN"/"ZERO" spoil rows."""

    def __init__(self, limits: Limits, fail: Exception | None = None) -> None:
        self.fingerprint = "fake"
        self.dimensions = 8
        self.limits = limits
        self.model = HashEmbedder("fake", 8)
        self.fail = fail
        self.sent: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Matrix:
        with self._lock:
            self.sent.append(list(texts))
        assert all(t.strip() for t in texts)
        if self.fail is not None:
            raise self.fail
        if any("POISON" in t for t in texts):
            from migrator.embedding.errors import InputRejectedError

            raise InputRejectedError("HTTP 400: poisoned", status=400)
        m = self.model.encode(texts) * 3.0
        for i, t in enumerate(texts):
            if "NAN" in t:
                m[i, 0] = np.nan
            if "ZERO" in t:
                m[i] = 0.0
        return m

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [count_tokens(t) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        return truncate(text, max_tokens)


def run(p: Provider, texts: list[str | None], **kw: object):  # type: ignore[no-untyped-def]
    args = {"overlong": OverlongPolicy.TRUNCATE, "forbid_zero": True, "normalize": True}
    args.update(kw)
    return embed_texts(p, texts, **args)  # type: ignore[arg-type]


def test_empty_never_sent_and_vectors_by_position() -> None:
    p = FakeProvider(Limits(2, 100, 10))
    out = run(p, ["alpha beta", None, "  ", "gamma", "", "delta epsilon"])
    assert out.skipped_empty == [1, 2, 4]
    assert sorted(out.vectors) == [0, 3, 5]
    assert [len(s) for s in p.sent] == [2, 1]
    np.testing.assert_allclose(out.vectors[3], HashEmbedder("fake", 8).encode(["gamma"])[0], 1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.vectors[0]), 1.0, rtol=1e-5)


def test_overlong_truncated_or_dead_lettered() -> None:
    long = "one two three four five six"
    out = run(FakeProvider(Limits(10, 100, 4)), [long, "short"])
    assert out.truncated == [0] and set(out.vectors) == {0, 1}
    out = run(
        FakeProvider(Limits(10, 100, 4)), [long, "short"], overlong=OverlongPolicy.DEAD_LETTER
    )
    assert set(out.failed) == {0} and "overlong" in out.failed[0] and set(out.vectors) == {1}


def test_bisection_isolates_only_the_poisoned_inputs() -> None:
    texts: list[str | None] = [f"text number {i}" for i in range(16)]
    texts[5] = "bad POISON here"
    texts[11] = "also POISON"
    p = FakeProvider(Limits(16, 1000, 100))
    out = run(p, texts)
    assert set(out.failed) == {5, 11} and "poisoned" in out.failed[5]
    assert set(out.vectors) == set(range(16)) - {5, 11}
    assert out.requests == len(p.sent) < 16  # bisection, not one request per input


def test_bad_rows_fail_and_good_rows_of_the_same_answer_are_kept() -> None:
    out = run(FakeProvider(Limits(10, 100, 10)), ["fine one", "NAN row", "ZERO row", "fine two"])
    assert out.failed == {1: "bad vector: nan", 2: "bad vector: zero vector"}
    assert set(out.vectors) == {0, 3}


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("slow down", status=429, retry_after=2.0),
        WrongCountError("x"),
        PermanentError("HTTP 401", status=401),
    ],
)
def test_non_input_errors_propagate_and_nothing_is_dead_lettered(error: Exception) -> None:
    p = FakeProvider(Limits(2, 100, 10), fail=error)
    with pytest.raises(type(error)):
        run(p, ["a", "b", "c", "d"], concurrency=2)
    assert len(p.sent) <= 2  # no bisection on errors that are not about the inputs


def test_concurrency_and_before_request_hook() -> None:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def hook(n: int, tokens: int) -> None:
        with lock:
            calls.append((n, tokens))

    texts: list[str | None] = [f"word{i} other{i}" for i in range(40)]
    out = run(FakeProvider(Limits(3, 100, 10)), texts, concurrency=4, before_request=hook)
    assert len(out.vectors) == 40 and out.requests == 14 == len(calls)
    assert sum(n for n, _ in calls) == 40 and sum(t for _, t in calls) == 80 == out.tokens
    serial = run(FakeProvider(Limits(3, 100, 10)), texts)
    for i in range(40):
        np.testing.assert_array_equal(out.vectors[i], serial.vectors[i])
