"""diffaudit's REST service: FastAPI over SQLAlchemy, enqueueing Celery tasks by name."""
