"""Everything that turns text into vectors, behind one small interface (`Provider.embed`).

Backfill, verify and search call `provider_for(spec, environ)` and `embed_texts(...)`; they
never care whether vectors come from OpenAI, another compatible server or the local models.
"""

from migrator.embedding.base import Limits, Matrix, Provider
from migrator.embedding.batching import split_requests
from migrator.embedding.checks import check_response_shape, check_vectors, check_vectors_strict
from migrator.embedding.errors import (
    BadResponseError,
    DuplicateIndexError,
    EmbeddingError,
    InputRejectedError,
    MissingIndexError,
    NonFiniteVectorError,
    PermanentError,
    RetryableError,
    WrongCountError,
    WrongDimensionError,
    ZeroVectorError,
)
from migrator.embedding.factory import provider_for
from migrator.embedding.local import HashEmbedder, LocalProvider
from migrator.embedding.openai_provider import OpenAIProvider, classify, parse_retry_after
from migrator.embedding.pipeline import EmbedOutcome, embed_texts
from migrator.embedding.tokens import estimate_tokens

__all__ = [
    "BadResponseError",
    "DuplicateIndexError",
    "EmbedOutcome",
    "EmbeddingError",
    "HashEmbedder",
    "InputRejectedError",
    "Limits",
    "LocalProvider",
    "Matrix",
    "MissingIndexError",
    "NonFiniteVectorError",
    "OpenAIProvider",
    "PermanentError",
    "Provider",
    "RetryableError",
    "WrongCountError",
    "WrongDimensionError",
    "ZeroVectorError",
    "check_response_shape",
    "check_vectors",
    "check_vectors_strict",
    "classify",
    "embed_texts",
    "estimate_tokens",
    "parse_retry_after",
    "provider_for",
    "split_requests",
]
