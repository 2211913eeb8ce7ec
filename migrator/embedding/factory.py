"""Build the provider a `ModelSpec` asks for, with settings taken from a given environment.

The only place the embedding code looks at environment variables, and only in the mapping
passed in (read once at the entry point): never `os.environ` at import time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from migrator.embedding.base import Provider
from migrator.embedding.local import LocalProvider
from migrator.embedding.openai_provider import OpenAIProvider
from migrator.errors import ConfigError
from migrator.plan.model import ModelSpec

# Local OpenAI-compatible servers ignore the key, but the openai client insists on one.
LOOPBACK_DUMMY_KEY = "sk-local-no-key-needed"


def is_loopback_url(url: str | None) -> bool:
    """True for http(s) URLs on localhost or a loopback address."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def provider_for(spec: ModelSpec, environ: Mapping[str, str]) -> Provider:
    """The provider for `spec`: "local" runs in-process, "openai" talks HTTP."""
    if spec.provider == "local":
        return LocalProvider(spec)
    base_url = spec.base_url or environ.get("OPENAI_BASE_URL") or None
    names = [n for n in (spec.api_key_env, "OPENAI_API_KEY") if n]
    api_key = next((environ[n] for n in names if environ.get(n)), None)
    if api_key is None:
        if not is_loopback_url(base_url):
            variable = spec.api_key_env or "OPENAI_API_KEY"
            raise ConfigError(
                f"no API key for model {spec.name!r}",
                hint=f"set {variable} (or point base_url at a local server)",
            )
        api_key = LOOPBACK_DUMMY_KEY
    return OpenAIProvider(spec, api_key=api_key, base_url=base_url)
