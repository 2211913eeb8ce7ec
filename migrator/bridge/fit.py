"""Fit a map from the new model's space into the old one, from paired vectors (numpy only).

Pure: no database, no network. Every method is fitted from sufficient statistics (row count,
sums, X'X, X'Y) accumulated chunk by chunk, so memory is O(d^2) whatever the number of pairs;
only the held-out pairs that choose between the candidates are kept in memory.

Methods: orthogonal Procrustes (equal dimensions, rotation only), ridge least squares (affine,
any dimensions) and its low-rank (reduced-rank regression) variants. The candidate with the
best held-out pair recall@k wins (ties: the simpler one, in CANDIDATE order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

PROCRUSTES = "procrustes"
RIDGE = "ridge"
LOW_RANK = "low_rank"
RIDGE_LAMBDAS = (1e-4, 1e-2, 1e-1)  # relative to the mean eigenvalue of the centred X'X
LOW_RANK_FRACTIONS = (0.5, 0.25)


def unit_rows(m: npt.NDArray[np.floating]) -> F32:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    out: F32 = (m / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


@dataclass(frozen=True)
class BridgeMap:
    """y = normalise(x @ weights + bias): a new-model vector mapped into the old space."""

    method: str
    weights: F32  # (new dims, old dims)
    bias: F32  # (old dims,)
    params: tuple[tuple[str, float], ...] = ()

    @property
    def dims_in(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dims_out(self) -> int:
        return int(self.weights.shape[1])

    def apply(self, x: npt.NDArray[np.floating], *, normalize: bool = True) -> F32:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dims_in:
            raise ValueError(f"the bridge maps {self.dims_in}-dim vectors, got {x.shape[1]}")
        y = x @ self.weights + self.bias
        return unit_rows(y) if normalize else y.astype(np.float32)

    def label(self) -> str:
        extra = ", ".join(f"{k} {v:g}" for k, v in self.params)
        return f"{self.method} ({extra})" if extra else self.method


@dataclass
class Stats:
    """Sufficient statistics of paired rows (x new, y old), accumulated in float64."""

    dims_in: int
    dims_out: int
    n: int = 0
    sx: F64 = field(init=False)
    sy: F64 = field(init=False)
    xx: F64 = field(init=False)
    xy: F64 = field(init=False)

    def __post_init__(self) -> None:
        self.sx = np.zeros(self.dims_in)
        self.sy = np.zeros(self.dims_out)
        self.xx = np.zeros((self.dims_in, self.dims_in))
        self.xy = np.zeros((self.dims_in, self.dims_out))

    def add(self, x: npt.NDArray[np.floating], y: npt.NDArray[np.floating]) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError("x and y must have the same number of rows")
        if x.shape[1] != self.dims_in or y.shape[1] != self.dims_out:
            raise ValueError(
                f"pairs of {x.shape[1]}->{y.shape[1]} dims, expected "
                f"{self.dims_in}->{self.dims_out}"
            )
        x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.n += x.shape[0]
        self.sx += x64.sum(axis=0)
        self.sy += y64.sum(axis=0)
        self.xx += x64.T @ x64
        self.xy += x64.T @ y64

    def centred(self) -> tuple[F64, F64, F64, F64]:
        """Means and centred X'X, X'Y."""
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx - self.n * np.outer(mx, mx)
        cxy = self.xy - self.n * np.outer(mx, my)
        return mx, my, cxx, cxy


def procrustes(stats: Stats) -> BridgeMap:
    """The rotation W minimising ||XW - Y|| (Schönemann 1966): W = U V' of svd(X'Y)."""
    if stats.dims_in != stats.dims_out:
        raise ValueError("orthogonal Procrustes needs equal dimensions")
    u, _, vt = np.linalg.svd(stats.xy)
    w = (u @ vt).astype(np.float32)
    return BridgeMap(PROCRUSTES, w, np.zeros(stats.dims_out, dtype=np.float32))


def ridge(stats: Stats, lam: float) -> BridgeMap:
    """Affine least squares with a ridge penalty of `lam` times the mean eigenvalue of the
    centred X'X (scale-free: the same lam suits any norm or dimension)."""
    mx, my, cxx, cxy = stats.centred()
    mean_eig = max(float(np.trace(cxx)) / stats.dims_in, 1e-12)
    w = np.linalg.solve(cxx + lam * mean_eig * np.eye(stats.dims_in), cxy)
    b = my - mx @ w
    return BridgeMap(RIDGE, w.astype(np.float32), b.astype(np.float32), (("lambda", lam),))


