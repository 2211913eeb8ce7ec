"""Offline token estimate for OpenAI-style BPE models (no tokenizer files, no network).

Rule: ceil(ASCII bytes / 2) + one token per non-ASCII UTF-8 byte.
Why: the OpenAI encodings are byte-level BPE, so a token covers at least one byte and the
non-ASCII part is a true upper bound. ASCII English prose averages ~4 characters per token and
code ~3, so /2 leaves a 1.5-2x margin; only punctuation-dense text (e.g. "a,b,c,d") can beat it,
and a server that then refuses the input gets it isolated by bisection and dead-lettered.
Pure: no I/O.
"""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """A conservative token count for `text` (at least 1 for any non-empty text)."""
    if text.isascii():
        return (len(text) + 1) // 2
    data = text.encode("utf-8", "replace")
    ascii_bytes = len(data.decode("ascii", "ignore"))
    return (ascii_bytes + 1) // 2 + (len(data) - ascii_bytes)


def truncate_to_estimate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` whose estimate is at most `max_tokens` (binary search)."""
    if estimate_tokens(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)  # estimate(text[:lo]) <= max_tokens < estimate(text[:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return text[:lo]
