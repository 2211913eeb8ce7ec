"""Token refunds: the budget is charged the offline estimate before a request and given back
what the server's `usage.prompt_tokens` says was not used (bench/quota.py --scenario tpm)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import numpy as np
import openai

from migrator.backfill.work import RetryingProvider, Stats
from migrator.embedding import Limits, Provider
from migrator.embedding.base import Matrix
from migrator.embedding.openai_provider import OpenAIProvider
from migrator.plan.model import ModelSpec, RetrySpec


class Counted(Provider):
    """Answers ones; reports `usage` tokens (None: the server said nothing)."""

    def __init__(self, usage: int | None) -> None:
        self.usage = usage
        self.fingerprint, self.dimensions, self.limits = "counted", 2, Limits()

    def embed(self, texts: Sequence[str]) -> Matrix:
        return np.ones((len(texts), 2), dtype=np.float32)

    def last_usage(self) -> int | None:
        return self.usage

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]  # the "estimate": 10 per text below

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[:max_tokens]


class Refunds:
    def __init__(self) -> None:
        self.refunded: list[int] = []

    def acquire(self, requests: int, tokens: int) -> None:
        return None

    def pause(self, seconds: float) -> None:
        return None

    def refund(self, tokens: int) -> None:
        self.refunded.append(tokens)


def test_the_unused_part_of_the_estimate_is_given_back() -> None:
    texts = ["a" * 10, "b" * 10, "c" * 10]
    for usage, expected in ((12, [18]), (30, []), (45, []), (None, [])):
        limiter = Refunds()
        p = RetryingProvider(Counted(usage), limiter, RetrySpec(), Stats())
        assert p.embed(texts).shape == (3, 2)
        # Never more than charged, never a negative refund, nothing without a server count.
        assert limiter.refunded == expected


def test_openai_provider_reports_the_servers_count_per_thread() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["input"])
        data = [{"index": i, "embedding": [1.0, 0.0]} for i in range(n)]
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 7 * n}})

    spec = ModelSpec(name="m", dimensions=2, base_url="http://h/v1")
    p = OpenAIProvider(spec, api_key="k", base_url="http://h/v1")
    p._client = openai.OpenAI(
        api_key="k",
        base_url="http://h/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    assert p.last_usage() is None
    p.embed(["x", "y", "z"])
    assert p.last_usage() == 21
