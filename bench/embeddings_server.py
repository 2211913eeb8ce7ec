"""Throughput of `serve-embeddings`: OpenAIProvider (official openai client), batch 256.

Starts the server as a separate process (uvicorn), sends 256 texts x 256 dims per request from
THREADS threads for DURATION seconds, and prints requests/s and rows/s last.

    .venv/bin/python bench/embeddings_server.py [--seconds 12] [--threads 2] [--encoding float]
"""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time

import openai

from migrator.embedding.openai_provider import OpenAIProvider
from migrator.embedding.server import start_server_process
from migrator.plan.model import ModelSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--encoding", choices=["float", "base64"], default="float")
    args = parser.parse_args()
    rng = random.Random(0)
    words = [f"word{i}" for i in range(20_000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(10, 60))) for _ in range(args.batch * 8)]
    proc, url = start_server_process(port=free_port())
    counts = [0] * args.threads
    stop = time.monotonic() + args.seconds

    spec = ModelSpec(name="local-hash-bench", dimensions=args.dimensions, base_url=url)
    # The provider the backfill uses: the official openai client, answers checked by index.
    provider = OpenAIProvider(spec, api_key="unused", base_url=url, encoding=args.encoding)

    def work(slot: int) -> None:
        i = slot
        while time.monotonic() < stop:
            batch = texts[(i % 8) * args.batch : (i % 8 + 1) * args.batch]
            assert provider.embed(batch).shape == (len(batch), args.dimensions)
            counts[slot] += 1
            i += 1

    try:
        start = time.monotonic()
        threads = [threading.Thread(target=work, args=(n,)) for n in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    requests = sum(counts)
    print(f"server: 1 uvicorn process; client: {args.threads} threads, openai {openai.__version__}")
    print(f"batch {args.batch}, {args.dimensions} dims, encoding {args.encoding}, {elapsed:.1f}s")
    print(f"requests/s: {requests / elapsed:.1f}")
    print(f"rows/s: {requests * args.batch / elapsed:,.0f}")


if __name__ == "__main__":
    main()
