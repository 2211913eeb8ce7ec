"""Self-retrieval recall@10 of the local hash models on the stdlib docstring corpus.

For each sampled document, a query of 8-15 consecutive words is drawn from its body
(`migrator.demo.corpus.make_query`); a hit is the document itself among the exact top 10 by cosine.

    .venv/bin/python bench/local_model_recall.py [--queries 2000] [--limit N]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from migrator.demo.corpus import load_docstrings, make_query
from migrator.embedding.local import HashEmbedder

MODELS = (("local-hash-old", 256), ("local-hash-new", 384))


def recall_at_k(
    model: HashEmbedder, bodies: list[str], queries: list[str], targets: list[int], k: int
) -> tuple[float, float]:
    start = time.perf_counter()
    docs = model.encode(bodies)
    rate = len(bodies) / (time.perf_counter() - start)
    q = model.encode(queries)
    hits = 0
    for lo in range(0, len(queries), 512):
        scores = q[lo : lo + 512] @ docs.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += sum(int(t in row) for t, row in zip(targets[lo : lo + 512], top, strict=True))
    return hits / len(queries), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    docs = load_docstrings(limit=args.limit)
    rng = random.Random(args.seed)
    targets = rng.sample(range(len(docs)), min(args.queries, len(docs)))
    queries = [make_query(docs[t], rng) for t in targets]
    bodies = [d.body for d in docs]
    print(f"corpus: {len(docs)} stdlib docstrings, {len(queries)} queries, k={args.k}")
    for name, dims in MODELS:
        recall, rate = recall_at_k(HashEmbedder(name, dims), bodies, queries, targets, args.k)
        print(f"{name}@{dims}: recall@{args.k} = {recall:.3f}  (encode {rate:,.0f} docs/s)")
    print(f"chance level: recall@{args.k} = {args.k / len(docs):.5f}")


if __name__ == "__main__":
    main()
