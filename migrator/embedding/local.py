"""Deterministic local text models that need only numpy, and their in-process provider.

`HashEmbedder` hashes words and word bigrams (keyed by a seed derived from the model name)
into a signed sparse random projection: each feature adds +-w to `HASHES` coordinates. This is
a sparse Johnson-Lindenstrauss projection of the bag-of-words vector, computed without storing
a (vocabulary x dims) matrix. Distinct names give unrelated vector spaces. No network, no files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from migrator.embedding.base import Limits, Matrix, Provider
from migrator.plan.model import ModelSpec

HASHES = 4  # coordinates per feature: smooths collisions between features
BIGRAM_WEIGHT = 0.7
_MASK = (1 << 64) - 1
# Tokens: lowercase text split at whitespace and ASCII punctuation; every non-ASCII character
# counts as a word character. Done on UTF-8 bytes with bytes.translate, ~5x faster than a regex.
_TOKEN_RE = re.compile(r"[0-9A-Za-z_\u0080-\U0010FFFF]+")
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
_TABLE = bytes(
    c if c in _WORD_BYTES or c >= 128 else c + 32 if 65 <= c <= 90 else 32 for c in range(256)
)
_JOIN_TABLE = b"\x00" + _TABLE[1:]  # keeps NUL, the separator of joined batches
_SEP = "\x00"
_CACHE_MAX = 500_000
# Very frequent English words carry little meaning and crowd out the rest in few dimensions.
_STOP_TEXT = (
    "a an and are as at be by for from has have if in into is it its of on or that the this "
    "to was were will with which not no can may be been but than then there these those"
)
STOPWORDS = frozenset(_STOP_TEXT.split(" "))
_STOP_BYTES = frozenset(w.encode() for w in STOPWORDS)


def tokenize(text: str) -> list[bytes]:
    """The local models' tokens, as UTF-8 bytes."""
    return text.lower().encode("utf-8", "replace").translate(_TABLE).split()


def count_tokens(text: str) -> int:
    """Exact token count of a text for the local models (a non-blank text costs at least 1)."""
    n = len(_TOKEN_RE.findall(text))
    return n if n or not text.strip() else 1


def truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` holding at most `max_tokens` local tokens."""
    if max_tokens < 1:
        return ""
    for i, match in enumerate(_TOKEN_RE.finditer(text)):
        if i == max_tokens:
            return text[: match.start()].rstrip()
    return text


def seed_for(name: str) -> int:
    """A stable 64-bit seed for a model name (sha256, never Python's salted hash())."""
    digest = hashlib.sha256(f"migrator.local-hash|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps, which is intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class HashEmbedder:
    """Deterministic bag-of-words-and-bigrams model from (name, dimensions); thread-safe."""

    def __init__(self, name: str, dimensions: int, normalize: bool = True) -> None:
        if dimensions < 1:
            raise ValueError("dimensions must be >= 1")
        self.name = name
        self.dimensions = dimensions
        self.normalize = normalize
        self._seed = seed_for(name)
        self._key = self._seed.to_bytes(8, "little")
        self._cache: dict[bytes, int] = {}

    def _hashes(self, tokens: list[bytes]) -> npt.NDArray[np.uint64]:
        cache = self._cache
        for token in set(tokens).difference(cache):
            digest = hashlib.blake2b(token, digest_size=8, key=self._key).digest()
            # The low bit marks stop words, so filtering them is one vector op; NUL hashes to 0.
            h = int.from_bytes(digest, "little") & ~1 | (token in _STOP_BYTES)
            cache[token] = 0 if token == b"\x00" else h  # dict writes are atomic (GIL)
        out = np.fromiter(map(cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
        if len(cache) > _CACHE_MAX:
            cache.clear()
        return out

    def _features(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        """Token hashes and their row numbers, stop words dropped unless a row is all stop words."""
        joined = _SEP.join(texts)
        if joined.count(_SEP) != max(len(texts) - 1, 0):
            raise ValueError("texts must not contain NUL characters")
        raw = joined.lower().encode("utf-8", "replace").translate(_JOIN_TABLE)
        tokens = raw.replace(b"\x00", b" \x00 ").split()
        hashes = self._hashes(tokens)
        sep = hashes == 0
        rows = np.cumsum(sep, dtype=np.int64)
        hashes, rows = hashes[~sep], rows[~sep]
        empty = np.flatnonzero(np.bincount(rows, minlength=len(texts)) == 0)
        extra = [(i, texts[i].strip()) for i in empty.tolist() if texts[i].strip()]
        if extra:  # punctuation-only text still gets a direction
            more = self._hashes([t.encode("utf-8", "replace") for _, t in extra])
            hashes = np.concatenate([hashes, more])
            rows = np.concatenate([rows, np.array([i for i, _ in extra], dtype=np.int64)])
            order = np.argsort(rows, kind="stable")
            hashes, rows = hashes[order], rows[order]
        keep = (hashes & np.uint64(1)) == 0
        rows_kept = np.bincount(rows[keep], minlength=len(texts))
        keep |= (rows_kept == 0)[rows]
        return hashes[keep], rows[keep]

    def encode(self, texts: Sequence[str]) -> Matrix:
        """float32 (len(texts), dimensions); blank texts give zero rows."""
        n, d = len(texts), self.dimensions
        uni, row = self._features(texts)
        if not uni.size:
            return np.zeros((n, d), dtype=np.float32)
        same = row[1:] == row[:-1]
        big = _mix(uni[:-1][same] * np.uint64(0x9E3779B97F4A7C15) ^ uni[1:][same])
        feats = np.concatenate([uni, big])
        frow = np.concatenate([row, row[:-1][same]])
        weight = np.concatenate([np.ones(uni.size), np.full(big.size, BIGRAM_WEIGHT)])
        base = frow * d
        index = np.empty(HASHES * feats.size, dtype=np.int64)
        signed = np.empty(HASHES * feats.size, dtype=np.float64)
        for j in range(HASHES):
            h = _mix(feats ^ np.uint64((self._seed + 0x632BE59BD9B4E019 * (j + 1)) & _MASK))
            part = slice(j * feats.size, (j + 1) * feats.size)
            index[part] = base + (h % np.uint64(d)).astype(np.int64)
            signed[part] = np.where((h >> np.uint64(63)) == 0, weight, -weight)
        flat = np.bincount(index, weights=signed, minlength=n * d)
        out: npt.NDArray[np.float64] = flat.reshape(n, d).astype(np.float64, copy=False)
        if self.normalize:
            norms = np.linalg.norm(out, axis=1)
            out /= np.where(norms > 0, norms, 1.0)[:, None]
        return out.astype(np.float32)


class LocalProvider(Provider):
    """A `HashEmbedder` behind the provider interface, in-process (ModelSpec provider "local")."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.fingerprint = spec.fingerprint()
        self.dimensions = spec.dimensions
        self.limits = Limits.from_spec(spec)
        self.model = HashEmbedder(spec.name, spec.dimensions, normalize=spec.normalize)

    def embed(self, texts: Sequence[str]) -> Matrix:
        return self.model.encode(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [count_tokens(t) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        return truncate(text, max_tokens)
