"""Start-up: `--version`, `--help` and `plan --offline` import no provider, server, broker or
numerical library (they cost ~1 s of CPU on every command before the imports were lazy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migrator.cli.serve_embeddings import BAD_MODES
from migrator.cli.verify_cmd import QUERY_MODES

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("openai", "starlette", "uvicorn", "celery", "numpy", "httpx", "kombu", "sqlalchemy")
PROBE = f"""
import json, sys
HEAVY = {HEAVY!r}
sys.argv = ["migrator", *json.loads(sys.argv[1])]
try:
    from migrator.cli import main
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--help"], ["plan", str(ROOT / "plans" / "local-demo.yaml"), "--offline"]],
    ids=["version", "help", "plan-offline"],
)
def test_light_commands_import_nothing_heavy(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    imported = json.loads(out.stderr.strip().splitlines()[-1])
    assert imported == [], f"{args} imported {imported}"
    assert out.stdout.strip()  # the command did run


def test_the_cli_copies_of_choices_match_their_sources() -> None:
    from migrator.embedding.server_controls import BadMode
    from migrator.verify.run import QUERY_MODES as RUN_MODES

    assert tuple(BAD_MODES) == tuple(m.value for m in BadMode)
    assert tuple(QUERY_MODES) == tuple(RUN_MODES)
