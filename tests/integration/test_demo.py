"""`migrator demo` end to end at a small size, as a user runs it: a fresh home, no configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_small_runs_clean(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "MIGRATOR_REDIS_URL")
    }
    env["MIGRATOR_HOME"] = str(tmp_path / "home")
    cmd = [sys.executable, "-m", "migrator", "demo", "--rows", "1500", "--qps", "15", "--json"]
    try:
        out = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420
        )
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        assert summary["rows"] == 1500
        assert summary["backfill"]["complete"] is True
        assert summary["verify"]["passed"] is True
        assert summary["recall"]["new"] > 0.9 and summary["recall"]["old"] > 0.9
        assert [s["phase_after"] for s in summary["switches"]] == [
            "cut_over",
            "rolled_back",
            "cut_over",
        ]
        search = summary["search"]
        assert search["queries"] > 50
        assert search["failed"] == 0
        assert search["cross_model_rows"] == 0
        sample = summary["sample_search"]
        assert len(sample["results"]) == 3, sample
        assert sample["model"] == summary["switches"][-1]["fingerprint"]
    finally:
        subprocess.run(
            [sys.executable, "-m", "migrator", "db", "stop"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
