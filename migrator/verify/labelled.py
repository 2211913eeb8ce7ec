"""Labelled evaluation for `verify`: the team's own queries with their relevant ids (JSONL),
scored as recall@k, MRR and nDCG@k for both models. Pure apart from reading the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from migrator.errors import ConfigError
from migrator.plan.model import Plan
from migrator.verify.metrics import mrr_at_k, ndcg_at_k, ratio, recall_at_k
from migrator.verify.report import Check, gate


def load_labelled(path: Path) -> list[tuple[str, list[str]]]:
    """JSONL lines {"query": "...", "relevant": [ids...]}; ids compared as text."""
    out: list[tuple[str, list[str]]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"labelled queries {path}: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            query, relevant = obj["query"], obj["relevant"]
            if not isinstance(query, str) or not query.strip() or not isinstance(relevant, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f'labelled queries {path}:{n}: expected {{"query": "text", "relevant": [ids...]}}'
            ) from None
        out.append((query, [str(x) for x in relevant]))
    return out


def labelled(
    plan: Plan,
    relevant: Sequence[Sequence[str]],
    old_top: Sequence[Sequence[str]],
    new_top: Sequence[Sequence[str]],
    k: int,
    seconds: float,
) -> Check:
    """recall@k, MRR and nDCG@k of both models on the team's labelled queries; the gate
    compares recall@k new/old against min_recall_ratio."""
    metrics = ((f"recall@{k}", recall_at_k), ("mrr", mrr_at_k), (f"ndcg@{k}", ndcg_at_k))
    m = {
        f"{name}_{which}": fn(top, relevant, k)
        for which, top in (("old", old_top), ("new", new_top))
        for name, fn in metrics
    }
    r = ratio(m[f"recall@{k}_new"], m[f"recall@{k}_old"])
    summary = (
        f"recall@{k} old {m[f'recall@{k}_old']:.3f}, new {m[f'recall@{k}_new']:.3f}; "
        f"nDCG@{k} old {m[f'ndcg@{k}_old']:.3f}, new {m[f'ndcg@{k}_new']:.3f}"
    )
    if r is None:
        # No baseline: the labels do not match the table's keys, or the old vectors are wrong.
        summary += " (the old model found no labelled answer: no baseline; check the ids)"
    return gate(
        "labelled",
        "labelled queries",
        r,
        plan.verify.min_recall_ratio,
        ">=",
        summary,
        {"queries": len(relevant), **m, "ratio": r},
        seconds,
        over=len(relevant),
    )
