"""Swap, bridge or re-embed: recall@k of the old model, the new model (rows done so far), the
bridge (new-model query mapped into the old vectors) and a naive swap (new-model query against
the old vectors, when the dimensions match), on the same queries and the same rows.

Pure apart from the provider calls its callers make: everything here takes matrices. The
corpus is the rows that hold both vectors, so the new model is never judged on fewer rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from migrator.bridge.fit import BridgeMap
from migrator.plan.model import Metric, Plan
from migrator.verify.metrics import F32, exact_topk, ratio, recall_at_k
from migrator.verify.report import Check, Status

SWAP, BRIDGE, REEMBED = "swap", "bridge", "re-embed"


@dataclass(frozen=True)
class Comparison:
    """recall@k of each way of serving, on one set of queries (None: not measurable)."""

    name: str  # "documents" (derived queries) | "labelled"
    queries: int
    corpus: int
    k: int
    old: float | None
    new: float
    bridge: float
    swap: float | None

    @property
    def retention(self) -> float | None:
        """The bridge's share of a full re-embed's recall (the Drift-Adapter figure)."""
        return ratio(self.bridge, self.new)

    @property
    def swap_retention(self) -> float | None:
        return None if self.swap is None else ratio(self.swap, self.new)

    def as_dict(self) -> dict[str, Any]:
        r = self.retention
        s = self.swap_retention
        return {
            "queries": self.queries,
            "corpus": self.corpus,
            f"recall@{self.k}_old": _round(self.old),
            f"recall@{self.k}_new": _round(self.new),
            f"recall@{self.k}_bridge": _round(self.bridge),
            f"recall@{self.k}_swap": _round(self.swap),
            "retention": _round(r),
            "swap_retention": _round(s),
            "bridge_vs_old": _round(None if self.old is None else ratio(self.bridge, self.old)),
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _common(
    old_ids: Sequence[str], old: F32, new_ids: Sequence[str], new: F32
) -> tuple[list[str], F32, F32]:
    pos_new = {pk: i for i, pk in enumerate(new_ids)}
    keep = [(i, pos_new[pk]) for i, pk in enumerate(old_ids) if pk in pos_new]
    ids = [old_ids[i] for i, _ in keep]
    return ids, old[[i for i, _ in keep]], new[[j for _, j in keep]]


def compare(
    name: str,
    *,
    relevant: Sequence[Collection[str]],
    q_new: F32,
    q_old: F32 | None,
    old_ids: Sequence[str],
    old: F32,
    new_ids: Sequence[str],
    new: F32,
    bridge: BridgeMap,
    k: int,
    metric: Metric = Metric.COSINE,
) -> Comparison:
    """Every way of serving, on the rows holding both vectors. `q_old` None: the old model
    could not embed the queries (retired), so its recall is not measured."""
    ids, o, n = _common(old_ids, old, new_ids, new)

    def recall(queries: F32, matrix: F32) -> float:
        if not len(queries) or not len(ids):
            return 0.0
        idx, _ = exact_topk(queries, matrix, k, metric)
        return recall_at_k([[ids[j] for j in row] for row in idx.tolist()], relevant, k)

    mapped = bridge.apply(q_new) if len(q_new) else q_new
    same_dims = q_new.shape[1] == o.shape[1] if len(q_new) else False
    return Comparison(
        name,
        len(relevant),
        len(ids),
        k,
        None if q_old is None else recall(q_old, o),
        recall(q_new, n),
        recall(mapped, o),
        recall(q_new, o) if same_dims else None,
    )


def recommend(results: Sequence[Comparison], min_retention: float) -> tuple[str, str]:
    """(swap | bridge | re-embed, one plain sentence). The worst of the query sets decides."""
    if not results or all(c.queries == 0 for c in results):
        return REEMBED, "nothing was measured: re-embed (no evidence for a shortcut)"
    swap = [c.swap_retention for c in results]
    bridge = [c.retention for c in results]
    k = results[0].k
    if all(s is not None and s >= min_retention for s in swap):
        worst = min(s for s in swap if s is not None)
        return SWAP, (
            f"swap: new-model queries on the old vectors keep {worst:.0%} of a re-embed's "
            f"recall@{k}; no map is needed (the spaces already agree)"
        )
    if all(b is not None and b >= min_retention for b in bridge):
        worst = min(b for b in bridge if b is not None)
        return BRIDGE, (
            f"bridge: it keeps {worst:.0%} of a re-embed's recall@{k} (threshold "
            f"{min_retention:.0%}); serve it while the backfill runs or once the old model is gone"
        )
    known = [b for b in bridge if b is not None]
    worst_txt = f"{min(known):.0%}" if known else "an unmeasured share"
    return REEMBED, (
        f"re-embed: the bridge keeps only {worst_txt} of a re-embed's recall@{k} (threshold "
        f"{min_retention:.0%}); wait for the backfill and cut over"
    )


def figures(results: Sequence[Comparison], min_retention: float) -> dict[str, Any]:
    """What is stored with the bridge and shown by `bridge fit` and `verify`: per query set,
    the retention `bridge on` compares with the threshold (the worst set), the advice."""
    choice, sentence = recommend(results, min_retention)
    kept = [c.retention for c in results if c.queries and c.retention is not None]
    return {
        **{c.name: c.as_dict() for c in results},
        "retention": round(min(kept), 4) if kept else None,
        "min_retention": min_retention,
        "recommendation": choice,
        "advice": sentence,
    }


def check(plan: Plan, bridge_id: int | None, figs: dict[str, Any] | None, why: str = "") -> Check:
    """The report's bridge line: informational, never fails verify (cutover does not need it)."""
    if bridge_id is None or figs is None:
        return Check("bridge", "bridge vs re-embed", None, None, "", Status.SKIP, why)
    docs = figs.get("documents", {})
    k = plan.verify.k
    parts = [
        f"{name} {docs.get(f'recall@{k}_{name}'):.3f}"
        for name in ("old", "new", "bridge", "swap")
        if docs.get(f"recall@{k}_{name}") is not None
    ]
    summary = f"bridge {bridge_id}: recall@{k} " + ", ".join(parts) + f"; {figs['advice']}"
    return Check(
        "bridge",
        "bridge vs re-embed",
        figs.get("retention"),
        plan.bridge.min_retention,
        ">=",
        Status.SKIP,
        summary,
        tuple((key, value) for key, value in figs.items() if key != "advice"),
    )


def from_exact(
    plan: Plan,
    bridge_id: int,
    replaces_source: bool,
    corpus: int,
    own: Sequence[str],
    old_top: Sequence[Sequence[str]],
    new_top: Sequence[Sequence[str]],
    bridge_top: Sequence[Sequence[str]],
    swap_top: Sequence[Sequence[str]] | None,
) -> Check:
    """verify's bridge line from exact top-k lists verify computed in its streamed passes
    (no column held whole): old-model queries, new-model queries, bridged queries (on the
    source column) and naive-swap queries (new-model queries on the source column)."""
    k = plan.verify.k
    relevant = [[pk] for pk in own]
    result = Comparison(
        "documents",
        len(relevant),
        corpus,
        k,
        # With the old model retired, the "old" queries came through this very bridge.
        None if replaces_source else recall_at_k(old_top, relevant, k),
        recall_at_k(new_top, relevant, k),
        recall_at_k(bridge_top, relevant, k),
        None if swap_top is None else recall_at_k(swap_top, relevant, k),
    )
    return check(plan, bridge_id, figures([result], plan.bridge.min_retention))
