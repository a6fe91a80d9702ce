"""Sending tasks by name. app never imports workers; both sides share `celery_config`.

The API holds a Celery *client* only (it sends, never runs tasks). Jobs are sent after the
transaction that stored them commits, so a worker always finds the row it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

RUN_EVALUATION = "evaluations.run"
CPU_QUEUE, GPU_QUEUE = "cpu", "gpu"

Enqueue = Callable[..., None]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration used by the API's client and by every worker."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": CPU_QUEUE,
        "task_routes": {RUN_EVALUATION: {"queue": CPU_QUEUE}},
        # A task is acknowledged when it ends, so a killed worker's task is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.worker_prefetch,
    }


_client: Celery | None = None


def celery_client() -> Celery:
    """The API's Celery client, configured from the process settings on first use."""
    if _client is None:
        configure_client(get_settings())
    assert _client is not None
    return _client


def configure_client(settings: Settings) -> None:
    """Point the API's client at the broker of `settings` (create_app(settings)).

    A new client each time: a client that has connected keeps its broker connection pool, so
    updating its configuration would leave tasks going to the old broker.
    """
    global _client
    client = Celery("diffaudit-api", set_as_current=False)
    client.conf.update(celery_config(settings))
    _client = client


def enqueue(task_name: str, *args: Any, queue: str | None = None) -> None:
    """Send a task by name; the configured routes pick its queue unless one is given."""
    options = {"queue": queue} if queue else {}
    celery_client().send_task(task_name, args=list(args), **options)


def get_enqueue() -> Enqueue:
    """Dependency: how the API sends tasks (tests override it with a recorder)."""
    return enqueue
