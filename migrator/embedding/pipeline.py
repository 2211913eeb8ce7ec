"""Embed a batch of row texts through a provider: skip, truncate, split, send, check, isolate.

Owns the per-batch flow between the rows and `Provider.embed`. Must not retry, sleep or
rate-limit by itself: `RetryableError` goes up to the caller, and the caller's rate limiter
plugs in through `before_request`.

What goes where:
  None / empty / blank text             -> skipped_empty (never sent)
  over the per-input limit              -> truncated (TRUNCATE) or failed (DEAD_LETTER)
  a request refused for its inputs      -> bisected until single inputs; those go to failed
  a bad row (NaN, inf, zero vector)     -> failed; the good rows of the same answer are kept
  RetryableError                        -> raised (retry the batch later; writes are idempotent)
  BadResponseError of a whole answer    -> raised: wrong count, missing/duplicate index or
      wrong dimension say nothing about any row, so nothing is dead-lettered; treat it as
      retryable a bounded number of times, then fail the batch (never the rows).
  other PermanentError (401, 404, ...)  -> raised: a configuration problem, not the rows'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from migrator.embedding.base import Provider
from migrator.embedding.batching import split_requests
from migrator.embedding.checks import check_vectors
from migrator.embedding.errors import InputRejectedError
from migrator.plan.model import OverlongPolicy

BeforeRequest = Callable[[int, int], None]


@dataclass
class EmbedOutcome:
    """Result of `embed_texts`, by input position."""

    vectors: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    skipped_empty: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    requests: int = 0
    tokens: int = 0


@dataclass
class _Request:
    positions: list[int]
    texts: list[str]
    tokens: list[int]


def embed_texts(
    provider: Provider,
    texts: Sequence[str | None],
    *,
    overlong: OverlongPolicy,
    forbid_zero: bool,
    normalize: bool,
    concurrency: int = 1,
    before_request: BeforeRequest | None = None,
) -> EmbedOutcome:
    """Embed `texts`, with up to `concurrency` requests in flight. See the module docstring."""
    outcome = EmbedOutcome()
    requests = _prepare(provider, texts, overlong, outcome)
    run = _Runner(provider, forbid_zero, normalize, before_request)
    if concurrency <= 1 or len(requests) <= 1:
        results = [run(r) for r in requests]
    else:
        results = _run_parallel(run, requests, concurrency)
    for part in results:
        outcome.vectors.update(part.vectors)
        outcome.failed.update(part.failed)
        outcome.requests += part.requests
        outcome.tokens += part.tokens
    return outcome


def _prepare(
    provider: Provider,
    texts: Sequence[str | None],
    overlong: OverlongPolicy,
    outcome: EmbedOutcome,
) -> list[_Request]:
    cap = provider.limits.input_token_cap
    positions: list[int] = []
    kept: list[str] = []
    for i, text in enumerate(texts):
        if text is None or not text.strip():
            outcome.skipped_empty.append(i)
        else:
            positions.append(i)
            kept.append(text)
    counts = provider.count_tokens(kept)
    send = _Request([], [], [])
    for pos, text, n in zip(positions, kept, counts, strict=True):
        if n > cap:
            if overlong is OverlongPolicy.DEAD_LETTER:
                outcome.failed[pos] = f"overlong: {n} tokens, the limit is {cap}"
                continue
            text = provider.truncate(text, cap)
            n = provider.count_tokens([text])[0]
            if n > cap or not text.strip():
                outcome.failed[pos] = f"overlong: could not truncate to {cap} tokens"
                continue
            outcome.truncated.append(pos)
        send.positions.append(pos)
        send.texts.append(text)
        send.tokens.append(n)
    return [
        _Request(
            send.positions[r.start : r.stop],
            send.texts[r.start : r.stop],
            send.tokens[r.start : r.stop],
        )
        for r in split_requests(send.tokens, provider.limits)
    ]


class _Runner:
    """Sends one prepared request, bisecting it when the server refuses its inputs."""

    def __init__(
        self,
        provider: Provider,
        forbid_zero: bool,
        normalize: bool,
        before_request: BeforeRequest | None,
    ) -> None:
        self.provider = provider
        self.forbid_zero = forbid_zero
        self.normalize = normalize
        self.before_request = before_request

    def __call__(self, request: _Request) -> EmbedOutcome:
        out = EmbedOutcome()
        stack = [request]
        while stack:
            req = stack.pop()
            if self.before_request is not None:
                self.before_request(len(req.texts), sum(req.tokens))
            out.requests += 1
            out.tokens += sum(req.tokens)
            try:
                matrix = self.provider.embed(req.texts)
            except InputRejectedError as exc:
                if len(req.texts) == 1:
                    out.failed[req.positions[0]] = f"rejected: {exc.one_line()}"
                    continue
                mid = len(req.texts) // 2
                # Right half pushed first so the left half is sent first: order stays natural.
                stack.append(_Request(req.positions[mid:], req.texts[mid:], req.tokens[mid:]))
                stack.append(_Request(req.positions[:mid], req.texts[:mid], req.tokens[:mid]))
                continue
            clean, bad = check_vectors(
                matrix,
                dimensions=self.provider.dimensions,
                forbid_zero=self.forbid_zero,
                normalize=self.normalize,
            )
            for row, pos in enumerate(req.positions):
                if row in bad:
                    out.failed[pos] = f"bad vector: {bad[row]}"
                else:
                    out.vectors[pos] = clean[row]
        return out


def _run_parallel(run: _Runner, requests: list[_Request], concurrency: int) -> list[EmbedOutcome]:
    """Run requests on a thread pool; the first error cancels what has not started and is
    raised once the running requests return (their results are dropped with the batch)."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embed") as pool:
        futures: list[Future[EmbedOutcome]] = [pool.submit(run, r) for r in requests]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            error = future.exception() if future in done else None
            if error is not None:
                for other in pending:
                    other.cancel()
                raise error
        return [f.result() for f in futures]
