"""The index gate and the ladder's recommendation, from two measures (ladder.Measure): the
production index on the source column and the new one, on the same sampled queries.

Pure: no database. The default gate is relative: the new index's recall@k at today's search
settings may be at most `verify.max_recall_drop` below production's at the same settings;
`verify.min_index_recall`, when set, adds an absolute floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrator.plan.model import Plan
from migrator.verify.ladder import Measure, Point
from migrator.verify.report import Block, Check, Section, Status, fmt_figure, gate


@dataclass(frozen=True)
class Recommendation:
    target: float  # what production is climbed to (target_recall, or the floor when set)
    need: float  # what the new index is climbed to: the target, and the gate's threshold
    new: Point | None  # smallest ladder point of the new index reaching the target
    production: Point | None
    both: int | None  # smallest value reaching it on both (same setting), else None
    text: str


def _first(m: Measure, target: float) -> Point | None:
    return next((p for p in m.points if p.value is not None and p.recall >= target), None)


def _describe(m: Measure, p: Point | None) -> str:
    if p is None:
        return "-"
    if p.value is None:
        return f"{fmt_figure(p.recall)} (exact scan) at {p.p99_ms:.1f} ms p99"
    return f"{m.subject.setting} {p.value} gives {fmt_figure(p.recall)} at {p.p99_ms:.1f} ms p99"


def recommend(plan: Plan, prod: Measure, new: Measure) -> Recommendation:
    """The smallest ladder value whose recall reaches the target, per index and for both."""
    target = plan.verify.min_index_recall or plan.verify.target_recall
    # The new index must also pass the gate: at least production today minus the drop.
    today = prod.today or (prod.points[0] if prod.points else None)
    need = max(target, today.recall - plan.verify.max_recall_drop) if today else target
    n, p = _first(new, need), _first(prod, target)
    same = prod.subject.setting == new.subject.setting and prod.subject.setting is not None
    both = None
    if n is not None and n.value is not None and same and p is not None and p.value is not None:
        both = max(n.value, p.value)
    elif n is not None and prod.subject.index is None:
        both = n.value  # production is exact: only the new index needs the setting
    setting = new.subject.setting or "the search setting"
    if n is None:
        top = new.points[-1] if new.points else None
        text = (
            f"no {setting} in the ladder reaches {fmt_figure(need)} on the new index "
            f"(best: {_describe(new, top)}): rebuild it with a larger m / ef_construction "
            "(or lists), or add larger values to verify.ladder"
        )
    else:
        text = f"{_describe(new, n)} on the new index"
        if prod.subject.index is not None:
            text += f"; production index: {_describe(prod, p) if p else 'never reaches it'}"
        text += f"; production today: {_today(prod, today)}"
        if both is not None:
            text += f". Recommended: index.{_key(setting)}: {both}"
    return Recommendation(target, need, n, p, both, text)


def _key(setting: str) -> str:
    return {"hnsw.ef_search": "ef_search", "ivfflat.probes": "probes"}.get(setting, setting)


def _today(prod: Measure, today: Point | None) -> str:
    if today is None:
        return "-"
    if today.value is None:
        return f"exact results (no index on {prod.subject.column}) at {today.p99_ms:.1f} ms p99"
    return f"{fmt_figure(today.recall)} at {prod.subject.setting} {today.value}"


def index_check(plan: Plan, prod: Measure, new: Measure, rec: Recommendation) -> Check:
    """recall@k of the new index vs production's at today's settings (same queries)."""
    k = plan.verify.k
    n, p = new.today, prod.today or (prod.points[0] if prod.points else None)
    drop = plan.verify.max_recall_drop
    floor = plan.verify.min_index_recall
    details: dict[str, Any] = {
        "index": new.subject.index,
        "queries": new.queries,
        "production_index": prod.subject.index or "none (exact scan)",
        "production_recall": p.recall if p else None,
        "new_recall": n.recall if n else None,
        "max_recall_drop": drop,
        "min_index_recall": floor,
        "index_scan_used": n.index_used if n else False,
        "planner_chooses_index": n.planner_chooses if n else False,
        "production_index_used": p.index_used if p else False,
        "latency_ms_p50": n.p50_ms if n else None,
        "latency_ms_p99": n.p99_ms if n else None,
        "production_latency_ms_p99": p.p99_ms if p else None,
        "short_results": n.short_results if n else None,
        **plan.index.search_settings(),
        "recommendation": rec.text,
    }
    if n is None or p is None:
        return gate("index", "index recall", None, 0.0, ">=", "no measurement", details, over=0)
    threshold = max(p.recall - drop, floor or 0.0)
    if not n.index_used:
        return Check(
            "index",
            "index recall",
            n.recall,
            threshold,
            ">=",
            Status.FAIL,
            f"the planner did not use {new.subject.index}: the measured recall says nothing "
            "about the index",
            tuple(details.items()),
        )
    prod_name = (
        f"production {prod.subject.index}"
        if prod.subject.index
        else f"production (no index on {prod.subject.column}: exact, recall 1.0)"
    )
    at = f"{new.subject.setting} {n.value}"
    summary = (
        f"recall@{k} new {fmt_figure(n.recall)} vs {prod_name} {fmt_figure(p.recall)} "
        f"at {at} over {new.queries} queries (allowed drop {fmt_figure(drop)}"
        + (f", floor {fmt_figure(floor)}" if floor is not None else "")
        + ")"
    )
    if not n.planner_chooses:
        summary += (
            f"; at this size the planner prefers an exact scan to {new.subject.index} (the "
            "service gets exact results until the table grows), so the index was measured "
            "with enable_seqscan off"
        )
    return gate(
        "index", "index recall", n.recall, threshold, ">=", summary, details, over=new.queries
    )


def ladder_section(plan: Plan, prod: Measure, new: Measure, rec: Recommendation) -> Section:
    """Both indexes side by side at every ladder value, and the recommendation."""
    k = plan.verify.k
    rows: list[tuple[str, ...]] = []
    values = sorted({p.value for m in (prod, new) for p in m.points if p.value is not None})
    for v in values:
        a, b = prod.at(v), new.at(v)
        mark = " (today)" if v == new.current else ""
        rows.append(
            (
                f"{v}{mark}",
                fmt_figure(b.recall) if b else "-",
                f"{b.p50_ms:.2f} / {b.p99_ms:.2f}" if b else "-",
                fmt_figure(a.recall) if a else "-",
                f"{a.p50_ms:.2f} / {a.p99_ms:.2f}" if a else "-",
            )
        )
    exact = prod.at(None)
    if exact is not None:
        rows.append(
            (
                "exact (production has no index)",
                "-",
                "-",
                "1.0 (by definition)",
                f"{exact.p50_ms:.2f} / {exact.p99_ms:.2f}",
            )
        )
    setting = new.subject.setting or "value"
    block = Block(
        f"recall@{k} and database latency (ms, p50 / p99) per {setting}",
        (setting, "new recall", "new ms", "production recall", "production ms"),
        tuple(rows),
    )
    paras = (
        f"Target recall {fmt_figure(rec.target)} (the new index also needs the gate's "
        f"{fmt_figure(rec.need)}): {rec.text}.",
        f"New index {new.subject.index} on {new.subject.column}; production: "
        + (
            f"{prod.subject.index} on {prod.subject.column}"
            if prod.subject.index
            else f"no index on {prod.subject.column} (the service scans exactly)"
        )
        + f". {new.queries} sampled queries; exact ground truth per column.",
    )
    return Section("ladder", "Index ladder", paras, (block,))


def ladder_details(prod: Measure, new: Measure, rec: Recommendation) -> dict[str, Any]:
    """The ladder as data, for the stored report."""
    return {
        "new": [p.as_dict() for p in new.points],
        "production": [p.as_dict() for p in prod.points],
        "setting": new.subject.setting,
        "target_recall": rec.target,
        "recommended": rec.both,
        "recommendation": rec.text,
    }
