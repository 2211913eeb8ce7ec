"""Classification of openai exceptions (built from real httpx2 responses) and the factory."""

from __future__ import annotations

import httpx2
import openai
import pytest

from migrator.embedding.errors import (
    EmbeddingError,
    InputRejectedError,
    PermanentError,
    RetryableError,
)
from migrator.embedding.factory import LOOPBACK_DUMMY_KEY, is_loopback_url, provider_for
from migrator.embedding.local import LocalProvider
from migrator.embedding.openai_provider import OpenAIProvider, classify, parse_retry_after
from migrator.errors import ConfigError, ProviderError
from migrator.plan.model import ModelSpec

REQUEST = httpx2.Request("POST", "http://127.0.0.1:1/v1/embeddings")
ERRORS = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    404: openai.NotFoundError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
}


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    body = {"error": {"message": f"server says {status}", "type": "x"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=REQUEST)
    cls = ERRORS.get(status, openai.APIStatusError)
    return cls(f"Error code: {status}", response=response, body=body["error"])


def test_429_is_retryable_with_its_delay() -> None:
    err = classify(status_error(429, {"Retry-After": "7"}))
    assert isinstance(err, RetryableError) and err.retry_after == 7.0 and err.status == 429
    assert "server says 429" in err.message


def test_retry_after_ms_wins_over_seconds() -> None:
    err = classify(status_error(429, {"retry-after-ms": "1500", "retry-after": "9"}))
    assert isinstance(err, RetryableError) and err.retry_after == 1.5


def test_retry_after_http_date_and_garbage() -> None:
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_and_timeouts_are_retryable(status: int) -> None:
    err = classify(status_error(status))
    assert isinstance(err, RetryableError) and err.status == status and err.retry_after is None


@pytest.mark.parametrize("status", [400, 422])
def test_input_errors_are_input_rejected(status: int) -> None:
    err = classify(status_error(status))
    assert isinstance(err, InputRejectedError) and err.status == status


@pytest.mark.parametrize("status", [401, 404])
def test_other_4xx_are_permanent_not_about_inputs(status: int) -> None:
    err = classify(status_error(status))
    assert isinstance(err, PermanentError) and not isinstance(err, InputRejectedError)
    assert err.hint


def test_connection_and_timeout_errors_are_retryable() -> None:
    assert isinstance(classify(openai.APITimeoutError(REQUEST)), RetryableError)
    assert isinstance(classify(openai.APIConnectionError(request=REQUEST)), RetryableError)


def test_every_embedding_error_is_a_provider_error_with_exit_code_10() -> None:
    err = classify(status_error(400))
    assert isinstance(err, EmbeddingError) and isinstance(err, ProviderError)
    assert err.exit_code == 10


def test_factory_local_and_openai() -> None:
    local = ModelSpec(provider="local", name="local-hash-old", dimensions=8)
    assert isinstance(provider_for(local, {}), LocalProvider)
    spec = ModelSpec(name="text-embedding-3-small", dimensions=512, api_key_env="MY_KEY")
    p = provider_for(spec, {"MY_KEY": "k1", "OPENAI_BASE_URL": "https://example.test/v1"})
    assert isinstance(p, OpenAIProvider)
    assert p._api_key == "k1" and p._base_url == "https://example.test/v1"
    p = provider_for(spec, {"OPENAI_API_KEY": "k2"})
    assert isinstance(p, OpenAIProvider) and p._api_key == "k2" and p._base_url is None


def test_factory_needs_a_key_unless_loopback() -> None:
    spec = ModelSpec(name="m", dimensions=8, api_key_env="MY_KEY")
    with pytest.raises(ConfigError, match="no API key") as info:
        provider_for(spec, {"OPENAI_BASE_URL": "https://api.example.test/v1"})
    assert "MY_KEY" in (info.value.hint or "")
    p = provider_for(spec, {"OPENAI_BASE_URL": "http://127.0.0.1:8765/v1"})
    assert isinstance(p, OpenAIProvider) and p._api_key == LOOPBACK_DUMMY_KEY


@pytest.mark.parametrize(
    ("url", "loop"),
    [
        ("http://localhost:1/v1", True),
        ("http://[::1]:9/v1", True),
        ("http://10.0.0.1/v1", False),
        ("https://api.openai.com/v1", False),
        (None, False),
    ],
)
def test_loopback_detection(url: str | None, loop: bool) -> None:
    assert is_loopback_url(url) is loop
