"""Real queries without labels (`verify --queries`): how far the two models agree on the top k
(overlap@k, rank-biased overlap), and side by side the top results of the queries where they
disagree most, for a reviewer to judge.

Pure apart from reading the queries file. Agreement is not quality: a better model may well
disagree; so the check informs unless `verify.min_query_overlap` sets a floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from migrator.errors import ConfigError
from migrator.plan.model import Plan
from migrator.verify.metrics import overlap_at_k
from migrator.verify.report import Block, Check, Section, Status, fmt_figure, gate

RBO_P = 0.9
EXAMPLES = 5


def load_queries(path: Path) -> list[str]:
    """One query per line; blank lines and duplicates are dropped (first kept)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"queries file {path}: {getattr(exc, 'strerror', None) or exc}",
            hint="give a UTF-8 text file with one query per line",
        ) from None
    out = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not out:
        raise ConfigError(
            f"queries file {path} holds no query", hint="one query per line, e.g. from a search log"
        )
    return out


def rbo(a: Sequence[str], b: Sequence[str], p: float = RBO_P) -> float:
    """Extrapolated rank-biased overlap (Webber et al. 2010) of two ranked lists of depth k:
    1.0 for the same list in the same order, 0.0 for nothing in common; the top weighs most."""
    k = max(len(a), len(b))
    if k == 0:
        return 1.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x = a[d - 1] if d <= len(a) else None
        y = b[d - 1] if d <= len(b) else None
        if x is not None and x == y:
            overlap += 1
        else:
            if x is not None:
                overlap += x in seen_b
                seen_a.add(x)
            if y is not None:
                overlap += y in seen_a
                seen_b.add(y)
        total += (overlap / d) * p**d
    return (overlap / k) * p**k + (1 - p) / p * total


def agreement(
    plan: Plan,
    queries: Sequence[str],
    old_top: Sequence[Sequence[str]],
    new_top: Sequence[Sequence[str]],
    not_embedded: int,
    seconds: float,
) -> tuple[Check, list[float]]:
    """overlap@k and RBO of the two models' exact top k on the real queries; per-query RBO."""
    k = plan.verify.k
    per = [rbo(list(a[:k]), list(b[:k])) for a, b in zip(old_top, new_top, strict=True)]
    overlap = overlap_at_k(old_top, new_top, k) if queries else 0.0
    mean_rbo = sum(per) / len(per) if per else 0.0
    details = {
        "queries": len(queries),
        "not_embedded": not_embedded,
        f"overlap@{k}": overlap,
        "rbo": mean_rbo,
        "rbo_p": RBO_P,
        "identical_top_k": sum(1 for a, b in zip(old_top, new_top, strict=True) if a == b),
        "no_common_result": sum(
            1 for a, b in zip(old_top, new_top, strict=True) if not set(a) & set(b)
        ),
    }
    summary = (
        f"overlap@{k} {fmt_figure(overlap)}, rank-biased overlap {fmt_figure(mean_rbo)} "
        f"between the old and new model over {len(queries)} real queries"
    )
    floor = plan.verify.min_query_overlap
    if floor is None:
        status = Status.INFO if queries else Status.FAIL
        if not queries:
            summary = f"nothing to measure: {summary}"
        check = Check(
            "queries",
            "real queries (agreement)",
            overlap,
            None,
            "",
            status,
            summary + ("; informative (set verify.min_query_overlap to gate)" if queries else ""),
            tuple(details.items()),
            seconds,
        )
        return check, per
    check = gate(
        "queries",
        "real queries (agreement)",
        overlap,
        floor,
        ">=",
        summary,
        details,
        seconds,
        over=len(queries),
    )
    return check, per


def examples_section(
    plan: Plan,
    queries: Sequence[str],
    old_top: Sequence[Sequence[str]],
    new_top: Sequence[Sequence[str]],
    per_rbo: Sequence[float],
    labels: Mapping[str, str],
    *,
    n: int = EXAMPLES,
) -> Section:
    """The `n` queries the models disagree on most (lowest RBO), their top results side by
    side; a result both models return is marked with '='."""
    k = plan.verify.k
    order = sorted(range(len(queries)), key=lambda i: (per_rbo[i], i))[:n]
    blocks = []
    for i in order:
        old, new = list(old_top[i][:k]), list(new_top[i][:k])
        both = set(old) & set(new)
        rows = []
        for rank in range(max(len(old), len(new))):
            cells = []
            for ids in (old, new):
                if rank < len(ids):
                    pk = ids[rank]
                    mark = "= " if pk in both else ""
                    cells.append(f"{mark}{pk}: {labels.get(pk, '')}")
                else:
                    cells.append("")
            rows.append((str(rank + 1), *cells))
        title = f"“{_short(queries[i], 120)}” (RBO {fmt_figure(per_rbo[i])})"
        blocks.append(Block(title, ("rank", "old model", "new model"), tuple(rows)))
    paras = (
        f"The {len(order)} real queries on which the two models' exact top {k} differ most "
        "(lowest rank-biased overlap). '=' marks a result both models return. Judge whether the "
        "new model's results serve the query as well.",
    )
    return Section("examples", "Where the models disagree", paras, tuple(blocks))


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
