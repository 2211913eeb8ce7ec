"""The provider interface: one request of texts in, one float32 matrix out.

Owns `Limits` and the abstract `Provider`. Must not batch, retry or rate-limit: callers
(`pipeline.embed_texts`, the backfill) own that, so every provider behaves the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from migrator.embedding.checks import check_vectors_strict
from migrator.plan.model import ModelSpec

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Limits:
    """What one request may carry. Token counts are the provider's own `count_tokens`."""

    max_inputs_per_request: int = 2048
    max_tokens_per_request: int = 300_000
    max_tokens_per_input: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_inputs_per_request", "max_tokens_per_request", "max_tokens_per_input"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")

    @property
    def input_token_cap(self) -> int:
        """Largest input that fits in a request at all."""
        return min(self.max_tokens_per_input, self.max_tokens_per_request)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Limits:
        return cls(
            max_inputs_per_request=spec.max_inputs_per_request,
            max_tokens_per_request=spec.max_tokens_per_request,
            max_tokens_per_input=spec.max_tokens_per_input,
        )


class Provider(ABC):
    """Turns texts into vectors of one vector space, identified by `fingerprint`.

    `embed` sends ONE request: the caller has already split inputs within `limits`, removed
    empty texts and truncated over-long ones. It returns a float32 (n, dimensions) matrix whose
    row i belongs to texts[i], after checking the answer's count, indices and dimension. Row
    values (NaN, zero vectors) are left to `checks.check_vectors`, so good rows can be kept.
    Implementations must be safe to share across threads.
    """

    fingerprint: str
    dimensions: int
    limits: Limits

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> Matrix:
        """Vectors for `texts` in order; raises an `EmbeddingError` subclass."""

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs against `limits` (exact or a conservative estimate)."""

    @abstractmethod
    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that counts at most `max_tokens` tokens."""

    def embed_strict(
        self, texts: Sequence[str], *, forbid_zero: bool = True, normalize: bool = False
    ) -> Matrix:
        """`embed` plus strict row checks: for a search query, where a bad row is an error."""
        return check_vectors_strict(
            self.embed(texts),
            dimensions=self.dimensions,
            forbid_zero=forbid_zero,
            normalize=normalize,
        )

    def close(self) -> None:  # noqa: B027 - optional hook; most providers hold nothing
        """Release connections; the provider must not be used afterwards."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
