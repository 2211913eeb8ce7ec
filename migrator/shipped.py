"""Where the files shipped beside the code live: migrator's Alembic scripts and the example plans.

One copy of each is kept, at the top of the repository (`alembic/`, `plans/`), where alembic.ini
and users look. A wheel installs them inside the package (`migrator/_alembic`, `migrator/_plans`:
see pyproject's package-dir); an editable install runs from the checkout, where they stand beside
the package. Reads the file system only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(installed: str, checkout: str) -> Path:
    inside = Path(str(resources.files("migrator") / installed))
    if inside.is_dir():
        return inside
    beside = Path(__file__).resolve().parent.parent / checkout
    if beside.is_dir():
        return beside
    raise FileNotFoundError(f"neither {inside} nor {beside} exists: reinstall migrator")


def alembic_dir() -> Path:
    return _shipped("_alembic", "alembic")


def plans_dir() -> Path:
    return _shipped("_plans", "plans")
