"""The bridge's fit on synthetic spaces with a known map: exact recovery, selection, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from migrator.bridge import fit as bf


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _chunks(x: np.ndarray, y: np.ndarray, hold_every: int = 5, size: int = 300):  # type: ignore[no-untyped-def]
    hold = (np.arange(len(x)) % hold_every) == 0
    for i in range(0, len(x), size):
        yield x[i : i + size], y[i : i + size], hold[i : i + size]


def test_procrustes_recovers_a_rotation_exactly() -> None:
    rng = np.random.default_rng(1)
    x = bf.unit_rows(rng.standard_normal((2000, 32)))
    r = _rotation(32, 2)
    y = (x @ r).astype(np.float32)
    res = bf.fit_pairs(_chunks(x, y), 32, 32)
    assert res.bridge.method == bf.PROCRUSTES
    assert np.abs(res.bridge.weights - r).max() < 1e-4
    assert res.holdout_recall == 1.0 and res.holdout_rows == 400 and res.train_rows == 1600


def test_ridge_recovers_an_affine_map_between_other_dimensions() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    a = rng.standard_normal((24, 16))
    c = rng.standard_normal(16)
    y = (x @ a + c).astype(np.float32)
    stats = bf.Stats(24, 16)
    for xs, ys, _ in _chunks(x, y, hold_every=10**9):
        stats.add(xs, ys)
    m = bf.ridge(stats, 1e-9)
    assert np.abs(m.weights - a).max() < 1e-4 and np.abs(m.bias - c).max() < 1e-4
    # The chosen candidate maps unseen rows onto their own old vectors.
    res = bf.fit_pairs(_chunks(x, y), 24, 16)
    assert res.bridge.method in (bf.RIDGE, bf.LOW_RANK) and res.holdout_recall == 1.0
    assert bf.PROCRUSTES not in {label.split(" ")[0] for label, _ in res.scores}


def test_low_rank_recovers_a_low_rank_map_and_wins_when_it_is_the_truth() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    a = rng.standard_normal((32, 8)) @ rng.standard_normal((8, 32))  # rank 8
    y = (x @ a).astype(np.float32)
    stats = bf.Stats(32, 32)
    stats.add(x, y)
    full = bf.ridge(stats, 1e-9)
    lr = bf.low_rank(stats, full, 8)
    assert np.abs(lr.weights - a).max() < 1e-3
    assert np.linalg.matrix_rank(lr.weights.astype(np.float64), tol=1e-3) == 8


def test_statistics_in_chunks_equal_statistics_at_once() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1000, 12)).astype(np.float32)
    y = rng.standard_normal((1000, 9)).astype(np.float32)
    a, b = bf.Stats(12, 9), bf.Stats(12, 9)
    a.add(x, y)
    for i in range(0, 1000, 77):
        b.add(x[i : i + 77], y[i : i + 77])
    assert a.n == b.n == 1000
    assert np.allclose(a.xx, b.xx) and np.allclose(a.xy, b.xy) and np.allclose(a.sx, b.sx)


def test_noise_lowers_held_out_recall_and_unrelated_spaces_score_near_chance() -> None:
    rng = np.random.default_rng(9)
    x = bf.unit_rows(rng.standard_normal((3000, 32)))
    r = _rotation(32, 4)
    noisy = (x @ r + 0.3 * rng.standard_normal((3000, 32))).astype(np.float32)
    unrelated = bf.unit_rows(rng.standard_normal((3000, 32)))
    good = bf.fit_pairs(_chunks(x, noisy), 32, 32).holdout_recall
    bad = bf.fit_pairs(_chunks(x, unrelated), 32, 32).holdout_recall
    assert 0 < good < 1.0
    assert bad < 0.1 < good  # chance is k / held-out rows = 10 / 600


def test_apply_normalises_and_checks_dimensions() -> None:
    m = bf.BridgeMap(bf.RIDGE, np.eye(4, 3, dtype=np.float32) * 3, np.zeros(3, np.float32))
    out = m.apply(np.array([1.0, 2.0, 2.0, 5.0]))
    assert out.shape == (1, 3) and np.allclose(np.linalg.norm(out), 1.0)
    with pytest.raises(ValueError, match="maps 4-dim vectors"):
        m.apply(np.ones(3))


def test_refusals_too_few_pairs_and_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 paired rows"):
        bf.fit(bf.Stats(4, 4), np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="expected 4->4"):
        bf.Stats(4, 4).add(np.zeros((2, 3)), np.zeros((2, 4)))
    s = bf.Stats(4, 3)
    s.add(np.ones((3, 4)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="equal dimensions"):
        bf.procrustes(s)


def test_held_out_rows_are_capped_and_the_rest_train() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    res = bf.fit_pairs(_chunks(x, x.copy(), hold_every=2), 8, 8, max_holdout=100)
    assert res.holdout_rows == 100 and res.train_rows == 900
