"""Names users import and run keep working whatever the package layout: the search client, the
Celery app path, the console command and `python -m migrator`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points


def test_search_client_is_importable_from_migrator_search() -> None:
    from migrator.search import ActiveModel, SearchClient, SearchResult, as_rows, search_once

    assert SearchClient.__module__.startswith("migrator.search")
    assert callable(as_rows) and callable(search_once) and ActiveModel and SearchResult


def test_celery_app_path_is_migrator_worker_app() -> None:
    # `celery -A migrator.worker.app worker` (docs, docker-compose) imports this module; importing
    # it starts nothing.
    from celery import Celery

    from migrator.worker.app import TASK_NAME, app

    assert isinstance(app, Celery) and TASK_NAME == "migrator.embed_batch"
    assert "migrator.worker.tasks" in app.conf.include


def test_console_script_and_module_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "migrator"]
    assert ep.value == "migrator.cli:main"
    out = subprocess.run(
        [sys.executable, "-m", "migrator", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("migrator, version")
