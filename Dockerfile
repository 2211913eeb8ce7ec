# The migrator image: CLI, Celery workers, the local embeddings server and the search service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY migrator ./migrator
COPY plans ./plans
RUN pip install --no-cache-dir ".[ops]" \
 && useradd --create-home migrator
USER migrator
ENTRYPOINT []
CMD ["migrator", "--help"]
