"""Fixtures of the reliability suite: the embeddings server, a fault proxy in front of it for
the target model, a private Redis broker, and settings that point the backfill at them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.embedding.server import ServerHandle, run_server_in_thread
from tests.reliability_helpers import FaultProxy, PrivateRedis, fault_proxy, private_redis


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle = run_server_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def proxy(server: ServerHandle) -> Iterator[FaultProxy]:
    with fault_proxy(server.url) as p:
        yield p


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as r:
        yield r