def low_rank(stats: Stats, full: BridgeMap, rank: int) -> BridgeMap:
    """Reduced-rank regression: the ridge map projected on the top `rank` directions of its
    fitted values (their covariance W' Cxx W needs only the statistics)."""
    _, my, cxx, _ = stats.centred()
    w = full.weights.astype(np.float64)
    cov = w.T @ cxx @ w
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:rank]]
    wr = w @ top @ top.T
    mx = stats.sx / stats.n
    b = my - mx @ wr
    params = (*full.params, ("rank", float(rank)))
    return BridgeMap(LOW_RANK, wr.astype(np.float32), b.astype(np.float32), params)


def candidates(stats: Stats) -> list[BridgeMap]:
    """Every map worth trying for these dimensions, simplest first."""
    if stats.n < 2:
        raise ValueError(f"a bridge needs at least 2 paired rows, got {stats.n}")
    out: list[BridgeMap] = []
    if stats.dims_in == stats.dims_out:
        out.append(procrustes(stats))
    ridges = [ridge(stats, lam) for lam in RIDGE_LAMBDAS]
    out += ridges
    smallest = min(stats.dims_in, stats.dims_out)
    for frac in LOW_RANK_FRACTIONS:
        rank = int(smallest * frac)
        if 1 <= rank < smallest:
            out += [low_rank(stats, r, rank) for r in ridges[1:2]]
    return out


def pair_recall(bridge: BridgeMap, x: F32, y: F32, k: int = 10) -> float:
    """Share of held-out rows whose mapped new vector finds the row's own old vector among
    the top k old vectors of the held-out set (cosine)."""
    if x.shape[0] == 0:
        return 0.0
    mapped = bridge.apply(x)
    sims = mapped @ unit_rows(y).T
    own = np.diag(sims)
    # Rank of the own vector: how many others score strictly higher.
    better = (sims > own[:, None]).sum(axis=1)
    return float(np.mean(better < k))


@dataclass(frozen=True)
class FitResult:
    bridge: BridgeMap
    train_rows: int
    holdout_rows: int
    scores: tuple[tuple[str, float], ...]  # candidate label -> held-out pair recall@k
    k: int
    # The held-out pairs themselves (at most max_holdout rows): the corpus of the comparison.
    holdout_x: F32 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    holdout_y: F32 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    @property
    def holdout_recall(self) -> float:
        return dict(self.scores)[self.bridge.label()]


def fit(stats: Stats, holdout_x: F32, holdout_y: F32, *, k: int = 10) -> FitResult:
    """Fit every candidate on the training statistics; keep the best on the held-out pairs."""
    scored = [(c, pair_recall(c, holdout_x, holdout_y, k)) for c in candidates(stats)]
    best = max(scored, key=lambda cs: cs[1])[0]  # max keeps the first of equals: simplest
    return FitResult(
        best,
        stats.n,
        int(holdout_x.shape[0]),
        tuple((c.label(), round(s, 4)) for c, s in scored),
        k,
        holdout_x,
        holdout_y,
    )


def fit_pairs(
    chunks: Iterable[tuple[F32, F32, npt.NDArray[np.bool_]]],
    dims_in: int,
    dims_out: int,
    *,
    k: int = 10,
    max_holdout: int = 2000,
) -> FitResult:
    """From chunks of (new, old, is_holdout): training rows into statistics, held-out rows kept
    (at most `max_holdout`; extra held-out rows train)."""
    stats = Stats(dims_in, dims_out)
    hx: list[F32] = []
    hy: list[F32] = []
    held = 0
    for x, y, hold in chunks:
        hold = hold.copy()
        room = max_holdout - held
        idx = np.flatnonzero(hold)
        if idx.size > room:
            hold[idx[room:]] = False
        if hold.any():
            hx.append(x[hold])
            hy.append(y[hold])
            held += int(hold.sum())
        if (~hold).any():
            stats.add(x[~hold], y[~hold])
    x_h = np.concatenate(hx) if hx else np.zeros((0, dims_in), dtype=np.float32)
    y_h = np.concatenate(hy) if hy else np.zeros((0, dims_out), dtype=np.float32)
    return fit(stats, x_h, y_h, k=k)
