"""Issue 13 (pure parts): search settings are tuning, figures keep the precision that decides,
the streamed exact top-k equals the whole-column one, rank-biased overlap, the relative index
gate and the ladder's recommendation."""

from __future__ import annotations

import numpy as np
import pytest

from migrator.plan.model import Metric
from migrator.plan.vocab import IndexMethod, VectorType
from migrator.verify import agreement, index_gate
from migrator.verify.ladder import Measure, Point, Subject, ladder_values
from migrator.verify.metrics import exact_topk, vector_health
from migrator.verify.report import Status, fmt_figure
from migrator.verify.streaming import RunningHealth, RunningTopK
from tests.helpers import demo_plan

PLAN = demo_plan()


# ---- 1. search-time settings are tuning -------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("ef_search", 200),
        ("probes", 30),
        ("iterative_scan", "relaxed_order"),
        ("max_scan_tuples", 40_000),
        ("scan_mem_multiplier", 2.0),
        ("max_probes", 50),
    ],
)
def test_search_settings_do_not_change_the_structural_hash(key: str, value: object) -> None:
    assert demo_plan(**{f"index__{key}": value}).plan_hash() == PLAN.plan_hash()


@pytest.mark.parametrize(
    "override",
    [{"index__m": 8}, {"index__ef_construction": 32}, {"target__model__name": "other-model"}],
)
def test_structural_changes_still_change_the_hash(override: dict[str, object]) -> None:
    assert demo_plan(**override).plan_hash() != PLAN.plan_hash()


def test_the_legacy_hash_is_the_one_registered_before() -> None:
    # Before issue 13 ef_search was hashed: a migration started then is still recognised.
    p = demo_plan(index__ef_search=64)
    assert p.legacy_plan_hash() != demo_plan(index__ef_search=100).legacy_plan_hash()
    assert p.legacy_plan_hash() != p.plan_hash()


def test_search_settings_cover_both_methods_and_the_limits() -> None:
    s = demo_plan(
        index__ef_search=120, index__iterative_scan="strict_order", index__max_scan_tuples=5000
    ).index.search_settings()
    assert s["hnsw.ef_search"] == "120" and s["hnsw.iterative_scan"] == "strict_order"
    # ivfflat knows relaxed_order only
    assert s["ivfflat.iterative_scan"] == "relaxed_order"
    assert s["hnsw.max_scan_tuples"] == "5000" and "ivfflat.max_probes" not in s


# ---- 7. precision that decides --------------------------------------------------------------
@pytest.mark.parametrize(
    "value, threshold, shown",
    [
        (59_520 / 59_521, 1.0, "0.99998"),
        (0.99998, None, "0.99998"),
        (0.7842, 0.9, "0.784"),
        (0.8999, 0.9, "0.8999"),
        (0.90004, 0.9, "0.90004"),
        (0.00002, None, "0.00002"),
        (1.0, 1.0, "1.0"),
        (0.5, None, "0.5"),
    ],
)
def test_figures_keep_the_precision_that_decides(
    value: float, threshold: float | None, shown: str
) -> None:
    assert fmt_figure(value, threshold) == shown


# ---- 8. streamed exact search ----------------------------------------------------------------
@pytest.mark.parametrize("metric", [Metric.COSINE, Metric.L2, Metric.INNER_PRODUCT])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_running_topk_equals_the_whole_column(metric: Metric, chunk: int) -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((300, 16)).astype(np.float32)
    m[50:60] = m[10]  # exact ties across chunk borders: the earlier row must win
    q = rng.standard_normal((12, 16)).astype(np.float32)
    q[0] = m[10]
    idx, dist = exact_topk(q, m, 10, metric)
    top = RunningTopK(q, 10, metric)
    for lo in range(0, len(m), chunk):
        top.add(lo, m[lo : lo + chunk])
    # L2 by expansion is float32 noise near 0 (sqrt of a cancellation): 1e-3 there.
    np.testing.assert_allclose(
        top.dist, dist, rtol=1e-5, atol=2e-3 if metric is Metric.L2 else 1e-5
    )
    # The same rows, except where BLAS rounding (chunk shapes differ) reorders exact ties.
    for a, b, d in zip(top.pos, idx, dist, strict=True):
        clear = np.abs(d - d[-1]) > 1e-2
        assert set(a[clear]) == set(b[clear])
    # Query 0 is row 10, duplicated in rows 50-59: its top 10 are those 11 rows' first ten.
    if metric is Metric.COSINE:
        assert set(top.pos[0]) <= {10, *range(50, 60)}


