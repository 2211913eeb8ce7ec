"""The OpenAI-compatible provider, on the official `openai` client, and error classification.

One `embed` call is one HTTP request: client retries are off and the timeout is short, because
the caller owns retries and backoff. Must not batch, sleep or read the environment (the
factory passes the key and base URL in).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import numpy as np
import openai
import orjson

from migrator.embedding.base import Limits, Matrix, Provider
from migrator.embedding.checks import check_response_shape
from migrator.embedding.errors import (
    BadResponseError,
    EmbeddingError,
    InputRejectedError,
    PermanentError,
    RetryableError,
)
from migrator.embedding.tokens import estimate_tokens, truncate_to_estimate
from migrator.plan.model import ModelSpec

# 4xx statuses that are about the request's inputs (bisecting the batch can isolate them).
INPUT_STATUSES = frozenset({400, 413, 422})
RETRY_STATUSES = frozenset({408, 429})


def _loads(content: bytes) -> Any:
    # orjson parses float arrays several times faster than json; it rejects NaN/Infinity
    # tokens, which a broken server may send: json reads those so the checks can name them.
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return exc.message


def classify(exc: BaseException) -> EmbeddingError:
    """Map an `openai` exception to retryable / permanent, keeping the server's delay hint."""
    if isinstance(exc, EmbeddingError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return RetryableError("the embedding request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"cannot reach the embedding server: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"HTTP {status}: {_server_message(exc)}"
        if status in RETRY_STATUSES or status >= 500:
            delay = parse_retry_after(dict(exc.response.headers))
            return RetryableError(message, status=status, retry_after=delay)
        if status in INPUT_STATUSES:
            return InputRejectedError(message, status=status)
        hint = {
            401: "check the API key",
            403: "check the key's permissions",
            404: "check the model name and base_url",
        }.get(status)
        return PermanentError(message, status=status, hint=hint)
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return BadResponseError(f"the embedding answer is malformed: {exc}")
    if isinstance(exc, openai.OpenAIError):
        return PermanentError(f"embedding client error: {exc}")
    raise TypeError(f"not an openai error: {exc!r}")


def _pair(item: object, encoding: str) -> tuple[object, object]:
    if not isinstance(item, dict):
        return None, None
    vector = item.get("embedding")
    if encoding == "base64" and isinstance(vector, str):
        try:
            vector = np.frombuffer(base64.b64decode(vector, validate=True), dtype="<f4")
        except (ValueError, binascii.Error):
            vector = None
    return item.get("index"), vector


class OpenAIProvider(Provider):
    """Any server speaking the OpenAI embeddings API (OpenAI, vLLM, `serve-embeddings`, ...)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        api_key: str | None,
        base_url: str | None,
        encoding: Literal["float", "base64"] = "float",
    ) -> None:
        self.spec = spec
        self.encoding = encoding
        self.fingerprint = spec.fingerprint()
        self.dimensions = spec.dimensions
        self.limits = Limits.from_spec(spec)
        self._api_key = api_key
        self._base_url = base_url
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: requests run on a pool

    @property
    def client(self) -> openai.OpenAI:
        """The shared client, created on first use (it is thread-safe)."""
        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    max_retries=0,
                    timeout=self.spec.request_timeout_seconds,
                )
            return self._client

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            if not text or not text.strip():
                raise ValueError(f"input {i} is empty: empty texts must never be sent")
        body: dict[str, Any] = {
            "input": list(texts),
            "model": self.spec.name,
            "encoding_format": self.encoding,
        }
        if self.spec.send_dimensions:
            body["dimensions"] = self.dimensions
        try:
            # The client's generic post (its documented way to any endpoint) with the raw
            # answer: `embeddings.create` walks every input through its typing-driven param
            # transform (~20% of a worker's CPU at 256 inputs) and, parsed, builds a model per
            # float (~0.45 s per 256 x 256 answer). Auth, timeout and error mapping are the same.
            raw = self.client.post(
                "/embeddings",
                cast_to=httpx.Response,
                body=body,
                options={"security": {"bearer_auth": True}},
            )
            payload = _loads(raw.content)
        except openai.OpenAIError as exc:
            raise classify(exc) from exc
        except ValueError as exc:
            raise BadResponseError(f"the embedding answer is not JSON: {exc}") from exc
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise BadResponseError("the embedding answer has no 'data' list")
        pairs = [_pair(item, self.encoding) for item in data]
        matrix = check_response_shape(pairs, expected=len(texts), dimensions=self.dimensions)
        usage = payload.get("usage")
        used = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        self._local.usage = (
            used if isinstance(used, int) and not isinstance(used, bool) and used >= 0 else None
        )
        return matrix

    def last_usage(self) -> int | None:
        """Tokens the server counted for this thread's last answer (`usage.prompt_tokens`)."""
        return getattr(self._local, "usage", None)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        return truncate_to_estimate(text, max_tokens)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
