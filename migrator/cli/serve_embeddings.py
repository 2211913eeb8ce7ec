"""`migrator serve-embeddings`: run the local OpenAI-compatible embeddings server.

Presentation only: parses options into `Controls` and calls `embedding.server.serve`.
"""

from __future__ import annotations

import click

# The server (uvicorn, starlette, numpy) is imported when the command runs.
# server_controls.BadMode values (a unit test keeps the two equal).
BAD_MODES = ("wrong-dim", "nan", "zero", "missing", "shuffle", "duplicate")


@click.command("serve-embeddings")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback by default: the server has no authentication).",
)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option(
    "--rpm",
    type=click.IntRange(min=1),
    default=None,
    help="Requests-per-minute quota, answered with 429 + Retry-After.",
)
@click.option(
    "--tpm",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens-per-minute quota, answered with 429 + Retry-After.",
)
@click.option(
    "--quota-window",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="Length of the sliding quota window in seconds.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered with HTTP 500.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Latency added to every embeddings request.",
)
@click.option(
    "--bad",
    type=click.Choice(BAD_MODES),
    default=None,
    help="Answer every request wrongly, for tests of the client's checks.",
)
@click.option(
    "--poison-marker",
    default=None,
    help="Refuse (400) any request with an input containing this string.",
)
@click.option(
    "--dimensions",
    "default_dimensions",
    type=click.IntRange(1, 16000),
    default=256,
    show_default=True,
    help="Dimensions when a request does not ask for any.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the injected-error dice."
)
def serve_embeddings(
    host: str,
    port: int,
    rpm: int | None,
    tpm: int | None,
    quota_window: float,
    error_rate: float,
    latency_ms: float,
    bad: str | None,
    poison_marker: str | None,
    default_dimensions: int,
    seed: int,
) -> None:
    """Serve the local models over the OpenAI embeddings API.

    \b
    Models: any name starting with "local-hash" (the request's `dimensions` picks the size).
    Endpoints: POST /v1/embeddings, GET /v1/models, GET /health,
               GET /control (controls and counters), POST /control (JSON, change controls)
    Use it with:  OPENAI_BASE_URL=http://127.0.0.1:8765/v1  (no API key needed on loopback)
    """
    from migrator.embedding.server import serve
    from migrator.embedding.server_controls import BadMode, Controls

    controls = Controls(
        rpm=rpm,
        tpm=tpm,
        quota_window_seconds=quota_window,
        error_rate=error_rate,
        latency_ms=latency_ms,
        bad=BadMode(bad) if bad else None,
        poison_marker=poison_marker,
        default_dimensions=default_dimensions,
        seed=seed,
    )
    click.echo(f"serving local embedding models on http://{host}:{port}/v1 (Ctrl-C stops)")
    serve(host, port, controls)


def register(group: click.Group) -> None:
    group.add_command(serve_embeddings)
