"""docker-compose.yml (parsed: there is no Docker engine here) and the generated runbooks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from migrator.cli import cli
from migrator.ddl.runbook import commands_in, render_runbook
from migrator.plan.model import load_plan

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def substitute(text: str) -> str:
    """Replace ${VAR:-default} by its default (or a placeholder), as compose would."""
    return VAR.sub(lambda m: m.group(2) if m.group(2) is not None else "x", text)


def documented_variables() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return set(re.findall(r"^\| `([A-Z_][A-Z0-9_]*)` \|", text, flags=re.M))


def test_services_and_healthchecks() -> None:
    services = COMPOSE["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector")
    assert {"postgres", "redis", "embeddings", "worker", "search", "flower"} <= set(services)
    for name in ("postgres", "redis", "embeddings", "search"):
        assert "healthcheck" in services[name], name


@pytest.mark.parametrize("name", ["embeddings", "worker", "search", "flower", "cli"])
def test_commands_are_real_command_lines(name: str) -> None:
    service = COMPOSE["services"][name]
    command = [substitute(str(c)) for c in service.get("command", [])]
    entry = [str(e) for e in service.get("entrypoint", [])]
    argv = entry + command
    if argv[0] == "migrator":
        args = argv[1:]
        if args == ["--help"]:
            return
        # click parses the whole line, options and arguments, exactly as the container would.
        ctx = cli.make_context("migrator", list(args), resilient_parsing=False)
        sub = cli.get_command(ctx, args[0])
        assert sub is not None, f"{name}: no command {args[0]!r}"
        sub.make_context(args[0], list(args[1:]))
    else:
        assert argv[:3] == ["celery", "-A", "migrator.worker.app"], argv
        assert argv[3] in {"worker", "beat", "flower"}, argv
        if argv[3] == "worker":
            assert "-Q" in argv
        import migrator.worker.app  # noqa: F401 - the app module the line names must import


def test_every_variable_is_documented() -> None:
    used = set(VAR.findall((ROOT / "docker-compose.yml").read_text()))
    names = {n for n, _ in used}
    missing = names - documented_variables()
    assert not missing, f"undocumented in docs/operations.md: {sorted(missing)}"


@pytest.mark.parametrize("path", sorted((ROOT / "plans").glob("*.yaml")), ids=lambda p: p.stem)
def test_runbook_is_complete_and_its_commands_exist(path: Path) -> None:
    plan = load_plan(path)
    text = render_runbook(plan, f"plans/{path.name}")
    for heading in (
        "Dry run",
        "Adopt the view",
        "Backfill",
        "Verify",
        "Cutover",
        "Rollback",
        "Finalize",
    ):
        assert heading in text
    assert text.count("**How to roll back from here:**") == 7
    assert text.count("**Expected duration:**") == 7
    commands = commands_in(text)
    assert len(commands) >= 9
    runner = CliRunner()
    for argv in commands:
        res = runner.invoke(cli, [*argv[1:], "--help"])
        assert res.exit_code == 0, f"{shlex.join(argv)} --help: {res.output}"
        # The options the runbook uses must exist on that command.
        sub = cli.get_command(click_ctx(), argv[1])
        assert sub is not None
        sub.make_context(argv[1], argv[2:])


def click_ctx():  # type: ignore[no-untyped-def]
    return cli.make_context("migrator", ["plan", "x"], resilient_parsing=True)
