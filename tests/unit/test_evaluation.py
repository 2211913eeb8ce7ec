"""Pure metrics of `verify`: hand-computed cases, naive twins, and properties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.plan.model import Metric
from migrator.verify.metrics import (
    ann_recall,
    ann_recall_with_ties,
    derive_query,
    distances,
    exact_topk,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    ratio,
    recall_at_k,
    rowwise_cosine,
    vector_health,
)
from migrator.verify.streaming import RunningTopK

RANKED = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["q", "r", "s", "t"]]
RELEVANT = [{"c"}, {"x", "w"}, {"nothing"}]


def test_hit_rate_counts_own_row_within_k() -> None:
    assert hit_rate_at_k(RANKED, ["c", "w", "q"], 3) == pytest.approx(2 / 3)
    assert hit_rate_at_k(RANKED, ["c", "w", "q"], 4) == 1.0
    assert hit_rate_at_k([], [], 10) == 0.0


def test_recall_mrr_ndcg_hand_computed() -> None:
    # query 1: c at rank 3; query 2: x at 1 (w at 4, outside k=3); query 3: none.
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 + 0.5 + 0) / 3)
    assert mrr_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 / 3 + 1 + 0) / 3)
    n1 = (1 / math.log2(4)) / 1.0
    n2 = 1.0 / (1 + 1 / math.log2(3))
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx((n1 + n2 + 0) / 3)
    assert ndcg_at_k(RANKED, RELEVANT, 4) == pytest.approx(
        (n1 + (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)) + 0) / 3
    )


def test_queries_without_relevant_ids_are_skipped_by_recall_and_ndcg() -> None:
    assert recall_at_k([["a"], ["b"]], [{"a"}, set()], 1) == 1.0
    assert ndcg_at_k([["a"], ["b"]], [{"a"}, set()], 1) == 1.0


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 result lists for 1 queries"):
        recall_at_k([["a"], ["b"]], [{"a"}], 1)


def test_overlap_and_ann_recall() -> None:
    a = [[1, 2, 3, 4], [5, 6, 7, 8]]
    b = [[4, 3, 9, 10], [5, 6, 7, 8]]
    assert overlap_at_k(a, b, 4) == pytest.approx((0.5 + 1.0) / 2)
    assert ann_recall([[1, 2]], [[1, 2, 3, 4]], 4) == 0.5  # short results count as misses


def test_ann_recall_with_ties_counts_equally_near_rows() -> None:
    # exact k-th distance 0.3: a returned row at 0.3 (a tie) is a hit, one at 0.31 is not.
    assert ann_recall_with_ties([[0.1, 0.2, 0.3]], [0.3], 3) == 1.0
    assert ann_recall_with_ties([[0.1, 0.2, 0.31]], [0.3], 3) == pytest.approx(2 / 3)
    assert ann_recall_with_ties([[0.1]], [0.3], 3) == pytest.approx(1 / 3)


def test_ratio() -> None:
    assert ratio(0.9, 0.6) == pytest.approx(1.5)
    assert ratio(0.5, 0.0) is None


@pytest.mark.parametrize("metric", list(Metric))
def test_exact_topk_matches_a_naive_full_sort(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    idx, dist = exact_topk(q, m, 10, metric, chunk_floats=900)  # forces several chunks
    for i in range(len(q)):
        naive = []
        for j in range(len(m)):
            a, b = q[i].astype(np.float64), m[j].astype(np.float64)
            d = {
                Metric.COSINE: 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                Metric.L2: np.linalg.norm(a - b),
                Metric.INNER_PRODUCT: -(a @ b),
                Metric.L1: np.abs(a - b).sum(),
            }[metric]
            naive.append((d, j))
        naive.sort()
        assert idx[i].tolist() == [j for _, j in naive[:10]]
        np.testing.assert_allclose(dist[i], [d for d, _ in naive[:10]], rtol=1e-4, atol=1e-4)


def test_exact_topk_ties_and_small_matrices() -> None:
    m = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    idx, dist = exact_topk(np.array([[1, 0]], dtype=np.float32), m, 10, Metric.COSINE)
    assert idx.tolist() == [[0, 1, 2]]  # fewer rows than k; ties in row order
    np.testing.assert_allclose(dist[0], [0, 0, 1], atol=1e-6)


def _distances64(q: np.ndarray, m: np.ndarray, metric: Metric) -> np.ndarray:
    """pgvector's distances in float64, written out here (an independent reference)."""
    q64, m64 = q.astype(np.float64), m.astype(np.float64)
    if metric is Metric.COSINE:
        nq = np.linalg.norm(q64, axis=1)[:, None]
        nm = np.linalg.norm(m64, axis=1)[None, :]
        return 1.0 - (q64 @ m64.T) / (nq * nm)
    if metric is Metric.INNER_PRODUCT:
        return -(q64 @ m64.T)
    return np.sqrt(((q64[:, None, :] - m64[None, :, :]) ** 2).sum(2))


