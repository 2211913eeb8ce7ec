"""The Celery side of the backfill: `app` (configuration only) and `tasks` (thin tasks).

Run workers with `migrator worker PLAN` or `celery -A migrator.worker.app worker -Q QUEUE`.
"""
