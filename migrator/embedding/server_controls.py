"""Test controls of the local embeddings server: quotas, injected failures, bad answers.

Owns the mutable, lock-protected state shared by the server's requests and its test handle
(`Controls`, counters, the sliding quota window). Pure Python: no HTTP, no model code.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any


class BadMode(StrEnum):
    """Deliberately wrong answers, for tests of the provider's checks."""

    WRONG_DIM = "wrong-dim"  # every vector one dimension short
    NAN = "nan"  # the first vector holds a NaN
    ZERO = "zero"  # the first vector is all zeros
    MISSING = "missing"  # the last item is dropped
    SHUFFLE = "shuffle"  # items in reverse order (indices still right)
    DUPLICATE = "duplicate"  # the last item carries the first item's index


@dataclass(frozen=True)
class Controls:
    """Everything off by default. Settable at start (CLI flags) and at run time (POST /control)."""

    rpm: int | None = None
    tpm: int | None = None
    quota_window_seconds: float = 60.0
    error_rate: float = 0.0
    latency_ms: float = 0.0
    bad: BadMode | None = None
    poison_marker: str | None = None
    default_dimensions: int = 256
    max_inputs: int = 2048
    max_tokens_per_input: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        if self.latency_ms < 0 or self.quota_window_seconds <= 0:
            raise ValueError("latency_ms must be >= 0 and quota_window_seconds > 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or null for no quota)")

    def updated(self, changes: dict[str, Any]) -> Controls:
        """A copy with `changes` applied; unknown keys raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown controls: {', '.join(unknown)}")
        if changes.get("bad") is not None:
            changes = {**changes, "bad": BadMode(changes["bad"])}
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bad"] = self.bad.value if self.bad else None
        return data


@dataclass
class Counters:
    requests: int = 0
    inputs: int = 0
    tokens: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    rejected: int = 0
    # The longest run of 429s between two admitted requests: clients that honour Retry-After
    # (and share the pause) send at most one doomed request per request slot into each run.
    max_rate_limited_run: int = 0
    # Most admitted requests being served at once (during the injected latency).
    max_in_flight: int = 0


class ServerState:
    """Controls, counters and the quota window, behind one lock (requests run on many threads)."""

    def __init__(self, controls: Controls | None = None) -> None:
        self._lock = threading.Lock()
        self.controls = controls or Controls()
        self.counters = Counters()
        self._window: deque[tuple[float, int]] = deque()  # (time, tokens) of admitted requests
        self._window_tokens = 0
        self._limited_run = 0
        self._in_flight = 0
        self._rng = random.Random(self.controls.seed)

    def set_controls(self, **changes: Any) -> Controls:
        with self._lock:
            self.controls = self.controls.updated(changes)
            if "seed" in changes:
                self._rng = random.Random(self.controls.seed)
            if "rpm" in changes or "tpm" in changes or "quota_window_seconds" in changes:
                self._window.clear()
                self._window_tokens = 0
            return self.controls

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = Counters()
            self._limited_run = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"controls": self.controls.as_json(), "counters": asdict(self.counters)}

    def count_request(self, inputs: int, tokens: int) -> None:
        with self._lock:
            self.counters.requests += 1
            self.counters.inputs += inputs
            self.counters.tokens += tokens

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self.counters, what, getattr(self.counters, what) + 1)

    def admit(self, tokens: int, now: float | None = None) -> float | None:
        """None if the request fits the quota (and is recorded), else seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            c = self.controls
            if c.rpm is None and c.tpm is None:
                return None
            window = c.quota_window_seconds
            while self._window and self._window[0][0] <= now - window:
                self._window_tokens -= self._window.popleft()[1]
            wait = 0.0
            if c.rpm is not None and len(self._window) >= c.rpm:
                wait = self._window[len(self._window) - c.rpm][0] + window - now
            if c.tpm is not None and self._window_tokens + tokens > c.tpm:
                wait = max(wait, self._tokens_free_at(tokens, c.tpm, window) - now)
            if wait > 0:
                self.counters.rate_limited += 1
                self._limited_run += 1
                runs = max(self.counters.max_rate_limited_run, self._limited_run)
                self.counters.max_rate_limited_run = runs
                return wait
            self._limited_run = 0
            self._window.append((now, tokens))
            self._window_tokens += tokens
            return None

    def _tokens_free_at(self, tokens: int, tpm: int, window: float) -> float:
        """When enough old requests leave the window for `tokens` more to fit."""
        if tokens > tpm:
            return math.inf
        excess = self._window_tokens + tokens - tpm
        for at, used in self._window:
            excess -= used
            if excess <= 0:
                return at + window
        return math.inf

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a request as in flight while the block runs."""
        with self._lock:
            self._in_flight += 1
            self.counters.max_in_flight = max(self.counters.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def roll_error(self) -> bool:
        with self._lock:
            hit = self.controls.error_rate > 0 and self._rng.random() < self.controls.error_rate
            if hit:
                self.counters.server_errors += 1
            return hit