def test_exact_topk_is_the_same_whatever_the_float32_pass_rounds() -> None:
    # Two rows whose distances differ below float32's resolution: the float32 pass cannot tell
    # them apart (its last bits depend on the BLAS kernel's path, which changed between runs
    # of the CI's verify test), the float64 refinement can, so the order is fixed.
    rng = np.random.default_rng(3)
    base = rng.normal(size=64).astype(np.float32)
    near = base.copy()
    near[0] = np.nextafter(near[0], np.float32(np.inf))  # one ulp apart
    # near (one ulp towards the query) comes after base: a float32 tie would put base first.
    m = np.vstack([rng.normal(size=(50, 64)).astype(np.float32), base, near])
    q = base[None, :] + np.float32(1e-3)
    full = _distances64(q, m, Metric.L2)
    want = np.argsort(full[0], kind="stable")[:10].tolist()
    for chunk_floats in (10, 100, 10_000):
        idx, _ = exact_topk(q, m, 10, Metric.L2, chunk_floats=chunk_floats)
        assert idx[0].tolist() == want
    top = RunningTopK(q, 10, Metric.L2)
    for lo in range(0, len(m), 7):  # chunks that split the pair differently
        top.add(lo, m[lo : lo + 7])
    assert top.pos[0].tolist() == want


def test_exact_topk_breaks_ties_at_the_kth_place_by_row_position() -> None:
    # Real ties: a corpus where many documents share one text (duplicates are common in real
    # tables: boilerplate, empty templates), embedded by the local model. The k-th place is
    # shared by far more rows than fit; the lowest row positions must win, every time, as a
    # stable sort of every distance would decide.
    from migrator.embedding.local import HashEmbedder

    model = HashEmbedder("ties", 64)
    texts = []
    for i in range(400):
        texts.append("shared boilerplate text about refunds" if i % 3 == 0 else f"doc {i} {i % 7}")
    m = model.encode(texts)
    q = model.encode(["boilerplate about refunds", "doc 5 5", "refunds"])
    for metric in (Metric.COSINE, Metric.L2, Metric.INNER_PRODUCT):
        idx, dist = exact_topk(q, m, 10, metric, chunk_floats=800)
        full = _distances64(q, m, metric)
        for i in range(len(q)):
            stable = np.argsort(full[i], kind="stable")[:10]
            assert idx[i].tolist() == stable.tolist(), metric
            np.testing.assert_allclose(dist[i], full[i][stable], rtol=1e-12, atol=1e-12)
    # The boilerplate query ties >100 rows at distance ~0: rows 0, 3, 6, ... come first.
    idx, _ = exact_topk(q[:1], m, 10, Metric.COSINE)
    assert idx[0].tolist() == list(range(0, 30, 3))


def test_exact_topk_with_fewer_finite_distances_than_k() -> None:
    # Cosine against zero vectors is undefined (+inf): they fill the tail by row position.
    m = np.zeros((50, 4), dtype=np.float32)
    m[[7, 30]] = [1, 0, 0, 0]
    idx, dist = exact_topk(np.array([[1, 0, 0, 0]], dtype=np.float32), m, 5, Metric.COSINE)
    assert idx[0].tolist() == [7, 30, 0, 1, 2]
    assert np.isinf(dist[0][2:]).all()


def test_zero_vectors_rank_last_for_cosine() -> None:
    m = np.array([[0, 0], [1, 1]], dtype=np.float32)
    d = distances(np.array([[1, 0]], dtype=np.float32), m, Metric.COSINE)
    assert d[0, 0] == np.inf and d[0, 1] == pytest.approx(1 - 1 / math.sqrt(2))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 30), min_size=0, max_size=10, unique=True), min_size=1, max_size=8
    ),
    st.integers(1, 10),
)
def test_metrics_are_within_bounds_and_ordered(ranked: list[list[int]], k: int) -> None:
    relevant = [set(r[:1]) or {99} for r in ranked]
    for fn in (recall_at_k, mrr_at_k, ndcg_at_k):
        assert 0.0 <= fn(ranked, relevant, k) <= 1.0
    # One relevant id each: MRR <= nDCG <= recall, and recall equals the hit rate.
    mrr, ndcg, rec = (fn(ranked, relevant, k) for fn in (mrr_at_k, ndcg_at_k, recall_at_k))
    assert mrr <= ndcg + 1e-12 <= rec + 2e-12
    targets = [next(iter(r)) for r in relevant]
    assert hit_rate_at_k(ranked, targets, k) == pytest.approx(rec)


def test_vector_health_counts_each_problem() -> None:
    m = np.eye(6, 4, dtype=np.float32)  # rows 4 and 5 are zero
    m[1] *= 2.0  # off-norm
    m[2, 0] = np.nan
    h = vector_health(m, 4, normalized=True, norm_tol=1e-3)
    assert (h.rows, h.non_finite, h.zero, h.off_norm, h.wrong_dimension) == (6, 1, 2, 1, 0)
    assert h.invalid == 4 and h.norm_max == pytest.approx(2.0)
    assert vector_health(m, 4, normalized=False, norm_tol=1e-3).off_norm == 0
    assert vector_health(m, 5, normalized=True, norm_tol=1e-3).wrong_dimension == 6
    assert vector_health(np.zeros((0, 4), np.float32), 4, normalized=True, norm_tol=1).invalid == 0


def test_rowwise_cosine() -> None:
    a = np.array([[1, 0], [0, 2], [0, 0]], dtype=np.float32)
    b = np.array([[2, 0], [1, 0], [1, 1]], dtype=np.float32)
    np.testing.assert_allclose(rowwise_cosine(a, b), [1.0, 0.0, 0.0])


def test_derive_query_is_seeded_and_a_span_of_the_text() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    a = [derive_query(text, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1] and a[0] in text and 8 <= len(a[0].split()) <= 15
    assert derive_query("short text", random.Random(1)) == "short text"
