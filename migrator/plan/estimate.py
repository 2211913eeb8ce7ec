"""Estimates for `migrator plan`: tokens, cost and duration of a backfill.

Pure: takes counts measured elsewhere and the plan; no database, no network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from migrator.plan.model import ModelSpec, Plan

# USD per million input tokens for well-known hosted models (override with
# `usd_per_million_tokens` in the plan's model section). Prices as published by the providers.
PRICES: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}

# Throughput assumed when the plan sets no rate limit: what one worker process reaches against
# a fast provider on a small machine (see docs/benchmarks.md); used for the duration only.
ASSUMED_ROWS_PER_SECOND = 1000.0


def price_per_million(model: ModelSpec) -> float | None:
    if model.usd_per_million_tokens is not None:
        return model.usd_per_million_tokens
    if model.provider == "local" or model.name.startswith("local-"):
        return 0.0
    return PRICES.get(model.name)


@dataclass(frozen=True)
class Estimate:
    rows: int
    avg_tokens: float
    tokens: int
    requests: int
    cost_usd: float | None
    seconds: float
    bound_by: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(plan: Plan, rows: int, token_counts: list[int]) -> Estimate:
    avg = (sum(token_counts) / len(token_counts)) if token_counts else 0.0
    tokens = math.ceil(avg * rows)
    model = plan.target.model
    per_request = max(1, min(plan.backfill.batch_size, model.max_inputs_per_request))
    if avg > 0:
        per_request = max(1, min(per_request, int(model.max_tokens_per_request // avg)))
    requests = math.ceil(rows / per_request) if rows else 0
    price = price_per_million(model)
    cost = None if price is None else round(tokens / 1e6 * price, 4)
    limits = {"throughput (no rate limit set)": rows / ASSUMED_ROWS_PER_SECOND}
    if plan.backfill.requests_per_minute:
        limits["requests per minute"] = requests / plan.backfill.requests_per_minute * 60
    if plan.backfill.tokens_per_minute:
        limits["tokens per minute"] = tokens / plan.backfill.tokens_per_minute * 60
    if len(limits) > 1:
        limits.pop("throughput (no rate limit set)")
    bound_by, seconds = max(limits.items(), key=lambda kv: kv[1])
    return Estimate(rows, round(avg, 2), tokens, requests, cost, round(seconds, 1), bound_by)
