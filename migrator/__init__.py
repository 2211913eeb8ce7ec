"""migrator: move a PostgreSQL + pgvector search table to a new embedding model without downtime."""

__version__ = "0.1.0"
