"""Settings: read once at the entry point into a frozen object and passed down.

Nothing else in the package reads the environment. Secrets stay in the environment: a plan
names the variable that holds a key, and `Settings.environ` is where it is looked up.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    home: Path = Path(".migrator")
    operator: str = "unknown"
    # MIGRATOR_LOCAL_BUDGET=1: one machine on purpose; the rate budget may live on it alone.
    local_budget: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    database_url: str | None = None,
    broker_url: str | None = None,
) -> Settings:
    """Build settings from explicit options first, then the environment."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("MIGRATOR_HOME") or Path.cwd() / ".migrator").resolve()
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return Settings(
        database_url=database_url or env.get("DATABASE_URL") or None,
        broker_url=broker_url or env.get("CELERY_BROKER_URL") or None,
        redis_url=env.get("MIGRATOR_REDIS_URL") or None,
        home=home,
        operator=f"{user}@{socket.gethostname()}",
        local_budget=env.get("MIGRATOR_LOCAL_BUDGET", "").strip().lower() in ("1", "true", "yes"),
        environ=MappingProxyType(env),
    )
