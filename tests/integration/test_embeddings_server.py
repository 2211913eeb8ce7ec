"""The real `openai` client and OpenAIProvider against `serve-embeddings`, in-process."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from migrator.embedding.errors import (
    DuplicateIndexError,
    NonFiniteVectorError,
    PermanentError,
    RetryableError,
    WrongCountError,
    WrongDimensionError,
    ZeroVectorError,
)
from migrator.embedding.factory import provider_for
from migrator.embedding.local import HashEmbedder
from migrator.embedding.openai_provider import OpenAIProvider
from migrator.embedding.pipeline import embed_texts
from migrator.embedding.server import ServerHandle, run_server_in_thread
from migrator.plan.model import ModelSpec, OverlongPolicy

pytestmark = pytest.mark.integration

TEXTS = ["the first text", "a second, longer piece of text", "third"]
OFF = {
    "rpm": None,
    "tpm": None,
    "bad": None,
    "error_rate": 0.0,
    "latency_ms": 0.0,
    "poison_marker": None,
    "quota_window_seconds": 60.0,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = run_server_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def srv(server: ServerHandle) -> ServerHandle:
    server.set_controls(**OFF)
    server.state.reset_counters()
    return server


def provider(srv: ServerHandle, dims: int = 64) -> OpenAIProvider:
    spec = ModelSpec(
        name="local-hash-old", dimensions=dims, base_url=srv.url, request_timeout_seconds=5
    )
    p = provider_for(spec, {})
    assert isinstance(p, OpenAIProvider)
    return p


def client(srv: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)


def test_real_client_float_and_base64(srv: ServerHandle) -> None:
    expected = HashEmbedder("local-hash-old", 96).encode(TEXTS)
    c = client(srv)
    as_float = c.embeddings.create(
        input=TEXTS, model="local-hash-old", dimensions=96, encoding_format="float"
    )
    got = np.array([d.embedding for d in sorted(as_float.data, key=lambda d: d.index)])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert as_float.usage.prompt_tokens == 3 + 6 + 1
    as_b64 = c.embeddings.create(
        input=TEXTS, model="local-hash-old", dimensions=96, encoding_format="base64"
    )
    raw = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in as_b64.data]
    np.testing.assert_array_equal(np.stack(raw), expected)  # bit-exact
    default = c.embeddings.create(input=TEXTS, model="local-hash-old")  # client decodes base64
    assert len(default.data[0].embedding) == 256
    models = c.models.list()
    assert "local-hash-old" in [m.id for m in models.data]


def test_unknown_model_is_404_in_openai_format(srv: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(srv).embeddings.create(input=["x"], model="text-embedding-3-small")
    with provider(srv) as p, pytest.raises(PermanentError) as info:
        p.spec = p.spec.model_copy(update={"name": "nope"})
        p.embed(["x"])
    assert info.value.status == 404


def test_provider_maps_shuffled_answers_by_index(srv: ServerHandle) -> None:
    srv.set_controls(bad="shuffle")
    with provider(srv) as p:
        got = p.embed(TEXTS)
    np.testing.assert_allclose(got, HashEmbedder("local-hash-old", 64).encode(TEXTS), atol=1e-7)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("missing", WrongCountError),
        ("duplicate", DuplicateIndexError),
        ("wrong-dim", WrongDimensionError),
        ("nan", NonFiniteVectorError),
        ("zero", ZeroVectorError),
    ],
)
def test_bad_answers_raise_specific_errors(
    srv: ServerHandle, mode: str, error: type[Exception]
) -> None:
    srv.set_controls(bad=mode)
    with provider(srv) as p, pytest.raises(error):
        p.embed_strict(TEXTS)


def test_pipeline_keeps_good_rows_of_an_answer_with_a_nan(srv: ServerHandle) -> None:
    srv.set_controls(bad="nan")
    with provider(srv) as p:
        out = embed_texts(
            p, TEXTS, overlong=OverlongPolicy.TRUNCATE, forbid_zero=True, normalize=True
        )
    assert out.failed == {0: "bad vector: nan"} and set(out.vectors) == {1, 2}


def test_429_carries_the_delay_and_quota_is_enforced(srv: ServerHandle) -> None:
    srv.set_controls(rpm=2, quota_window_seconds=30)
    with provider(srv) as p:
        p.embed(["one"])
        p.embed(["two"])
        with pytest.raises(RetryableError) as info:
            p.embed(["three"])
    err = info.value
    assert err.status == 429 and err.retry_after is not None and 25 < err.retry_after <= 30
    counters = httpx.get(srv.url.removesuffix("/v1") + "/control").json()["counters"]
    assert counters["rate_limited"] == 1 and counters["requests"] == 3


def test_token_quota_and_window_expiry(srv: ServerHandle) -> None:
    srv.set_controls(tpm=5, quota_window_seconds=0.5)
    with provider(srv) as p:
        p.embed(["a b c d"])
        with pytest.raises(RetryableError) as info:
            p.embed(["e f"])
        assert info.value.retry_after is not None and info.value.retry_after <= 0.5
        time.sleep(info.value.retry_after + 0.05)
        p.embed(["e f"])


def test_server_errors_are_retryable(srv: ServerHandle) -> None:
    srv.set_controls(error_rate=1.0)
    with provider(srv) as p, pytest.raises(RetryableError) as info:
        p.embed(["x"])
    assert info.value.status == 500


def test_poison_bisection_isolates_only_the_poisoned_input(srv: ServerHandle) -> None:
    srv.set_controls(poison_marker="<<POISON>>")
    texts: list[str | None] = [f"document {i} about topic {i % 5}" for i in range(64)]
    texts[37] = "this one carries <<POISON>> inside"
    with provider(srv) as p:
        out = embed_texts(
            p,
            texts,
            overlong=OverlongPolicy.TRUNCATE,
            forbid_zero=True,
            normalize=True,
            concurrency=2,
        )
    assert set(out.failed) == {37} and "poison" in out.failed[37]
    assert set(out.vectors) == set(range(64)) - {37}
    assert out.requests <= 1 + 2 * 6  # log2(64) levels of bisection


def test_control_endpoint_at_run_time(srv: ServerHandle) -> None:
    base = srv.url.removesuffix("/v1")
    answer = httpx.post(f"{base}/control", json={"latency_ms": 50, "bad": "shuffle"})
    assert answer.status_code == 200 and answer.json()["controls"]["bad"] == "shuffle"
    start = time.perf_counter()
    with provider(srv) as p:
        p.embed(["x"])
    assert time.perf_counter() - start >= 0.05
    assert httpx.post(f"{base}/control", json={"nonsense": 1}).status_code == 400


def test_provider_base64_mode_is_bit_exact(srv: ServerHandle) -> None:
    spec = ModelSpec(name="local-hash-old", dimensions=64, base_url=srv.url)
    with OpenAIProvider(spec, api_key="x", base_url=srv.url, encoding="base64") as p:
        got = p.embed(TEXTS)
    np.testing.assert_array_equal(got, HashEmbedder("local-hash-old", 64).encode(TEXTS))
