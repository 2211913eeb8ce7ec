"""Retrieval metrics and exact nearest-neighbour search for `verify`, on numpy arrays.

Pure: no database, no network. Distances follow pgvector's operators (`<=>` cosine distance,
`<->` L2, `<#>` negative inner product, `<+>` L1), so exact results here rank rows exactly
as an index-free `ORDER BY column <op> query` would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from migrator.plan.model import Metric

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
H = TypeVar("H", bound=Hashable)

# Distance matrices are computed in chunks of queries holding at most this many floats
# (128 MB), so 500 queries against millions of rows stay within memory.
_CHUNK_FLOATS = 1 << 25


def _unit(m: F32) -> F32:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F32 = (m / norms).astype(np.float32, copy=False)
    return out


def distances(queries: F32, matrix: F32, metric: Metric, *, unit_rows: bool = False) -> F32:
    """(n_queries, n_rows) distances as pgvector computes them; undefined ones (cosine with a
    zero vector) are +inf, so such rows rank last as they are never returned by an index.
    `unit_rows`: the matrix rows are already divided by their norms (cosine only)."""
    q = np.asarray(queries, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float32)
    if metric is Metric.COSINE:
        d = 1.0 - _unit(q) @ (m if unit_rows else _unit(m)).T
    elif metric is Metric.INNER_PRODUCT:
        d = -(q @ m.T)
    elif metric is Metric.L2:
        sq = (q * q).sum(1)[:, None] - 2.0 * (q @ m.T) + (m * m).sum(1)[None, :]
        d = np.sqrt(np.maximum(sq, 0.0))
    else:
        d = np.abs(q[:, None, :] - m[None, :, :]).sum(2)
    out = np.asarray(d, dtype=np.float32)
    out[~np.isfinite(out)] = np.inf
    return out


def exact_topk(
    queries: F32, matrix: F32, k: int, metric: Metric, *, chunk_floats: int = _CHUNK_FLOATS
) -> tuple[I64, npt.NDArray[np.float64]]:
    """Row positions and distances of the k nearest rows to each query, nearest first.

    Deterministic: the float32 pass only picks 2k candidates, whose distances are then computed
    again in float64 (`refine`), and ties are broken by row position, like a stable sort. (A
    float32 matrix product's last bits depend on the BLAS kernel's path, which can differ
    between runs; two rows that close would otherwise swap at the k-th place from one run to the
    next.) With fewer than k rows, all are returned.
    """
    nq, n = len(queries), len(matrix)
    kk = min(k, n)
    idx = np.empty((nq, kk), dtype=np.int64)
    dist = np.empty((nq, kk), dtype=np.float64)
    per = n * (matrix.shape[1] if metric is Metric.L1 else 1)
    step = max(1, chunk_floats // max(per, 1))
    cosine = metric is Metric.COSINE
    rows = _unit(matrix) if cosine else matrix  # once, not once per chunk
    for lo in range(0, nq, step):
        d = distances(queries[lo : lo + step], rows, metric, unit_rows=cosine)
        cand = _k_smallest(d, min(2 * k, n))
        idx[lo : lo + step], dist[lo : lo + step] = refine(
            queries[lo : lo + step], matrix, cand, 0, kk, metric
        )
    return idx, dist


def refine(
    queries: F32, rows: F32, cand: I64, offset: int, k: int, metric: Metric
) -> tuple[I64, npt.NDArray[np.float64]]:
    """The k nearest of each query's candidate rows (`cand`: positions in `rows`), by their
    distance computed again in float64 from the raw vectors, then by position (`offset` + the
    position: where `rows` starts in the column). Nearest first."""
    q = np.asarray(queries, dtype=np.float64)
    out_d = np.empty(cand.shape, dtype=np.float64)
    # Blocks of queries, so the gathered candidates stay small (at most ~2M floats).
    step = max(1, (1 << 21) // max(1, cand.shape[1] * rows.shape[1]))
    for lo in range(0, len(q), step):
        c = np.asarray(rows[cand[lo : lo + step]], dtype=np.float64)  # (b, c, dims)
        qq = q[lo : lo + step, None, :]
        if metric is Metric.COSINE:
            with np.errstate(divide="ignore", invalid="ignore"):
                d = 1.0 - (c * qq).sum(2) / (np.sqrt((c * c).sum(2)) * np.sqrt((qq * qq).sum(2)))
        elif metric is Metric.INNER_PRODUCT:
            d = -(c * qq).sum(2)
        elif metric is Metric.L2:
            d = np.sqrt(((c - qq) ** 2).sum(2))
        else:
            d = np.abs(c - qq).sum(2)
        d[~np.isfinite(d)] = np.inf
        out_d[lo : lo + step] = d
    pos = cand + offset
    order = np.lexsort((pos, out_d), axis=1)[:, :k]
    return np.take_along_axis(pos, order, axis=1), np.take_along_axis(out_d, order, axis=1)


def _k_smallest(d: F32, k: int) -> I64:
    """Positions of the k smallest values of each row, ties at the k-th value going to the
    lowest positions (argpartition alone picks an arbitrary subset of the tied rows)."""
    n = d.shape[1]
    if k >= n:
        return np.tile(np.arange(n, dtype=np.int64), (len(d), 1))
    kth = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
    within = d <= kth
    counts = within.sum(axis=1)
    out = np.empty((len(d), k), dtype=np.int64)
    exact = counts == k
    if exact.any():
        # np.nonzero walks row-major, so each row's k positions come out together, ascending.
        out[exact] = np.nonzero(within[exact])[1].reshape(-1, k)
    for i in np.flatnonzero(~exact):
        # More than k rows at most as far as the k-th: every strictly nearer row, then the
        # tied rows by position.
        cand = np.flatnonzero(within[i])
        order = np.lexsort((cand, d[i, cand]))
        out[i] = cand[order[:k]]
    return out


# ---- retrieval metrics: `retrieved[i]` is query i's ranked list, best first --------------------


def hit_rate_at_k(retrieved: Sequence[Sequence[H]], targets: Sequence[H], k: int) -> float:
    """Share of queries whose one right answer is in their top k (self-retrieval recall@k)."""
    _same_length(retrieved, targets)
    if not targets:
        return 0.0
    return sum(t in r[:k] for r, t in zip(retrieved, targets, strict=True)) / len(targets)


def recall_at_k(
    retrieved: Sequence[Sequence[H]], relevant: Sequence[Collection[H]], k: int
) -> float:
    """Mean over queries of |top k ∩ relevant| / |relevant| (queries without any are skipped)."""
    _same_length(retrieved, relevant)
    pairs = zip(retrieved, relevant, strict=True)
    scores = [len(set(r[:k]) & set(rel)) / len(rel) for r, rel in pairs if rel]
    return sum(scores) / len(scores) if scores else 0.0


def mrr_at_k(retrieved: Sequence[Sequence[H]], relevant: Sequence[Collection[H]], k: int) -> float:
    """Mean reciprocal rank of the first relevant result within the top k (0 when none)."""
    _same_length(retrieved, relevant)
    total = 0.0
    for r, rel in zip(retrieved, relevant, strict=True):
        rs = set(rel)
        total += next((1.0 / rank for rank, h in enumerate(r[:k], 1) if h in rs), 0.0)
    return total / len(relevant) if relevant else 0.0


def ndcg_at_k(retrieved: Sequence[Sequence[H]], relevant: Sequence[Collection[H]], k: int) -> float:
    """Mean nDCG@k with binary gains: DCG = Σ 1/log2(rank+1) over relevant hits, over the ideal."""
    _same_length(retrieved, relevant)
    scores = []
    for r, rel in zip(retrieved, relevant, strict=True):
        rs = set(rel)
        if not rs:
            continue
        dcg = sum(1.0 / math.log2(rank + 1) for rank, h in enumerate(r[:k], 1) if h in rs)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(rs), k) + 1))
        scores.append(dcg / ideal)
    return sum(scores) / len(scores) if scores else 0.0


def overlap_at_k(a: Sequence[Sequence[H]], b: Sequence[Sequence[H]], k: int) -> float:
    """Mean |top k of a ∩ top k of b| / k: how much two models agree on what is near."""
    _same_length(a, b)
    if not a:
        return 0.0
    return sum(len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b, strict=True)) / len(a)


def ann_recall(ann: Sequence[Sequence[H]], exact: Sequence[Sequence[H]], k: int) -> float:
    """Index recall@k: mean |ANN top k ∩ exact top k| / k (missing ANN results count as misses)."""
    return overlap_at_k(ann, exact, k)


def ann_recall_with_ties(
    ann_true_dist: Sequence[Sequence[float]],
    kth_exact: Sequence[float],
    k: int,
    *,
    rel_tol: float = 1e-5,
) -> float:
    """Index recall@k that counts as a hit any returned row at most as far as the exact k-th
    neighbour: with equal distances (duplicate texts) which of the tied rows is returned is
    arbitrary, and a set intersection would count a right answer as a miss."""
    _same_length(ann_true_dist, kth_exact)
    if not kth_exact:
        return 0.0
    total = 0
    for dists, kth in zip(ann_true_dist, kth_exact, strict=True):
        limit = kth + rel_tol * max(1.0, abs(kth))
        total += sum(1 for d in list(dists)[:k] if d <= limit)
    return total / (k * len(kth_exact))


def ratio(new: float, old: float) -> float | None:
    """new / old, or None when old is 0 (no baseline to compare with)."""
    return new / old if old > 0 else None


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} result lists for {len(b)} queries")


# ---- vectors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    rows: int
    wrong_dimension: int
    non_finite: int
    zero: int
    off_norm: int
    norm_min: float | None
    norm_max: float | None
    norm_mean: float | None

    @property
    def invalid(self) -> int:
        return self.wrong_dimension + self.non_finite + self.zero + self.off_norm


def vector_health(matrix: F32, dimensions: int, *, normalized: bool, norm_tol: float) -> Health:
    """Counts of bad rows: wrong dimension, NaN/Inf, zero, and (when the model normalises)
    norms further than `norm_tol` from 1. A row is counted once, under its first problem."""
    n = len(matrix)
    if n == 0:
        return Health(0, 0, 0, 0, 0, None, None, None)
    if matrix.ndim != 2 or matrix.shape[1] != dimensions:
        return Health(n, n, 0, 0, 0, None, None, None)
    finite = np.asarray(np.isfinite(matrix).all(axis=1), dtype=bool)
    norms = np.linalg.norm(np.where(finite[:, None], matrix, 0.0), axis=1)
    zero = finite & (norms == 0)
    off = np.zeros(n, dtype=bool)
    if normalized:
        off = finite & ~zero & (np.abs(norms - 1.0) > norm_tol)
    fn = norms[finite]
    return Health(
        rows=n,
        wrong_dimension=0,
        non_finite=int((~finite).sum()),
        zero=int(zero.sum()),
        off_norm=int(off.sum()),
        norm_min=float(fn.min()) if fn.size else None,
        norm_max=float(fn.max()) if fn.size else None,
        norm_mean=float(fn.mean()) if fn.size else None,
    )


def rowwise_cosine(a: F32, b: F32) -> npt.NDArray[np.float64]:
    """Cosine similarity of a[i] and b[i]; 0 where either row is zero."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    num = (a64 * b64).sum(axis=1)
    out: npt.NDArray[np.float64] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


def derive_query(text: str, rng: random.Random, *, min_words: int = 8, max_words: int = 15) -> str:
    """A query drawn from a row's text: a random span of 8-15 of its words (all if fewer)."""
    words = text.split()
    size = rng.randint(min_words, max_words)
    if len(words) <= size:
        return " ".join(words)
    start = rng.randrange(0, len(words) - size + 1)
    return " ".join(words[start : start + size])
