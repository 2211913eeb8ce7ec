"""Search through a migrator view: the client services import, the small HTTP service
(`service`) and the drill that loads it (`drill`).

`migrator.search` is public API: `from migrator.search import SearchClient, as_rows` in a
service keeps working whatever the layout inside this package.
"""

from migrator.search.client import (
    ActiveModel,
    Hit,
    SearchClient,
    SearchResult,
    as_rows,
    guarded_query,
    search_once,
    shared_provider,
)

__all__ = [
    "ActiveModel",
    "Hit",
    "SearchClient",
    "SearchResult",
    "as_rows",
    "guarded_query",
    "search_once",
    "shared_provider",
]
