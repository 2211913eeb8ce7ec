"""Errors of the embedding providers, all under `ProviderError` (exit code 10).

ProviderError
 └── EmbeddingError                 status: int | None
      ├── RetryableError            429, 5xx, 408, timeouts, connection errors; retry_after (s)
      └── PermanentError            other 4xx (auth, unknown model), bad answers
           ├── InputRejectedError   a 4xx about the inputs (400, 413, 422): bisect to isolate
           └── BadResponseError     the answer is unusable as a whole (never guessed around)
                ├── WrongCountError, MissingIndexError, DuplicateIndexError
                ├── WrongDimensionError
                └── NonFiniteVectorError, ZeroVectorError   (strict checks only)

Pure: no network, no numpy.
"""

from __future__ import annotations

from migrator.errors import ProviderError


class EmbeddingError(ProviderError):
    """Any failure to turn texts into vectors."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class RetryableError(EmbeddingError):
    """Try again later; `retry_after` is the server's delay hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, status=status, hint=hint)
        self.retry_after = retry_after


class PermanentError(EmbeddingError):
    """Repeating the same request will fail the same way."""


class InputRejectedError(PermanentError):
    """The server refused the request because of (some of) its inputs."""


class BadResponseError(PermanentError):
    """The server answered 2xx but the answer cannot be trusted."""


class WrongCountError(BadResponseError):
    """The answer holds a different number of vectors than inputs were sent."""


class MissingIndexError(BadResponseError):
    """An input position has no vector, or a vector names a position that was not sent."""


class DuplicateIndexError(BadResponseError):
    """Two vectors claim the same input position."""


class WrongDimensionError(BadResponseError):
    """A vector has a different number of dimensions than the model promises."""


class NonFiniteVectorError(BadResponseError):
    """A vector holds NaN or infinity."""


class ZeroVectorError(BadResponseError):
    """A vector is all zeros, which has no direction for cosine distance."""
