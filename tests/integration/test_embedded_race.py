"""Two processes start the embedded Redis together on a fresh home: one server; `db stop`
stops it (and nothing is left running)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.db.embedded import stop_embedded_redis

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Both children wait for the same instant, then start the embedded Redis.
CHILD = """
import sys, time
from pathlib import Path
from migrator.db.embedded import embedded_redis_url
home, at = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
print(embedded_redis_url(home))
"""


def _servers(home: Path) -> list[int]:
    """Redis servers serving this home's socket (from /proc)."""
    sock = str(home / "redis.sock").encode()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis" in cmd and sock in cmd:
            out.append(int(proc.name))
    return out


@pytest.mark.parametrize("rounds", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_two_processes_start_one_embedded_redis(tmp_path: Path, rounds: int) -> None:
    for i in range(rounds):
        home = tmp_path / f"home{i}"
        at = time.time() + 1.5
        kids = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(home), str(at)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            outs = [k.communicate(timeout=60) for k in kids]
            assert all(k.returncode == 0 for k in kids), outs
            assert len({o[0] for o in outs}) == 1, outs  # both got the same URL
            assert len(_servers(home)) == 1, _servers(home)
        finally:
            assert stop_embedded_redis(home)
        deadline = time.monotonic() + 5
        while _servers(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _servers(home) == [], "db stop left a server running"
