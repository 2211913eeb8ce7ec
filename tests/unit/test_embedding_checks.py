"""Answer checks: whole-answer shape errors and per-row vector problems."""

from __future__ import annotations

import numpy as np
import pytest

from migrator.embedding.checks import check_response_shape, check_vectors, check_vectors_strict
from migrator.embedding.errors import (
    BadResponseError,
    DuplicateIndexError,
    MissingIndexError,
    NonFiniteVectorError,
    WrongCountError,
    WrongDimensionError,
    ZeroVectorError,
)


def test_shape_maps_by_index_not_position() -> None:
    items = [(2, [3.0, 3.0]), (0, [1.0, 1.0]), (1, [2.0, 2.0])]
    m = check_response_shape(items, expected=3, dimensions=2)
    assert m.dtype == np.float32
    assert m[:, 0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([(0, [1.0, 1.0])], WrongCountError),
        ([(0, [1.0, 1.0]), (0, [1.0, 1.0])], DuplicateIndexError),
        ([(0, [1.0, 1.0]), (2, [1.0, 1.0])], MissingIndexError),
        ([(0, [1.0, 1.0]), (None, [1.0, 1.0])], MissingIndexError),
        ([(0, [1.0, 1.0]), (1, [1.0])], WrongDimensionError),
        ([(0, [1.0, 1.0]), (1, "abc")], WrongDimensionError),
    ],
)
def test_shape_errors(items: list[tuple[object, object]], error: type[BadResponseError]) -> None:
    with pytest.raises(error):
        check_response_shape(items, expected=2, dimensions=2)


def test_rows_report_reasons_and_keep_good_rows() -> None:
    m = np.array([[3, 4], [np.nan, 1], [0, 0], [np.inf, 0], [0, 2]], dtype=np.float32)
    clean, bad = check_vectors(m, dimensions=2, forbid_zero=True, normalize=True)
    assert bad == {1: "nan", 2: "zero vector", 3: "inf"}
    np.testing.assert_allclose(clean[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(clean[4], [0.0, 1.0])
    assert np.isfinite(clean).all() and clean.dtype == np.float32


def test_zero_rows_allowed_when_not_cosine_and_not_normalising() -> None:
    m = np.zeros((2, 3), dtype=np.float32)
    _, bad = check_vectors(m, dimensions=3, forbid_zero=False, normalize=False)
    assert bad == {}


def test_ragged_rows_report_wrong_dimension() -> None:
    clean, bad = check_vectors(
        [[1.0, 0.0], [1.0], [0.0, 2.0, 1.0], "x"], dimensions=2, forbid_zero=True, normalize=False
    )
    assert bad == {1: "wrong dimension", 2: "wrong dimension", 3: "not numbers"}
    assert clean.shape == (4, 2)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ([np.nan, 1.0], NonFiniteVectorError),
        ([0.0, 0.0], ZeroVectorError),
        ([1.0], WrongDimensionError),
    ],
)
def test_strict_raises_specific_errors(row: list[float], error: type[BadResponseError]) -> None:
    with pytest.raises(error):
        check_vectors_strict([[1.0, 1.0], row], dimensions=2, forbid_zero=True, normalize=False)
