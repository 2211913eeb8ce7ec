"""The package list in pyproject.toml is whole, and the shipped files (Alembic scripts, example
plans) have one copy, found both from a checkout and from an installed wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

from migrator.shipped import alembic_dir, plans_dir

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "migrator").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert {"migrator._alembic", "migrator._alembic.versions", "migrator._plans"} <= listed


def test_one_copy_of_the_shipped_files() -> None:
    assert not (ROOT / "migrator" / "_alembic").exists()
    assert not (ROOT / "migrator" / "_plans").exists()
    assert alembic_dir().resolve() == (ROOT / "alembic").resolve()
    assert plans_dir().resolve() == (ROOT / "plans").resolve()
    assert (alembic_dir() / "env.py").is_file() and (plans_dir() / "local-demo.yaml").is_file()


def test_statement_builders_use_psycopg_for_composition_only() -> None:
    # import-linter forbids whole packages only; psycopg.sql (composition, rendering without a
    # connection) is the one part of psycopg the pure layers may use.
    import ast

    for path in [
        *(ROOT / "migrator" / "ddl").glob("*.py"),
        *(ROOT / "migrator" / "plan").glob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] == "psycopg":
                    assert mod == "psycopg.sql", f"{path.name} imports {mod}"


def test_commands_open_their_context_through_the_preflight() -> None:
    # db.context.migration_context runs the read-only checks only when handed them: a command
    # that opened it directly would change the database before checking what can be checked.
    import ast

    opened = []
    for path in (ROOT / "migrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name == "migration_context":
                    opened.append(path.relative_to(ROOT).as_posix())
    assert opened == ["migrator/backfill/preflight.py"], opened
