"""Celery workers: a task loads a job by id, calls diffaudit, records what it returns."""