def test_running_topk_with_fewer_rows_than_k() -> None:
    m = np.eye(4, 8, dtype=np.float32)
    top = RunningTopK(m[:2], 10, Metric.COSINE)
    top.add(0, m[:3])
    top.add(3, m[3:])
    assert top.pos.shape == (2, 4) and top.pos[0, 0] == 0 and top.pos[1, 0] == 1


def test_running_health_equals_the_whole_column() -> None:
    rng = np.random.default_rng(4)
    m = rng.standard_normal((500, 8)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    m[3] = 0
    m[7, 2] = np.nan
    m[9] *= 3
    whole = vector_health(m, 8, normalized=True, norm_tol=1e-3)
    run = RunningHealth(8, normalized=True, norm_tol=1e-3)
    for lo in range(0, 500, 33):
        run.add(lo, m[lo : lo + 33])
    got = run.result()
    assert (got.rows, got.zero, got.non_finite, got.off_norm) == (500, 1, 1, 1)
    assert got.invalid == whole.invalid
    assert got.norm_max == pytest.approx(whole.norm_max)
    assert got.norm_mean == pytest.approx(whole.norm_mean)


# ---- 6. agreement --------------------------------------------------------------------------
def test_rank_biased_overlap() -> None:
    a = [str(i) for i in range(10)]
    assert agreement.rbo(a, a) == pytest.approx(1.0)
    assert agreement.rbo(a, [str(i) for i in range(10, 20)]) == 0.0
    swapped_top = ["1", "0", *a[2:]]
    swapped_bottom = [*a[:8], "9", "8"]
    # The top weighs more: a swap at the top costs more than one at the bottom.
    assert agreement.rbo(a, swapped_top) < agreement.rbo(a, swapped_bottom) < 1.0
    assert agreement.rbo(a, list(reversed(a))) < agreement.rbo(a, swapped_top)


def test_agreement_informs_without_a_floor_and_fails_over_nothing() -> None:
    top = [["1", "2"], ["3", "4"]]
    check, per = agreement.agreement(PLAN, ["q1", "q2"], top, top, 0, 0.0)
    assert check.status is Status.INFO and check.passed and per == [1.0, 1.0]
    empty, _ = agreement.agreement(PLAN, [], [], [], 3, 0.0)
    assert empty.status is Status.FAIL
    gated = demo_plan(verify__min_query_overlap=0.9)
    low, _ = agreement.agreement(gated, ["q"], [["1", "2"]], [["3", "2"]], 0, 0.0)
    assert low.status is Status.FAIL


def test_examples_show_the_most_disagreeing_queries_side_by_side() -> None:
    old = [["1", "2", "3"], ["4", "5", "6"], ["7", "8", "9"]]
    new = [["1", "2", "3"], ["6", "x", "y"], ["9", "8", "7"]]
    per = [agreement.rbo(a, b) for a, b in zip(old, new, strict=True)]
    sec = agreement.examples_section(
        PLAN, ["same", "far", "reordered"], old, new, per, {"6": "six"}, n=2
    )
    titles = [b.title for b in sec.tables]
    assert titles[0].startswith("“far”") and titles[1].startswith("“reordered”")
    assert sec.tables[0].rows[0] == ("1", "4: ", "= 6: six")


# ---- 2/3. the relative gate and the recommendation -----------------------------------------
def _measure(
    role: str, index: str | None, points: list[tuple[int | None, float]], current: int | None = 40
) -> Measure:
    method = IndexMethod.HNSW if index else None
    s = Subject(
        role,
        "embedding" if role == "production" else "embedding_v2",
        VectorType.VECTOR,
        index,
        method,
    )
    pts = tuple(Point(v, r, 1.0, 3.0, True, 0) for v, r in points)
    return Measure(s, current if index else None, pts, 200)


LADDER = [(40, 0.0), (64, 0.0), (100, 0.0), (200, 0.0), (400, 0.0)]


def _ladder(*recalls: float) -> list[tuple[int | None, float]]:
    return [(v, r) for (v, _), r in zip(LADDER, recalls, strict=True)]


def test_a_new_index_as_good_as_production_passes_under_the_old_absolute_bar() -> None:
    prod = _measure(
        "production", "documents_embedding_idx", _ladder(0.784, 0.84, 0.882, 0.925, 0.96)
    )
    new = _measure(
        "new", "documents_embedding_v2_hnsw_idx", _ladder(0.791, 0.85, 0.895, 0.938, 0.97)
    )
    rec = index_gate.recommend(PLAN, prod, new)
    check = index_gate.index_check(PLAN, prod, new, rec)
    assert check.status is Status.PASS and check.figure == 0.791
    assert check.threshold == pytest.approx(0.784 - 0.02)
    # 0.9 is reached at 200 by both (production reaches 0.882 at 100).
    assert rec.both == 200 and rec.new is not None and rec.new.value == 200
    assert "production today: 0.784 at hnsw.ef_search 40" in rec.text
    sec = index_gate.ladder_section(PLAN, prod, new, rec)
    assert sec.tables[0].rows[0][0] == "40 (today)" and len(sec.tables[0].rows) == 5


def test_a_degraded_new_index_fails_and_an_absolute_floor_still_applies() -> None:
    prod = _measure("production", "p", _ladder(0.784, 0.84, 0.882, 0.925, 0.96))
    bad = _measure("new", "n", _ladder(0.60, 0.66, 0.72, 0.80, 0.85))
    check = index_gate.index_check(PLAN, prod, bad, index_gate.recommend(PLAN, prod, bad))
    assert check.status is Status.FAIL
    assert "no hnsw.ef_search in the ladder reaches 0.9" in check.detail("recommendation")
    good = _measure("new", "n", _ladder(0.80, 0.86, 0.90, 0.94, 0.97))
    floored = demo_plan(verify__min_index_recall=0.85)
    check = index_gate.index_check(floored, prod, good, index_gate.recommend(floored, prod, good))
    assert check.status is Status.FAIL and check.threshold == 0.85


def test_no_source_index_means_production_is_exact() -> None:
    prod = _measure("production", None, [(None, 1.0)])
    new = _measure("new", "n", _ladder(0.95, 0.97, 0.985, 0.99, 0.995))
    rec = index_gate.recommend(PLAN, prod, new)
    check = index_gate.index_check(PLAN, prod, new, rec)
    assert check.threshold == pytest.approx(0.98) and check.status is Status.FAIL
    assert "exact, recall 1.0" in check.summary
    # The gate needs 0.98 (exact minus the drop): first reached at 100 on the new index.
    assert rec.both == 100 and "Recommended: index.ef_search: 100" in rec.text


def test_ladder_values_include_the_current_one_and_respect_limits() -> None:
    assert ladder_values(demo_plan(index__ef_search=75), IndexMethod.HNSW, 75) == (
        40,
        64,
        75,
        100,
        200,
        400,
    )
    assert ladder_values(
        demo_plan(index__method="ivfflat", index__lists=20), IndexMethod.IVFFLAT, 10
    ) == (1, 5, 10, 20)
    assert ladder_values(demo_plan(verify__ladder=[10, 2000]), IndexMethod.HNSW, 40) == (10, 40)
