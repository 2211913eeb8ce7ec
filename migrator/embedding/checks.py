"""Checks on a provider's answer before any vector is written.

`check_response_shape` judges the answer as a whole (count, indices, dimension) and raises;
`check_vectors` judges rows (finite, non-zero, dimension) and reports bad rows so the caller
can keep the good ones; `check_vectors_strict` raises instead. Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from migrator.embedding.errors import (
    DuplicateIndexError,
    MissingIndexError,
    NonFiniteVectorError,
    WrongCountError,
    WrongDimensionError,
    ZeroVectorError,
)

Matrix = npt.NDArray[np.float32]
RowLike = Sequence[float] | npt.NDArray[np.floating]

REASON_NAN = "nan"
REASON_INF = "inf"
REASON_ZERO = "zero vector"
REASON_DIM = "wrong dimension"
REASON_NOT_NUMBERS = "not numbers"


def check_response_shape(
    items: Sequence[tuple[object, object]], *, expected: int, dimensions: int
) -> Matrix:
    """Place (index, vector) pairs by index into a float32 (expected, dimensions) matrix.

    Never guesses: a wrong count, a duplicate or out-of-range index, or any vector of another
    length rejects the whole answer (a server that drops or reorders items, or ignores the
    `dimensions` parameter, says nothing trustworthy about any row).
    """
    if len(items) != expected:
        raise WrongCountError(f"the answer holds {len(items)} vectors for {expected} inputs")
    out = np.empty((expected, dimensions), dtype=np.float32)
    seen = np.zeros(expected, dtype=bool)
    for index, vector in items:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            raise MissingIndexError(f"the answer names input {index!r}, outside 0..{expected - 1}")
        if seen[index]:
            raise DuplicateIndexError(f"the answer holds two vectors for input {index}")
        seen[index] = True
        row = _as_row(vector)
        if row is None:
            raise WrongDimensionError(f"the vector for input {index} is not a list of numbers")
        if row.shape[0] != dimensions:
            raise WrongDimensionError(
                f"the vector for input {index} has {row.shape[0]} dimensions, expected "
                f"{dimensions}",
                hint="check the model's 'dimensions' and 'send_dimensions' settings",
            )
        out[index] = row
    return out


def _as_row(vector: object) -> npt.NDArray[np.float32] | None:
    try:
        row = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return row if row.ndim == 1 else None


def check_vectors(
    matrix: Matrix | Sequence[RowLike],
    *,
    dimensions: int,
    forbid_zero: bool,
    normalize: bool,
) -> tuple[Matrix, dict[int, str]]:
    """Clean float32 (n, dimensions) matrix, L2-normalised if asked, and bad row -> reason.

    Bad rows are zero-filled in the returned matrix and must not be written.
    """
    bad: dict[int, str] = {}
    if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and matrix.shape[1] == dimensions:
        m = np.array(matrix, dtype=np.float32, copy=True)
    else:
        m = np.zeros((len(matrix), dimensions), dtype=np.float32)
        for i, vector in enumerate(matrix):
            row = _as_row(vector)
            if row is None:
                bad[i] = REASON_NOT_NUMBERS
            elif row.shape[0] != dimensions:
                bad[i] = REASON_DIM
            else:
                m[i] = row
    with np.errstate(over="ignore", invalid="ignore"):
        nan_rows = np.isnan(m).any(axis=1)
        inf_rows = np.isinf(m).any(axis=1)
        norms = np.sqrt(np.einsum("ij,ij->i", m.astype(np.float64), m.astype(np.float64)))
    for r in np.flatnonzero(nan_rows).tolist():
        bad.setdefault(r, REASON_NAN)
    for r in np.flatnonzero(inf_rows).tolist():
        bad.setdefault(r, REASON_INF)
    if forbid_zero or normalize:
        for r in np.flatnonzero(norms == 0.0).tolist():
            bad.setdefault(r, REASON_ZERO)
    if bad:
        m[list(bad)] = 0.0
    if normalize:
        safe = np.where(norms > 0.0, norms, 1.0)
        m = (m / safe[:, None]).astype(np.float32)
    return m, bad


def check_vectors_strict(
    matrix: Matrix | Sequence[RowLike],
    *,
    dimensions: int,
    forbid_zero: bool,
    normalize: bool,
) -> Matrix:
    """Like `check_vectors`, but the first bad row raises its specific error."""
    clean, bad = check_vectors(
        matrix, dimensions=dimensions, forbid_zero=forbid_zero, normalize=normalize
    )
    if bad:
        row, reason = min(bad.items())
        message = f"the vector for input {row} is invalid: {reason} ({len(bad)} bad rows)"
        if reason in (REASON_NAN, REASON_INF):
            raise NonFiniteVectorError(message)
        if reason == REASON_ZERO:
            raise ZeroVectorError(message, hint="zero vectors have no cosine distance")
        raise WrongDimensionError(message)
    return clean
