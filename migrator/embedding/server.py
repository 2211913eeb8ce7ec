"""`serve-embeddings`: a local server speaking the OpenAI embeddings API for the local models.

POST /v1/embeddings, GET /v1/models, GET|POST /control (test controls and counters), GET /health.
Model names starting with "local-hash" are served by `HashEmbedder(name, dimensions)`.
Owns HTTP only: the controls live in `server_controls`, the model in `local`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from migrator.embedding.local import HashEmbedder, count_tokens
from migrator.embedding.server_controls import BadMode, Controls, ServerState

MODEL_PREFIX = "local-hash"
LISTED_MODELS = ("local-hash", "local-hash-old", "local-hash-new")
MAX_DIMENSIONS = 16000


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson writes float32 arrays natively (~20x faster than json over lists); it cannot write
    # NaN, which the "nan" bad mode must send as some real servers do: json handles that case.
    try:
        body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        body = json.dumps(_plain(data), separators=(",", ":"), allow_nan=True).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _plain(data: Any) -> Any:
    if isinstance(data, np.ndarray):
        return data.tolist()
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json({"error": error}, status, headers)


class EmbeddingsApp:
    """The request handlers over one `ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._models: dict[tuple[str, int], HashEmbedder] = {}

    def model(self, name: str, dimensions: int) -> HashEmbedder:
        key = (name, dimensions)
        found = self._models.get(key)
        if found is None:
            if len(self._models) > 64:
                self._models.clear()
            found = self._models[key] = HashEmbedder(name, dimensions)
        return found

    def starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/control", self.get_control, methods=["GET"]),
                Route("/control", self.post_control, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "migrator"}
            for m in LISTED_MODELS
        ]
        return _json({"object": "list", "data": data})

    async def get_control(self, request: Request) -> Response:
        return _json(self.state.snapshot())

    async def post_control(self, request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object of controls")
            if changes.pop("reset_counters", False):
                self.state.reset_counters()
            self.state.set_controls(**changes)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "invalid_request_error")
        return _json(self.state.snapshot())

    async def embeddings(self, request: Request) -> Response:
        parsed = _parse(await request.body(), self.state.controls)
        if isinstance(parsed, Response):
            self.state.count("rejected")
            return parsed
        name, texts, dims, encoding = parsed
        controls = self.state.controls
        tokens = [count_tokens(t) for t in texts]
        total = sum(tokens)
        self.state.count_request(len(texts), total)
        too_long = next(
            (i for i, n in enumerate(tokens) if n > controls.max_tokens_per_input), None
        )
        if too_long is not None:
            self.state.count("rejected")
            return _error(
                400,
                f"input {too_long} has {tokens[too_long]} tokens, over the "
                f"maximum context length {controls.max_tokens_per_input}",
                "invalid_request_error",
                "context_length_exceeded",
                "input",
            )
        wait = self.state.admit(total)
        if wait is not None:
            return _rate_limited(wait, controls)
        if controls.latency_ms:
            with self.state.serving():
                await asyncio.sleep(controls.latency_ms / 1000.0)
        if self.state.roll_error():
            return _error(500, "injected server error", "server_error")
        marker = controls.poison_marker
        if marker:
            hit = next((i for i, t in enumerate(texts) if marker in t), None)
            if hit is not None:
                self.state.count("rejected")
                return _error(
                    400,
                    f"input {hit} contains the poison marker",
                    "invalid_request_error",
                    "poisoned_input",
                    "input",
                )
        matrix = self.model(name, dims).encode(texts)
        items = _render(matrix, encoding, controls.bad)
        usage = {"prompt_tokens": total, "total_tokens": total}
        return _json({"object": "list", "data": items, "model": name, "usage": usage})


def _parse(raw: bytes, controls: Controls) -> tuple[str, list[str], int, str] | Response:
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "the body is not valid JSON", "invalid_request_error")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", "invalid_request_error")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        return _error(400, "'model' is required", "invalid_request_error", param="model")
    if not name.startswith(MODEL_PREFIX):
        return _error(
            404,
            f"The model '{name}' does not exist",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return _error(
            400,
            "'input' must be a string or a list of strings (token arrays are not supported)",
            "invalid_request_error",
            param="input",
        )
    if not texts or len(texts) > controls.max_inputs:
        return _error(
            400,
            f"'input' must hold 1 to {controls.max_inputs} items",
            "invalid_request_error",
            param="input",
        )
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        return _error(
            400, f"input {empty} is an empty string", "invalid_request_error", param="input"
        )
    dims = body.get("dimensions", controls.default_dimensions)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        return _error(
            400,
            f"'dimensions' must be an integer in 1..{MAX_DIMENSIONS}",
            "invalid_request_error",
            param="dimensions",
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return _error(
            400,
            "'encoding_format' must be 'float' or 'base64'",
            "invalid_request_error",
            param="encoding_format",
        )
    return name, texts, dims, encoding


def _rate_limited(wait: float, controls: Controls) -> Response:
    if math.isinf(wait):
        return _error(
            400,
            "the request is larger than the tokens-per-minute quota",
            "invalid_request_error",
            "request_too_large",
            "input",
        )
    headers = {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
    return _error(
        429,
        f"Rate limit reached (rpm={controls.rpm}, tpm={controls.tpm}): try again in {wait:.3f}s",
        "requests",
        "rate_limit_exceeded",
        headers=headers,
    )


class _NanRow(list[float]):
    """A row holding NaN/Inf: not serialisable by orjson, so `_json` falls back to json."""


def _render(matrix: np.ndarray, encoding: str, bad: BadMode | None) -> list[dict[str, Any]]:
    m = matrix
    if bad is BadMode.WRONG_DIM:
        m = m[:, :-1] if m.shape[1] > 1 else np.hstack([m, m])
    elif bad is BadMode.NAN:
        m = m.copy()
        m[0, 0] = np.nan
    elif bad is BadMode.ZERO:
        m = m.copy()
        m[0] = 0.0
    if encoding == "base64":
        vectors: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in m]
    elif not np.isfinite(m).all():
        vectors = [_NanRow(row) for row in m.astype(np.float64).tolist()]
    else:
        # float32 rows: orjson prints the shortest decimal that round-trips each float32.
        vectors = list(np.ascontiguousarray(m, dtype=np.float32))
    items = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    if bad is BadMode.MISSING:
        items.pop()
    elif bad is BadMode.SHUFFLE:
        items.reverse()
    elif bad is BadMode.DUPLICATE:
        if len(items) > 1:
            items[-1]["index"] = 0
        else:
            items.append(dict(items[0]))
    return items


def create_app(controls: Controls | None = None) -> tuple[Starlette, ServerState]:
    state = ServerState(controls)
    return EmbeddingsApp(state).starlette(), state


@dataclass
class ServerHandle:
    """A server running in a background thread (for tests)."""

    url: str  # base URL for the openai client, ending in /v1
    state: ServerState
    _server: uvicorn.Server
    _thread: threading.Thread

    def set_controls(self, **changes: Any) -> Controls:
        return self.state.set_controls(**changes)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
    )


def run_server_in_thread(host: str = "127.0.0.1", port: int = 0, **controls: Any) -> ServerHandle:
    """Start the server on a daemon thread; port 0 picks a free port."""
    app, state = create_app(Controls().updated(controls))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(_config(app, host, sock.getsockname()[1]))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="serve-embeddings"
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the embeddings server did not start")
        time.sleep(0.01)
    url = f"http://{host}:{sock.getsockname()[1]}/v1"
    return ServerHandle(url=url, state=state, _server=server, _thread=thread)


def serve(host: str, port: int, controls: Controls) -> None:
    """Run the server in the foreground until interrupted."""
    app, _ = create_app(controls)
    uvicorn.Server(_config(app, host, port)).run()


def start_server_process(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    timeout: float = 15.0,
    log_to: IO[bytes] | int | None = None,
    **controls: Any,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m migrator.embedding.server` and wait until it answers /health; its
    output goes to `log_to` when given (the CLI keeps stdout for its own output)."""
    import httpx

    Controls().updated(dict(controls))  # fail here, not in the child
    cmd = [
        sys.executable,
        "-m",
        "migrator.embedding.server",
        "--host",
        host,
        "--port",
        str(port),
        "--controls",
        json.dumps(controls),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_to, stderr=log_to)
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embeddings server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, f"{base}/v1"
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the embeddings server did not answer in time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m migrator.embedding.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--controls", default="{}", help="JSON object of test controls")
    args = parser.parse_args(argv)
    serve(args.host, args.port, Controls().updated(json.loads(args.controls)))


if __name__ == "__main__":
    main()
