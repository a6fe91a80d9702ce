"""The Celery application of the workers, configured from the one Settings class.

Tasks are acknowledged late and rejected when the worker is lost, so a job whose worker dies
(kill -9 included) is redelivered and resumes after its last finished stage.
"""

from __future__ import annotations

from celery import Celery

from app.queue import celery_config
from app.settings import get_settings


def create_celery() -> Celery:
    settings = get_settings()
    celery = Celery("diffaudit")
    celery.conf.update(celery_config(settings))
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        worker_hijack_root_logger=False,
        include=["workers.tasks", "workers.recovery"],
    )
    return celery


celery_app = create_celery()
