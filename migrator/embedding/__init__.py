"""Everything that turns text into vectors, behind one small interface (`Provider.embed`).

Backfill, verify and search call `provider_for(spec, environ)` and `embed_texts(...)`; they
never care whether vectors come from OpenAI, another compatible server or the local models.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Imported on first use (PEP 562): the CLI's start-up must not load openai, httpx and numpy
# for commands that never embed (bench/startup.py).
_LAZY = {
    "BadResponseError": "migrator.embedding.errors",
    "DuplicateIndexError": "migrator.embedding.errors",
    "EmbedOutcome": "migrator.embedding.pipeline",
    "EmbeddingError": "migrator.embedding.errors",
    "HashEmbedder": "migrator.embedding.local",
    "InputRejectedError": "migrator.embedding.errors",
    "Limits": "migrator.embedding.base",
    "LocalProvider": "migrator.embedding.local",
    "Matrix": "migrator.embedding.base",
    "MissingIndexError": "migrator.embedding.errors",
    "NonFiniteVectorError": "migrator.embedding.errors",
    "OpenAIProvider": "migrator.embedding.openai_provider",
    "PermanentError": "migrator.embedding.errors",
    "Provider": "migrator.embedding.base",
    "RetryableError": "migrator.embedding.errors",
    "WrongCountError": "migrator.embedding.errors",
    "WrongDimensionError": "migrator.embedding.errors",
    "ZeroVectorError": "migrator.embedding.errors",
    "check_response_shape": "migrator.embedding.checks",
    "check_vectors": "migrator.embedding.checks",
    "check_vectors_strict": "migrator.embedding.checks",
    "classify": "migrator.embedding.openai_provider",
    "embed_texts": "migrator.embedding.pipeline",
    "estimate_tokens": "migrator.embedding.tokens",
    "parse_retry_after": "migrator.embedding.openai_provider",
    "provider_for": "migrator.embedding.factory",
    "split_requests": "migrator.embedding.batching",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
