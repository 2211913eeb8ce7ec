"""Exact top-k and vector health over a column read in chunks, in memory that does not grow
with the table: a running top-k per query, merged chunk by chunk, and running health counts.

Pure: numpy only. Rows arrive in a fixed order (positions 0, 1, ... across chunks); ties are
broken by position, so the result equals `metrics.exact_topk` over the whole column at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from migrator.plan.model import Metric
from migrator.verify.metrics import F32, I64, Health, _k_smallest, _unit, distances, refine

# Distance block per chunk: at most this many floats (16 MB) whatever the query count.
BLOCK_FLOATS = 1 << 22


def chunk_rows(n_queries: int, dims: int, *, block_floats: int = BLOCK_FLOATS) -> int:
    """Rows per chunk so that a chunk and its distance block stay within `block_floats` each."""
    per_row = max(n_queries, dims, 1)
    return max(512, block_floats // per_row)


class RunningTopK:
    """The k nearest rows seen so far for each query (positions and distances, nearest first)."""

    def __init__(self, queries: F32, k: int, metric: Metric) -> None:
        self.metric = metric
        self.k = k
        q = np.asarray(queries, dtype=np.float32)
        self.raw = q
        self.queries = _unit(q) if metric is Metric.COSINE and len(q) else q
        n = len(q)
        self.pos: I64 = np.zeros((n, 0), dtype=np.int64)
        # Distances in float64, recomputed for each chunk's candidates (metrics.refine): the
        # result does not depend on the float32 pass's last bits.
        self.dist: npt.NDArray[np.float64] = np.zeros((n, 0), dtype=np.float64)
        self.rows = 0

    def add(self, offset: int, chunk: F32) -> None:
        """Merge the rows of `chunk`, whose first row is at position `offset`."""
        self.rows += len(chunk)
        if len(self.queries) == 0 or len(chunk) == 0:
            return
        cosine = self.metric is Metric.COSINE
        rows = _unit(chunk) if cosine else chunk
        d = distances(self.queries, rows, self.metric, unit_rows=cosine)
        kk = min(self.k, len(chunk))
        cand = _k_smallest(d, min(2 * self.k, len(chunk)))
        part, pd = refine(self.raw, chunk, cand, offset, kk, self.metric)
        pos = np.concatenate([self.pos, part], axis=1)
        dist = np.concatenate([self.dist, pd], axis=1)
        # By distance, then position: the earlier row wins a tie, as in one whole-column pass.
        order = np.lexsort((pos, dist), axis=1)[:, : self.k]
        self.pos = np.take_along_axis(pos, order, axis=1)
        self.dist = np.take_along_axis(dist, order, axis=1)

    def positions(self) -> set[int]:
        return {int(p) for p in self.pos.ravel()}


@dataclass
class RunningHealth:
    """vector_health's counts, accumulated chunk by chunk."""

    dimensions: int
    normalized: bool
    norm_tol: float
    rows: int = 0
    non_finite: int = 0
    zero: int = 0
    off_norm: int = 0
    _norms: list[tuple[float, float, float, int]] = field(default_factory=list)

    def add(self, offset: int, chunk: F32) -> None:
        del offset
        n = len(chunk)
        if n == 0:
            return
        self.rows += n
        finite = np.asarray(np.isfinite(chunk).all(axis=1), dtype=bool)
        norms = np.linalg.norm(np.where(finite[:, None], chunk, 0.0), axis=1)
        zero = finite & (norms == 0)
        self.non_finite += int((~finite).sum())
        self.zero += int(zero.sum())
        if self.normalized:
            self.off_norm += int((finite & ~zero & (np.abs(norms - 1.0) > self.norm_tol)).sum())
        fn = norms[finite]
        if fn.size:
            self._norms.append((float(fn.min()), float(fn.max()), float(fn.sum()), int(fn.size)))

    def result(self) -> Health:
        if not self._norms:
            return Health(self.rows, 0, self.non_finite, self.zero, self.off_norm, None, None, None)
        count = sum(c for *_, c in self._norms)
        return Health(
            rows=self.rows,
            wrong_dimension=0,
            non_finite=self.non_finite,
            zero=self.zero,
            off_norm=self.off_norm,
            norm_min=min(m for m, *_ in self._norms),
            norm_max=max(m for _, m, *_ in self._norms),
            norm_mean=sum(s for *_, s, _ in self._norms) / count,
        )
