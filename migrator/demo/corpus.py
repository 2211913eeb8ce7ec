"""A real text corpus on any machine: the docstrings of Python's own standard library.

Parses source files with `ast` (never imports them, so no side effects) in a fixed order.
Pure apart from reading the stdlib's files: no network, no database.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.machinery
import inspect
import json
import os
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Third-party code and caches. Tests, demos and GUI packages are kept: they are only parsed,
# never imported, so they have no side effects, and their docstrings are real English.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Doc:
    """One document: `key` like "json.decoder.JSONDecoder.decode", a title and a body."""

    key: str
    title: str
    body: str


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in rel[:-1]):
            continue
        if not all(p.isidentifier() for p in rel[:-1]):
            continue
        files.append(path)
    return files


def _docstrings(tree: ast.Module, module: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    out.append((name, doc))
                if isinstance(child, ast.ClassDef):
                    visit(child, name)

    doc = ast.get_docstring(tree, clean=True)
    if doc:
        out.append((module, doc))
    visit(tree, module)
    return out


@functools.lru_cache(maxsize=4096)
def _file_docstrings(root: Path, path: Path) -> tuple[tuple[str, str], ...]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return ()
    return tuple(_docstrings(tree, _module_name(root, path)))


def _chunks(body: str, min_chars: int) -> list[str]:
    """Paragraphs, each merged with the next while it is shorter than `min_chars`."""
    out: list[str] = []
    pending = ""
    for para in re.split(r"\n\s*\n", body):
        text = " ".join(para.split())
        if not text:
            continue
        pending = f"{pending} {text}" if pending else text
        if len(pending) >= min_chars:
            out.append(pending)
            pending = ""
    if pending:
        out.append(pending)
    return out


# Packages migrator itself depends on, so they are on every machine where it is installed.
# Read after the standard library, in this order, when a caller asks for more documents.
DEPENDENCY_PACKAGES = (
    "numpy",
    "sqlalchemy",
    "celery",
    "kombu",
    "alembic",
    "openai",
    "pydantic",
    "rich",
    "click",
    "psycopg",
    "redis",
    "starlette",
    "uvicorn",
    "httpx",
    "prometheus_client",
    "billiard",
    "yaml",
)


def _roots(stdlib: str | None) -> list[tuple[Path, Path]]:
    """(root for module names, directory to scan): the stdlib, then the dependencies."""
    std = Path(stdlib or sysconfig.get_paths()["stdlib"])
    roots = [(std, std)]
    if stdlib is not None:
        return roots
    for name in DEPENDENCY_PACKAGES:
        # PathFinder, not importlib.util.find_spec: the latter raises ValueError for a module
        # already imported without __spec__ (kombu replaces its module object), so the corpus
        # would depend on what the process imported first.
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        pkg = Path(next(iter(spec.submodule_search_locations)))
        roots.append((pkg.parent, pkg))
    return roots


def _scan(root: Path, directory: Path, cache_dir: Path | None) -> list[tuple[str, str]]:
    """All (key, docstring) pairs under `directory`, cached on disk: parsing takes seconds."""
    cache: Path | None = None
    if cache_dir is not None:
        tag = hashlib.sha256(f"{sys.version}|{directory.resolve()}".encode()).hexdigest()[:16]
        cache = cache_dir / f"docstrings-{directory.name}-{tag}.json"
        try:
            return [(str(k), str(v)) for k, v in json.loads(cache.read_text())]
        except (OSError, ValueError):
            pass
    files = _source_files(directory) if directory == root else _source_files_under(root, directory)
    pairs = [pair for path in files for pair in _file_docstrings(root, path)]
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(pairs))
            tmp.replace(cache)
    return pairs


def _source_files_under(root: Path, directory: Path) -> list[Path]:
    return [p for p in _source_files(directory) if p.is_relative_to(root)]


DEFAULT_CACHE = Path.home() / ".cache" / "migrator"


def load_docstrings(
    limit: int | None = None,
    min_chars: int = 40,
    *,
    stdlib: str | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
) -> list[Doc]:
    """Docstrings of the standard library, then of migrator's dependencies, in a fixed order.

    Identical bodies are removed. A docstring of several paragraphs is split into one document
    per paragraph (short ones merged with the next; keys after the first get "#p2", "#p3",
    ...). The parts do not overlap, so a query drawn from one part has exactly one right
    answer. About 15k documents come from the standard library and 40k more from the
    dependencies. Parsed files are cached in `cache_dir` (None: no cache).
    """
    seen: set[str] = set()
    docs: list[Doc] = []
    for root, directory in _roots(stdlib):
        for key, raw in _scan(root, directory, cache_dir):
            chunks = _chunks(inspect.cleandoc(raw), min_chars)
            for i, text in enumerate(chunks, 1):
                doc_key = key if i == 1 else f"{key}#p{i}"
                if len(text) < min_chars or text in seen:
                    continue
                seen.add(text)
                docs.append(Doc(key=doc_key, title=doc_key.rsplit(".", 1)[-1], body=text))
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs


def load_corpus(n: int, *, cache_dir: Path | None = DEFAULT_CACHE) -> list[Doc]:
    """Exactly `n` documents: the real ones first, then, past their number, unique composites
    of two real documents (for throughput benchmarks at 100k+ rows; not for recall figures)."""
    docs = load_docstrings(limit=n, cache_dir=cache_dir)
    base = len(docs)
    i = 0
    while len(docs) < n:
        # Round r pairs document a with a + 1 + r: every (a, r) gives a distinct pair.
        a, b = docs[i % base], docs[(i % base + 1 + i // base) % base]
        docs.append(Doc(key=f"{a.key}+{b.key}#{i}", title=a.title, body=f"{a.body} {b.body}"))
        i += 1
    return docs


def make_query(doc: Doc, rng: random.Random, *, min_words: int = 8, max_words: int = 15) -> str:
    """A query derived from a doc: a random span of 8-15 of its words (all of them if fewer)."""
    words = doc.body.split()
    size = rng.randint(min_words, max_words)
    if len(words) <= size:
        return " ".join(words)
    start = rng.randrange(0, len(words) - size + 1)
    return " ".join(words[start : start + size])
