"""Split inputs into requests within a provider's limits.

Pure: no I/O, no provider calls. Inputs stay in order and every input lands in exactly one
request; the caller has already truncated or dead-lettered inputs over the per-input limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from migrator.embedding.base import Limits


def split_requests(token_counts: Sequence[int], limits: Limits) -> list[range]:
    """Contiguous ranges of input positions, each within max inputs and max tokens per request.

    Greedy: a request is closed when the next input would break a limit, which gives the
    fewest requests possible for contiguous order-keeping splits.
    """
    cap = limits.input_token_cap
    out: list[range] = []
    start = 0
    tokens = 0
    for i, n in enumerate(token_counts):
        if n < 0:
            raise ValueError(f"input {i} has a negative token count {n}")
        if n > cap:
            raise ValueError(
                f"input {i} counts {n} tokens, over the per-input limit {cap}: truncate or "
                "dead-letter it before batching"
            )
        full = i - start >= limits.max_inputs_per_request
        if i > start and (full or tokens + n > limits.max_tokens_per_request):
            out.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(token_counts):
        out.append(range(start, len(token_counts)))
    return out
