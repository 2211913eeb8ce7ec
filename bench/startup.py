"""Start-up cost of the CLI: CPU seconds (user + system, of the child, from getrusage) of
`migrator --version`, `--help` and `plan --offline`, median of several runs, with ratios to
`python -c pass` measured in the same run. With --before REF the same commands run from a
`git worktree` of REF (e.g. the commit before the lazy imports) with this interpreter.

    .venv/bin/python bench/startup.py --runs 7 --before e0a94a5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = "plans/local-demo.yaml"
COMMANDS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "plan --offline": ["plan", PLAN, "--offline"],
}


def cpu_seconds(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_cpu(cmd: list[str], cwd: Path, env: dict[str, str], runs: int) -> float:
    cpu_seconds(cmd, cwd, env)  # warm the page cache and the .pyc files
    return statistics.median(cpu_seconds(cmd, cwd, env) for _ in range(runs))


def measure(src: Path, runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "MIGRATOR_HOME": tempfile.mkdtemp()}
    base = [sys.executable, "-m", "migrator"]
    return {name: median_cpu(base + args, src, env, runs) for name, args in COMMANDS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--before", default=None, metavar="REF", help="also measure this commit")
    args = ap.parse_args()
    baseline = median_cpu([sys.executable, "-c", "pass"], ROOT, dict(os.environ), args.runs)
    now = measure(ROOT, args.runs)
    before: dict[str, float] = {}
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "before"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.before],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            try:
                before = measure(tree, args.runs)
            finally:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True
                )
    print(f"CPU seconds, median of {args.runs} runs; baseline `python -c pass` {baseline:.3f} s")
    print(
        f"{'command':<16} {'now':>7} {'x base':>7}"
        + (f" {'before':>7} {'x now':>7}" if before else "")
    )
    for name, value in now.items():
        line = f"{name:<16} {value:7.3f} {value / baseline:7.1f}"
        if before:
            line += f" {before[name]:7.3f} {before[name] / value:7.1f}"
        print(line)


if __name__ == "__main__":
    main()
