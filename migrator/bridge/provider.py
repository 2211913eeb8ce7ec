"""A provider whose vectors are the new model's, mapped by a bridge into the old space: what
stands in for a retired old model (the catch-up of the old column, verify's baseline).

Texts go to the new model (its limits, token counts and truncation); the answer is mapped and
normalised as the old model's vectors were, with the old model's dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from migrator.bridge.store import StoredBridge
from migrator.embedding import Matrix, Provider, provider_for
from migrator.plan.model import ModelSpec


class BridgedProvider(Provider):
    def __init__(self, inner: Provider, bridge: StoredBridge, old: ModelSpec) -> None:
        self.inner = inner
        self.bridge = bridge
        self.old = old
        self.fingerprint = old.fingerprint()
        self.dimensions = old.dimensions
        self.limits = inner.limits

    def embed(self, texts: Sequence[str]) -> Matrix:
        raw = self.inner.embed(texts)
        norms = np.linalg.norm(raw, axis=1)
        # Rows the inner model returned as zero (or bad) stay zero: the row checks reject them.
        mapped = self.bridge.map.apply(raw, normalize=self.old.normalize)
        mapped[~np.isfinite(norms) | (norms == 0)] = 0.0
        return mapped

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate(text, max_tokens)

    def close(self) -> None:
        self.inner.close()


def bridged(bridge: StoredBridge, old: ModelSpec, environ: Mapping[str, str]) -> Provider:
    """The old model's stand-in: the bridge's query model, mapped."""
    return BridgedProvider(provider_for(bridge.from_model, environ), bridge, old)
